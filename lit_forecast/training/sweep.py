"""A sweep of ``train.py --tune`` without Ray: its file, its trials' configs, its table of trials.

Ray Tune lives in :mod:`lit_forecast.training.tune`. This module reads and checks the sweep
file, so every mistake is refused before Ray starts, and turns finished trials into
``trials.csv`` and ``best.yaml``. A sweep file looks like::

    base: local.yaml                  # the training config every trial starts from (beside this file)
    overrides:                        # fixed changes to it, as with --set
      cluster.num_workers: 1
    space:                            # dotted training key -> one distribution
      train.lr: {loguniform: [5.0e-4, 5.0e-3]}
      model.dropout: {uniform: [0.0, 0.2]}
      model.d_model: {choice: [32, 64]}
      model.encoder_layers: {int: [1, 3]}     # whole numbers, both bounds included
    budget:
      trials: 16
      max_epochs: 10                  # per trial; ASHA stops weak trials before it
    run:
      storage: runs
      name: tune                      # the sweep lives in <storage>/<name>, one run folder per trial

Every key has a default (:class:`Sweep`). Searched keys and their bounds are checked against
the base config with the training config's own validation, so an unknown key gets the same
"did you mean" and a value out of range the same message as in training.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import difflib
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lit_forecast import config as cfg
from lit_forecast import storage
from lit_forecast.errors import ConfigError

SWEEP_FILE, TRIALS_FILE, BEST_FILE = "sweep.yaml", "trials.csv", "best.yaml"  # in the sweep's folder
METRIC = "val/mae"  # ASHA and the table rank trials by December's autoregressive MAE (passengers)
DISTRIBUTIONS = ("choice", "uniform", "loguniform", "int")
# Keys a sweep sets itself: the budget gives the epochs, the sweep names every trial's run.
TRAINING_SECTIONS = [f.name for f in dataclasses.fields(cfg.Config)]
SWEEP_SECTIONS = ["base", "overrides", "space", "budget", "run"]
NOT_SEARCHABLE = {
    "train.max_epochs": "budget.max_epochs",
    "run.storage": "run.storage of the sweep",
    "run.name": "the trial id",
}


@dataclass
class Budget:
    """How much the sweep may spend."""

    trials: int = 16  # configurations sampled from the space
    max_epochs: int | None = None  # per trial (ASHA's ceiling); None: the base config's train.max_epochs
    concurrent: int = 1  # trials at once; each holds 1 CPU for its driver besides its workers
    grace_epochs: int = 1  # ASHA stops no trial before this many epochs
    reduction_factor: float = 2.0  # ASHA keeps the best 1/reduction_factor of the trials at each rung
    seed: int = 0  # seed of the random search (the trials' own seed is train.seed)


@dataclass
class SweepRun:
    """Where the sweep lives: <storage>/<name>, with one run folder per trial inside."""

    storage: str = "runs"
    name: str = "tune"


@dataclass
class Sweep:
    """A whole sweep file (see the module docstring)."""

    base: str = str(cfg.DEFAULT_CONFIG)  # a relative path is relative to the sweep file's folder
    overrides: dict = field(default_factory=dict)  # dotted training key -> value
    space: dict = field(default_factory=dict)  # dotted training key -> {distribution: arguments}
    budget: Budget = field(default_factory=Budget)
    run: SweepRun = field(default_factory=SweepRun)


@dataclass(frozen=True)
class Dimension:
    """One searched key: ``kind`` in DISTRIBUTIONS; ``values`` the choices, or [low, high]."""

    key: str
    kind: str
    values: tuple


def load(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and check a sweep file; ``overrides`` are ``--set key=value`` items.

    An item whose first part is a sweep section (``budget.trials=4``, ``run.name=x``,
    ``space.train.lr={choice: [0.001]}``, ``base=FILE``) changes the sweep file; any other
    (``train.seed=3``) is a fixed change to the trials' training config, like ``overrides``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep file not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: not a valid YAML text file: {str(err).splitlines()[0]}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: a sweep file is a YAML mapping (base:, overrides:, space:, budget:, run:), "
            f"but this file holds a {type(raw).__name__}"
        )
    try:
        for item in overrides or []:
            _apply_set(raw, item)
        sweep = cfg.from_dict(raw, Sweep)
        if "base" in raw:  # relative to the sweep file's folder, wherever the command runs
            sweep.base = str(path.parent / sweep.base) if not Path(sweep.base).is_absolute() else sweep.base
        return check(sweep)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def _apply_set(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {item!r} must look like dotted.key=value, e.g. --set budget.trials=8")
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item!r}: the value is not valid YAML ({str(err).splitlines()[0]})") from None
    head, _, rest = key.partition(".")
    if head in ("space", "overrides") and rest:  # their keys are dotted training keys, kept whole
        section = raw.setdefault(head, {})
        if not isinstance(section, dict):
            raise ConfigError(f"'{head}' must be a mapping")
        section[rest] = value
    elif head in SWEEP_SECTIONS:
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
        node[parts[-1]] = value
    elif head in TRAINING_SECTIONS:
        section = raw.setdefault("overrides", {})
        if not isinstance(section, dict):
            raise ConfigError("'overrides' must be a mapping")
        section[key] = value
    else:
        names = [*SWEEP_SECTIONS, *TRAINING_SECTIONS]
        close = difflib.get_close_matches(head, names, n=1, cutoff=0.5)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(names)})"
        raise ConfigError(f"--set {key}: unknown section '{head}'{hint}")


def check(sweep: Sweep) -> Sweep:
    """Check the budget, the base config with its overrides, and every dimension; returns ``sweep``."""
    b = sweep.budget
    for key in ("trials", "concurrent", "grace_epochs"):
        if getattr(b, key) < 1:
            raise ConfigError(f"'budget.{key}' must be >= 1, got {getattr(b, key)}")
    if b.max_epochs is not None and b.max_epochs < 1:
        raise ConfigError(f"'budget.max_epochs' must be >= 1 (or null: the base config's), got {b.max_epochs}")
    if not (math.isfinite(b.reduction_factor) and b.reduction_factor > 1):
        raise ConfigError(f"'budget.reduction_factor' must be a number above 1, got {b.reduction_factor}")
    base = base_config(sweep)
    if b.grace_epochs > base["train"]["max_epochs"]:
        raise ConfigError(
            f"'budget.grace_epochs' ({b.grace_epochs}) must not exceed the epochs per trial "
            f"(budget.max_epochs: {base['train']['max_epochs']})"
        )
    if not sweep.space:
        raise ConfigError(
            "'space' is empty: name at least one key to search, e.g. space: {train.lr: {loguniform: [5.0e-4, 5.0e-3]}}"
        )
    dimensions(sweep, base)
    return sweep


def base_config(sweep: Sweep) -> dict:
    """The trials' common training config as a plain dict: the base file, its overrides, the budget's epochs."""
    try:
        base = cfg.to_dict(cfg.load(sweep.base))
    except ConfigError as err:
        raise ConfigError(f"'base': {err}") from None
    changes = {key: (value, f"overrides.{key}") for key, value in sweep.overrides.items()}
    if sweep.budget.max_epochs is not None:
        changes["train.max_epochs"] = (sweep.budget.max_epochs, "budget.max_epochs")
    return with_values(base, changes, "overrides")


def with_value(plain: dict, key: str, value: Any, where: str) -> dict:
    """A copy of the plain config ``plain`` with dotted ``key`` set to ``value``, validated as training does."""
    return with_values(plain, {key: (value, where)}, where)


def with_values(plain: dict, changes: dict[str, tuple[Any, str]], where: str) -> dict:
    """A copy of ``plain`` with every ``key: (value, where it comes from)`` of ``changes`` set, then
    validated once as a whole (so that values that only fit together, such as split dates, do)."""
    out = copy.deepcopy(plain)
    for key, (value, origin) in changes.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"'{origin}': a key is a dotted training config key such as train.lr")
        node, parts = out, key.split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                _unknown(key, parts[: i + 1], origin)
            node = node[part]
        if parts[-1] not in node or isinstance(node[parts[-1]], dict):
            _unknown(key, parts, origin)
        node[parts[-1]] = value
    try:
        return cfg.to_dict(cfg.from_dict(out))  # as training reads them: YAML dates as text, whole floats as floats
    except ConfigError as err:
        raise ConfigError(f"'{where}': {err}") from None


def _unknown(key: str, parts: list[str], where: str) -> None:
    """Raise the training config's own "unknown key" error for ``key`` (its did-you-mean included)."""
    raw: dict = {}
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = None
    try:
        cfg.from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"'{where}': {err}") from None
    raise ConfigError(f"'{where}': '{key}' is a section, not a value: name one of its keys")


def dimensions(sweep: Sweep, base: dict | None = None) -> list[Dimension]:
    """The searched keys, each checked: its distribution, its bounds, and every value it can take."""
    base = base_config(sweep) if base is None else base
    out = []
    for key, spec in sweep.space.items():
        where = f"space.{key}"
        if key in NOT_SEARCHABLE:
            raise ConfigError(f"'{where}' cannot be searched: the sweep sets it ({NOT_SEARCHABLE[key]})")
        if isinstance(spec, list):
            spec = {"choice": spec}
        if not isinstance(spec, dict) or len(spec) != 1:
            raise ConfigError(
                f"'{where}' must be one distribution, e.g. {{loguniform: [1.0e-4, 1.0e-2]}} or "
                f"{{choice: [32, 64]}} ({', '.join(DISTRIBUTIONS)}), got {spec!r}"
            )
        ((kind, args),) = spec.items()
        if kind not in DISTRIBUTIONS:
            close = difflib.get_close_matches(str(kind), DISTRIBUTIONS, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"valid: {', '.join(DISTRIBUTIONS)}"
            raise ConfigError(f"'{where}': unknown distribution '{kind}' ({hint})")
        out.append(_dimension(key, kind, args, where, base))
    return out


def _dimension(key: str, kind: str, args: Any, where: str, base: dict) -> Dimension:
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ConfigError(f"'{where}': choice needs a non-empty list of values, got {args!r}")
        for value in args:
            with_value(base, key, value, where)
        return Dimension(key, kind, tuple(args))
    numbers = (
        isinstance(args, list)
        and len(args) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in args)
    )
    if not numbers:
        raise ConfigError(f"'{where}': {kind} needs [low, high], two numbers, got {args!r}")
    low, high = args
    if kind == "int" and not all(isinstance(v, int) for v in args):
        raise ConfigError(f"'{where}': int needs whole-number bounds, got {args!r}")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ConfigError(f"'{where}': the bounds must be finite numbers, got {args!r}")
    if low > high:
        raise ConfigError(f"'{where}': the bounds are reversed: low {low} is above high {high}")
    if low == high:
        raise ConfigError(
            f"'{where}': the range [{low}, {high}] is empty (one value): "
            f"fix the value under 'overrides' instead, or widen the range"
        )
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"'{where}': loguniform needs a positive low bound, got {low}")
    # Both bounds, and for the float distributions a value between them: a float sampled for an
    # int key (model.d_model: {uniform: ...}) is refused here, not in every trial.
    probes = [low, high] if kind == "int" else [float(low), float(high), (low + high) / 2]
    for value in probes:
        with_value(base, key, value, where)
    return Dimension(key, kind, (low, high))


def trial_config(base: dict, values: dict, storage: str, name: str) -> cfg.Config:
    """One trial's training config: ``base`` with the sampled ``values``, run in ``<storage>/<name>``."""
    shown = ", ".join(f"{key}={value!r}" for key, value in values.items())
    plain = with_values(base, {key: (value, f"space.{key}") for key, value in values.items()}, f"space ({shown})")
    plain["run"] = {"storage": storage, "name": name}
    return cfg.from_dict(plain)


# ---------------------------------------------------------------------------------------------
# The record of a sweep


def sweep_folder(sweep: Sweep) -> str:
    """Where the sweep lives: <storage>/<name>, absolute."""
    return storage.join(storage.absolute(sweep.run.storage), sweep.run.name)


def record(sweep: Sweep, base: dict) -> dict:
    """What a sweep folder keeps of its sweep (``sweep.yaml``): a rerun must match it to resume."""
    # Where the sweep and its base file live may move: the base config's content is what counts.
    return {"sweep": {**cfg.to_dict(sweep), "base": None, "run": None}, "base": base}


def changes_since(recorded: dict, wanted: dict) -> list[str]:
    """How ``wanted`` (a :func:`record`) differs from the record a sweep folder holds.

    Keys added to the configs since the record was written are filled in at their defaults
    first: a sweep started by an older version resumes unless a value really changed.
    """
    recorded = dict(recorded)
    for section, cls in (("sweep", Sweep), ("base", cfg.Config)):
        written = recorded.get(section)
        if not isinstance(written, dict):
            continue
        kept = {k: v for k, v in written.items() if section == "base" or k not in ("base", "run")}
        try:
            filled = cfg.to_dict(cfg.from_dict(kept, cls))
        except ConfigError:  # not loadable here: compared as written
            continue
        recorded[section] = {**filled, "base": None, "run": None} if section == "sweep" else filled
    return cfg.differences(recorded, wanted)


@dataclass
class Trial:
    """One row of the table: how a trial ended and what it was given."""

    trial: str  # the trial id, also the name of its run folder in the sweep's folder
    status: str  # finished (all epochs), stopped (by ASHA), failed
    best_val_mae: float | None  # the lowest val/mae it reported (passengers); None if it reported none
    epochs: int  # epochs it completed
    values: dict  # searched key -> value
    error: str = ""  # the last line of a failed trial's error

    @property
    def stopped_early(self) -> bool:
        return self.status == "stopped"


def trial_status(failed: bool, epochs: int, max_epochs: int) -> str:
    """finished, stopped (ASHA ended it before ``max_epochs``) or failed."""
    return "failed" if failed else ("finished" if epochs >= max_epochs else "stopped")


def best(trials: list[Trial]) -> Trial | None:
    """The trial with the lowest best val/mae (failed ones and ones that reported none excluded)."""
    scored = [t for t in trials if t.status != "failed" and t.best_val_mae is not None]
    return min(scored, key=lambda t: (t.best_val_mae, t.trial)) if scored else None


def trials_csv(trials: list[Trial], keys: list[str]) -> str:
    """The table as CSV: trial, status, best_val_mae, epochs, stopped_early, then one column per searched key."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["trial", "status", "best_val_mae", "epochs", "stopped_early", *keys])
    for t in trials:
        mae = "" if t.best_val_mae is None else f"{t.best_val_mae:.6g}"
        values = [t.values.get(k, "") for k in keys]
        writer.writerow([t.trial, t.status, mae, t.epochs, str(t.stopped_early).lower(), *values])
    return out.getvalue()


def format_trials(trials: list[Trial], keys: list[str]) -> str:
    """The table for the terminal, best trial marked with '*', and a failed trial's reason under it."""
    top = best(trials)
    header = ["", "trial", "status", "best val/mae", "epochs", *keys]
    rows = []
    for t in trials:
        mae = "-" if t.best_val_mae is None else f"{t.best_val_mae:.1f}"
        values = [_shown(t.values.get(k)) for k in keys]
        rows.append(["*" if t is top else "", t.trial, t.status, mae, str(t.epochs), *values])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines += [f"{t.trial} failed: {t.error}" for t in trials if t.status == "failed" and t.error]
    return "\n".join(lines)


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def best_config(base: dict, trial: Trial, name: str) -> str:
    """``best.yaml``: the trial's whole training config, a new run ``name`` in the base config's storage."""
    config = trial_config(base, trial.values, base["run"]["storage"], name)
    return f"# the best trial ({trial.trial}) of a sweep, val/mae {trial.best_val_mae:.1f}\n" + cfg.dump(config)
