"""Typed configuration tree: YAML in, validated dataclasses out.

The dataclass defaults below are the one source of defaults. ``python train.py`` trains them
with the four keys a search chose on December (``configs/local.yaml``); every other config
(the fleet and 8-GPU ones) starts from the defaults alone. Every key is checked before anything
runs: unknown keys and wrong types fail with the dotted key and the closest valid name, and
ranges and cross-field rules (split order, ``d_model % nhead``) are checked in :func:`validate`.
Configs cross process boundaries as plain dicts (:func:`to_dict`) and are validated again on
arrival: every way in (:func:`load`, :func:`from_dict`) validates.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import yaml

from lit_forecast.errors import ConfigError, cut, shown

NAB_NYC_TAXI_URL = "https://raw.githubusercontent.com/numenta/NAB/master/data/realKnownCause/nyc_taxi.csv"
NAB_NYC_TAXI_SHA256 = "d8fa6f7f0734bf5c8be12c52a94e20a82664c397d9dec4449156bd453d32856d"
SEED_MAX = 2**32 - 1  # Lightning's seed_everything (numpy's seeds) accepts 0 .. 2**32 - 1
TIMEOUT_MAX_S = 10**9  # far beyond any real timeout, well inside datetime.timedelta and torch's milliseconds
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "local.yaml"


@dataclass
class DataConfig:
    """Where the series comes from and how it becomes windows."""

    source: str = NAB_NYC_TAXI_URL  # URL, local path or pyarrow.fs URI of a CSV or Parquet file, or a folder of them
    sha256: str | None = NAB_NYC_TAXI_SHA256  # checked wherever the data comes from; None: record only
    cache_dir: str = "~/.cache/lit_forecast"  # downloads land here (env LIT_FORECAST_CACHE wins)
    timestamp_column: str = "timestamp"  # name of the column holding the timestamps
    value_column: str = "value"  # name of the column holding the values (passengers for the taxi data)
    series_column: str | None = None  # e.g. "series_id" for many series in long format
    freq: str = "30min"  # length of one slot: readings are folded onto this grid (must divide a day)
    aggregation: Literal["sum", "mean"] = "sum"  # how finer or irregular readings fold into a slot
    max_gap: str = "2h"  # gaps up to this long are interpolated
    long_gaps: Literal["error", "drop"] = "error"  # drop: skip windows that touch a longer gap
    # readings over 20x their series' 99th percentile: refuse, or clip to that bound
    outliers: Literal["error", "clip"] = "error"
    train_end: str = "2014-12-01"  # first timestamp that is not training data
    val_end: str = "2015-01-01"  # first timestamp that is not validation data
    test_end: str | None = None  # None: the end of the data
    input_window: int = 336  # past steps the model sees (336 half-hours = one week)
    horizon: int = 48  # future steps it forecasts (48 half-hours = one day)
    stride: int = 1  # steps between consecutive training windows
    eval_stride: int = 1  # steps between consecutive validation/test windows
    # ray: Ray Data over groups of series; auto: ray for inputs over 64 MiB
    prepare_with: Literal["auto", "local", "ray"] = "auto"
    # Validation windows kept per series: null keeps all (one series: 1,441 December windows);
    # N keeps at most N, evenly spaced over the month with a per-series phase (data.splits.thin_evenly),
    # so validation stays a bounded share of an epoch for a fleet of thousands of series.
    val_windows_per_series: int | None = None


@dataclass
class ModelConfig:
    """Shape of the seq2seq Transformer (see lit_forecast.models.transformer)."""

    d_model: int = 64  # width of every token embedding (must be divisible by nhead)
    nhead: int = 4  # attention heads per layer
    encoder_layers: int = 2  # Transformer layers over the past
    decoder_layers: int = 2  # Transformer layers over the future slots (causal)
    dim_feedforward: int = 128  # hidden width of each layer's feed-forward block
    dropout: float = 0.1  # dropout in every layer, in [0, 1)
    patch_len: int = 8  # past steps per encoder token; 1 = one token per step (tutorial)
    covariates: bool = True  # time-of-day and day-of-week embeddings
    holidays: bool = False  # with covariates: a US federal holiday embedding too
    seasonal_lag: int = 336  # decoder also sees the value this many steps earlier; 0 = off
    window_norm: bool = False  # scale each window by its own past mean and std (level shifts)
    members: int = 2  # networks trained side by side from different initial weights; forecast = their mean
    # Levels to forecast (must hold 0.5, the point forecast; trained with the pinball loss and
    # calibrated on validation, train.calibrate_quantiles). [] = one point value (train.loss).
    quantiles: list[float] = field(default_factory=lambda: [0.1, 0.5, 0.9])
    # The decoder also sees the value this many steps earlier (48 = same slot yesterday); 0 = off.
    # Chosen on December validation: val/mae 1202 against 1423 without it (docs/results.md).
    daily_lag: int = 48
    residual: bool = False  # predict the correction to the seasonal_lag value rather than the value itself


@dataclass
class TrainConfig:
    """Optimisation, per training worker."""

    max_epochs: int = 10  # passes over the training windows (~36 s each for 2 members on 2 cores)
    # Windows per worker per step: 2 workers -> 64 per optimiser step. With an elastic cluster.num_workers
    # [min, max] this is the share at max: the global batch (batch_size x max) stays the same at any
    # world size N, each worker taking global // N, so train.lr holds when the run shrinks or grows.
    batch_size: int = 32
    lr: float = 2e-3  # chosen on validation (bench/studies/ablation.py, 3 seeds): 1e-3 was worse for each
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_steps: int = 100  # optimiser steps of linear learning-rate warm-up before the cosine decay
    min_lr_ratio: float = 0.05  # cosine decays to lr * min_lr_ratio
    loss: Literal["smooth_l1", "mse", "mae"] = "smooth_l1"  # only without model.quantiles (else the pinball loss)
    grad_clip: float = 1.0  # gradient norm clipped per member; 0 = off
    sampling_max_prob: float = 0.5  # scheduled sampling: final share of own predictions fed back
    # Where the fed-back predictions come from: "teacher_forced", a parallel pass given the true
    # past (cheap; one step ahead); "rollout", the autoregressive forecast itself (the inputs
    # the decoder sees at inference, so its errors and quantiles are learnt under those).
    sampling_source: Literal["teacher_forced", "rollout"] = "teacher_forced"
    # With model.quantiles: after each validation epoch, widen (or narrow) each level at each
    # horizon step so that it holds its share of the validation actuals (models/quantiles.py,
    # QuantileCalibration); the factors travel in the checkpoint and every forecast uses them.
    calibrate_quantiles: bool = True
    # An exponential moving average of the weights, updated every optimiser step with this decay
    # (0 = off). Validation, the best-checkpoint choice and every forecast use the average, so the
    # chosen epoch hangs less on one noisy step. 0.998 spans about 500 steps: two epochs of the
    # local default (218 steps of 32 windows each). Tried on December (docs/results.md): not chosen.
    ema_decay: float = 0.0
    precision: str = "auto"  # auto: bf16-mixed on GPU, 32-true on CPU
    seed: int = 42  # seeds weights, shuffling, dropout and sampling (same seed, same run on one machine)
    limit_train_batches: int | float = 1.0  # Lightning's; shrink for smoke tests
    compile: bool = False  # torch.compile each member's training pass in the workers (GPU; the first steps compile)


@dataclass
class ClusterConfig:
    """Ray Train scaling, fault tolerance and checkpointing."""

    # Ray Train workers (DDP ranks). A number: that many, always. [min, max]: elastic; the run
    # starts once min can be placed, goes on with the workers left when a node is lost (from
    # the last checkpoint), and grows back to max when capacity returns (checked every
    # resize_check_s). The data is prepared as max training shards, shared out at each start.
    num_workers: int | list[int] = 2
    use_gpu: bool = False  # one GPU (or gpus_per_worker) per worker
    cpus_per_worker: float = 1.0  # CPUs Ray reserves for each worker
    gpus_per_worker: float = 1.0  # used only with use_gpu
    backend: Literal["gloo", "nccl"] = "gloo"  # torch.distributed backend: gloo on CPU, nccl on GPUs
    timeout_s: int = 600  # collective-operation timeout (TorchConfig)
    max_failures: int = 3  # worker-group restarts before the run fails
    checkpoint_every_n_epochs: int = 1  # epochs between checkpoints (the last epoch is always checkpointed)
    num_to_keep: int = 2  # best checkpoints kept, ranked by val/mae (Ray also keeps the latest)
    # Elastic runs: seconds between checks for capacity to grow into (Ray's elastic_resize_monitor_interval_s)
    resize_check_s: float = 60.0

    @property
    def min_workers(self) -> int:
        """The fewest workers the run trains on (``num_workers`` when it is a number)."""
        return self.num_workers[0] if isinstance(self.num_workers, list) else self.num_workers

    @property
    def max_workers(self) -> int:
        """The most workers the run trains on: also the number of training shards prepared."""
        return self.num_workers[-1] if isinstance(self.num_workers, list) else self.num_workers

    @property
    def elastic(self) -> bool:
        """True for a ``[min, max]`` range: the world size may change between (re)starts."""
        return isinstance(self.num_workers, list)


@dataclass
class RunConfig:
    """Where a run lives: <storage>/<name>."""

    storage: str = "runs"  # local folder or pyarrow.fs URI (s3://bucket/prefix)
    name: str | None = "nyc_taxi_local"  # the run folder inside storage: letters, digits, ".", "_", "-"


@dataclass
class ServeConfig:
    """Online forecasts (``python infer.py --serve``): the Ray Serve deployment and its limits."""

    host: str = "127.0.0.1"  # 0.0.0.0 to answer other machines
    port: int = 8000  # the HTTP port (infer.py --port)
    replicas: int = 1  # each loads the model once
    cpus_per_replica: float = 1.0  # also the torch threads of each replica (rounded down, at least 1)
    gpus_per_replica: float = 0.0  # a share of a GPU, e.g. 0.25; 0: CPU
    max_batch_size: int = 32  # forecasts decoded together in one call
    batch_wait_ms: float = 2.0  # how long a replica waits for a batch to fill
    max_ongoing_requests: int = 128  # per replica; above max_batch_size, or it caps every batch
    max_body_bytes: int = 1_048_576  # larger request bodies are refused with 413
    max_batch_items: int = 1024  # forecasts one POST /forecast/batch may ask for


@dataclass
class Config:
    """The whole tree; see configs/local.yaml for a commented example."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    run: RunConfig = field(default_factory=RunConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


# ---------------------------------------------------------------------------------------------
# Building from plain values


def from_dict(raw: dict[str, Any] | None, cls: type = Config, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from nested dicts, rejecting unknown keys and wrong types.

    A whole :class:`Config` is also validated (:func:`validate`); a section is type-checked only.
    """
    built = _build(raw, cls, prefix)
    return validate(built) if cls is Config else built


def _build(raw: dict[str, Any] | None, cls: type, prefix: str) -> Any:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or '<root>'}' must be a mapping, got {shown(raw, 80)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown key '{cut(str(dotted))}'{_suggest(str(key), names, prefix)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(value, hint, f"{dotted}.")
        else:
            values[key] = _coerce(value, hint, dotted)
    return cls(**values)


def _suggest(key: str, names: list[str], prefix: str) -> str:
    close = difflib.get_close_matches(key[:100], names, n=1, cutoff=0.5)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else f" (valid: {', '.join(names)})"


def _coerce(value: Any, hint: Any, dotted: str) -> Any:
    """Return ``value`` if it fits type ``hint`` (ints widen to floats), else raise."""
    origin = typing.get_origin(hint)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"'{dotted}' must be a list, got {shown(value)}")
        return [_coerce(v, typing.get_args(hint)[0], f"{dotted}[{i}]") for i, v in enumerate(value)]
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, dotted)
            except ConfigError:
                pass
        raise ConfigError(f"'{dotted}' must be {_type_name(hint)}, got {shown(value)}")
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"'{dotted}' must be one of {list(choices)}, got {shown(value)}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 1e-4 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is str and isinstance(value, (datetime.date, datetime.datetime)):  # unquoted YAML dates
        return str(value)
    if hint is int and isinstance(value, bool) or not isinstance(value, hint):
        raise ConfigError(f"'{dotted}' must be {_type_name(hint)}, got {shown(value)}")
    return value


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list of {_type_name(typing.get_args(hint)[0])}"
    return "null" if hint is type(None) else getattr(hint, "__name__", str(hint))


def to_dict(config: Config) -> dict[str, Any]:
    """Plain nested dict of primitives (safe for YAML, Ray and Lightning hyperparameters)."""
    return dataclasses.asdict(config)


def differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs between two nested dicts."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


# ---------------------------------------------------------------------------------------------
# Loading, overriding, checking


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML file (default configs/local.yaml), apply ``key=value`` overrides, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder: give a YAML file such as configs/local.yaml")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file; a config is YAML text (see configs/local.yaml)") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror or err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {cut(str(err), 600)}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: a config is a YAML mapping of sections (data:, model:, train:, cluster:, run:, serve:), "
            f"but this file holds a {type(raw).__name__}"
        )
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {shown(item)} must look like dotted.key=value, e.g. --set train.max_epochs=20")
        try:
            value = parse_yaml(text, f"--set {cut(key.strip())}") if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(
                f"--set {shown(item)}: the value is not valid YAML ({cut(str(err).splitlines()[0])}); quote it, "
                f"e.g. --set '{cut(key.strip())}=\"...\"'"
            ) from None
        try:
            _set_dotted(raw, key.strip(), value)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    try:
        return from_dict(raw)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


# A config holds about a hundred values; this many, counted with every alias expanded, is no config.
YAML_MAX_NODES = 100_000


def parse_yaml(text: str, where: str) -> Any:
    """YAML text as plain values, refusing duplicate keys (with both lines) and alias bombs (before building them).

    ``yaml.safe_load`` keeps the last of two equal keys without a word, and builds whatever a few
    aliases expand to; here the composed node tree is checked first: each mapping's keys, and
    its size with every alias expanded (counted per node once, so the check itself is cheap).
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, where)
        return loader.construct_document(node)
    except ConfigError:
        raise
    except ValueError as err:  # int('1' * 5000): past Python's digit limit
        raise ConfigError(f"{where}: {cut(str(err))}") from None
    except RecursionError:
        raise ConfigError(f"{where}: values nested too deeply for a config") from None
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node, where: str) -> None:
    sizes: dict[int, int] = {}  # id(node) -> node count with aliases expanded
    order: list[yaml.Node] = []
    stack, seen = [root], set()
    while stack:  # every distinct node once, parents before children
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        if isinstance(node, yaml.MappingNode):
            _check_keys(node, where)
            stack.extend(n for pair in node.value for n in pair)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    for node in reversed(order):  # children before parents (an alias cycle counts as a leaf once)
        children = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else (node.value if isinstance(node, yaml.SequenceNode) else [])
        )
        sizes[id(node)] = 1 + sum(sizes.get(id(n), 1) for n in children)
        if sizes[id(node)] > YAML_MAX_NODES:
            raise ConfigError(
                f"{where}: line {node.start_mark.line + 1}: this value expands to more than "
                f"{YAML_MAX_NODES:,} values (aliases repeated inside aliases?); a config holds about "
                "a hundred"
            )


def _check_keys(node: yaml.MappingNode, where: str) -> None:
    first: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) in first:
            raise ConfigError(
                f"{where}: key {shown(key.value)} appears twice, at line {first[key.tag, key.value]} and "
                f"line {line}: keep one (YAML would silently keep the last)"
            )
        first[key.tag, key.value] = line


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    node, parts = raw, dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is not a section")
    node[parts[-1]] = value


def validate(config: Config) -> Config:
    """Cross-field checks that single types cannot express; returns ``config``."""
    d, m, t, c = config.data, config.model, config.train, config.cluster

    def need(ok: bool, message: str) -> None:
        if not ok:
            raise ConfigError(message)

    for section in dataclasses.fields(config):  # no inf or nan anywhere: every range below assumes it
        for f in dataclasses.fields(getattr(config, section.name)):
            value = getattr(getattr(config, section.name), f.name)
            if isinstance(value, float):
                need(math.isfinite(value), f"'{section.name}.{f.name}' must be a finite number, got {value}")
    for key in ("input_window", "horizon", "stride", "eval_stride"):
        need(getattr(d, key) >= 1, f"'data.{key}' must be >= 1, got {getattr(d, key)}")
    need(
        d.val_windows_per_series is None or d.val_windows_per_series >= 1,
        f"'data.val_windows_per_series' must be >= 1 or null (all windows), got {d.val_windows_per_series}",
    )
    try:
        step = pd.Timedelta(d.freq)
        max_gap = pd.Timedelta(d.max_gap)
    except (ValueError, OverflowError) as err:
        raise ConfigError(f"'data.freq'/'data.max_gap' must be durations like '30min': {cut(str(err))}") from None
    need(step > pd.Timedelta(0), f"'data.freq' must be positive, got {shown(d.freq)}")
    need(
        pd.Timedelta("1D") % step == pd.Timedelta(0),
        f"'data.freq' must divide a day (calendar slots), got {shown(d.freq)}",
    )
    # Calendar embeddings hold one row per slot of the day: a second is already 86,400 rows.
    need(
        step >= pd.Timedelta("1min"),
        f"'data.freq' must be at least 1min (one calendar slot per step of the day), got {shown(d.freq)}",
    )
    need(max_gap >= pd.Timedelta(0), f"'data.max_gap' must be >= 0, got {shown(d.max_gap)}")
    bounds = {}
    for key in ("train_end", "val_end", "test_end"):
        text = getattr(d, key)
        if text is None:
            continue
        try:
            bounds[key] = pd.Timestamp(text)
        except pd.errors.OutOfBoundsDatetime:
            raise ConfigError(
                f"'data.{key}' {shown(text)} lies outside the dates pandas can hold "
                f"({pd.Timestamp.min:%Y-%m-%d} to {pd.Timestamp.max:%Y-%m-%d})"
            ) from None
        except (ValueError, OverflowError):
            raise ConfigError(f"'data.{key}' is not a timestamp: {shown(text)}") from None
        need(not pd.isna(bounds[key]), f"'data.{key}' is not a timestamp: {shown(text)}")
        need(
            pd.Timestamp.min <= bounds[key] <= pd.Timestamp.max,
            f"'data.{key}' {shown(text)} lies outside the dates pandas can hold "
            f"({pd.Timestamp.min:%Y-%m-%d} to {pd.Timestamp.max:%Y-%m-%d})",
        )
    ordered = list(bounds.items())
    for (k1, v1), (k2, v2) in zip(ordered, ordered[1:]):
        need(v1 < v2, f"split boundaries out of order: data.{k1}={v1} must be before data.{k2}={v2}")

    for key in ("d_model", "nhead", "dim_feedforward", "members"):
        need(getattr(m, key) >= 1, f"'model.{key}' must be >= 1, got {getattr(m, key)}")
    need(m.d_model % m.nhead == 0, f"'model.d_model' ({m.d_model}) must be divisible by 'model.nhead' ({m.nhead})")
    need(
        m.encoder_layers >= 1 and m.decoder_layers >= 1,
        "'model.encoder_layers' and 'model.decoder_layers' must be >= 1",
    )
    need(0.0 <= m.dropout < 1.0, f"'model.dropout' must be in [0, 1), got {m.dropout}")
    need(m.patch_len >= 1, f"'model.patch_len' must be >= 1, got {m.patch_len}")
    need(
        d.input_window % m.patch_len == 0,
        f"'data.input_window' ({d.input_window}) must be a multiple of 'model.patch_len' ({m.patch_len})",
    )
    for key in ("seasonal_lag", "daily_lag"):
        lag = getattr(m, key)
        if lag:
            need(
                d.horizon <= lag <= d.input_window,
                f"'model.{key}' ({lag}) must lie between 'data.horizon' ({d.horizon}) "
                f"and 'data.input_window' ({d.input_window}), or be 0",
            )
    need(
        not m.residual or m.seasonal_lag > 0,
        "'model.residual: true' needs 'model.seasonal_lag' (the value it corrects)",
    )
    if m.quantiles:
        need(
            all(0.0 < q < 1.0 for q in m.quantiles) and m.quantiles == sorted(set(m.quantiles)),
            f"'model.quantiles' must be increasing levels in (0, 1), got {shown(m.quantiles)}",
        )
        need(
            0.5 in m.quantiles,
            f"'model.quantiles' must include 0.5 (the median is the point forecast), got {shown(m.quantiles)}",
        )

    need(t.max_epochs >= 1 and t.batch_size >= 1, "'train.max_epochs' and 'train.batch_size' must be >= 1")
    need(t.lr > 0, f"'train.lr' must be positive, got {t.lr}")
    need(t.weight_decay >= 0, f"'train.weight_decay' must be >= 0, got {t.weight_decay}")
    need(t.grad_clip >= 0, f"'train.grad_clip' must be >= 0 (0 turns clipping off), got {t.grad_clip}")
    need(t.warmup_steps >= 0, f"'train.warmup_steps' must be >= 0, got {t.warmup_steps}")
    need(0.0 <= t.min_lr_ratio <= 1.0, f"'train.min_lr_ratio' must be in [0, 1], got {t.min_lr_ratio}")
    need(
        t.limit_train_batches > 0 and (isinstance(t.limit_train_batches, int) or t.limit_train_batches <= 1.0),
        "'train.limit_train_batches' must be a share in (0, 1] or a whole number of batches >= 1, "
        f"got {t.limit_train_batches}",
    )
    need(0.0 <= t.ema_decay < 1.0, f"'train.ema_decay' must be in [0, 1) (0 turns the average off), got {t.ema_decay}")
    need(0.0 <= t.sampling_max_prob <= 1.0, f"'train.sampling_max_prob' must be in [0, 1], got {t.sampling_max_prob}")
    need(
        0 <= t.seed <= SEED_MAX,
        f"'train.seed' must be in [0, {SEED_MAX}] (what Lightning's seed_everything and "
        f"numpy accept), got {shown(t.seed)}",
    )
    need(
        t.precision in ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"),
        f"'train.precision' must be auto, 32-true, bf16-mixed, 16-mixed or bf16-true, got {shown(t.precision)}",
    )

    validate_workers(c.num_workers)
    need(c.resize_check_s >= 0, f"'cluster.resize_check_s' must be >= 0 seconds, got {c.resize_check_s}")
    need(c.max_failures >= 0, f"'cluster.max_failures' must be >= 0, got {c.max_failures}")
    for key in ("cpus_per_worker", "gpus_per_worker"):  # Ray refuses fractions finer than 0.0001
        need(
            getattr(c, key) >= 0.0001,
            f"'cluster.{key}' must be positive and at least 0.0001 (Ray's finest fraction), got {getattr(c, key)}",
        )
    need(
        0 < c.timeout_s <= TIMEOUT_MAX_S,
        f"'cluster.timeout_s' must be in (0, {TIMEOUT_MAX_S:,}] seconds (a timedelta torch can hold), "
        f"got {c.timeout_s}",
    )
    need(c.checkpoint_every_n_epochs >= 1, "'cluster.checkpoint_every_n_epochs' must be >= 1")
    need(c.num_to_keep >= 1, f"'cluster.num_to_keep' must be >= 1, got {c.num_to_keep}")
    need(not (c.backend == "nccl" and not c.use_gpu), "'cluster.backend: nccl' needs 'cluster.use_gpu: true'")
    validate_serve(config.serve)
    return config


def validate_workers(num_workers: int | list[int]) -> None:
    """``cluster.num_workers``: a number >= 1, or ``[min, max]`` with 1 <= min <= max."""
    if not isinstance(num_workers, list):
        if num_workers < 1:
            raise ConfigError(f"'cluster.num_workers' must be >= 1, got {num_workers}")
        return
    example = "a number such as 8, or [min, max] such as [4, 8] for an elastic run"
    if len(num_workers) != 2:
        raise ConfigError(
            f"'cluster.num_workers' must be {example}; got a list of {len(num_workers)}: {shown(num_workers)}"
        )
    low, high = num_workers
    if low < 1:
        raise ConfigError(f"'cluster.num_workers' [min, max] needs min >= 1, got {shown(num_workers)}")
    if low > high:
        raise ConfigError(
            f"'cluster.num_workers' [min, max] needs min <= max, got {shown(num_workers)} "
            f"(did you mean [{high}, {low}]?)"
        )


def validate_serve(s: ServeConfig) -> ServeConfig:
    """Ranges of the ``serve`` section (also applied after infer.py's --serve flags); returns ``s``."""
    checks = (
        (1 <= s.port <= 65535, f"'serve.port' must be a port number 1..65535, got {s.port}"),
        (bool(s.host.strip()), "'serve.host' is empty: give an address such as 127.0.0.1 or 0.0.0.0"),
        (s.replicas >= 1, f"'serve.replicas' must be >= 1, got {s.replicas}"),
        (
            math.isfinite(s.cpus_per_replica) and s.cpus_per_replica > 0,
            f"'serve.cpus_per_replica' must be a positive number, got {s.cpus_per_replica}",
        ),
        (
            math.isfinite(s.gpus_per_replica) and s.gpus_per_replica >= 0,
            f"'serve.gpus_per_replica' must be 0 or a positive share of a GPU, got {s.gpus_per_replica}",
        ),
        (s.max_batch_size >= 1, f"'serve.max_batch_size' must be >= 1, got {s.max_batch_size}"),
        (
            math.isfinite(s.batch_wait_ms) and s.batch_wait_ms >= 0,
            f"'serve.batch_wait_ms' must be >= 0, got {s.batch_wait_ms}",
        ),
        (
            s.max_ongoing_requests > s.max_batch_size,
            (
                f"'serve.max_ongoing_requests' ({s.max_ongoing_requests}) must be above 'serve.max_batch_size' "
                f"({s.max_batch_size}): a replica takes at most that many requests at once, so it caps every batch"
            ),
        ),
        (s.max_body_bytes >= 1024, f"'serve.max_body_bytes' must be >= 1024, got {s.max_body_bytes}"),
        (s.max_batch_items >= 1, f"'serve.max_batch_items' must be >= 1, got {s.max_batch_items}"),
    )
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return s


def dump(config: Config) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)
