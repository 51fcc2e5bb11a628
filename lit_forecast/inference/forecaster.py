"""The plain forecasting call (no Ray): model inputs in numpy -> forecasts in passengers."""

from __future__ import annotations

import numpy as np
import torch

from lit_forecast.data.windows import WindowSet
from lit_forecast.inference import defaults
from lit_forecast.models.ensemble import ForecastModel
from lit_forecast.progress import Progress

MODEL_INPUTS = ("past_target", "past_time", "future_time", "loc", "scale")  # what a forecast needs of a batch


def model_inputs(windows: WindowSet, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
    """Windows lo..hi-1 as the model's inputs, in numpy (cheap to ship to Ray tasks).

    past_target (n, W) float32 scaled, past_time (n, W, 3), future_time (n, H, 3), loc and scale (n,) float32.
    """
    batch = windows.batch(slice(lo, hi))
    return {name: batch[name].numpy() for name in MODEL_INPUTS}


@torch.inference_mode()
def forecast(
    model: ForecastModel,
    inputs: dict[str, np.ndarray],
    batch_size: int = defaults.BATCH_SIZE,
    report_progress: bool = False,
) -> np.ndarray:
    """Autoregressive quantiles (N, H, Q) float64 in passengers for ``inputs`` from :func:`model_inputs`.

    Q levels are ``model.levels`` (Q = 1 for a point model); ``[..., model.median_index]`` is the point forecast.

    Runs on the model's device, ``batch_size`` windows at a time; ``report_progress`` logs a
    line every few seconds (windows done, rate).
    """
    device = next(model.parameters()).device
    n = len(inputs["past_target"])
    outputs = []
    progress = Progress("forecast", total=n) if report_progress else None
    for lo in range(0, n, batch_size):
        # torch.tensor copies: arrays from Ray's object store are read-only.
        batch = {name: torch.tensor(array[lo : lo + batch_size], device=device) for name, array in inputs.items()}
        outputs.append(model.forecast(batch).float().cpu().numpy())
        if progress:
            progress.advance(len(outputs[-1]))
    if progress:
        progress.done()
    if not outputs:
        return np.zeros((0, model.window.horizon, max(1, len(model.levels))))
    return np.concatenate(outputs).astype(np.float64)
