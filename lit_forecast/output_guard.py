"""Refuse, before anything runs, an output that would replace or damage something a user gave us.

The scripts name their outputs (``--output``, ``--plot`` and the files written next to them) and
their inputs (the data, the checkpoint, the files of a run folder). :func:`check_outputs` refuses

- an output that is an input file, or any file of an input folder (symlinks resolved: a link to
  the input is the input);
- an output anywhere inside a sealed folder (a run's prepared ``data/`` or a checkpoint folder, a
  data folder whose next read would take the output for data), new file or not;
- an existing file without ``overwrite``, and a file its owner made read-only even with it;
- an output in a folder this user may not write, and two outputs on one path.

Local paths are compared after resolving links; URIs as written. Nothing here reads or writes data.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from lit_forecast import storage
from lit_forecast.errors import ConfigError

# Files infer.py writes next to its --output: (what, suffix replacing the output's extension).
SIDECARS = (
    ("plot", ".png"),
    ("backtest table", ".backtest.json"),
    ("per-series table", ".zones.csv"),
    ("fleet plot", ".fleet.png"),
)


def sibling(output: str, suffix: str) -> str:
    """``output`` with its extension replaced by ``suffix``: forecasts.csv -> forecasts.backtest.json."""
    base = output.rsplit(".", 1)[0] if "." in output.rsplit("/", 1)[-1] else output
    return base + suffix


def outputs_of(output: str | None, plot: str | None) -> list[tuple[str, str]]:
    """(what, path) of every file infer.py may write for ``--output``/``--plot`` (those not given: none)."""
    found = []
    if output is not None:
        found.append(("--output", output))
        found += [
            (f"the {what} written next to --output {output}:", sibling(output, suffix))
            for what, suffix in SIDECARS
            if not (what == "plot" and plot is not None)
        ]
    if plot is not None:
        found.append(("--plot", plot))
    return found


def check_outputs(
    outputs: Sequence[tuple[str, str]],
    inputs: Sequence[tuple[str, str]],
    sealed: Sequence[tuple[str, str]] = (),
    overwrite: bool = False,
) -> None:
    """Raise a ConfigError naming both paths if any output would replace or damage an input.

    ``outputs``, ``inputs`` and ``sealed`` are (what, location) pairs: ``what`` names the thing
    for the message (``--output``, ``--data``, ``the prepared data of run runs/x``). An input may
    be a file or a folder (every file below it counts); a sealed folder takes no new file either.
    """
    seen: dict[str, str] = {}
    for what, location in outputs:
        out = _canonical(location)
        if out in seen:
            raise ConfigError(f"{what} {location} and {seen[out]} are the same file: give them different names")
        seen[out] = what
        for sealed_what, folder in sealed:
            if _inside(out, _canonical(folder)):
                raise ConfigError(
                    f"{what} {location} lies inside {sealed_what} {folder}, which outputs must never "
                    "touch: write the output somewhere else"
                )
        for input_what, input_location in inputs:
            source = _canonical(input_location)
            if out == source or _inside(out, source):
                raise ConfigError(
                    f"{what} {location} would replace the input {input_what} {input_location}: "
                    "write the output somewhere else"
                )
        if not storage.is_uri(location):
            _check_local(what, location, overwrite)
        elif not overwrite and storage.exists(location):
            raise ConfigError(f"{what} {location} already exists: pass --overwrite to replace it, or choose a new name")


def _check_local(what: str, location: str, overwrite: bool) -> None:
    path = Path(storage.absolute(location))
    if path.is_symlink() or path.exists():
        if not path.exists():
            raise ConfigError(
                f"{what} {location} is a link to {os.readlink(path)}, which does not exist: "
                "remove the link or choose a new name"
            )
        if not overwrite:
            raise ConfigError(f"{what} {location} already exists: pass --overwrite to replace it, or choose a new name")
        if path.is_file() and not path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
            raise ConfigError(
                f"{what} {location} is read-only: it is never replaced, even with --overwrite; "
                "choose a new name (or make it writable yourself)"
            )
    parent = next((p for p in Path(os.path.realpath(path)).parents if p.exists()), None)
    if parent is not None and parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{what} {location}: this user may not write in the folder {parent} (permission denied): "
            "choose another folder"
        )


def _canonical(location: str) -> str:
    """A local path absolute with its links resolved (as far as it exists); a URI as written, without a trailing '/'."""
    if storage.is_uri(location):
        return location.rstrip("/")
    return os.path.realpath(storage.absolute(location))  # never raises, even on a link loop


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")
