"""A peer to beat: the LightGBM direct baseline on the January backtest, scored by our own code.

    python -m bench.peers                                    # the NAB series, 31 January cutoffs
    python -m bench.peers --data zones.csv --series-column zone --train-stride 4
    python -m bench.peers --quantiles 0.1,0.5,0.9 --output peers.json

The baseline, as specified: 48 direct regressors, one per horizon step, each on the same 15
features of a window with cutoff c (the first forecast slot): the values of slots c-k for the
lags k in LAGS, and the slot of the day and day of the week of slot c. Regressor h predicts
slot c+h. Fitted once, with fixed parameters (PARAMS), on every window whose 48 target slots
all lie before data.train_end (2014-12-01); December is not used.

Scoring goes through the project's backtest: windows at the cutoffs (``build_windows``, as
infer.py builds them, history filled only from data before each cutoff), the daily and
weekly seasonal-naive baselines on the same windows, and MASE scaled by each series' weekly
seasonal-naive in-sample error before data.train_end. The table is printed for all cutoffs
and again without the blizzard (cutoffs 2015-01-26..28, when the city stopped taxis).

With ``--series-column`` (a long-format fleet, e.g. from bench/make_zones.py): one global
model over all series, on values divided by each series' training mean, with that mean as a
16th feature; forecasts are scaled back and scored pooled over all series.

LightGBM is a bench dependency (requirements-dev.txt); the package never imports it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from bench.common import add_data_argument, add_output_argument, data_config
from lit_forecast.config import DataConfig
from lit_forecast.console import DIGITS, percent
from lit_forecast.data.source import Series, fill_short_gaps
from lit_forecast.data.windows import calendar_features
from lit_forecast.errors import UserError
from lit_forecast.evaluation import backtest as bt
from lit_forecast.evaluation.baselines import seasonal_naive_lags
from lit_forecast.evaluation.scoring import score_backtest
from lit_forecast.inference.cutoffs import build_windows, parse_cutoffs, read_series
from lit_forecast.spec import SeriesStats, WindowSpec, gap_slots, slots_per_day

try:
    import lightgbm as lgb
except ImportError:  # the feature code (and its test) works without it
    lgb = None

LAGS = (1, 2, 3, 4, 5, 6, 12, 24, 36, 48, 96, 144, 168)  # slots before the cutoff
HORIZON = 48
PARAMS = {  # fixed, not tuned
    "objective": "regression",  # L2
    "num_boost_round": 400,
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 20,
    "subsample": 0.8,  # rows, drawn anew every iteration:
    "subsample_freq": 1,
    "colsample_bytree": 0.8,
}
CUTOFFS = "2015-01-01..2015-01-31/1D"  # the headline backtest: every midnight of January
BLIZZARD = "2015-01-26..2015-01-28/1D"  # left out of the second table
NAME = "lightgbm"


def lag_features(past: np.ndarray, calendar: np.ndarray) -> np.ndarray:
    """(N, P) values before each cutoff (last column = slot c-1, P >= 168) and (N, >=2) calendar
    of slot c ([slot of day, day of week, ...]) -> (N, 15) float32: value[c-k] for k in LAGS,
    slot of day, day of week."""
    if past.shape[1] < max(LAGS):
        raise ValueError(f"lag features need {max(LAGS)} slots before the cutoff, got {past.shape[1]}")
    columns = [past[:, -k] for k in LAGS] + [calendar[:, 0], calendar[:, 1]]
    return np.stack(columns, axis=1).astype(np.float32)


def training_windows(
    values: np.ndarray, times: pd.DatetimeIndex, freq: str, train_end: pd.Timestamp, stride: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Every ``stride``-th window of one filled series (T,) whose 48 targets lie before ``train_end``.

    Returns features (n, 15) and targets (n, 48): targets[i, h] = value[c_i + h]. Cutoffs c run
    from 168 (a full set of lags) to the last slot that keeps c + 47 before ``train_end``.
    """
    n_train = int((times < train_end).sum())
    cutoffs = np.arange(max(LAGS), n_train - HORIZON + 1, stride)
    if len(cutoffs) == 0:
        return np.empty((0, len(LAGS) + 2), np.float32), np.empty((0, HORIZON), np.float32)
    past = sliding_window_view(values, max(LAGS))[cutoffs - max(LAGS)]  # (n, 168): slots c-168 .. c-1
    calendar = calendar_features(times, freq)[cutoffs]  # (n, 3) of slot c
    targets = sliding_window_view(values, HORIZON)[cutoffs]  # (n, 48): slots c .. c+47
    return lag_features(past, calendar), targets.astype(np.float32)


def fit(features: np.ndarray, targets: np.ndarray, seed: int, threads: int, objective: dict | None = None) -> list:
    """One booster per horizon step h on (features (n, F), targets[:, h]); rows with unknown targets are skipped."""
    params = {k: v for k, v in PARAMS.items() if k != "num_boost_round"}
    params |= {"seed": seed, "num_threads": threads, "verbosity": -1, "deterministic": True, "force_row_wise": True}
    params |= objective or {}
    boosters = []
    for h in range(targets.shape[1]):
        known = np.isfinite(targets[:, h])
        data = lgb.Dataset(features[known], targets[known, h], free_raw_data=True)
        boosters.append(lgb.train(params, data, num_boost_round=PARAMS["num_boost_round"]))
    return boosters


def predict(boosters: list, features: np.ndarray, threads: int) -> np.ndarray:
    """(N, F) -> (N, 48): step h from booster h."""
    return np.stack([b.predict(features, num_threads=threads) for b in boosters], axis=1)


def series_mean(values: np.ndarray, times: pd.DatetimeIndex, train_end: pd.Timestamp) -> float:
    """Mean of the known training slots: the global model's scale and 16th feature."""
    mean = float(np.nanmean(values[times < train_end]))
    return mean if mean > 0 else 1.0


def with_mean(features: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Global model: lag features divided by each row's series mean, and that mean appended."""
    scaled = features.copy()
    scaled[:, : len(LAGS)] /= mean[:, None]
    return np.concatenate([scaled, mean[:, None].astype(np.float32)], axis=1)


def quantile_scores(forecast: np.ndarray, actual: np.ndarray, level: float) -> dict:
    """Mean pinball loss (passengers) and the share of known actuals at or below the forecast."""
    known = np.isfinite(actual)
    error = actual[known] - forecast[known]
    pinball = np.maximum(level * error, (level - 1) * error)
    return {"pinball": float(pinball.mean()), "coverage": float((error <= 0).mean())}


def parse_levels(text: str | None) -> list[float]:
    """'0.1,0.5,0.9' -> [0.1, 0.5, 0.9]."""
    if not text:
        return []
    levels = [float(x) for x in text.split(",") if x.strip()]
    if not all(0 < q < 1 for q in levels):
        raise ValueError(f"--quantiles: levels must lie strictly between 0 and 1, got {text}")
    return levels


def format_table(table: dict, title: str) -> str:
    """MAE, RMSE, sMAPE (%) and MASE per method, and the ratio to the weekly seasonal-naive MAE."""
    metrics = ("mae", "rmse", "smape", "mase")
    lines = [
        f"{title}: {table['windows']} windows x {table['horizon']} steps, {len(table['cutoffs'])} cutoffs "
        f"{table['cutoffs'][0][:10]} .. {table['cutoffs'][-1][:10]}",
        f"{'method':<14}" + "".join(f"{m.upper():>10}" for m in metrics),
    ]
    for name, result in table["methods"].items():
        o = result["overall"]
        lines.append(f"{name:<14}" + "".join(_num(o[m] * (100 if percent(m) else 1), DIGITS[m]) for m in metrics))
    lines.append(f"{NAME} MAE / weekly-naive MAE = {table['mae_ratio_model_vs_naive_weekly']:.3f}")
    return "\n".join(lines)


def _num(value: float, digits: int) -> str:
    return f"{'nan':>10}" if math.isnan(value) else f"{value:>10,.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(
        parser,
        "CSV or Parquet (default: the NAB file, from the cache ~/.cache/lit_forecast or $LIT_FORECAST_CACHE)",
        default=DataConfig().source,
    )
    parser.add_argument(
        "--series-column", help="series column of a long-format fleet: one global model over all series"
    )
    parser.add_argument("--cutoffs", nargs="+", default=[CUTOFFS], help=f"as in infer.py (default {CUTOFFS})")
    parser.add_argument(
        "--blizzard", default=BLIZZARD, help=f"cutoffs left out of the second table (default {BLIZZARD})"
    )
    parser.add_argument("--train-end", default=DataConfig().train_end, help="targets before this are training data")
    parser.add_argument("--train-stride", type=int, default=1, help="slots between training windows (default 1: all)")
    parser.add_argument("--quantiles", help="also fit quantile regressors at these levels, e.g. 0.1,0.5,0.9")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    add_output_argument(parser, "JSON with both tables, the timings and the parameters")
    args = parser.parse_args()
    if lgb is None:
        sys.exit("error: lightgbm is not installed: pip install -r requirements-dev.txt")
    try:
        levels = parse_levels(args.quantiles)
        cutoffs = parse_cutoffs(args.cutoffs)
        blizzard = set(parse_cutoffs([args.blizzard])) if args.blizzard else set()
    except ValueError as err:
        sys.exit(f"error: {err}")

    data = data_config(args.data, args.series_column)
    train_end = pd.Timestamp(args.train_end)
    spd = slots_per_day(data.freq)
    max_slots = gap_slots(data.max_gap, data.freq)
    try:
        series: list[Series] = read_series(data)  # missing slots NaN; training fills them below
    except UserError as err:
        sys.exit(f"error: {err}")
    glob = bool(args.series_column)

    # Fit: every training window of every series, 48 boosters.
    start = time.perf_counter()
    features, targets, means, filled, stats = [], [], {}, {}, {}
    for s in series:
        values = fill_short_gaps(s.values, max_slots)  # short gaps interpolated, as in training
        times = pd.date_range(s.start, periods=len(values), freq=data.freq)
        means[s.series_id] = series_mean(values, times, train_end) if glob else 1.0
        train = values[times < train_end]  # the window cutter's statistics, as training's (checks only)
        stats[s.series_id] = SeriesStats.fit(train)
        filled[s.series_id] = (values, times)  # for the MASE scale
        x, y = training_windows(values, times, data.freq, train_end, args.train_stride)
        if glob:
            x, y = with_mean(x, np.full(len(x), means[s.series_id])), y / np.float32(means[s.series_id])
        features.append(x)
        targets.append(y)
    features, targets = np.concatenate(features), np.concatenate(targets)
    boosters = fit(features, targets, args.seed, args.threads)
    fit_s = time.perf_counter() - start

    # Predict: windows at the cutoffs as infer.py builds them, with a week of history for the baselines.
    start = time.perf_counter()
    lags = seasonal_naive_lags(spd)
    longest = max(max(LAGS), *lags.values())
    try:
        windows, _ = build_windows(
            series, stats, WindowSpec(max(LAGS), HORIZON, data.freq), cutoffs, data.max_gap, history=longest
        )
    except UserError as err:
        sys.exit(f"error: {err}")
    history, actual = windows.history(slice(None), longest), windows.actual()
    loc = np.asarray([means[sid] for sid in windows.series_ids], dtype=np.float64)
    test_x = lag_features(history, windows.batch(slice(None))["future_time"][:, 0].numpy())
    if glob:
        test_x = with_mean(test_x, loc.astype(np.float32))
    forecast = predict(boosters, test_x, args.threads) * loc[:, None]
    predict_s = time.perf_counter() - start

    kept = np.array([c not in blizzard for c in windows.cutoffs])
    tables = {
        "all": score_backtest(
            forecast, actual, history, windows.series_ids, windows.cutoffs, filled, train_end, lags
        ).table
    }
    if kept.any() and not kept.all():
        rows = np.flatnonzero(kept)
        tables["without_blizzard"] = score_backtest(
            forecast[rows],
            actual[rows],
            history[rows],
            [windows.series_ids[i] for i in rows],
            windows.cutoffs[rows],
            filled,
            train_end,
            lags,
        ).table
    for table in tables.values():
        table["methods"] = {(NAME if k == bt.MODEL else k): v for k, v in table["methods"].items()}

    print(
        f"data      {data.source}: {len(series)} series, {len(features):,} training windows "
        f"(targets before {train_end:%Y-%m-%d}, stride {args.train_stride}), {len(windows)} test windows"
    )
    print(
        f"lightgbm  {lgb.__version__}, 48 regressors x {PARAMS['num_boost_round']} trees"
        f"{', global over series on values / training mean' if glob else ''}, threads {args.threads}"
    )
    print(f"wall      fit {fit_s:.1f} s (features + 48 boosters), predict {predict_s:.2f} s (windows + 48 boosters)")
    print()
    print(format_table(tables["all"], "all cutoffs"))
    if "without_blizzard" in tables:
        print()
        print(format_table(tables["without_blizzard"], f"without the cutoffs {args.blizzard}"))

    result = {
        "params": PARAMS | {"seed": args.seed},
        "lags": list(LAGS),
        "train_end": str(train_end),
        "training_windows": len(features),
        "train_stride": args.train_stride,
        "global": glob,
        "lightgbm": lgb.__version__,
        "wall_s": {"fit": fit_s, "predict": predict_s},
        **tables,
    }
    if levels:
        start = time.perf_counter()
        quantiles = {}
        for q in levels:
            qb = fit(features, targets, args.seed, args.threads, {"objective": "quantile", "alpha": q})
            quantiles[q] = predict(qb, test_x, args.threads) * loc[:, None]
        q_s = time.perf_counter() - start
        result["quantiles"] = {"wall_s": q_s, "levels": {}}
        print()
        print(f"quantile regressors ({len(levels)} x 48, {q_s:.1f} s), all cutoffs:")
        print(f"{'level':>8}{'pinball':>10}{'coverage':>10}{'MAE':>10}")
        for q, f in quantiles.items():
            scores = quantile_scores(f, actual, q) | {"mae": float(np.nanmean(np.abs(f - actual)))}
            result["quantiles"]["levels"][str(q)] = scores
            print(f"{q:>8}{scores['pinball']:>10,.0f}{scores['coverage']:>10.3f}{scores['mae']:>10,.0f}")
        if len(levels) >= 2:
            lo, hi = quantiles[min(levels)], quantiles[max(levels)]
            known = np.isfinite(actual)
            inside = ((actual >= lo) & (actual <= hi))[known].mean()
            result["quantiles"]["interval"] = {"levels": [min(levels), max(levels)], "coverage": float(inside)}
            print(
                f"actuals inside [{min(levels)}, {max(levels)}]: {inside:.3f} (nominal {max(levels) - min(levels):.2f})"
            )
    if args.output:
        bt.save_table(args.output, result)
        print(f"\njson      {args.output}")


if __name__ == "__main__":
    main()
