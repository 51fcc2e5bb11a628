"""Seasonal-naive forecasts: tomorrow looks like today, or like the same day last week.

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
