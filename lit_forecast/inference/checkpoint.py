"""Load a trained checkpoint without Ray: a Ray checkpoint folder, a .ckpt, or its bytes.

A checkpoint is self-sufficient (see :mod:`lit_forecast.models.factory`): its hyperparameters
hold the model shape, the window and the per-series training statistics, and checkpoints
written by Ray Train also hold the full resolved config under ``lit_forecast_config``. The
model is rebuilt as the plain :class:`~lit_forecast.models.ensemble.ForecastModel`: no Lightning.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass

import torch

from lit_forecast import storage
from lit_forecast.config import Config, DataConfig, from_dict
from lit_forecast.errors import CheckpointError, CheckpointReadError, ConfigError
from lit_forecast.layout import checkpoint_file
from lit_forecast.models.ensemble import ForecastModel
from lit_forecast.models.factory import model_from_hyperparameters
from lit_forecast.spec import SeriesStats, WindowSpec

log = logging.getLogger(__name__)


@dataclass
class LoadedCheckpoint:
    """A model ready to forecast, with what it was trained on."""

    model: ForecastModel  # in eval mode, on ``device``
    config: Config  # the training config (or a default one with the checkpoint's window)
    path: str  # the .ckpt it came from
    device: torch.device

    @property
    def window(self) -> WindowSpec:
        return self.model.window

    @property
    def series_stats(self) -> dict[str, SeriesStats]:
        """Training statistics of every series the model was trained on (passengers)."""
        return self.model.series_stats


def load_checkpoint(
    source: str | bytes, device: str | torch.device = "cpu", horizon: int | None = None, name: str | None = None
) -> LoadedCheckpoint:
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
    except Exception as err:  # noqa: BLE001 - any bytes can arrive here; the unpickler fails in many ways (KeyError, ...)
        detail = (str(err).splitlines() or [""])[0] if isinstance(err, (RuntimeError, EOFError, ValueError)) else ""
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint: {detail or 'its bytes do not unpickle'}"
        ) from None
    hparams = raw.get("hyper_parameters") if isinstance(raw, dict) else None
    if not hparams or not {"model", "window", "train", "series"} <= set(hparams) or "state_dict" not in raw:
        raise CheckpointError(
            f"{path} is not a lit_forecast checkpoint (no model/window/series hyperparameters or weights)"
        )
    try:
        window = WindowSpec.from_dict(hparams["window"])
    except (TypeError, KeyError) as err:
        raise CheckpointError(f"{path}: its window hyperparameters are not readable ({err})") from None
    if horizon is not None and horizon != window.horizon:
        raise CheckpointError(
            f"{path} forecasts {window.horizon} steps, but {horizon} were asked: "
            f"use a checkpoint trained with data.horizon={horizon}, or ask for {window.horizon}"
        )
    try:
        model = model_from_hyperparameters(hparams)
        model.load_state_dict(raw["state_dict"])
    except (RuntimeError, TypeError, KeyError, ValueError) as err:
        raise CheckpointError(f"{path} does not fit this version of the model: {str(err).splitlines()[0]}") from None
    model.to(device).eval()
    return LoadedCheckpoint(model, _config(raw, hparams, path), path, device)


def _config(raw: dict, hparams: dict, path: str) -> Config:
    """The checkpoint's training config; without one, defaults with the checkpoint's window and model."""
    window = WindowSpec.from_dict(hparams["window"])
    saved = raw.get("lit_forecast_config")
    if saved:
        try:
            config = from_dict(saved)
        except ConfigError as err:
            raise CheckpointError(f"{path}: the config stored in the checkpoint is not valid here: {err}") from None
        d = config.data
        if (d.input_window, d.horizon, d.freq) != (window.input_window, window.horizon, window.freq):
            raise CheckpointError(
                f"{path}: stored config (input_window {d.input_window}, horizon {d.horizon}, freq {d.freq}) "
                f"disagrees with the model's window {window}"
            )
        return config
    log.info("%s holds no lit_forecast_config: using default data settings with its window", path)
    config = Config(data=DataConfig(input_window=window.input_window, horizon=window.horizon, freq=window.freq))
    try:
        config.model = from_dict(hparams["model"], type(config.model), "model.")
    except ConfigError:
        pass  # only the data settings are needed for inference; the module holds its own shape
    return config
