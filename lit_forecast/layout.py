"""Where things live in a run folder, and how to find its checkpoints (no training, no Ray).

A run is one folder, ``<storage>/<name>``, that holds its whole record::

    config.yaml              the resolved config (a rerun with another config is refused)
    data/                    the Parquet shards and manifest it trained on
    tensorboard/             event files written by rank 0
    checkpoint_*/            Ray Train checkpoints (checkpoint.ckpt inside)
    summary.json             written when training finishes: best checkpoint and its metrics
    forecasts/               what infer.py writes by default

Training writes this layout and inference reads it; both import it from here.
"""

from __future__ import annotations

import logging

import pyarrow.fs as pafs
import yaml

from lit_forecast import storage
from lit_forecast.config import Config, from_dict
from lit_forecast.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

CONFIG_FILE, SUMMARY_FILE = "config.yaml", "summary.json"
CHECKPOINT_FILE = "checkpoint.ckpt"  # inside each checkpoint_*/ (Ray's RayTrainReportCallback.CHECKPOINT_NAME)
CHECKPOINT_PREFIX = "checkpoint_"
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's record of reported checkpoints


def run_dir(config: Config) -> str:
    """``<storage>/<name>`` as an absolute path or URI."""
    if not config.run.name:
        raise ConfigError("'run.name' is not set: pass --name or set run.name in the config")
    return storage.join(storage.absolute(config.run.storage), config.run.name)


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
    """The config a run was started with."""
    return from_dict(yaml.safe_load(storage.read_text(storage.join(run, CONFIG_FILE))))


def checkpoint_file(location: str) -> str:
    """The .ckpt of a Ray checkpoint folder, or ``location`` itself if it is a file."""
    location = storage.absolute(location)
    if not storage.exists(location):
        raise CheckpointError(f"checkpoint not found: {location}")
    fs, path = storage.resolve(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        inner = storage.join(location, CHECKPOINT_FILE)
        if not storage.exists(inner):
            raise CheckpointError(f"{location} is a folder without {CHECKPOINT_FILE}: not a Ray Train checkpoint")
        return inner
    return location


def checkpoint_folders(run: str) -> list[str]:
    """Names of the run's ``checkpoint_*`` folders, oldest first (Ray names them by time)."""
    fs, path = storage.resolve(run)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX))


def latest_run(storage_root: str = "runs") -> str:
    """The run folder under ``storage_root`` whose training finished last (it has summary.json)."""
    root = storage.absolute(storage_root)
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
    summary_path = storage.join(run, SUMMARY_FILE)
    if storage.exists(summary_path):
        best = storage.read_json(summary_path).get("best_checkpoint")
        if best and storage.exists(best):
            return best
        if best:  # the run folder moved since training: look for the same checkpoint inside it
            moved = storage.join(run, *best.rstrip("/").split("/")[-2:])
            if storage.exists(moved):
                return moved
            log.warning("summary.json names %s, which does not exist; using the newest checkpoint instead", best)
    folders = checkpoint_folders(run)  # not Ray's checkpoint_manager_snapshot.json beside them
    if not folders:
        raise CheckpointError(f"run {run} holds no {CHECKPOINT_PREFIX}* folder (has training written a checkpoint yet?)")
    log.warning("run %s has not finished (no usable %s): using its newest checkpoint %s", run, SUMMARY_FILE, folders[-1])
    return storage.join(run, folders[-1], CHECKPOINT_FILE)


def run_of(checkpoint: str) -> str | None:
    """The run folder holding ``<run>/checkpoint_*/checkpoint.ckpt``, if it is one."""
    parts = storage.absolute(checkpoint).rstrip("/").split("/")
    if len(parts) >= 3 and parts[-2].startswith(CHECKPOINT_PREFIX):
        run = "/".join(parts[:-2])
        if storage.exists(storage.join(run, CONFIG_FILE)):
            return run
    return None
