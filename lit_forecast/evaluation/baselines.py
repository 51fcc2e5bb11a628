"""Seasonal-naive forecasts: tomorrow looks like today, or like the same day last week.

Their quantiles add the empirical quantiles of the in-sample seasonal-naive residuals
(y_t - y_{t-L} on the training period, per series) to the point forecast
(:func:`residual_quantiles`, :func:`seasonal_naive_quantiles`).

With cutoff c (the first forecast slot) and lag L, step k (0-based) forecasts slot c + k with
the value of slot c + k - L. For k >= L that slot is itself in the future, so the last season
before the cutoff repeats: the value of slot c - L + (k mod L).
"""

from __future__ import annotations

import numpy as np


def seasonal_naive_lags(slots_per_day: int) -> dict[str, int]:
    """Name in tables -> lag in slots: one day and one week (48 and 336 at 30 min)."""
    return {"naive_daily": slots_per_day, "naive_weekly": 7 * slots_per_day}


def seasonal_naive(history: np.ndarray, horizon: int, lag: int) -> np.ndarray:
    """(N, P) values before each cutoff (last column = slot c - 1) -> (N, horizon) forecasts.

    Needs P >= lag; uses only the last ``lag`` columns.
    """
    if lag < 1:
        raise ValueError(f"seasonal lag must be >= 1, got {lag}")
    if history.shape[1] < lag:
        raise ValueError(f"seasonal-naive with lag {lag} needs {lag} values before the cutoff, got {history.shape[1]}")
    P = history.shape[1]
    columns = P - lag + np.arange(horizon) % lag  # slot c - L + (k mod L), as a column of history
    return history[:, columns]


def residual_quantiles(values: np.ndarray, lag: int, levels: list[float]) -> np.ndarray:
    """(Q,) empirical quantiles of the in-sample lag-``lag`` residuals y_t - y_{t-lag} of ``values`` (T,).

    Pooled over all slots, hence over horizon steps: for steps k < lag every step of the
    seasonal-naive forecast is a lag-``lag`` forecast, so its in-sample residuals are the same
    whatever the step. NaN slots are skipped.
    """
    residuals = values[lag:] - values[:-lag] if len(values) > lag else np.zeros(0)
    residuals = residuals[np.isfinite(residuals)]
    if len(residuals) == 0:
        raise ValueError(f"residual quantiles with lag {lag}: no pair of known values {lag} slots apart")
    return np.quantile(residuals, levels)


def seasonal_naive_quantiles(history: np.ndarray, horizon: int, lag: int, residual_levels: np.ndarray) -> np.ndarray:
    """(N, P) history and (N, Q) each window's series' residual quantiles -> (N, horizon, Q) quantiles."""
    return seasonal_naive(history, horizon, lag)[..., None] + residual_levels[:, None, :]
