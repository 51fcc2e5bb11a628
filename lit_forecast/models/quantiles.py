"""Quantile loss and calibration in torch: the training loss and the validation scores.

Shapes: B windows, H horizon steps, Q levels (increasing, e.g. 0.1, 0.5, 0.9).
The numpy twin used by backtests is :func:`lit_forecast.evaluation.metrics.quantile_scores`.
"""

from __future__ import annotations

import torch
import torchmetrics

from lit_forecast.spec import central_intervals


def pinball(quantiles: torch.Tensor, target: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Pinball (quantile) loss per point and level: (B, H, Q), (B, H), (Q,) -> (B, H, Q).

    ``q * (y - f)`` when the actual y is above the forecast f, ``(1 - q) * (f - y)`` below it.
    """
    error = target[..., None] - quantiles
    return torch.maximum(levels * error, (levels - 1) * error)


def pinball_loss(quantiles: torch.Tensor, target: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Mean pinball loss over points and levels (the training loss with ``model.quantiles``)."""
    return pinball(quantiles, target, levels).mean()


class QuantileScores(torchmetrics.Metric):
    """Weighted quantile loss and central-interval coverage, summed over ranks (passengers).

    ``wql`` = mean over levels of 2 * sum(pinball) / sum(|actual|) (as in GluonTS);
    ``coverage_80`` = share of actuals inside [q0.1, q0.9] (bounds included), and so on for
    every symmetric pair of levels.
    """

    full_state_update = False

    def __init__(self, levels: list[float]):
        super().__init__()
        self.levels = list(levels)
        self.intervals = central_intervals(self.levels)
        self.register_buffer("level_tensor", torch.tensor(self.levels), persistent=False)
        self.add_state("pinball_sum", default=torch.zeros(len(self.levels), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("abs_sum", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("inside", default=torch.zeros(len(self.intervals), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, quantiles: torch.Tensor, target: torch.Tensor) -> None:
        """quantiles (B, H, Q) and target (B, H), in passengers."""
        quantiles, target = quantiles.double(), target.double()
        self.pinball_sum += pinball(quantiles, target, self.level_tensor.to(quantiles)).sum(dim=(0, 1))
        self.abs_sum += target.abs().sum()
        for n, (i, j, _) in enumerate(self.intervals):
            self.inside[n] += ((quantiles[..., i] <= target) & (target <= quantiles[..., j])).sum()
        self.count += target.numel()

    def compute(self) -> dict[str, torch.Tensor]:
        scores = {"wql": (2 * self.pinball_sum / self.abs_sum).mean()}
        for n, (_, _, name) in enumerate(self.intervals):
            scores[name] = self.inside[n] / self.count
        return {k: v.float() for k, v in scores.items()}
