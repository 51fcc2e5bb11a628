"""The plain forecasting call (no Ray): model inputs in numpy -> forecasts in passengers."""

from __future__ import annotations

import numpy as np
import torch

from lit_forecast.models.module import ForecastModule


@torch.inference_mode()
def forecast(module: ForecastModule, inputs: dict[str, np.ndarray], batch_size: int = 256) -> np.ndarray:
    """Autoregressive forecasts (N, H) float64 in passengers for ``inputs`` from ForecastWindows.model_inputs.

    Runs on the module's device, ``batch_size`` windows at a time.
    """
    device = next(module.parameters()).device
    n = len(inputs["past_target"])
    outputs = []
    for lo in range(0, n, batch_size):
        # torch.tensor copies: arrays from Ray's object store are read-only.
        batch = {name: torch.tensor(array[lo : lo + batch_size], device=device) for name, array in inputs.items()}
        outputs.append(module.forecast(batch).float().cpu().numpy())
    horizon = module.hparams["window"]["horizon"]
    return np.concatenate(outputs).astype(np.float64) if outputs else np.zeros((0, horizon))
