"""Rolling-origin backtest: the model and the seasonal-naive baselines scored on the same cutoffs.

Every method forecasts the same N windows (one per series and cutoff) from the same history,
and is scored by the same code (:func:`lit_forecast.evaluation.metrics.evaluate`). MASE divides
by each series' in-sample weekly seasonal-naive MAE on its training period.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from lit_forecast import storage
from lit_forecast.evaluation.baselines import seasonal_naive
from lit_forecast.evaluation.metrics import METRICS, evaluate, seasonal_naive_mae

MODEL = "model"
DIGITS = {"mae": 0, "rmse": 0, "mape": 1, "smape": 1, "mase": 2}  # decimals shown in the printed table
PERCENT = {"mape", "smape"}  # fractions in the JSON, percentages when printed


def training_scale(values: np.ndarray, times: pd.DatetimeIndex, train_end: pd.Timestamp, lag: int) -> float:
    """MASE denominator of one series: in-sample lag-``lag`` seasonal-naive MAE on slots before ``train_end``.

    The project scales by the weekly seasonal-naive error: ``lag`` is one week of slots.
    """
    return seasonal_naive_mae(values[times < train_end], lag)


def backtest(
    forecast: np.ndarray,
    history: np.ndarray,
    actual: np.ndarray,
    series_ids: list[str],
    cutoffs: pd.DatetimeIndex,
    mase_scale: dict[str, float],
    lags: dict[str, int],
) -> dict:
    """Scores of the model and each seasonal-naive baseline on the same windows.

    forecast (N, H) and actual (N, H) in passengers; history (N, P) the slots before each cutoff,
    P at least the longest baseline lag; ``lags`` names each seasonal-naive baseline and its
    lag (see baselines.seasonal_naive_lags). Returns a plain dict (JSON-ready): per method the
    overall and per-step metrics, plus the model's MAE over the weekly baseline's.
    """
    H = forecast.shape[1]
    scale = np.array([mase_scale[sid] for sid in series_ids], dtype=np.float64)
    forecasts = {MODEL: forecast} | {name: seasonal_naive(history, H, lag) for name, lag in lags.items()}
    methods = {name: evaluate(f, actual, scale) for name, f in forecasts.items()}
    ratio = methods[MODEL]["overall"]["mae"] / methods["naive_weekly"]["overall"]["mae"]
    return {
        "windows": len(forecast),
        "horizon": H,
        "cutoffs": [str(c) for c in cutoffs.unique()],
        "series": sorted(set(series_ids)),
        "mase_scale": {sid: mase_scale[sid] for sid in sorted(set(series_ids))},
        "lags": dict(lags),
        "methods": methods,
        "mae_ratio_model_vs_naive_weekly": ratio,
    }


def format_table(table: dict, steps: list[int] | None = None) -> str:
    """The overall table, and MAE by horizon step (1-based ``steps``; default step 1 and every 6th)."""
    H = table["horizon"]
    steps = steps or sorted({1, *range(6, H + 1, 6), H})
    names = list(table["methods"])
    lines = [
        f"backtest: {table['windows']} windows x {H} steps, cutoffs {table['cutoffs'][0]} .. {table['cutoffs'][-1]} "
        f"({len(table['cutoffs'])}); MAE/RMSE in passengers, MAPE/sMAPE in %, MASE vs weekly naive in-sample",
        f"{'method':<14}" + "".join(f"{m.upper():>10}" for m in METRICS),
    ]
    for name in names:
        overall = table["methods"][name]["overall"]
        lines.append(f"{name:<14}" + "".join(_num(overall[m] * (100 if m in PERCENT else 1), DIGITS[m]) for m in METRICS))
    lines.append(f"model MAE / weekly-naive MAE = {table['mae_ratio_model_vs_naive_weekly']:.3f}")
    lines.append("")
    lines.append("MAE by horizon step (all steps and metrics in the JSON):")
    lines.append(f"{'step':>6}" + "".join(f"{n:>14}" for n in names))
    for k in steps:
        lines.append(f"{k:>6}" + "".join(_num(table["methods"][n]["by_step"]["mae"][k - 1], 0, 14) for n in names))
    return "\n".join(lines)


def _num(value: float, digits: int, width: int = 10) -> str:
    return f"{'nan':>{width}}" if value is None or math.isnan(value) else f"{value:>{width},.{digits}f}"


def save_table(location: str, table: dict) -> None:
    """Write the table as JSON (NaN as null) to a path or URI."""
    storage.write_json(location, _nan_to_none(table))


def _nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj
