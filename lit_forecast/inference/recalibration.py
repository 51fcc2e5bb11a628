"""Rolling recalibration: the bands at cutoff t refitted on the model's forecasts at t's time of day before t.

Training fits one set of widening factors on the validation month (``QuantileCalibration``);
a later month may be calmer or wilder. At every cutoff t, for each series, the factors are
refitted on that series' windows with cutoffs t - 1 day, t - 2 days, ... t - N days
(``--recalibrate-days N``, whole days), keeping those whose targets all end by t: actuals known
at t, so nothing is looked ahead. One scale per level, pooled over the horizon steps (a few
weeks of windows are too few for one per step and level), multiplies the checkpoint's per-step
factors (the fit is on the calibrated forecasts); the median never moves. A series with fewer
than ``MIN_WINDOWS`` such windows at a cutoff keeps the checkpoint's bands there.

Cost: the windows at the calibration cutoffs that are not cutoffs themselves. A month of
midnights needs N extra forecasts per series (the earlier midnights of the month are
forecast anyway); a single forecast, N.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from lit_forecast.errors import CutoffError
from lit_forecast.models.quantiles import QuantileCalibration, widen
from lit_forecast.models.transformer import median_index

DAY = pd.Timedelta(days=1)
MIN_WINDOWS = 7  # calibration windows a series needs at a cutoff (a week of them); fewer: the checkpoint's bands


@dataclass
class RecentForecasts:
    """Forecasts the factors are fitted on: the calibration windows' and the forecast windows' own."""

    quantiles: np.ndarray  # (M, H, Q) passengers
    actual: np.ndarray  # (M, H) passengers, NaN where unknown
    series_ids: list[str]  # (M,)
    cutoffs: pd.DatetimeIndex  # (M,)

    @classmethod
    def join(cls, parts: list[RecentForecasts]) -> RecentForecasts:
        """One set of the windows of ``parts``, in their order."""
        return cls(
            np.concatenate([p.quantiles for p in parts]),
            np.concatenate([p.actual for p in parts]),
            [sid for p in parts for sid in p.series_ids],
            pd.to_datetime(np.concatenate([pd.DatetimeIndex(p.cutoffs).as_unit("ns").asi8 for p in parts]), unit="ns"),
        )


def offsets(days: float, freq: str, horizon: int) -> list[pd.Timedelta]:
    """k days for k = 1 .. ``days`` (whole days) whose window's ``horizon`` slots end by the cutoff."""
    span = horizon * pd.Timedelta(freq)
    return [k * DAY for k in range(1, int(days) + 1) if k * DAY >= span]


def calibration_cutoffs(cutoffs: Iterable[pd.Timestamp], days: float, freq: str, horizon: int) -> list[pd.Timestamp]:
    """The calibration cutoffs of ``cutoffs`` that are not among them, sorted: what must be forecast besides."""
    given = pd.DatetimeIndex(list(cutoffs)).as_unit("ns").asi8
    shifts = np.asarray([k.value for k in offsets(days, freq, horizon)], dtype=np.int64)
    extra = np.setdiff1d((given[:, None] - shifts[None, :]).ravel(), given)  # sorted, unique
    return list(pd.to_datetime(extra, unit="ns"))


def calibration_cutoffs_by_series(
    series_ids: Iterable[str], cutoffs: Iterable[pd.Timestamp], days: float, freq: str, horizon: int
) -> dict[tuple[pd.Timestamp, ...], list[str]]:
    """Series grouped by the extra cutoffs their windows need (one group when every series has the same cutoffs).

    ``series_ids`` and ``cutoffs``: the forecast windows, one pair each.
    """
    by_series: dict[str, list[pd.Timestamp]] = {}
    for sid, t in zip(series_ids, cutoffs):
        by_series.setdefault(sid, []).append(pd.Timestamp(t))
    groups: dict[tuple[pd.Timestamp, ...], list[str]] = {}
    for sid, own in by_series.items():
        extra = tuple(calibration_cutoffs(own, days, freq, horizon))
        if extra:
            groups.setdefault(extra, []).append(sid)
    return groups


def calibration_windows(series: list, windows, days: float, cut) -> list:
    """The windows at the extra calibration cutoffs of each series of ``windows`` (a WindowSet), each set cut
    by ``cut(series, cutoffs) -> WindowSet`` from ``series`` (as read, gaps unfilled); [] where none can be.

    Shared by the plain and the streaming path, so that both fit on the same windows.
    """
    spec, by_id, out = windows.spec, {s.series_id: s for s in series}, []
    for extra, ids in calibration_cutoffs_by_series(
        windows.series_ids, windows.cutoffs, days, spec.freq, spec.horizon
    ).items():
        try:
            out.append(cut([by_id[sid] for sid in ids], list(extra)))
        except CutoffError:  # none can be cut: too little data before the cutoffs
            continue
    return out


def recalibrate(
    quantiles: np.ndarray,
    series_ids: list[str],
    cutoffs: pd.DatetimeIndex,
    recent: RecentForecasts,
    levels: list[float],
    days: float,
    freq: str,
    per_step: bool = False,
) -> tuple[np.ndarray, dict]:
    """(N, H, Q) passengers -> the same with each window's bands refitted on its series' earlier windows.

    ``recent`` may hold the forecast windows themselves: a window is fitted on those of its
    series at the cutoffs ``t - offsets(...)`` with every actual known. Returns the quantiles
    and counts for the log: windows refitted, and windows that kept the checkpoint's bands for
    want of ``MIN_WINDOWS`` calibration windows. ``per_step``: one factor per step and level instead of
    per level (``QuantileCalibration.MIN_WINDOWS`` windows each; bench/studies/recalibration.py compares).
    """
    horizon = quantiles.shape[1]
    shifts = offsets(days, freq, horizon)
    steps = horizon if per_step else 1  # the fit's horizon; pooled, every step of a window is a sample
    need = max(MIN_WINDOWS, -(-QuantileCalibration.MIN_WINDOWS * steps // horizon))  # and the fit's own minimum
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a busy machine threads only contend (small fits were 20 x slower on 2 cores)
    try:
        out, counts = _refit_each(quantiles, series_ids, cutoffs, recent, levels, shifts, need, steps)
    finally:
        torch.set_num_threads(threads)
    return out, counts


FITS_PER_BATCH = 512  # fits of one QuantileCalibration call: about 8 MB of samples and 12 MB of histograms


def _refit_each(quantiles, series_ids, cutoffs, recent: RecentForecasts, levels, shifts, need: int, steps: int):
    """The fits of :func:`recalibrate`: one per window, on the rows of its series at ``t - shifts``.

    Fits of as many rows each are made together: one QuantileCalibration whose ``horizon``
    axis holds K fits x ``steps`` (its histograms are per column, so this is K separate fits).
    """
    horizon, levels_count, median = quantiles.shape[1], quantiles.shape[2], median_index(levels)
    known = np.isfinite(recent.actual).all(axis=1) & np.isfinite(recent.quantiles).all(axis=(1, 2))
    at = pd.DatetimeIndex(recent.cutoffs).as_unit("ns").asi8.tolist()
    row = {(sid, t): i for i, (sid, t) in enumerate(zip(recent.series_ids, at)) if known[i]}
    back = [k.value for k in shifts]  # ns
    by_count: dict[int, list[tuple[int, list[int]]]] = {}  # rows per fit -> [(window, its rows)]
    kept = 0
    for i, (sid, t) in enumerate(zip(series_ids, pd.DatetimeIndex(cutoffs).as_unit("ns").asi8.tolist())):
        rows = [r for k in back if (r := row.get((sid, t - k))) is not None]
        if len(rows) < need:
            kept += 1
        else:
            by_count.setdefault(len(rows), []).append((i, rows))
    out = quantiles.copy()
    for n, fits in by_count.items():
        for first in range(0, len(fits), FITS_PER_BATCH):
            batch = fits[first : first + FITS_PER_BATCH]
            windows, rows = [i for i, _ in batch], np.asarray([r for _, r in batch])  # (K,), (K, n)
            K, per = len(batch), horizon // steps  # samples per column from each row
            q = recent.quantiles[rows].reshape(K, n, steps, per, levels_count)  # (K, n, steps, per, Q)
            y = recent.actual[rows].reshape(K, n, steps, per)
            q = q.transpose(1, 3, 0, 2, 4).reshape(n * per, K * steps, levels_count)  # samples x columns
            y = y.transpose(1, 3, 0, 2).reshape(n * per, K * steps)
            fit = QuantileCalibration(levels, horizon=K * steps)
            fit.update(torch.as_tensor(np.ascontiguousarray(q)), torch.as_tensor(np.ascontiguousarray(y)))
            factors = fit.compute().double().reshape(K, steps, levels_count).expand(K, horizon, levels_count)
            out[windows] = widen(torch.as_tensor(quantiles[windows]), factors, median).numpy()
    return out, {"refitted": len(series_ids) - kept, "kept": kept}


def describe(counts: dict, days: float) -> str:
    """One log line for the counts of :func:`recalibrate` (summed over blocks on the streaming path)."""
    line = f"bands refitted at {counts['refitted']:,} windows on their series' forecasts of the {days:g} days before"
    if counts["kept"]:
        line += (
            f"; {counts['kept']:,} kept the checkpoint's bands (fewer than {MIN_WINDOWS} earlier windows at the "
            f"cutoff's time of day with known actuals: too little known past before the cutoff)"
        )
    return line
