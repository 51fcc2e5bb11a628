"""Scoring a backtest: forecasts, actuals and history in, the backtest table and per-series scores out.

The one scorer of every backtest: ``infer.py``, bench/accuracy.py (through it) and the LightGBM
peer in bench/peers.py. The model and the seasonal-naive baselines are scored on the same
windows (:func:`lit_forecast.evaluation.backtest.backtest`); MASE is scaled per series by its
weekly seasonal-naive in-sample error before ``train_end`` (:func:`~.backtest.mase_scales`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from lit_forecast.evaluation import backtest as bt


@dataclass
class Scores:
    """What :func:`score_backtest` returns."""

    table: dict  # the backtest table, JSON-ready; for several series also "fleet" (fleet_summary)
    per_series: pd.DataFrame | None  # one row per series (backtest.per_series) when several series are scored


def score_backtest(
    forecast: np.ndarray,
    actual: np.ndarray,
    history: np.ndarray,
    series_ids: list[str],
    cutoffs: pd.DatetimeIndex,
    series_history: dict[str, tuple[np.ndarray, pd.DatetimeIndex]],
    train_end: pd.Timestamp,
    lags: dict[str, int],
    quantiles: np.ndarray | None = None,
    levels: list[float] | None = None,
) -> Scores:
    """Score N windows (one per series and cutoff) of the model against the seasonal-naive baselines.

    forecast (N, H) the point forecast and actual (N, H), passengers (NaN where unknown);
    history (N, P) the slots before each cutoff, P at least the longest of ``lags`` (baseline
    name -> lag in slots, see baselines.seasonal_naive_lags, with ``naive_weekly``);
    ``series_history``: every scored series' values (T,) with short gaps filled and their
    timestamps, for its MASE scale and the baselines' residual quantiles. A series with less
    than a week before ``train_end`` is scaled on its data before its first cutoff instead.
    With ``levels``: ``quantiles`` (N, H, Q) the model's, scored by wQL and coverage too.
    """
    first = pd.Series(cutoffs, index=series_ids).groupby(level=0).min().to_dict()  # per series
    scored = {sid: series_history[sid] for sid in series_history if sid in first}
    scales = bt.mase_scales(scored, train_end, first, lags["naive_weekly"])
    residuals = (
        {
            sid: bt.baseline_residual_quantiles(values, times, train_end, first[sid], lags, levels)
            for sid, (values, times) in scored.items()
        }
        if levels
        else None
    )
    table = bt.backtest(forecast, history, actual, series_ids, cutoffs, scales, lags, quantiles, levels, residuals)
    per_series = None
    if len(scored) > 1:  # a fleet: scores per series, their spread and the worst ones
        per_series = bt.per_series(forecast, history, actual, series_ids, scales, lags)
        table["fleet"] = bt.fleet_summary(per_series)
    return Scores(table, per_series)
