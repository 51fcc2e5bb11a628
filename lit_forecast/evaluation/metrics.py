"""Point- and quantile-forecast metrics in numpy, overall and per horizon step.

Arrays are (N, H): N windows, H horizon steps, in passengers. Actual values that are not
known (NaN: beyond the end of the data or inside a long gap) are left out of every metric.
MAPE and sMAPE are fractions (0.05 = 5 %), as in the training metrics (torchmetrics).
"""

from __future__ import annotations

import warnings

import numpy as np

from lit_forecast.spec import central_intervals

METRICS = ("mae", "rmse", "mape", "smape", "mase")


def seasonal_naive_mae(values: np.ndarray, lag: int) -> float:
    """In-sample MAE of the lag-``lag`` seasonal-naive forecast on ``values`` (T,): mean |y_t - y_{t-lag}|.

    The MASE denominator (Hyndman & Koehler 2006, seasonal form). NaN slots are skipped.
    """
    if len(values) <= lag:
        raise ValueError(f"seasonal-naive MAE with lag {lag} needs more than {lag} values, got {len(values)}")
    diff = np.abs(values[lag:] - values[:-lag])
    diff = diff[np.isfinite(diff)]
    if len(diff) == 0:
        raise ValueError(f"seasonal-naive MAE with lag {lag}: no pair of known values {lag} slots apart")
    return float(diff.mean())


def _errors(forecast: np.ndarray, actual: np.ndarray, mase_scale: np.ndarray) -> dict[str, np.ndarray]:
    """Per-point terms (N, H) whose means are the metrics (squared error for RMSE); NaN where unknown."""
    error = forecast - actual
    known = np.isfinite(actual) & np.isfinite(forecast)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = {
            "mae": np.abs(error),
            "rmse": error**2,
            # Zero actuals have no percentage error: left out of MAPE, as a NaN.
            "mape": np.where(actual != 0, np.abs(error) / np.abs(actual), np.nan),
            # 0/0 (both zero) is a perfect forecast: 0, as torchmetrics does with its epsilon.
            "smape": np.where(
                np.abs(actual) + np.abs(forecast) > 0, 2 * np.abs(error) / (np.abs(actual) + np.abs(forecast)), 0.0
            ),
            "mase": np.abs(error) / mase_scale[:, None],
        }
    return {name: np.where(known, term, np.nan) for name, term in terms.items()}


def _reduce(terms: dict[str, np.ndarray], axis: int | None) -> dict[str, np.ndarray]:
    with warnings.catch_warnings():  # an all-NaN column is a NaN metric, on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        out = {name: np.nanmean(term, axis=axis) for name, term in terms.items()}
    out["rmse"] = np.sqrt(out["rmse"])
    return out


def evaluate(forecast: np.ndarray, actual: np.ndarray, mase_scale: np.ndarray) -> dict:
    """MAE, RMSE, MAPE, sMAPE and MASE of ``forecast`` against ``actual`` (both (N, H) passengers).

    ``mase_scale`` (N,) is each window's series' in-sample seasonal-naive MAE. Returns plain
    values: ``{"overall": {metric: float}, "by_step": {metric: [H floats]}, "points": int}``
    (NaN where no actual value is known).
    """
    forecast, actual = np.asarray(forecast, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if forecast.shape != actual.shape or forecast.ndim != 2:
        raise ValueError(f"forecast {forecast.shape} and actual {actual.shape} must both be (N, H)")
    terms = _errors(forecast, actual, np.asarray(mase_scale, dtype=np.float64))
    overall, by_step = _reduce(terms, None), _reduce(terms, 0)
    return {
        "overall": {name: float(overall[name]) for name in METRICS},
        "by_step": {name: [float(v) for v in by_step[name]] for name in METRICS},
        "points": int(np.isfinite(terms["mae"]).sum()),
    }


def quantile_scores(quantiles: np.ndarray, actual: np.ndarray, levels: list[float]) -> dict:
    """Weighted quantile loss and central-interval coverage of (N, H, Q) ``quantiles`` against (N, H) ``actual``.

    ``wql`` = mean over levels q of 2 * sum pinball_q / sum |actual| (GluonTS's mean wQL; for
    levels spread evenly over (0, 1) it approximates the CRPS scaled by sum |actual|), where
    pinball_q = q (y - f) if y >= f else (1 - q) (f - y). ``coverage_80`` = share of actuals in
    [q0.1, q0.9], bounds included, and so on for every symmetric pair. Points with an unknown
    actual or a non-finite quantile are left out. Returns ``{"overall": {name: float}, "by_step": {name: [H floats]}}``.
    """
    quantiles, actual = np.asarray(quantiles, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if quantiles.shape != (*actual.shape, len(levels)):
        raise ValueError(f"quantiles {quantiles.shape} must be actual {actual.shape} x {len(levels)} levels")
    known = np.isfinite(actual) & np.isfinite(quantiles).all(axis=-1)
    y = np.where(known, actual, 0.0)
    quantiles = np.where(known[..., None], quantiles, 0.0)
    error = y[..., None] - quantiles
    q = np.asarray(levels, dtype=np.float64)
    loss = np.where(known[..., None], np.maximum(q * error, (q - 1) * error), 0.0)  # (N, H, Q)
    with np.errstate(divide="ignore", invalid="ignore"):
        wql = {
            "overall": (2 * loss.sum(axis=(0, 1)) / np.abs(y).sum()).mean(),
            "by_step": (2 * loss.sum(axis=0) / np.abs(y).sum(axis=0)[:, None]).mean(axis=1),
        }
        scores = {"wql": wql}
        count = known.sum(axis=0)
        for i, j, name in central_intervals(list(levels)):
            inside = known & (quantiles[..., i] <= y) & (y <= quantiles[..., j])
            scores[name] = {"overall": inside.sum() / count.sum(), "by_step": inside.sum(axis=0) / count}
    return {
        "overall": {name: float(s["overall"]) for name, s in scores.items()},
        "by_step": {name: [float(v) for v in s["by_step"]] for name, s in scores.items()},
    }
