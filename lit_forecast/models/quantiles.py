"""Quantile loss and calibration in torch: the training loss and the validation scores.

Shapes: B windows, H horizon steps, Q levels (increasing, e.g. 0.1, 0.5, 0.9).
The numpy twin used by backtests is :func:`lit_forecast.evaluation.metrics.quantile_scores`.
"""

from __future__ import annotations

import torch
import torchmetrics

from lit_forecast.models.transformer import median_index
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


class QuantileCalibration(torchmetrics.Metric):
    """Widening factors that calibrate each level at each horizon step, fitted on validation windows.

    A head trained on the training months under teacher forcing gives bands too narrow for an
    autoregressive forecast of other months. For level q at step h the distance of the forecast
    from the median, ``d = f_q - f_0.5``, is multiplied by ``s[h, q]``: the empirical quantile,
    at level q above the median (1 - q below it), of ``(y - f_0.5) / d`` over the validation
    windows, so that a share q of them lies below the widened level (quantile recalibration,
    as in split-conformal prediction). Counts are histograms of that ratio, summed over ranks,
    so the factor is exact to one bin (``BIN_WIDTH``) on any number of ranks.

    ``margin`` asks each level other than the median to hold ``margin`` more than its share
    (level 0.9 fitted to 0.9 + margin, level 0.1 to 0.1 - margin): the bands validation gives
    are then that much wider. Training fits with no margin; bench/studies/calibration.py tries margins
    against the drift between the two halves of the validation month.
    """

    full_state_update = False
    BIN_WIDTH, MAX_FACTOR, MIN_FACTOR = 0.01, 10.0, 0.05
    MIN_WINDOWS = 20  # fewer validation windows than this leave the level as the head gives it

    def __init__(self, levels: list[float], horizon: int, margin: float = 0.0):
        super().__init__()
        if not 0 <= margin < 0.5:
            raise ValueError(f"margin {margin} must lie in [0, 0.5)")
        self.levels, self.median_index, self.margin = list(levels), median_index(levels), margin
        bins = round(self.MAX_FACTOR / self.BIN_WIDTH)
        self.register_buffer(
            "edges", torch.linspace(0.0, self.MAX_FACTOR, bins + 1, dtype=torch.float64), persistent=False
        )
        # bucket 0: ratio <= 0 (the actual lies on the median's other side); bucket bins + 1: above MAX_FACTOR
        self.add_state(
            "counts", default=torch.zeros(horizon, len(levels), bins + 2, dtype=torch.float64), dist_reduce_fx="sum"
        )

    def update(self, quantiles: torch.Tensor, target: torch.Tensor) -> None:
        """Uncalibrated quantiles (B, H, Q) and target (B, H), in any one unit (the ratio is unit-free)."""
        quantiles, target = quantiles.double(), target.double()
        median = quantiles[..., self.median_index : self.median_index + 1]
        distance = quantiles - median  # (B, H, Q), > 0 above the median, < 0 below (0 at it)
        ratio = (target[..., None] - median) / torch.where(distance == 0, 1.0, distance)
        buckets = torch.bucketize(ratio, self.edges)  # (B, H, Q) in 0 .. bins + 1
        self.counts.scatter_add_(2, buckets.permute(1, 2, 0), torch.ones_like(ratio).permute(1, 2, 0))

    def compute(self) -> torch.Tensor:
        """(H, Q) factors: 1 at the median and where there were too few windows."""
        total = self.counts.sum(dim=-1, keepdim=True)
        share = self.counts.cumsum(dim=-1) / total.clamp(min=1)
        target = torch.tensor(
            [min(max(q, 1 - q) + self.margin, 1.0) for q in self.levels], dtype=torch.float64, device=share.device
        )
        first = (share < target[None, :, None] - 1e-9).sum(dim=-1).clamp(max=len(self.edges) - 1)  # (H, Q) bucket index
        factors = self.edges[first].clamp(self.MIN_FACTOR, self.MAX_FACTOR)  # the bucket's upper edge
        enough = total[..., 0] >= self.MIN_WINDOWS
        factors = torch.where(enough, factors, torch.ones_like(factors))
        factors[:, self.median_index] = 1.0
        return factors.float()


def widen(quantiles: torch.Tensor, factors: torch.Tensor, median_index: int) -> torch.Tensor:
    """(B, H, Q) quantiles, (H, Q) factors -> calibrated (B, H, Q), still non-decreasing along Q.

    Each level moves away from (or towards) the median by its factor; sorting afterwards keeps
    the levels from crossing when two on one side get different factors (a rearrangement, which
    never makes a set of quantile estimates worse).
    """
    median = quantiles[..., median_index : median_index + 1]
    return torch.sort(median + (quantiles - median) * factors, dim=-1).values
