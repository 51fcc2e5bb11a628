"""Rolling recalibration (infer.py --recalibrate-days): each cutoff's bands refitted on the days before it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lit_forecast.errors import ConfigError
from lit_forecast.inference.recalibration import RecentForecasts, calibration_cutoffs, recalibrate
from lit_forecast.models.quantiles import QuantileCalibration

LEVELS, H = [0.1, 0.5, 0.9], 4
T = pd.Timestamp("2024-01-10")
STEP = pd.Timedelta("30min")


def bands(n: int, median: float = 100.0, half_width: float = 10.0) -> np.ndarray:
    """(n, H, 3): the median and one half-width either side."""
    return np.broadcast_to(np.asarray([median - half_width, median, median + half_width]), (n, H, 3)).copy()


def recent_forecasts(ratio_before, ratio_after: float) -> RecentForecasts:
    """Windows every slot of the 3 days before T, the i-th with actuals ``ratio_before(n)[i]`` half-widths
    above the median (below it for odd i), and windows whose targets reach T or later with actuals
    ``ratio_after`` half-widths above it."""
    before = pd.date_range(T - pd.Timedelta(days=3), T - H * STEP, freq=STEP)
    after = pd.date_range(T - (H - 1) * STEP, T + pd.Timedelta(days=1), freq=STEP)
    signs = np.where(np.arange(len(before)) % 2 == 0, 1.0, -1.0)
    actual = np.concatenate(
        [
            100 + 10 * (ratio_before(len(before)) * signs)[:, None] * np.ones(H),
            np.full((len(after), H), 100 + 10 * ratio_after),
        ]
    )
    cutoffs = before.append(after)
    return RecentForecasts(bands(len(cutoffs)), actual, ["s"] * len(cutoffs), cutoffs)


def test_each_cutoff_is_refitted_on_windows_whose_targets_it_knows():
    recent = recent_forecasts(lambda n: np.linspace(0, 2, n), ratio_after=50.0)  # a leak would push the factor up
    out, counts = recalibrate(bands(1), ["s"], pd.DatetimeIndex([T]), recent, LEVELS, days=3, freq="30min")
    assert counts == {"refitted": 1, "kept": 0}
    known = recent.actual[recent.cutoffs + H * STEP <= T]
    upper, lower = out[0, 0, 2], out[0, 0, 0]
    assert (known <= upper).mean() >= 0.9 > (known <= upper - 10 * 2 * QuantileCalibration.BIN_WIDTH).mean()
    assert (known >= lower).mean() >= 0.9 > (known >= lower + 10 * 2 * QuantileCalibration.BIN_WIDTH).mean()
    assert upper < 100 + 10 * 2  # none of the later windows (50 half-widths away) counted
    np.testing.assert_array_equal(out[0, :, 1], 100.0)  # the median never moves
    assert (np.diff(out, axis=-1) >= 0).all()


def test_a_cutoff_with_too_few_known_windows_keeps_its_bands():
    recent = recent_forecasts(lambda n: np.linspace(0, 2, n), ratio_after=50.0)
    early = T - pd.Timedelta(days=3) + (QuantileCalibration.MIN_WINDOWS - 2 + H) * STEP  # 19 windows end before it
    out, counts = recalibrate(
        bands(2), ["s", "other"], pd.DatetimeIndex([early, T]), recent, LEVELS, days=3, freq="30min"
    )
    assert counts == {"refitted": 0, "kept": 2}  # 'other' has no windows at all
    np.testing.assert_array_equal(out, bands(2))


def test_windows_with_unknown_actuals_are_not_fitted_on():
    recent = recent_forecasts(lambda n: np.ones(n), ratio_after=1.0)
    recent.actual[::3, 1] = np.nan  # a third of them: a gap in their targets
    out, _ = recalibrate(bands(1), ["s"], pd.DatetimeIndex([T]), recent, LEVELS, days=3, freq="30min")
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[0, :, 2], 110.0, atol=10 * 2 * QuantileCalibration.BIN_WIDTH)


def test_calibration_cutoffs_cover_the_days_before_the_first_cutoff_up_to_the_last_known_targets():
    cutoffs = pd.DatetimeIndex([T, T + pd.Timedelta(days=1)])
    at = calibration_cutoffs(cutoffs, days=2, freq="30min", horizon=H)
    assert at[0] == T - pd.Timedelta(days=2) and at[-1] == T + pd.Timedelta(days=1) - H * STEP
    assert all(b - a == STEP for a, b in zip(at, at[1:]))
    assert calibration_cutoffs(pd.DatetimeIndex([T]), days=0.01, freq="30min", horizon=H) == []


def test_windows_older_than_the_days_asked_for_are_not_fitted_on():
    recent = recent_forecasts(lambda n: np.linspace(0, 2, n), ratio_after=1.0)
    older = recent.cutoffs < T - pd.Timedelta(days=2)  # the first day of the three
    recent.actual[older] = 100 + 10 * 50.0  # would push the upper factor to the cap
    out, counts = recalibrate(bands(1), ["s"], pd.DatetimeIndex([T]), recent, LEVELS, days=2, freq="30min")
    assert counts["refitted"] == 1 and out[0, 0, 2] < 100 + 10 * 2


def test_days_are_rounded_down_to_whole_slots_on_the_grid():
    at = calibration_cutoffs(pd.DatetimeIndex([T]), days=1.3, freq="30min", horizon=H)
    assert at[0] == T - 62 * STEP  # 1.3 days = 62.4 slots
    assert all((t - T) % STEP == pd.Timedelta(0) for t in at)


def test_a_recalibration_over_the_window_limit_is_refused():
    with pytest.raises(ConfigError, match="extra windows"):
        calibration_cutoffs(pd.DatetimeIndex([T]), days=14, freq="30min", horizon=H, series=1_000)
