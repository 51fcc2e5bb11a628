"""Rolling recalibration: the bands at cutoff t refitted on the model's own forecasts of the days before t.

Training fits one set of widening factors on the validation month (``QuantileCalibration``);
a later month may be calmer or wilder. ``infer.py --recalibrate-days N`` refits the factors
at every cutoff t, per series, on the windows whose cutoffs lie in the N days before t and
whose targets all lie before t: actuals known at t, so nothing is looked ahead. The factors
multiply the checkpoint's (the fit is on the calibrated forecasts), the median never moves,
and with fewer than ``QuantileCalibration.MIN_WINDOWS`` such windows a cutoff keeps the
checkpoint's bands. N is rounded down to whole slots.

Cost: one extra forecast per series for every slot from N days before the first cutoff to the
last (2,065 for 14 days before the 31 midnights of a month, at 30 min), held in memory at once:
meant for one or a few series, not a fleet (``MAX_WINDOWS``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from lit_forecast.errors import ConfigError
from lit_forecast.models.quantiles import QuantileCalibration, widen
from lit_forecast.models.transformer import median_index

MAX_WINDOWS = 100_000  # extra forecasts one call may make for the recalibration (series x calibration cutoffs)


@dataclass
class RecentForecasts:
    """The model's forecasts at the calibration cutoffs: what each cutoff's factors are fitted on."""

    quantiles: np.ndarray  # (M, H, Q) passengers
    actual: np.ndarray  # (M, H) passengers
    series_ids: list[str]  # (M,)
    cutoffs: pd.DatetimeIndex  # (M,)


def lookback(days: float, freq: str) -> pd.Timedelta:
    """``days`` rounded down to whole slots of ``freq``: calibration cutoffs stay on the data's grid."""
    step = pd.Timedelta(freq)
    return step * int(pd.Timedelta(days=days) // step)


def calibration_cutoffs(
    cutoffs: pd.DatetimeIndex, days: float, freq: str, horizon: int, series: int = 1
) -> list[pd.Timestamp]:
    """Every slot from ``days`` before the first cutoff to the last whose targets end before the last cutoff.

    ``series``: how many series each is forecast for; over ``MAX_WINDOWS`` in all is a ConfigError.
    """
    step = pd.Timedelta(freq)
    first, last = cutoffs.min() - lookback(days, freq), cutoffs.max() - horizon * step
    at = list(pd.date_range(first, last, freq=step)) if last >= first else []
    if len(at) * series > MAX_WINDOWS:
        raise ConfigError(
            f"--recalibrate-days {days:g} would forecast {len(at) * series:,} extra windows "
            f"({series:,} series x {len(at):,} slots from {first} on), more than the {MAX_WINDOWS:,} one call may: "
            f"use fewer days, fewer cutoffs or fewer series per call, or leave the option off for a fleet"
        )
    return at


def recalibrate(
    quantiles: np.ndarray,
    series_ids: list[str],
    cutoffs: pd.DatetimeIndex,
    recent: RecentForecasts,
    levels: list[float],
    days: float,
    freq: str,
) -> tuple[np.ndarray, dict]:
    """(N, H, Q) passengers -> the same with each window's bands refitted on its series' recent forecasts.

    Returns the quantiles and counts for the log: windows refitted, and windows left as they were
    for want of ``QuantileCalibration.MIN_WINDOWS`` calibration windows.
    """
    horizon, median = quantiles.shape[1], median_index(levels)
    span, back = horizon * pd.Timedelta(freq), lookback(days, freq)
    known = np.isfinite(recent.actual).all(axis=1) & np.isfinite(recent.quantiles).all(axis=(1, 2))
    by_series: dict[str, list[int]] = {}  # series -> its calibration windows with every actual known
    for i in np.flatnonzero(known):
        by_series.setdefault(recent.series_ids[i], []).append(i)
    out, refitted, kept = quantiles.copy(), 0, 0
    for i, (sid, t) in enumerate(zip(series_ids, cutoffs)):
        rows = np.asarray(by_series.get(sid, []), dtype=np.int64)
        at = recent.cutoffs[rows] if len(rows) else pd.DatetimeIndex([])
        rows = rows[(at >= t - back) & (at + span <= t)]  # targets all known at t
        if len(rows) < QuantileCalibration.MIN_WINDOWS:
            kept += 1
            continue
        fit = QuantileCalibration(levels, horizon)
        fit.update(torch.as_tensor(recent.quantiles[rows]), torch.as_tensor(recent.actual[rows]))
        factors = fit.compute().double()
        out[i] = widen(torch.as_tensor(quantiles[i : i + 1]), factors, median).numpy()[0]
        refitted += 1
    return out, {"refitted": refitted, "kept": kept}
