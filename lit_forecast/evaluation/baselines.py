"""Seasonal-naive forecasts: tomorrow looks like today (lag 48), or like the same day last week (lag 336).

With cutoff c (the first forecast slot) and lag L, step k (0-based) forecasts slot c + k with
the value of slot c + k - L. For k >= L that slot is itself in the future, so the last season
before the cutoff repeats: the value of slot c - L + (k mod L).
"""

from __future__ import annotations

import numpy as np

# Name in tables -> lag in slots of 30 min.
SEASONAL_NAIVE_LAGS = {"naive_daily": 48, "naive_weekly": 336}


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
