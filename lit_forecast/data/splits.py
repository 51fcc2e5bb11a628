"""Chronological splits, training-only scaling and window enumeration on regular series.

A window with target start ``s`` covers slots ``[s - input_window, s + horizon)``: the past is
``[s - input_window, s)`` and the future (the target) is ``[s, s + horizon)``. A window belongs
to the split that holds *all* of its target slots; its past may reach back into earlier splits
(known history, not leakage). Windows whose target straddles a boundary belong to no split.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from lit_forecast.config import DataConfig
from lit_forecast.data.source import Series
from lit_forecast.errors import DataError
from lit_forecast.spec import SeriesStats

SPLITS = ("train", "val", "test")


def split_bounds(config: DataConfig) -> dict[str, tuple[pd.Timestamp | None, pd.Timestamp | None]]:
    """Half-open ``[start, end)`` timestamp range of each split's target slots."""
    train_end, val_end = pd.Timestamp(config.train_end), pd.Timestamp(config.val_end)
    test_end = pd.Timestamp(config.test_end) if config.test_end else None
    return {"train": (None, train_end), "val": (train_end, val_end), "test": (val_end, test_end)}


def slot_times(series: Series, freq: str) -> pd.DatetimeIndex:
    """Timestamp of every slot of ``series``."""
    return pd.date_range(series.start, periods=len(series.values), freq=freq)


def fit_stats(series: Series, config: DataConfig) -> SeriesStats:
    """Mean and std of the slots before ``train_end`` (never later ones)."""
    times = slot_times(series, config.freq)
    train = series.values[times < pd.Timestamp(config.train_end)]
    if np.isfinite(train).sum() < 2:
        raise DataError(f"series {series.series_id!r} has no training data before data.train_end={config.train_end}")
    return SeriesStats.fit(train)


def window_starts(series: Series, split: str, config: DataConfig) -> np.ndarray:
    """Target-start indices ``s`` of the windows of ``split``, in time order.

    Training windows step by ``stride``, validation and test windows by ``eval_stride``,
    counted from the first target slot of the split (so eval_stride 48 gives one window per
    midnight). Windows touching a missing slot (a long gap kept by ``long_gaps: drop``) are
    skipped.
    """
    W, H = config.input_window, config.horizon
    times = slot_times(series, config.freq)
    lo, hi = split_bounds(config)[split]
    n = len(series.values)
    first_target = np.arange(n)
    ok = first_target >= W
    ok &= first_target + H <= n
    if lo is not None:
        ok &= times >= lo
    if hi is not None:
        last = np.minimum(first_target + H - 1, n - 1)
        ok &= times[last] < hi
    candidates = np.flatnonzero(ok)
    if len(candidates) == 0:
        return candidates
    stride = config.stride if split == "train" else config.eval_stride
    starts = candidates[(candidates - candidates[0]) % stride == 0]
    if np.isnan(series.values).any():
        missing = np.concatenate([[0], np.cumsum(np.isnan(series.values))])
        touched = missing[starts + H] - missing[starts - W] > 0
        starts = starts[~touched]
    return starts


def thin_evenly(starts: np.ndarray, limit: int | None, series_id: str) -> np.ndarray:
    """At most ``limit`` of ``starts`` (time-ordered), evenly spaced; all of them if ``limit`` is None.

    The n candidates are cut into ``limit`` equal spans and one window is kept per span, at the
    same fraction of every span. That fraction is derived from the series id (sha256), so the
    choice is deterministic (the same data and config keep the same windows on every machine)
    and a fleet's series are validated at different times of day instead of all at one
    timestamp. ``data.val_windows_per_series`` applies it to validation windows.
    """
    n = len(starts)
    if limit is None or n <= limit:
        return starts
    phase = int.from_bytes(hashlib.sha256(series_id.encode()).digest()[:8], "big") / 2**64  # in [0, 1)
    span = n / limit  # > 1, so the picks are distinct
    return starts[np.floor((np.arange(limit) + phase) * span).astype(np.int64)]
