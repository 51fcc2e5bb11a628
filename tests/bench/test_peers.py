"""bench.peers: lag features aligned exactly (increasing integers), the same at training and at cutoffs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench import peers
from lit_forecast.data.source import Series
from lit_forecast.inference.cutoffs import build_windows
from lit_forecast.spec import SeriesStats, WindowSpec

FREQ = "30min"
START = pd.Timestamp("2024-01-01")  # a Monday


def increasing(days: int) -> tuple[np.ndarray, pd.DatetimeIndex]:
    """Slot i holds the value i."""
    values = np.arange(days * 48, dtype=np.float64)
    return values, pd.date_range(START, periods=len(values), freq=FREQ)


def test_lag_k_of_the_window_at_cutoff_c_is_value_c_minus_k_and_targets_are_c_onwards():
    values, times = increasing(days=10)
    train_end = START + pd.Timedelta("8D")  # slot 384
    x, y = peers.training_windows(values, times, FREQ, train_end)
    cutoffs = x[:, 0] + 1  # lag 1 = value[c - 1] = c - 1
    np.testing.assert_array_equal(cutoffs, np.arange(168, 384 - 48 + 1))  # first with all lags, last with c + 47 < 384
    for j, k in enumerate(peers.LAGS):
        np.testing.assert_array_equal(x[:, j], cutoffs - k)
    np.testing.assert_array_equal(y, cutoffs[:, None] + np.arange(48)[None, :])
    assert y.max() == 383  # no target slot at or after train_end
    np.testing.assert_array_equal(x[:, -2], cutoffs % 48)  # slot of day of the first forecast slot
    np.testing.assert_array_equal(x[:, -1], (cutoffs // 48) % 7)  # day of week, Monday 0
    assert peers.training_windows(values, times, FREQ, train_end, stride=5)[0].shape[0] == len(range(168, 337, 5))


def test_features_at_cutoffs_equal_the_training_features_of_the_same_window():
    values, times = increasing(days=12)
    cutoffs = [START + pd.Timedelta("9D"), START + pd.Timedelta("10D 6h")]  # slots 432 and 492
    windows, _ = build_windows(
        [Series("0", START, values)], {"0": SeriesStats(0.0, 1.0)}, WindowSpec(168, 48, FREQ), cutoffs, history=336
    )
    calendar = windows.batch(slice(None))["future_time"][:, 0].numpy()
    at_cutoffs = peers.lag_features(windows.history(slice(None), 336), calendar)
    x, _ = peers.training_windows(values, times, FREQ, times[-1] + pd.Timedelta(FREQ))
    first = 168  # training row i is the window at cutoff 168 + i
    np.testing.assert_array_equal(at_cutoffs, x[[432 - first, 492 - first]])


def test_global_features_divide_the_lags_by_the_series_mean_and_append_it():
    values, times = increasing(days=8)
    x, _ = peers.training_windows(values, times, FREQ, times[-1])
    scaled = peers.with_mean(x[:2], np.array([2.0, 4.0], dtype=np.float32))
    np.testing.assert_allclose(scaled[:, : len(peers.LAGS)], x[:2, : len(peers.LAGS)] / np.array([[2.0], [4.0]]))
    np.testing.assert_array_equal(scaled[:, len(peers.LAGS) : -1], x[:2, len(peers.LAGS) :])  # calendar unscaled
    np.testing.assert_array_equal(scaled[:, -1], [2.0, 4.0])


def test_a_lag_beyond_the_history_is_refused():
    with pytest.raises(ValueError, match="need 168 slots"):
        peers.lag_features(np.zeros((1, 100)), np.zeros((1, 3)))


@pytest.mark.skipif(peers.lgb is None, reason="lightgbm is not installed (requirements-dev.txt)")
def test_direct_regressors_learn_a_daily_profile(monkeypatch):
    # enough for a noiseless profile (0.95^100 of it left), and fast
    monkeypatch.setitem(peers.PARAMS, "num_boost_round", 100)
    t = np.arange(28 * 48)
    values = 100.0 + 10.0 * (t % 48)  # a sawtooth: each slot of the day has its own value
    times = pd.date_range(START, periods=len(t), freq=FREQ)
    x, y = peers.training_windows(values, times, FREQ, times[21 * 48], stride=3)
    y[::7, 5] = np.nan  # unknown targets are skipped, not an error
    boosters = peers.fit(x, y, seed=0, threads=1)
    assert len(boosters) == 48
    forecast = peers.predict(boosters, x[:10], threads=1)
    assert forecast.shape == (10, 48)
    truth = 100.0 + 10.0 * ((x[:10, -2, None] + np.arange(48)) % 48)
    assert np.abs(forecast - truth).mean() < 0.1 * np.abs(truth - truth.mean()).mean()
