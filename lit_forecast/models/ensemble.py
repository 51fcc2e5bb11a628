"""The trained forecaster as a plain ``nn.Module``: the ensemble, its calibration and every forecast path.

What validation, batch inference and serving run, without Lightning: the members
(:class:`~lit_forecast.models.transformer.Seq2SeqTransformer`), the per-step, per-level
calibration factors, the window it was trained on and the training statistics of every series.
:mod:`lit_forecast.models.module` trains it; :mod:`lit_forecast.models.factory` builds it.

Shapes: B windows, W input_window, H horizon, Q quantile levels (1 without levels).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from lit_forecast.models.quantiles import widen
from lit_forecast.models.transformer import NetShape, Seq2SeqTransformer
from lit_forecast.spec import SeriesStats, WindowSpec

TRAINING_PREFIX = "model."  # the LightningModule holds this model as ``.model``: its checkpoint keys start so


class ForecastModel(nn.Module):
    """``members`` networks of one shape whose quantiles are averaged, then calibrated.

    The members differ only in their initial weights (drawn one after the other from the
    seeded generator). ``calibration`` (H, Q) holds the widening factors fitted on validation
    (ones until then, and when training does not fit them); a buffer, so every checkpoint
    carries its own.
    """

    def __init__(self, shape: NetShape, members: int, window: WindowSpec, series_stats: dict[str, SeriesStats]):
        super().__init__()
        if (shape.input_window, shape.horizon, shape.slots_per_day) != (
            window.input_window,
            window.horizon,
            window.slots_per_day,
        ):
            raise ValueError(f"the network's shape {shape} does not fit the window {window}")
        if members < 1:
            raise ValueError(f"an ensemble needs at least one member, got {members}")
        self.shape, self.window, self.series_stats = shape, window, dict(series_stats)
        self.nets = nn.ModuleList(Seq2SeqTransformer(shape) for _ in range(members))
        self.levels: list[float] = shape.levels  # [] for a point forecast (Q = 1)
        self.median_index: int = shape.median_index
        if self.levels:
            self.register_buffer("calibration", torch.ones(window.horizon, len(self.levels)))

    def median(self, quantiles: torch.Tensor) -> torch.Tensor:
        """(..., Q) -> (...): the median level, which is the point forecast."""
        return quantiles[..., self.median_index]

    def raw_forecast_scaled(
        self, past_target: torch.Tensor, past_time: torch.Tensor, future_time: torch.Tensor
    ) -> torch.Tensor:
        """The members' autoregressive quantiles (B, H, Q) averaged level by level, before calibration.

        Scaled units, as ``past_target`` (B, W); calendars ``past_time`` (B, W, 3), ``future_time``
        (B, H, 3). A mean of non-decreasing rows is non-decreasing, so averaged quantiles never cross.
        """
        return torch.stack([net.forecast(past_target, past_time, future_time) for net in self.nets]).mean(dim=0)

    def calibrated(self, quantiles: torch.Tensor) -> torch.Tensor:
        """(B, H, Q) -> (B, H, Q) with the calibration factors applied; the median never moves."""
        if not self.levels:
            return quantiles
        return widen(quantiles, self.calibration.to(quantiles.dtype), self.median_index)

    def forecast_scaled(
        self, past_target: torch.Tensor, past_time: torch.Tensor, future_time: torch.Tensor
    ) -> torch.Tensor:
        """Autoregressive quantiles (B, H, Q) in scaled units, calibrated: what validation and inference use."""
        return self.calibrated(self.raw_forecast_scaled(past_target, past_time, future_time))

    def teacher_forced(
        self, past_target: torch.Tensor, past_time: torch.Tensor, future_time: torch.Tensor, future_target: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced quantiles (B, H, Q), scaled, given the true ``future_target`` (B, H): the members' mean."""
        decoder_input = Seq2SeqTransformer.shift(past_target, future_target)
        return torch.stack([net(past_target, past_time, future_time, decoder_input) for net in self.nets]).mean(dim=0)

    def forecast(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Autoregressive quantiles (B, H, Q) in passengers; ``median`` of it is the point forecast.

        ``batch``: past_target (B, W) scaled, past_time (B, W, 3), future_time (B, H, 3), and
        loc, scale (B,): passengers = scaled * scale + loc.
        """
        scaled = self.forecast_scaled(batch["past_target"], batch["past_time"], batch["future_time"])
        return scaled * batch["scale"][:, None, None] + batch["loc"][:, None, None]

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load weights of any checkpoint this project wrote: see :meth:`plain_state_dict`."""
        return super().load_state_dict(self.plain_state_dict(state_dict), strict=strict, assign=assign)

    def plain_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A checkpoint's state dict under this model's own keys.

        Three layouts exist: the training module's (``model.nets.0...``, ``model.calibration``),
        the one from before the model was split from it (``nets.0...``, ``calibration``), and
        this model's own. Checkpoints from before calibration existed have no factors: they
        load with factors of one (uncalibrated, as they forecast when written).
        """
        prefixed = any(key.startswith(TRAINING_PREFIX) for key in state_dict)
        plain = {
            key.removeprefix(TRAINING_PREFIX): value
            for key, value in state_dict.items()
            if key.startswith(TRAINING_PREFIX) or not prefixed
        }
        if self.levels and "calibration" not in plain:
            plain["calibration"] = torch.ones_like(self.calibration)
        return plain
