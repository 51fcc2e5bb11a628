"""Backtest scores merged from per-block sums equal the in-memory scoring of every window at once."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest

from lit_forecast.evaluation import backtest as bt
from lit_forecast.evaluation.aggregates import ScoreSums, baseline_sums, block_sums, finalize, method_sums, window_sums
from lit_forecast.evaluation.baselines import seasonal_naive_lags

H, P = 6, 14
LEVELS = [0.1, 0.5, 0.9]
LAGS = seasonal_naive_lags(2)  # daily 2 slots, weekly 14


def fleet(seed: int = 0):
    """Windows of 5 series at 4 cutoffs with some windows skipped, unknown actuals, zero actuals,
    a series without a MASE scale and one whose baselines have no residual quantiles."""
    rng = np.random.default_rng(seed)
    cutoffs = pd.date_range("2024-03-01", periods=4, freq="1D")
    ids, at = [], []
    for k, sid in enumerate(["a", "b", "c", "d", "e"]):
        for j, c in enumerate(cutoffs):
            if (k + j) % 5 == 3:  # a skipped window: the plain path never cuts it
                continue
            ids.append(sid)
            at.append(c)
    n = len(ids)
    actual = rng.poisson(20, size=(n, H)).astype(np.float64)
    actual[rng.random((n, H)) < 0.1] = 0.0
    actual[-1, 3:] = np.nan  # past the end of the data
    actual[2, :] = np.nan
    history = rng.poisson(20, size=(n, P)).astype(np.float64)
    quantiles = np.sort(rng.normal(20, 6, size=(n, H, len(LEVELS))), axis=-1)
    quantiles[4, 1, 0] = np.nan  # a non-finite quantile drops that point from the quantile scores only
    forecast = quantiles[..., 1].copy()
    forecast[5, 2] = np.nan
    scales = {"a": 3.0, "b": 4.5, "c": float("nan"), "d": 2.0, "e": 7.0}
    residuals = {sid: {name: list(np.sort(rng.normal(0, 3, len(LEVELS)))) for name in LAGS} for sid in scales}
    residuals["d"]["naive_daily"] = [float("nan")] * len(LEVELS)
    return forecast, history, actual, ids, pd.DatetimeIndex(at), scales, quantiles, residuals


def assert_close(got, want, path="table"):
    """Nested dicts/lists of numbers equal to tolerance, NaN equal to NaN."""
    if isinstance(want, dict):
        assert set(got) == set(want), f"{path}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{path}[{i}]")
    elif isinstance(want, (float, np.floating)):
        assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want, rel=1e-12, abs=1e-12), (
            f"{path}: {got} != {want}"
        )
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def in_memory(forecast, history, actual, ids, cutoffs, scales, quantiles, residuals):
    table = bt.backtest(forecast, history, actual, ids, cutoffs, scales, LAGS, quantiles, LEVELS, residuals)
    zones = bt.per_series(forecast, history, actual, ids, scales, LAGS)
    return table, zones


def merged(blocks, forecast, history, actual, ids, cutoffs, scales, quantiles, residuals) -> ScoreSums:
    total = ScoreSums(H, LEVELS)
    for rows in blocks:
        part = block_sums(
            forecast[rows],
            history[rows],
            actual[rows],
            [ids[i] for i in rows],
            cutoffs[rows],
            scales,
            LAGS,
            quantiles[rows],
            LEVELS,
            residuals,
        )
        total = total.merge(pickle.loads(pickle.dumps(part)))  # sums cross process boundaries
    return total


@pytest.mark.parametrize("blocks", [1, 3, 7])
def test_merged_block_sums_equal_the_in_memory_backtest(blocks):
    data = fleet()
    table, zones = in_memory(*data)
    rng = np.random.default_rng(blocks)
    order = rng.permutation(len(data[3]))  # blocks in any order, a series spread over several
    sums = merged(np.array_split(order, blocks), *data)
    got_table, got_zones = finalize(sums, LAGS)
    assert got_table["windows"] == len(data[3]) == 16
    assert_close(got_table, table)
    pd.testing.assert_frame_equal(got_zones, zones, check_exact=False, rtol=1e-12, check_dtype=False)
    got_table["fleet"], table["fleet"] = bt.fleet_summary(got_zones), bt.fleet_summary(zones)
    assert_close(got_table["fleet"], table["fleet"])
    assert got_table["fleet"]["worst"][0]["series_id"] in {"a", "b", "d", "e"}  # c has no scale, so no MASE


def test_methods_scored_in_different_blocks_merge_into_the_same_table():
    """The baselines scored where windows are cut, the model where it forecasts: the counts once."""
    forecast, history, actual, ids, cutoffs, scales, quantiles, residuals = fleet(1)
    table, zones = in_memory(forecast, history, actual, ids, cutoffs, scales, quantiles, residuals)
    cut = window_sums(actual, ids, cutoffs, H, LEVELS)
    cut.methods = baseline_sums(history, actual, ids, scales, LAGS, LEVELS, residuals)
    cut.mase_scale, cut.residuals = scales, residuals
    model = ScoreSums(H, LEVELS)
    for rows in np.array_split(np.arange(len(ids)), 2):
        scale = np.array([scales[ids[i]] for i in rows])
        part = method_sums(forecast[rows], actual[rows], [ids[i] for i in rows], scale, quantiles[rows], LEVELS)
        model = model.merge(ScoreSums(H, LEVELS, {bt.MODEL: part}))
    got_table, got_zones = finalize(model.merge(cut), LAGS)
    assert_close(got_table, table)
    pd.testing.assert_frame_equal(got_zones, zones, check_exact=False, rtol=1e-12, check_dtype=False)


def test_exact_values_of_a_tiny_block():
    """MAE 1.5 and RMSE sqrt(2.5) of errors 1 and 2; MAPE skips the zero actual; sMAPE 0/0 is 0."""
    forecast = np.array([[11.0, 0.0], [2.0, 4.0]])
    actual = np.array([[10.0, 0.0], [0.0, np.nan]])
    sums = window_sums(actual, ["x", "x"], pd.DatetimeIndex(["2024-01-01", "2024-01-02"]), 2, None)
    sums.methods = {name: method_sums(forecast, actual, ["x", "x"], np.array([2.0, 2.0])) for name in (bt.MODEL, *LAGS)}
    sums.mase_scale = {"x": 2.0}
    table, zones = finalize(sums, LAGS)
    model = table["methods"][bt.MODEL]
    assert model["points"] == 3
    assert model["overall"]["mae"] == pytest.approx(1.0)  # errors 1, 0, 2
    assert model["overall"]["rmse"] == pytest.approx(np.sqrt(5 / 3))
    assert model["overall"]["mape"] == pytest.approx(0.1)  # only 11 vs 10
    assert model["by_step"]["smape"] == pytest.approx([(2 / 21 + 2 * 2 / 2) / 2, 0.0])
    assert zones.loc[0, "mae_model"] == pytest.approx(1.0) and zones.loc[0, "mase_model"] == pytest.approx(0.5)
    assert zones.loc[0, "windows"] == 2 and zones.loc[0, "mean_actual"] == pytest.approx(10 / 3)


def test_sums_do_not_grow_with_windows():
    """The merged sums of 10x the windows of the same series are no larger once pickled (within a few bytes)."""
    forecast, history, actual, ids, cutoffs, scales, quantiles, residuals = fleet(2)
    one = merged([np.arange(len(ids))], forecast, history, actual, ids, cutoffs, scales, quantiles, residuals)
    ten = one
    for _ in range(9):
        ten = ten.merge(one)
    assert ten.windows == 10 * one.windows
    assert abs(len(pickle.dumps(ten)) - len(pickle.dumps(one))) < 64
