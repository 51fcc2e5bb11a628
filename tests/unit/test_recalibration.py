"""Rolling recalibration (infer.py --recalibrate-days, on by default): each cutoff's bands refitted on the
same series' forecasts at the same time of day on the days before it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from lit_forecast.inference import defaults
from lit_forecast.inference.pipeline import InferenceRequest
from lit_forecast.inference.recalibration import (
    MIN_WINDOWS,
    RecentForecasts,
    calibration_cutoffs,
    calibration_cutoffs_by_series,
    describe,
    offsets,
    recalibrate,
)
from lit_forecast.models.quantiles import QuantileCalibration

LEVELS, H = [0.1, 0.5, 0.9], 4
T = pd.Timestamp("2024-01-10T06:00")
STEP, DAY = pd.Timedelta("30min"), pd.Timedelta(days=1)
TOLERANCE = 10 * 2 * QuantileCalibration.BIN_WIDTH  # one histogram bin of the factor, in passengers


def bands(n: int, median: float = 100.0, half_width: float = 10.0) -> np.ndarray:
    """(n, H, 3): the median and one half-width either side."""
    return np.broadcast_to(np.asarray([median - half_width, median, median + half_width]), (n, H, 3)).copy()


def recent_forecasts(days: int, ratio: float, at: list[pd.Timedelta] = ()) -> RecentForecasts:
    """Windows of series 's' at T - k days (k = 1 .. days), each with actuals ``ratio`` half-widths either side
    of the median (alternating), and windows at T + each of ``at`` whose actuals lie 50 half-widths above it."""
    cutoffs = [T - k * DAY for k in range(1, days + 1)] + [T + d for d in at]
    signs = np.where(np.arange(days * H) % 2 == 0, 1.0, -1.0).reshape(days, H)
    actual = np.concatenate([100 + 10 * ratio * signs, np.full((len(at), H), 100 + 10 * 50.0)])
    return RecentForecasts(bands(len(cutoffs)), actual, ["s"] * len(cutoffs), pd.DatetimeIndex(cutoffs))


def test_the_calibration_cutoffs_are_the_same_time_of_day_on_each_day_before():
    cutoffs = [T, T + DAY, T + 2 * DAY]
    assert calibration_cutoffs(cutoffs, days=3, freq="30min", horizon=H) == [T - 3 * DAY, T - 2 * DAY, T - DAY]
    # a cutoff that is itself a calibration cutoff of a later one is forecast once, not twice
    assert calibration_cutoffs([T], days=2.9, freq="30min", horizon=H) == [T - 2 * DAY, T - DAY]  # whole days
    assert calibration_cutoffs([T], days=0, freq="30min", horizon=H) == []


def test_no_calibration_window_has_a_target_at_or_after_its_cutoff():
    for horizon in (4, 48, 49, 100):  # 30 min slots: 2 h, exactly a day, just over, two days and more
        shifts = offsets(days=5, freq="30min", horizon=horizon)
        assert shifts and all(T - k + (horizon - 1) * STEP < T for k in shifts)  # the last target slot is before T
    assert offsets(days=5, freq="30min", horizon=49) == [2 * DAY, 3 * DAY, 4 * DAY, 5 * DAY]
    assert offsets(days=5, freq="30min", horizon=48) == [DAY, 2 * DAY, 3 * DAY, 4 * DAY, 5 * DAY]


def test_series_with_the_same_cutoffs_share_one_set_of_calibration_cutoffs():
    groups = calibration_cutoffs_by_series(["a", "b", "c"], [T, T, T + STEP], days=2, freq="30min", horizon=H)
    assert groups == {(T - 2 * DAY, T - DAY): ["a", "b"], (T + STEP - 2 * DAY, T + STEP - DAY): ["c"]}


def test_each_cutoff_is_refitted_on_the_days_before_it_and_nothing_later():
    recent = recent_forecasts(days=14, ratio=2.0, at=[pd.Timedelta(0), STEP, DAY - STEP])  # a leak widens the bands
    out, counts = recalibrate(bands(1), ["s"], pd.DatetimeIndex([T]), recent, LEVELS, days=14, freq="30min")
    assert counts == {"refitted": 1, "kept": 0}
    np.testing.assert_allclose(out[0, :, 2], 100 + 10 * 2.0, atol=TOLERANCE)  # twice as wide: the ratio
    np.testing.assert_allclose(out[0, :, 0], 100 - 10 * 2.0, atol=TOLERANCE)
    np.testing.assert_array_equal(out[0, :, 1], 100.0)  # the median never moves
    assert (np.diff(out, axis=-1) >= 0).all()


def test_windows_at_other_times_of_day_or_older_than_the_days_asked_for_are_not_fitted_on():
    recent = recent_forecasts(days=20, ratio=1.0)
    recent.actual[10:] = 100 + 10 * 50.0  # days 11 .. 20 before T
    off = recent_forecasts(days=10, ratio=50.0)
    off.cutoffs = off.cutoffs + STEP  # half an hour later each day
    both = RecentForecasts(
        np.concatenate([recent.quantiles, off.quantiles]),
        np.concatenate([recent.actual, off.actual]),
        recent.series_ids + off.series_ids,
        recent.cutoffs.append(off.cutoffs),
    )
    out, counts = recalibrate(bands(1), ["s"], pd.DatetimeIndex([T]), both, LEVELS, days=10, freq="30min")
    assert counts["refitted"] == 1
    np.testing.assert_allclose(out[0, :, 2], 110.0, atol=TOLERANCE)


def test_too_few_known_windows_keep_the_checkpoints_bands_and_say_so():
    recent = recent_forecasts(days=MIN_WINDOWS, ratio=3.0)
    recent.actual[0, 1] = np.nan  # one of the seven has a target unknown: six left
    out, counts = recalibrate(bands(2), ["s", "other"], pd.DatetimeIndex([T, T]), recent, LEVELS, days=14, freq="30min")
    assert counts == {"refitted": 0, "kept": 2}  # 'other' has no windows at all
    np.testing.assert_array_equal(out, bands(2))
    line = describe(counts, 14)
    assert "2 kept the checkpoint's bands" in line and f"fewer than {MIN_WINDOWS}" in line
    recent.actual[0, 1] = 100.0  # all seven known: refitted
    _, counts = recalibrate(bands(1), ["s"], pd.DatetimeIndex([T]), recent, LEVELS, days=14, freq="30min")
    assert counts == {"refitted": 1, "kept": 0} and "kept" not in describe(counts, 14)


def test_recalibration_is_on_by_default():
    assert defaults.RECALIBRATE_DAYS >= MIN_WINDOWS
    assert InferenceRequest().recalibrate_days == defaults.RECALIBRATE_DAYS
