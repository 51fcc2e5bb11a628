"""Backtest scores as mergeable sums: a fleet is scored block by block, and only sums meet.

:func:`lit_forecast.evaluation.backtest.backtest` and :func:`~lit_forecast.evaluation.backtest.per_series`
score every window at once. At fleet scale the windows never sit in one process: each block
of windows computes :class:`ScoreSums` (per method and horizon step: sums of absolute,
squared, percentage, symmetric-percentage and scaled errors with their counts, pinball
losses per quantile level, interval hits and counts; per series: its windows, known points,
sum of actuals and each method's error sums), sums are added with :meth:`ScoreSums.merge`,
and :func:`finalize` turns them into the same table and per-series frame as the in-memory
scoring, to floating-point tolerance. Their size grows with series x methods and
steps x levels, never with windows.

A method's sums can come from different blocks than another's (the streaming path scores the
seasonal-naive baselines where the windows are cut and the model where it forecasts): a
block adds the windows' counts (``count_windows``) only once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lit_forecast.evaluation.backtest import MODEL
from lit_forecast.evaluation.baselines import seasonal_naive, seasonal_naive_quantiles
from lit_forecast.evaluation.metrics import METRICS
from lit_forecast.spec import central_intervals

# Per method, arrays (H,) summed over windows: each metric's term sum and the count of its terms.
POINT_SUMS = ("abs", "sq", "ape", "ape_n", "smape", "n", "scaled", "scaled_n")
SERIES_COLUMNS = ("windows", "points", "actual")  # per series: windows, known points, sum of known actuals


@dataclass
class MethodSums:
    """One method's sums over some windows, per horizon step."""

    point: dict[str, np.ndarray]  # POINT_SUMS name -> (H,)
    pinball: np.ndarray | None = None  # (H, Q) pinball loss summed over points with an actual and finite quantiles
    abs_actual: np.ndarray | None = None  # (H,) |actual| summed over those points
    quantile_n: np.ndarray | None = None  # (H,) count of those points
    inside: np.ndarray | None = None  # (H, I) points inside each central interval
    series_abs: dict[str, float] = field(default_factory=dict)  # series -> sum |error| over its known points
    series_smape: dict[str, float] = field(default_factory=dict)  # series -> sum sMAPE term over its known points

    def merge(self, other: MethodSums) -> MethodSums:
        """The sums of both sets of windows."""

        def add(a, b):
            return b if a is None else a if b is None else a + b

        return MethodSums(
            {k: self.point[k] + other.point[k] for k in POINT_SUMS},
            add(self.pinball, other.pinball),
            add(self.abs_actual, other.abs_actual),
            add(self.quantile_n, other.quantile_n),
            add(self.inside, other.inside),
            _add_dicts(self.series_abs, other.series_abs),
            _add_dicts(self.series_smape, other.series_smape),
        )


@dataclass
class ScoreSums:
    """Everything a backtest table and its per-series frame need, as sums over windows."""

    horizon: int
    levels: list[float]
    methods: dict[str, MethodSums] = field(default_factory=dict)
    windows: int = 0
    cutoffs: set = field(default_factory=set)  # pd.Timestamp of every window scored
    series: dict[str, np.ndarray] = field(default_factory=dict)  # series -> [windows, known points, sum of actuals]
    mase_scale: dict[str, float] = field(default_factory=dict)  # series -> its MASE denominator
    residuals: dict[str, dict[str, list[float]]] = field(
        default_factory=dict
    )  # series -> baseline -> residual quantiles

    def merge(self, other: ScoreSums) -> ScoreSums:
        """The sums of both sets of windows (disjoint windows; a series may span both)."""
        if (self.horizon, list(self.levels)) != (other.horizon, list(other.levels)):
            raise ValueError(
                f"cannot merge sums of horizon {other.horizon} / levels {other.levels} into "
                f"horizon {self.horizon} / levels {self.levels}"
            )
        methods = dict(self.methods)
        for name, sums in other.methods.items():
            methods[name] = methods[name].merge(sums) if name in methods else sums
        return ScoreSums(
            self.horizon,
            list(self.levels),
            methods,
            self.windows + other.windows,
            self.cutoffs | other.cutoffs,
            _add_dicts(self.series, other.series),
            {**self.mase_scale, **other.mase_scale},
            {**self.residuals, **other.residuals},
        )


def _add_dicts(a: dict, b: dict) -> dict:
    out = dict(a)
    for key, value in b.items():
        out[key] = out[key] + value if key in out else value
    return out


def method_sums(
    forecast: np.ndarray,
    actual: np.ndarray,
    series_ids: list[str],
    scale: np.ndarray,
    quantiles: np.ndarray | None = None,
    levels: list[float] | None = None,
) -> MethodSums:
    """Sums of one method over a block: ``forecast`` and ``actual`` (n, H) passengers, ``scale`` (n,)
    each window's MASE denominator, ``quantiles`` (n, H, Q) at ``levels`` or None.

    The terms are those of :func:`lit_forecast.evaluation.metrics.evaluate` and
    :func:`~lit_forecast.evaluation.metrics.quantile_scores` (a point counts where both the actual
    and the forecast are finite; MAPE skips zero actuals; sMAPE of 0 against 0 is 0), and of
    :func:`lit_forecast.evaluation.backtest.per_series` per series.
    """
    forecast, actual = np.asarray(forecast, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    error = forecast - actual
    known = np.isfinite(actual) & np.isfinite(forecast)
    denominator = np.abs(actual) + np.abs(forecast)
    with np.errstate(divide="ignore", invalid="ignore"):
        ape = np.where(known & (actual != 0), np.abs(error) / np.abs(actual), np.nan)
        smape = np.where(denominator > 0, 2 * np.abs(error) / denominator, 0.0)
        scaled = np.where(known, np.abs(error) / np.asarray(scale, dtype=np.float64)[:, None], np.nan)

    def total(term: np.ndarray, where: np.ndarray) -> np.ndarray:
        return np.where(where, term, 0.0).sum(axis=0)

    point = {
        "abs": total(np.abs(error), known),
        "sq": total(error**2, known),
        "smape": total(smape, known),
        "n": known.sum(axis=0).astype(np.float64),
        "ape": total(ape, np.isfinite(ape)),
        "ape_n": np.isfinite(ape).sum(axis=0).astype(np.float64),
        "scaled": total(scaled, ~np.isnan(scaled)),
        "scaled_n": (~np.isnan(scaled)).sum(axis=0).astype(np.float64),
    }
    sums = MethodSums(point)
    # per_series pools each series' points where the actual is known and the term is finite.
    seen = np.isfinite(actual)
    codes, names = pd.factorize(np.asarray(series_ids, dtype=object))
    by_series = {
        "abs": np.where(seen & np.isfinite(np.abs(error)), np.abs(error), 0.0).sum(axis=1),
        "smape": np.where(seen & np.isfinite(smape), smape, 0.0).sum(axis=1),
    }
    per_abs = np.bincount(codes, weights=by_series["abs"], minlength=len(names))
    per_smape = np.bincount(codes, weights=by_series["smape"], minlength=len(names))
    sums.series_abs = {str(sid): float(v) for sid, v in zip(names, per_abs)}
    sums.series_smape = {str(sid): float(v) for sid, v in zip(names, per_smape)}
    if levels:
        quantiles = np.asarray(quantiles, dtype=np.float64)
        ok = np.isfinite(actual) & np.isfinite(quantiles).all(axis=-1)
        y = np.where(ok, actual, 0.0)
        q_values = np.where(ok[..., None], quantiles, 0.0)
        diff = y[..., None] - q_values
        q = np.asarray(levels, dtype=np.float64)
        sums.pinball = np.where(ok[..., None], np.maximum(q * diff, (q - 1) * diff), 0.0).sum(axis=0)  # (H, Q)
        sums.abs_actual = np.abs(y).sum(axis=0)
        sums.quantile_n = ok.sum(axis=0).astype(np.float64)
        intervals = central_intervals(list(levels))
        sums.inside = (
            np.stack(
                [(ok & (q_values[..., i] <= y) & (y <= q_values[..., j])).sum(axis=0) for i, j, _ in intervals], axis=1
            ).astype(np.float64)
            if intervals
            else np.zeros((actual.shape[1], 0))
        )
    return sums


def window_sums(
    actual: np.ndarray, series_ids: list[str], cutoffs, horizon: int, levels: list[float] | None
) -> ScoreSums:
    """The method-free part of a block's sums: its windows, cutoffs and per-series counts (count these once)."""
    actual = np.asarray(actual, dtype=np.float64)
    codes, names = pd.factorize(np.asarray(series_ids, dtype=object))
    seen = np.isfinite(actual)
    columns = np.stack(
        [
            np.bincount(codes, minlength=len(names)).astype(np.float64),
            np.bincount(codes, weights=seen.sum(axis=1), minlength=len(names)),
            np.bincount(codes, weights=np.where(seen, actual, 0.0).sum(axis=1), minlength=len(names)),
        ],
        axis=1,
    )
    return ScoreSums(
        horizon,
        list(levels or []),
        windows=len(actual),
        cutoffs=set(pd.DatetimeIndex(cutoffs).unique()),
        series={str(sid): columns[k] for k, sid in enumerate(names)},
    )


def baseline_sums(
    history: np.ndarray,
    actual: np.ndarray,
    series_ids: list[str],
    mase_scale: dict[str, float],
    lags: dict[str, int],
    levels: list[float] | None = None,
    residuals: dict[str, dict[str, list[float]]] | None = None,
) -> dict[str, MethodSums]:
    """Sums of every seasonal-naive baseline over a block: ``history`` (n, P) the slots before each cutoff."""
    H = actual.shape[1]
    scale = np.array([mase_scale[sid] for sid in series_ids], dtype=np.float64)
    out = {}
    for name, lag in lags.items():
        bands = (
            seasonal_naive_quantiles(history, H, lag, np.array([residuals[sid][name] for sid in series_ids]))
            if levels
            else None
        )
        out[name] = method_sums(seasonal_naive(history, H, lag), actual, series_ids, scale, bands, levels)
    return out


def block_sums(
    forecast: np.ndarray,
    history: np.ndarray,
    actual: np.ndarray,
    series_ids: list[str],
    cutoffs,
    mase_scale: dict[str, float],
    lags: dict[str, int],
    quantiles: np.ndarray | None = None,
    levels: list[float] | None = None,
    residuals: dict[str, dict[str, list[float]]] | None = None,
) -> ScoreSums:
    """All the sums of one block of windows; the arguments are those of ``backtest.backtest``."""
    sums = window_sums(actual, series_ids, cutoffs, forecast.shape[1], levels)
    scale = np.array([mase_scale[sid] for sid in series_ids], dtype=np.float64)
    sums.methods = {
        MODEL: method_sums(forecast, actual, series_ids, scale, quantiles, levels),
        **baseline_sums(history, actual, series_ids, mase_scale, lags, levels, residuals),
    }
    present = set(series_ids)
    sums.mase_scale = {sid: mase_scale[sid] for sid in present}
    sums.residuals = {sid: residuals[sid] for sid in present} if residuals is not None else {}
    return sums


def _point_metrics(sums: MethodSums) -> dict:
    """``evaluate``'s overall and per-step metrics from the sums."""
    p = sums.point
    with np.errstate(divide="ignore", invalid="ignore"):
        step = {
            "mae": p["abs"] / p["n"],
            "rmse": np.sqrt(p["sq"] / p["n"]),
            "mape": p["ape"] / p["ape_n"],
            "smape": p["smape"] / p["n"],
            "mase": p["scaled"] / p["scaled_n"],
        }
        overall = {
            "mae": p["abs"].sum() / p["n"].sum(),
            "rmse": np.sqrt(p["sq"].sum() / p["n"].sum()),
            "mape": p["ape"].sum() / p["ape_n"].sum(),
            "smape": p["smape"].sum() / p["n"].sum(),
            "mase": p["scaled"].sum() / p["scaled_n"].sum(),
        }
    return {
        "overall": {m: float(overall[m]) for m in METRICS},
        "by_step": {m: [float(v) for v in step[m]] for m in METRICS},
        "points": int(p["n"].sum()),
    }


def _quantile_metrics(sums: MethodSums, levels: list[float]) -> dict:
    """``quantile_scores``' overall and per-step scores from the sums."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = {
            "wql": {
                "overall": (2 * sums.pinball.sum(axis=0) / sums.abs_actual.sum()).mean(),
                "by_step": (2 * sums.pinball / sums.abs_actual[:, None]).mean(axis=1),
            }
        }
        for k, (_, _, name) in enumerate(central_intervals(list(levels))):
            scores[name] = {
                "overall": sums.inside[:, k].sum() / sums.quantile_n.sum(),
                "by_step": sums.inside[:, k] / sums.quantile_n,
            }
    return {
        "overall": {name: float(s["overall"]) for name, s in scores.items()},
        "by_step": {name: [float(v) for v in s["by_step"]] for name, s in scores.items()},
    }


def finalize(sums: ScoreSums, lags: dict[str, int]) -> tuple[dict, pd.DataFrame]:
    """The backtest table (as :func:`~lit_forecast.evaluation.backtest.backtest` returns it) and the
    per-series frame (as :func:`~lit_forecast.evaluation.backtest.per_series`), from merged sums.

    ``cutoffs`` lists the distinct cutoffs in time order.
    """
    order = [MODEL, *lags]
    missing = [m for m in order if m not in sums.methods]
    if missing:
        raise ValueError(f"no sums for method(s) {missing}")
    methods = {}
    for name in order:
        methods[name] = _point_metrics(sums.methods[name])
        if sums.levels:
            scores = _quantile_metrics(sums.methods[name], sums.levels)
            methods[name]["overall"].update(scores["overall"])
            methods[name]["by_step"].update(scores["by_step"])
    names = sorted(sums.series)
    table = {
        "windows": sums.windows,
        "horizon": sums.horizon,
        "cutoffs": [str(c) for c in sorted(sums.cutoffs)],
        "series": names,
        "mase_scale": {sid: sums.mase_scale[sid] for sid in names},
        "lags": dict(lags),
        "methods": methods,
        "mae_ratio_model_vs_naive_weekly": methods[MODEL]["overall"]["mae"] / methods["naive_weekly"]["overall"]["mae"],
    }
    if sums.levels:
        table |= {
            "levels": list(sums.levels),
            "residual_quantiles": {sid: sums.residuals[sid] for sid in names},
            "wql_ratio_model_vs_naive_weekly": methods[MODEL]["overall"]["wql"]
            / methods["naive_weekly"]["overall"]["wql"],
        }
    counts = np.array([sums.series[sid] for sid in names]).reshape(len(names), len(SERIES_COLUMNS))
    points = counts[:, 1]
    scale = np.array([sums.mase_scale[sid] for sid in names], dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        columns = {
            "series_id": np.asarray(names, dtype=object),
            "windows": counts[:, 0].astype(np.int64),
            "mean_actual": counts[:, 2] / points,
            "mase_scale": scale,
        }
        for name in order:
            method = sums.methods[name]
            columns[f"mae_{name}"] = np.array([method.series_abs.get(sid, 0.0) for sid in names]) / points
            columns[f"smape_{name}"] = np.array([method.series_smape.get(sid, 0.0) for sid in names]) / points
            columns[f"mase_{name}"] = columns[f"mae_{name}"] / scale
    return table, pd.DataFrame(columns)
