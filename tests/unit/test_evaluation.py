"""Metrics, seasonal-naive baselines, the backtest table and plots, checked against hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from lit_forecast.console import format_backtest
from lit_forecast.evaluation.backtest import backtest, save_table, training_scale
from lit_forecast.evaluation.baselines import (
    residual_quantiles,
    seasonal_naive,
    seasonal_naive_lags,
    seasonal_naive_quantiles,
)
from lit_forecast.evaluation.metrics import evaluate, quantile_scores, seasonal_naive_mae
from lit_forecast.evaluation.plots import interval_bands, plot_forecast


def test_seasonal_naive_takes_the_value_one_lag_back_and_repeats_the_last_season():
    history = np.arange(10.0)[None, :] * np.array([[1.0], [10.0]])  # (2, 10): slot i holds i (and 10 i)
    forecast = seasonal_naive(history, horizon=7, lag=3)
    # step k forecasts slot c + k with slot c + k - 3, i.e. history index 7 + (k mod 3)
    np.testing.assert_array_equal(forecast[0], [7, 8, 9, 7, 8, 9, 7])
    np.testing.assert_array_equal(forecast[1], [70, 80, 90, 70, 80, 90, 70])


def test_seasonal_naive_needs_a_full_season_of_history():
    with pytest.raises(ValueError, match="lag 5 needs 5 values"):
        seasonal_naive(np.zeros((1, 4)), horizon=2, lag=5)


def test_baseline_metrics_equal_a_hand_computation():
    history = np.array([[1.0, 2.0, 3.0, 4.0]])
    forecast = seasonal_naive(history, horizon=3, lag=2)  # [3, 4, 3]
    actual = np.array([[4.0, 2.0, 6.0]])  # errors -1, 2, -3
    scale = seasonal_naive_mae(np.array([1.0, 2.0, 4.0, 8.0]), lag=2)  # |4-1|, |8-2| -> 4.5
    assert scale == 4.5
    result = evaluate(forecast, actual, np.array([scale]))
    overall = result["overall"]
    assert overall["mae"] == pytest.approx(2.0)
    assert overall["rmse"] == pytest.approx(math.sqrt(14 / 3))
    assert overall["mape"] == pytest.approx((1 / 4 + 2 / 2 + 3 / 6) / 3)
    assert overall["smape"] == pytest.approx((2 * 1 / 7 + 2 * 2 / 6 + 2 * 3 / 9) / 3)
    assert overall["mase"] == pytest.approx(2.0 / 4.5)
    assert result["by_step"]["mae"] == pytest.approx([1.0, 2.0, 3.0])
    assert result["points"] == 3


def test_unknown_actuals_are_left_out_per_step_and_overall():
    forecast = np.array([[10.0, 10.0], [10.0, 10.0]])
    actual = np.array([[12.0, np.nan], [16.0, np.nan]])
    result = evaluate(forecast, actual, np.array([1.0, 2.0]))
    assert result["overall"]["mae"] == pytest.approx(4.0)
    assert result["overall"]["mase"] == pytest.approx((2 / 1 + 6 / 2) / 2)  # each window's own series scale
    assert result["by_step"]["mae"][0] == pytest.approx(4.0) and math.isnan(result["by_step"]["mae"][1])
    assert result["points"] == 2


def test_backtest_scores_model_and_baselines_on_the_same_windows():
    # A daily profile plus a trend of 0.01 per slot: the daily naive is off by 48 x 0.01 = 0.48
    # at every step, the weekly naive by 336 x 0.01 = 3.36, and the in-sample weekly MAE is 3.36.
    t = np.arange(4 * 336, dtype=np.float64)
    values = 100 + 20 * np.sin(2 * np.pi * t / 48) + 0.01 * t
    times = pd.date_range("2024-01-01", periods=len(t), freq="30min")
    scale = training_scale(values, times, times[2 * 336], 336)
    assert scale == pytest.approx(3.36)
    H, cutoffs = 48, [2 * 336 + 48 * i for i in range(5)]
    history = np.stack([values[c - 336 : c] for c in cutoffs])
    actual = np.stack([values[c : c + H] for c in cutoffs])
    table = backtest(
        actual + 1.0,
        history,
        actual,
        ["0"] * 5,
        pd.DatetimeIndex(times[cutoffs]),
        {"0": scale},
        seasonal_naive_lags(48),
    )
    methods = table["methods"]
    assert methods["model"]["overall"]["mae"] == pytest.approx(1.0)
    assert methods["naive_daily"]["overall"]["mae"] == pytest.approx(0.48)
    assert methods["naive_weekly"]["overall"]["mae"] == pytest.approx(3.36)
    assert methods["naive_weekly"]["overall"]["mase"] == pytest.approx(1.0)
    assert methods["model"]["by_step"]["rmse"] == pytest.approx([1.0] * H)
    assert table["mae_ratio_model_vs_naive_weekly"] == pytest.approx(1 / 3.36)
    assert table["windows"] == 5 and len(table["cutoffs"]) == 5
    text = format_backtest(table)
    assert "naive_weekly" in text and "0.298" in text


def test_saved_table_is_json_with_nulls_for_unknown_values(tmp_path):
    table = {"methods": {"model": {"overall": {"mae": float("nan")}}}}
    save_table(str(tmp_path / "t.json"), table)
    assert json.loads((tmp_path / "t.json").read_text()) == {"methods": {"model": {"overall": {"mae": None}}}}


def test_plot_writes_one_png(tmp_path):
    history = pd.Series(np.arange(336.0), index=pd.date_range("2024-01-01", periods=336, freq="30min"))
    future = pd.date_range("2024-01-08", periods=48, freq="30min")
    path = tmp_path / "plot.png"
    quantiles = np.stack([np.zeros(48), np.ones(48), 2 * np.ones(48)], axis=1)
    bands = interval_bands(quantiles, [0.1, 0.5, 0.9], future)
    assert list(bands) == ["80 % interval"] and bands["80 % interval"][1].iloc[0] == 2.0
    plot_forecast(
        str(path),
        history,
        pd.Series(np.ones(48), index=future),
        pd.Series(np.ones(48), index=future),
        {"model": [1.0] * 48, "naive_weekly": [2.0] * 48},
        "test",
        bands=bands,
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- quantiles ---------------------------------------------------------------------------------------


def test_quantile_scores_equal_a_hand_computation():
    levels = [0.1, 0.5, 0.9]
    quantiles = np.array([[[8.0, 10.0, 12.0], [0.0, 1.0, 2.0]], [[5.0, 6.0, 7.0], [1.0, 2.0, 3.0]]])  # (2, 2, 3)
    actual = np.array([[13.0, 1.0], [6.0, np.nan]])  # the unknown actual is left out
    # pinball per point and level: q (y - f) above, (1 - q) (f - y) below
    pinball = np.array([[0.5, 1.5, 0.9], [0.1, 0.0, 0.1], [0.1, 0.0, 0.1]])  # y=13 on row 1; y=1 on row 2; y=6 on 5,6,7
    scores = quantile_scores(quantiles, actual, levels)
    assert scores["overall"]["wql"] == pytest.approx((2 * pinball.sum(axis=0) / 20.0).mean())
    assert scores["overall"]["coverage_80"] == pytest.approx(2 / 3)  # 13 outside [8, 12]; 1 in [0, 2]; 6 in [5, 7]
    assert scores["by_step"]["coverage_80"] == pytest.approx([0.5, 1.0])
    assert scores["by_step"]["wql"][1] == pytest.approx((2 * pinball[1] / 1.0).mean())


def test_naive_quantiles_add_the_in_sample_residual_quantiles():
    values = np.array([0.0, 0.0, 1.0, 2.0, 3.0, 0.0])  # lag-2 residuals: 1, 2, 2, -2
    np.testing.assert_allclose(residual_quantiles(values, 2, [0.0, 0.5, 1.0]), [-2.0, 1.5, 2.0])
    history = np.array([[1.0, 2.0, 3.0, 4.0]])
    bands = seasonal_naive_quantiles(history, 3, 2, np.array([[-1.0, 0.0, 1.0]]))
    np.testing.assert_array_equal(bands[0], [[2, 3, 4], [3, 4, 5], [2, 3, 4]])  # naive 3, 4, 3 plus -1, 0, 1


def test_backtest_scores_quantiles_of_model_and_baselines():
    t = np.arange(4 * 336, dtype=np.float64)
    values = 100 + 20 * np.sin(2 * np.pi * t / 48)
    times = pd.date_range("2024-01-01", periods=len(t), freq="30min")
    H, cutoffs, levels = 48, [2 * 336 + 48 * i for i in range(5)], [0.1, 0.5, 0.9]
    history = np.stack([values[c - 336 : c] for c in cutoffs])
    actual = np.stack([values[c : c + H] for c in cutoffs])
    quantiles = actual[..., None] + np.array([-1.0, 0.0, 1.0])  # always covers, median exact: wQL from the tails only
    residuals = {"0": {"naive_daily": [-2.0, 0.0, 2.0], "naive_weekly": [-4.0, 0.0, 4.0]}}
    table = backtest(
        actual,
        history,
        actual,
        ["0"] * 5,
        pd.DatetimeIndex(times[cutoffs]),
        {"0": 1.0},
        seasonal_naive_lags(48),
        quantiles,
        levels,
        residuals,
    )
    model, weekly = table["methods"]["model"]["overall"], table["methods"]["naive_weekly"]["overall"]
    tails = 2 * (0.1 + 0.1) * actual.size / np.abs(actual).sum() / 3  # pinball 0.1 at q0.1 and q0.9, 0 at the median
    assert model["coverage_80"] == 1.0 and model["wql"] == pytest.approx(tails)
    assert weekly["coverage_80"] == 1.0 and weekly["wql"] == pytest.approx(
        4 * tails
    )  # naive exact, tails 4 away: 0.1 x 4
    assert table["wql_ratio_model_vs_naive_weekly"] == pytest.approx(0.25)
    text = format_backtest(table)
    assert "COVER80" in text and "100.0" in text and "model wQL / weekly-naive wQL = 0.250" in text


def test_score_backtest_on_increasing_series_equals_a_hand_computation():
    """Series a holds i at slot i, series b 2 i: every weekly seasonal-naive error is one week of slots (336, 672)."""
    from lit_forecast.evaluation.scoring import score_backtest

    times = pd.date_range("2024-01-01", periods=3 * 336, freq="30min")
    values = {"a": np.arange(3 * 336, dtype=np.float64), "b": 2 * np.arange(3 * 336, dtype=np.float64)}
    lags, H, P = seasonal_naive_lags(48), 4, 336
    rows = [(sid, c) for sid in ("a", "b") for c in (700, 800)]
    actual = np.array([values[sid][c : c + H] for sid, c in rows])
    history = np.array([values[sid][c - P : c] for sid, c in rows])
    offset = np.array([[1.0] if sid == "a" else [2.0] for sid, _ in rows])
    series_ids, cutoffs = [sid for sid, _ in rows], pd.DatetimeIndex([times[c] for _, c in rows])
    scores = score_backtest(
        actual + offset,
        actual,
        history,
        series_ids,
        cutoffs,
        {sid: (v, times) for sid, v in values.items()},
        times[2 * 336],
        lags,
    )
    table = scores.table
    assert table["mase_scale"] == {"a": 336.0, "b": 672.0}  # |v[t] - v[t - 336]| before train_end
    assert table["methods"]["model"]["overall"]["mae"] == pytest.approx(1.5)  # errors 1 (a) and 2 (b)
    assert table["methods"]["model"]["overall"]["mase"] == pytest.approx(1 / 336)
    assert table["methods"]["naive_weekly"]["overall"]["mase"] == pytest.approx(1.0)
    assert table["mae_ratio_model_vs_naive_weekly"] == pytest.approx(1.5 / 504)
    zones = scores.per_series
    assert list(zones["series_id"]) == ["a", "b"] and list(zones["windows"]) == [2, 2]
    assert zones["mase_model"].tolist() == pytest.approx([1 / 336, 1 / 336])
    assert zones["mae_naive_weekly"].tolist() == pytest.approx([336.0, 672.0])
    assert table["fleet"]["series"] == 2 and table["fleet"]["share_model_beats_naive_weekly"] == 1.0

    one = score_backtest(
        (actual + offset)[:2],
        actual[:2],
        history[:2],
        series_ids[:2],
        cutoffs[:2],
        {sid: (v, times) for sid, v in values.items()},
        times[2 * 336],
        lags,
    )
    assert one.per_series is None and "fleet" not in one.table and one.table["series"] == ["a"]
