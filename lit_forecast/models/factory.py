"""The one place that builds the forecaster: from a config and a prepared dataset, or from a checkpoint.

Training, inference, the bench and the tests all come here, so a model is always built the same
way. Its plain values (:func:`hyperparameters`) are what a checkpoint carries: the ``model`` and
``train`` sections of the config, the window and the per-series training statistics, as dicts
of primitives, so a checkpoint loads with ``torch.load(weights_only=True)`` and rebuilds the
model with :func:`model_from_hyperparameters` and nothing else.

Lightning is imported only by :func:`module_from_config` and :func:`module_from_hyperparameters`
(for training): inference builds the plain :class:`~lit_forecast.models.ensemble.ForecastModel`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

from lit_forecast.config import Config, to_dict
from lit_forecast.models.ensemble import ForecastModel
from lit_forecast.models.transformer import NetShape
from lit_forecast.spec import SeriesStats, WindowSpec, stats_from_dict, stats_to_dict

if TYPE_CHECKING:
    from lit_forecast.models.module import ForecastModule

# Keys that checkpoints written before they existed lack, with the value the network had then.
# Only a checkpoint can lack them: a config's ``model`` section names every field of NetShape.
BEFORE_THE_KEY_EXISTED = {"holidays": False, "window_norm": False, "quantiles": (), "daily_lag": 0, "residual": False}


class PreparedData(Protocol):
    """What the model needs of a prepared dataset (a :class:`~lit_forecast.data.manifest.Manifest`)."""

    window: WindowSpec

    def series_stats(self) -> dict[str, SeriesStats]: ...


def hyperparameters(
    config: Config, window: WindowSpec, series_stats: dict[str, SeriesStats]
) -> dict[str, dict[str, Any]]:
    """The plain values a model is built from and its checkpoint carries: model, window, train, series."""
    plain = to_dict(config)
    return {
        "model": plain["model"],
        "window": window.to_dict(),
        "train": plain["train"],
        "series": stats_to_dict(series_stats),
    }


def net_shape(model: Mapping[str, Any], window: WindowSpec) -> NetShape:
    """The network's shape from a ``model`` section (a config's, or a checkpoint's) and the window."""
    known = {f.name for f in dataclasses.fields(NetShape)}
    values = {**BEFORE_THE_KEY_EXISTED, **{k: v for k, v in model.items() if k in known}}
    values.update(input_window=window.input_window, horizon=window.horizon, slots_per_day=window.slots_per_day)
    missing = known - set(values)
    if missing:
        raise KeyError(f"the model settings lack {', '.join(sorted(missing))}")
    return NetShape(**{**values, "quantiles": tuple(values["quantiles"])})


def model_from_hyperparameters(hparams: Mapping[str, Any]) -> ForecastModel:
    """The plain model (fresh weights) from :func:`hyperparameters`, e.g. a checkpoint's ``hyper_parameters``."""
    window = WindowSpec.from_dict(hparams["window"])
    shape = net_shape(hparams["model"], window)
    return ForecastModel(shape, int(hparams["model"].get("members", 1)), window, stats_from_dict(hparams["series"]))


def model_from_config(config: Config, data: PreparedData) -> ForecastModel:
    """The plain model (fresh weights) for ``config`` on the prepared dataset ``data``."""
    return model_from_hyperparameters(hyperparameters(config, data.window, data.series_stats()))


def module_from_hyperparameters(hparams: Mapping[str, Any]) -> ForecastModule:
    """The LightningModule that trains a fresh :func:`model_from_hyperparameters` model."""
    from lit_forecast.models.module import ForecastModule  # Lightning for training only

    plain = {key: hparams[key] for key in ("model", "window", "train", "series")}
    return ForecastModule(model_from_hyperparameters(plain), plain)


def module_from_config(config: Config, data: PreparedData) -> ForecastModule:
    """The LightningModule that trains a fresh model for ``config`` on the prepared dataset ``data``."""
    return module_from_hyperparameters(hyperparameters(config, data.window, data.series_stats()))
