"""Rolling-origin backtest: the model and the seasonal-naive baselines scored on the same cutoffs.

Every method forecasts the same N windows (one per series and cutoff) from the same history,
and is scored by the same code (:func:`lit_forecast.evaluation.metrics.evaluate`). MASE divides
by each series' in-sample weekly seasonal-naive MAE on its training period.

With quantile levels, every method is also scored by its weighted quantile loss and the
coverage of its central intervals (:func:`lit_forecast.evaluation.metrics.quantile_scores`):
the model by its own quantiles, each seasonal-naive baseline by its forecast plus the
empirical quantiles of its in-sample residuals on the training period (per series, pooled
over slots; see :func:`lit_forecast.evaluation.baselines.residual_quantiles`).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from lit_forecast import storage
from lit_forecast.evaluation.baselines import residual_quantiles, seasonal_naive, seasonal_naive_quantiles
from lit_forecast.evaluation.metrics import evaluate, quantile_scores, seasonal_naive_mae

log = logging.getLogger(__name__)

MODEL = "model"


def training_scale(values: np.ndarray, times: pd.DatetimeIndex, train_end: pd.Timestamp, lag: int) -> float:
    """MASE denominator of one series: in-sample lag-``lag`` seasonal-naive MAE on slots before ``train_end``.

    The project scales by the weekly seasonal-naive error: ``lag`` is one week of slots.
    """
    return seasonal_naive_mae(values[times < train_end], lag)


def baseline_residual_quantiles(
    values: np.ndarray,
    times: pd.DatetimeIndex,
    train_end: pd.Timestamp,
    first_cutoff: pd.Timestamp,
    lags: dict[str, int],
    levels: list[float],
) -> dict[str, list[float]]:
    """One series' residual quantiles per baseline (name -> Q values), from its slots before ``train_end``.

    Newer data without that period uses its history before ``first_cutoff`` instead, as MASE does.
    """
    end = train_end if (times < train_end).sum() > max(lags.values()) else first_cutoff
    quantiles = {}
    for name, lag in lags.items():
        try:
            quantiles[name] = [float(v) for v in residual_quantiles(values[times < end], lag, levels)]
        except ValueError as err:  # too little history: that baseline has no quantiles (NaN, left out of its scores)
            log.warning("%s quantiles: none (%s)", name, err)
            quantiles[name] = [float("nan")] * len(levels)
    return quantiles


def backtest(
    forecast: np.ndarray,
    history: np.ndarray,
    actual: np.ndarray,
    series_ids: list[str],
    cutoffs: pd.DatetimeIndex,
    mase_scale: dict[str, float],
    lags: dict[str, int],
    quantiles: np.ndarray | None = None,
    levels: list[float] | None = None,
    residuals: dict[str, dict[str, list[float]]] | None = None,
) -> dict:
    """Scores of the model and each seasonal-naive baseline on the same windows.

    forecast (N, H) and actual (N, H) in passengers; history (N, P) the slots before each cutoff,
    P at least the longest baseline lag; ``lags`` names each seasonal-naive baseline and its
    lag (see baselines.seasonal_naive_lags). Returns a plain dict (JSON-ready): per method the
    overall and per-step metrics, plus the model's MAE over the weekly baseline's.

    With ``levels``: ``quantiles`` (N, H, Q) the model's, ``residuals`` per series and baseline
    name the residual quantiles (:func:`baseline_residual_quantiles`); ``wql`` and the
    coverages join each method's metrics, and the model's wQL over the weekly baseline's is added.
    """
    H = forecast.shape[1]
    scale = np.array([mase_scale[sid] for sid in series_ids], dtype=np.float64)
    forecasts = {MODEL: forecast} | {name: seasonal_naive(history, H, lag) for name, lag in lags.items()}
    methods = {name: evaluate(f, actual, scale) for name, f in forecasts.items()}
    ratio = methods[MODEL]["overall"]["mae"] / methods["naive_weekly"]["overall"]["mae"]
    extra = {}
    if levels:
        bands = {MODEL: quantiles} | {
            name: seasonal_naive_quantiles(history, H, lag, np.array([residuals[sid][name] for sid in series_ids]))
            for name, lag in lags.items()
        }
        for name, q in bands.items():
            scores = quantile_scores(q, actual, levels)
            methods[name]["overall"].update(scores["overall"])
            methods[name]["by_step"].update(scores["by_step"])
        extra = {
            "levels": list(levels),
            "residual_quantiles": residuals,
            "wql_ratio_model_vs_naive_weekly": methods[MODEL]["overall"]["wql"]
            / methods["naive_weekly"]["overall"]["wql"],
        }
    return {
        "windows": len(forecast),
        "horizon": H,
        "cutoffs": [str(c) for c in cutoffs.unique()],
        "series": sorted(set(series_ids)),
        "mase_scale": {sid: mase_scale[sid] for sid in sorted(set(series_ids))},
        "lags": dict(lags),
        "methods": methods,
        "mae_ratio_model_vs_naive_weekly": ratio,
        **extra,
    }


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


def mase_scales(
    series: dict[str, tuple[np.ndarray, pd.DatetimeIndex]],
    train_end: pd.Timestamp,
    first_cutoff: dict[str, pd.Timestamp],
    week: int,
) -> dict[str, float]:
    """Every series' MASE denominator (:func:`training_scale` with a one-week lag), with one log line per kind
    of fallback (not one per series).

    ``series``: {series_id: (values (T,) passengers with short gaps filled, their timestamps)};
    ``first_cutoff``: each series' first forecast cutoff (a series with less than a week before
    ``train_end`` is scaled on its data before it).
    """
    scales, moved, none = {}, [], []
    for sid, (values, times) in series.items():
        end = train_end
        if (times < end).sum() <= week:
            moved.append(sid)
            end = first_cutoff[sid]
        try:
            scales[sid] = training_scale(values, times, end, week)
        except ValueError:
            none.append(sid)
            scales[sid] = float("nan")
    if moved:
        log.warning(
            "MASE: %d series (%s) have less than a week of data before data.train_end=%s, so they are scaled "
            "on their data before their first cutoff",
            len(moved),
            _few(moved),
            train_end,
        )
    if none:
        log.warning(
            "MASE: %d series (%s) have no weekly seasonal-naive error to scale by: their MASE is NaN",
            len(none),
            _few(none),
        )
    return scales


def per_series(
    forecast: np.ndarray,
    history: np.ndarray,
    actual: np.ndarray,
    series_ids: list[str],
    mase_scale: dict[str, float],
    lags: dict[str, int],
) -> pd.DataFrame:
    """One row per series: its windows, mean actual, MASE scale, and MAE, sMAPE and MASE of every method.

    Arrays as in :func:`backtest`. Each metric pools the series' known points over all its
    windows (the pooled metrics of the table, restricted to one series). Sorted by series id.
    """
    H = forecast.shape[1]
    codes, names = pd.factorize(np.asarray(series_ids), sort=True)
    known = np.isfinite(actual)
    points = np.bincount(codes, weights=known.sum(axis=1), minlength=len(names))

    def per_id(values: np.ndarray) -> np.ndarray:  # mean of (N, H) point values over each series' known points
        summed = np.bincount(
            codes, weights=np.where(known & np.isfinite(values), values, 0.0).sum(axis=1), minlength=len(names)
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            return summed / points

    scale = np.array([mase_scale[sid] for sid in names], dtype=np.float64)
    columns = {
        "series_id": names,
        "windows": np.bincount(codes, minlength=len(names)),
        "mean_actual": per_id(actual),
        "mase_scale": scale,
    }
    forecasts = {MODEL: forecast} | {name: seasonal_naive(history, H, lag) for name, lag in lags.items()}
    for name, f in forecasts.items():
        error = np.abs(f - actual)
        denominator = np.abs(actual) + np.abs(f)
        with np.errstate(divide="ignore", invalid="ignore"):
            smape = np.where(denominator > 0, 2 * error / denominator, 0.0)
        columns[f"mae_{name}"] = per_id(error)
        columns[f"smape_{name}"] = per_id(smape)
        with np.errstate(divide="ignore", invalid="ignore"):
            columns[f"mase_{name}"] = columns[f"mae_{name}"] / scale
    return pd.DataFrame(columns)


def fleet_summary(zones: pd.DataFrame, worst: int = 10) -> dict:
    """Over series: mean and median MASE of every method, the share where the model beats the
    weekly seasonal-naive forecast (lower MASE, i.e. lower MAE on the same windows), and the
    ``worst`` series by model MASE. ``zones``: :func:`per_series`. Plain values (JSON-ready)."""
    methods = [c.removeprefix("mase_") for c in zones.columns if c.startswith("mase_") and c != "mase_scale"]
    scored = zones[np.isfinite(zones[f"mase_{MODEL}"]) & np.isfinite(zones["mase_naive_weekly"])]
    ranked = zones[np.isfinite(zones[f"mase_{MODEL}"])].sort_values(f"mase_{MODEL}", ascending=False, kind="stable")
    return {
        "series": len(zones),
        "series_scored": len(scored),
        "mase_mean": {
            m: float(np.nanmean(zones[f"mase_{m}"])) if zones[f"mase_{m}"].notna().any() else float("nan")
            for m in methods
        },
        "mase_median": {
            m: float(np.nanmedian(zones[f"mase_{m}"])) if zones[f"mase_{m}"].notna().any() else float("nan")
            for m in methods
        },
        "share_model_beats_naive_weekly": float((scored[f"mase_{MODEL}"] < scored["mase_naive_weekly"]).mean())
        if len(scored)
        else float("nan"),
        "worst": [
            {
                "series_id": r.series_id,
                "mase_model": float(r.mase_model),
                "mase_naive_weekly": float(r.mase_naive_weekly),
                "mae_model": float(r.mae_model),
                "mean_actual": float(r.mean_actual),
            }
            for r in ranked.head(worst).itertuples()
        ],
    }


def _few(ids: list[str], shown: int = 3) -> str:
    return ", ".join(map(repr, ids[:shown])) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")
