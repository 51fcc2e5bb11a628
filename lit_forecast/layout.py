"""Where things live in a run folder, and how to find its checkpoints (no training, no Ray).

A run is one folder, ``<storage>/<name>``, that holds its whole record::

    config.yaml              the resolved config (once a checkpoint exists, a rerun with another config is refused)
    data/                    the Parquet shards and manifest it trained on
    tensorboard/             event files written by rank 0
    checkpoint_*/            Ray Train checkpoints (checkpoint.ckpt inside)
    summary.json             written when training finishes: best checkpoint and its metrics
    forecasts/               what infer.py writes by default
    run.lock                 held by the driver working on the run (see training/run_lock.py)

Training writes this layout and inference reads it; both import it from here. Paths stored
inside a run folder (summary.json) are relative to it, so a copied or moved folder is whole:
it reads its own checkpoints and infer.py writes into it, never into the original.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pyarrow.fs as pafs
import yaml

from lit_forecast import storage
from lit_forecast.config import Config, from_dict
from lit_forecast.errors import CheckpointError, ConfigError, RunError, StorageError

log = logging.getLogger(__name__)

CONFIG_FILE, SUMMARY_FILE = "config.yaml", "summary.json"
CHECKPOINT_FILE = "checkpoint.ckpt"  # inside each checkpoint_*/ (Ray's RayTrainReportCallback.CHECKPOINT_NAME)
CHECKPOINT_PREFIX = "checkpoint_"
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's record of reported checkpoints
DIVERGED_FILE = "diverged.json"  # written by rank 0 when the training loss stopped being finite
LOCK_FILE = "run.lock"

# A run name is one path component, so <storage>/<name> can never leave <storage>: no '/', no
# '.' or '..', no URI, nothing hidden, no spaces or control characters.
RUN_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RUN_NAME_MAX = 100
RUN_NAME_RULE = (
    f"1 to {RUN_NAME_MAX} letters, digits, '.', '_' or '-', starting with a letter or digit "
    "(one folder name inside the storage folder, e.g. taxi-2024.v2)"
)


def check_run_name(name: object) -> str:
    """``name`` if it is a safe run name, else a ConfigError stating the rule."""
    if name is None:
        raise ConfigError("'run.name' is not set: pass --name or set run.name in the config")
    if not isinstance(name, str) or len(name) > RUN_NAME_MAX or not RUN_NAME_PATTERN.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 120 else repr(name)[:117] + "..."
        raise ConfigError(f"run name {shown} is not allowed: a run name (--name, run.name) must be {RUN_NAME_RULE}")
    return name


def check_storage(location: str, what: str = "run.storage (--storage)") -> str:
    """``location`` made absolute, if it is a folder (or nothing yet) on a filesystem pyarrow knows."""
    if not isinstance(location, str) or not location.strip():
        raise ConfigError(f"{what} is empty: give a folder or a URI such as s3://bucket/prefix")
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/(?!/)", location):  # s3:/bucket: a URI with a slash missing
        raise ConfigError(f"{what} {location!r} looks like a URI with a '/' missing (scheme://...)")
    if storage.is_uri(location) and not location.split("://", 1)[1].strip("/"):
        raise ConfigError(f"{what} {location!r} cannot be opened: it names no bucket or folder (e.g. s3://bucket/runs)")
    try:
        fs, path = storage.resolve(location)
    except StorageError as err:
        raise ConfigError(f"{what} {location!r} cannot be opened: {err}") from None
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise ConfigError(
            f"{what} {location} is a file, not a folder: runs live in folders <storage>/<name>; "
            "give a folder (it is created if missing)"
        )
    if not storage.is_uri(location):  # a folder cannot be created below a file
        for parent in Path(storage.absolute(location)).parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ConfigError(f"{what} {location}: {parent} is a file, so no folder can be created below it")
                break
    return storage.absolute(location)


def run_dir(config: Config) -> str:
    """``<storage>/<name>`` as an absolute path or URI (the name is checked to stay inside storage)."""
    name = check_run_name(config.run.name)
    return storage.join(storage.absolute(config.run.storage), name)


def data_dir(run: str) -> str:
    """The run's prepared dataset."""
    return storage.join(run, "data")


def tensorboard_dir(run: str) -> str:
    """Where rank 0 writes TensorBoard events."""
    return storage.join(run, "tensorboard")


def forecasts_dir(run: str) -> str:
    """Where infer.py writes forecasts of the run's checkpoints by default."""
    return storage.join(run, "forecasts")


def read_config(run: str) -> Config:
    """The config a run was started with; a RunError naming the file if it cannot be read."""
    path = storage.join(run, CONFIG_FILE)
    try:
        raw = yaml.safe_load(storage.read_text(path))
        return from_dict(raw if raw is not None else {})
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as err:
        raise RunError(
            f"{path} is not a readable run config ({str(err).splitlines()[0]}): it is written when the run starts; "
            "restore it, or use --name NEW for a new run"
        ) from None


def has_checkpoint(run: str) -> bool:
    """True once Ray Train has written a checkpoint into the run folder."""
    return any(name.startswith(CHECKPOINT_PREFIX) or name == RAY_SNAPSHOT_FILE for name in storage.list_dir(run))


def read_summary(run: str) -> dict:
    """summary.json with its paths resolved against ``run`` (relative ones, and the absolute
    ones older runs wrote, which are re-rooted here so a copied run never reads its original)."""
    path = storage.join(run, SUMMARY_FILE)
    try:
        summary = storage.read_json(path)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        summary = err
    if not isinstance(summary, dict):
        why = (
            str(summary).splitlines()[0]
            if isinstance(summary, Exception)
            else f"a JSON {type(summary).__name__}, not an object"
        )
        raise RunError(
            f"{path} is not a readable run summary ({why}): training writes it when the run finishes; "
            "remove it and rerun the same train.py command to write it again, or pass --checkpoint PATH"
        )
    resolved = dict(summary, run_dir=run)
    for key in ("best_checkpoint", "latest_checkpoint", "tensorboard"):
        if isinstance(summary.get(key), str) and summary[key]:
            resolved[key] = _in_run(run, summary[key], summary.get("run_dir"))
    return resolved


def relative_to_run(run: str, location: str) -> str:
    """``location`` as a path relative to the run folder ``run`` (it must lie inside it)."""
    root = storage.absolute(run).rstrip("/") + "/"
    location = storage.absolute(location)
    if not location.startswith(root):
        raise ValueError(f"{location} is not inside the run folder {run}")
    return location[len(root) :]


def _in_run(run: str, value: str, written_in: str | None) -> str:
    if not (value.startswith("/") or "://" in value):  # relative: how runs write it now
        return storage.join(run, value)
    # An older absolute path: take the part below the run folder it was written in.
    if isinstance(written_in, str) and value.startswith(written_in.rstrip("/") + "/"):
        return storage.join(run, value[len(written_in.rstrip("/")) + 1 :])
    parts = value.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2].startswith(CHECKPOINT_PREFIX):
        return storage.join(run, *parts[-2:])
    if parts[-1] == "tensorboard":
        return tensorboard_dir(run)
    return value


def checkpoint_file(location: str) -> str:
    """The .ckpt of a Ray checkpoint folder, or ``location`` itself if it is a file."""
    location = storage.absolute(location)
    if not storage.exists(location):
        raise CheckpointError(f"checkpoint not found: {location}")
    fs, path = storage.resolve(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        inner = storage.join(location, CHECKPOINT_FILE)
        if not storage.exists(inner):
            hint = " (a run folder? pass it with --run)" if storage.exists(storage.join(location, CONFIG_FILE)) else ""
            raise CheckpointError(f"{location} is a folder without {CHECKPOINT_FILE}: not a Ray Train checkpoint{hint}")
        fs, path = storage.resolve(inner)
        if fs.get_file_info(path).type != pafs.FileType.File:
            raise CheckpointError(f"{inner} is not a file: not a Ray Train checkpoint")
        return inner
    return location


def checkpoint_folders(run: str) -> list[str]:
    """Names of the run's ``checkpoint_*`` folders, oldest first (Ray names them by time)."""
    fs, path = storage.resolve(run)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path))
    return sorted(
        i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX)
    )


def latest_run(storage_root: str = "runs") -> str:
    """The run folder under ``storage_root`` whose training finished last (it has summary.json)."""
    root = check_storage(storage_root, "--storage")
    fs, path = storage.resolve(root)
    finished = []
    for name in storage.list_dir(root):
        info = fs.get_file_info(f"{path}/{name}/{SUMMARY_FILE}")
        if info.type == pafs.FileType.File:
            finished.append((info.mtime, storage.join(root, name)))
    if not finished:
        raise CheckpointError(
            f"no finished run in {root} (no <run>/{SUMMARY_FILE}): train one with `python train.py`, "
            f"or pass --run DIR or --checkpoint PATH"
        )
    return max(finished)[1]


def best_checkpoint(run: str) -> str:
    """The best checkpoint of a run folder: from summary.json, else its newest checkpoint_* folder."""
    run = storage.absolute(run)
    if not storage.exists(run):
        raise CheckpointError(f"run folder not found: {run}")
    fs, path = storage.resolve(run)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise CheckpointError(f"--run {run} is a file, not a run folder: pass a .ckpt file with --checkpoint")
    if storage.exists(storage.join(run, SUMMARY_FILE)):
        best = read_summary(run).get("best_checkpoint")
        if best and storage.exists(best):
            return best
        if best:
            log.warning("summary.json names %s, which does not exist; using the newest checkpoint instead", best)
    # Newest first, and only folders holding the file: an upload cut short (on S3, a folder
    # marker whose object never completed) leaves a checkpoint_* folder without it.
    complete = next(
        (
            name
            for name in reversed(checkpoint_folders(run))
            if storage.exists(storage.join(run, name, CHECKPOINT_FILE))
        ),
        None,
    )
    if complete is None:
        raise CheckpointError(
            f"run {run} holds no {CHECKPOINT_PREFIX}*/{CHECKPOINT_FILE} (has training written a checkpoint yet?)"
        )
    log.warning("run %s has not finished (no usable %s): using its newest checkpoint %s", run, SUMMARY_FILE, complete)
    return storage.join(run, complete, CHECKPOINT_FILE)


def run_of(checkpoint: str) -> str | None:
    """The run folder holding ``<run>/checkpoint_*/checkpoint.ckpt``, if it is one."""
    parts = storage.absolute(checkpoint).rstrip("/").split("/")
    if len(parts) >= 3 and parts[-2].startswith(CHECKPOINT_PREFIX):
        run = "/".join(parts[:-2])
        if storage.exists(storage.join(run, CONFIG_FILE)):
            return run
    return None
