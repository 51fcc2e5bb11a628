"""Find and load a trained checkpoint without Ray: a run folder, a Ray checkpoint folder or a .ckpt.

A checkpoint is self-sufficient (see :mod:`lit_forecast.models.module`): its hyperparameters
hold the model shape, the window and the per-series training statistics, and checkpoints
written by Ray Train also hold the full resolved config under ``lit_forecast_config``.
"""

from __future__ import annotations

import io
import logging
import pickle
from dataclasses import dataclass

import pyarrow.fs as pafs
import torch

from lit_forecast import storage
from lit_forecast.config import Config, ConfigError, DataConfig, from_dict, validate
from lit_forecast.models.module import ForecastModule
from lit_forecast.training.runs import CHECKPOINT_FILE, CONFIG_FILE, SUMMARY_FILE  # the run folder's layout

log = logging.getLogger(__name__)



class CheckpointError(ValueError):
    """A run or checkpoint cannot be found, read or used as asked; the message names it."""


class CheckpointReadError(CheckpointError, OSError):
    """Reading the checkpoint's bytes failed (perhaps for a moment: remote storage); worth a retry."""


@dataclass
class LoadedCheckpoint:
    """A model ready to forecast, with what it was trained on."""

    module: ForecastModule  # in eval mode, on ``device``
    config: Config  # the training config (or a default one with the checkpoint's window)
    path: str  # the .ckpt it came from
    device: torch.device

    @property
    def window(self) -> dict:
        """input_window, horizon, freq, slots_per_day."""
        return self.module.hparams["window"]

    @property
    def series_stats(self) -> dict[str, dict]:
        """{series_id: {"mean": .., "std": ..}} training statistics (passengers)."""
        return self.module.hparams["series"]


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
    # Newest first, and only folders holding the file: an upload cut short (on S3, a folder
    # marker whose object never completed) leaves a checkpoint_* folder without it.
    folders = [name for name in reversed(storage.list_dir(run)) if name.startswith("checkpoint_")]
    complete = next((name for name in folders if storage.exists(storage.join(run, name, CHECKPOINT_FILE))), None)
    if complete is None:
        raise CheckpointError(f"run {run} holds no checkpoint_*/{CHECKPOINT_FILE} (has training written a checkpoint yet?)")
    log.warning("run %s has not finished (no usable %s): using its newest checkpoint %s", run, SUMMARY_FILE, complete)
    return storage.join(run, complete, CHECKPOINT_FILE)


def run_of(checkpoint: str) -> str | None:
    """The run folder holding ``<run>/checkpoint_*/checkpoint.ckpt``, if it is one."""
    parts = storage.absolute(checkpoint).rstrip("/").split("/")
    if len(parts) >= 3 and parts[-2].startswith("checkpoint_"):
        run = "/".join(parts[:-2])
        if storage.exists(storage.join(run, CONFIG_FILE)):
            return run
    return None


def load_checkpoint(source: str | bytes, device: str | torch.device = "cpu", horizon: int | None = None, name: str | None = None) -> LoadedCheckpoint:
    """Rebuild the model from a checkpoint (a path, a Ray checkpoint folder, or its bytes).

    ``horizon``: the number of steps the caller will ask for; a checkpoint trained for another
    horizon is refused. ``name`` labels ``bytes`` in error messages.
    """
    device = torch.device(device)
    if isinstance(source, bytes):
        path, blob = name or "<checkpoint bytes>", source
    else:
        path = checkpoint_file(source)
        try:
            blob = storage.read_bytes(path)
        except OSError as err:
            raise CheckpointReadError(f"cannot read checkpoint {path}: {err}") from None
    try:
        raw = torch.load(io.BytesIO(blob), map_location=device, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {str(err).splitlines()[0]}") from None
    hparams = raw.get("hyper_parameters") if isinstance(raw, dict) else None
    if not hparams or not {"model", "window", "train", "series"} <= set(hparams) or "state_dict" not in raw:
        raise CheckpointError(f"{path} is not a lit_forecast checkpoint (no model/window/series hyperparameters or weights)")
    window = hparams["window"]
    if horizon is not None and horizon != window["horizon"]:
        raise CheckpointError(
            f"{path} forecasts {window['horizon']} steps, but {horizon} were asked: "
            f"use a checkpoint trained with data.horizon={horizon}, or ask for {window['horizon']}"
        )
    try:
        module = ForecastModule(hparams["model"], window, hparams["train"], hparams["series"])
        module.load_state_dict(raw["state_dict"])
    except (RuntimeError, TypeError, KeyError) as err:
        raise CheckpointError(f"{path} does not fit this version of the model: {str(err).splitlines()[0]}") from None
    module.to(device).eval()
    return LoadedCheckpoint(module, _config(raw, hparams, path), path, device)


def _config(raw: dict, hparams: dict, path: str) -> Config:
    """The checkpoint's training config; without one, defaults with the checkpoint's window and model."""
    window = hparams["window"]
    saved = raw.get("lit_forecast_config")
    if saved:
        try:
            config = validate(from_dict(saved))
        except ConfigError as err:
            raise CheckpointError(f"{path}: the config stored in the checkpoint is not valid here: {err}") from None
        d = config.data
        if (d.input_window, d.horizon, d.freq) != (window["input_window"], window["horizon"], window["freq"]):
            raise CheckpointError(
                f"{path}: stored config (input_window {d.input_window}, horizon {d.horizon}, freq {d.freq}) "
                f"disagrees with the model's window {window}"
            )
        return config
    log.info("%s holds no lit_forecast_config: using default data settings with its window", path)
    config = Config(data=DataConfig(input_window=window["input_window"], horizon=window["horizon"], freq=window["freq"]))
    try:
        config.model = from_dict(hparams["model"], type(config.model), "model.")
    except ConfigError:
        pass  # only the data settings are needed for inference; the module holds its own shape
    return config
