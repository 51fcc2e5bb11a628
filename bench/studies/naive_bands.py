"""The bar for calibrated forecasts: seasonal-naive with empirical residual quantiles, no model.

    python -m bench.studies.naive_bands            # the NAB file (cache, checksum checked), levels 0.1 0.5 0.9

For midnight cutoffs of December 2014 (validation), January 2015 (test) and January without
the blizzard cutoffs 2015-01-26..28, prints each seasonal-naive baseline's MAE, weighted
quantile loss and 80 % coverage, scored by the code infer.py's backtest uses: the forecast
plus the empirical quantiles of its in-sample residuals before data.train_end.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import pandas as pd

from bench.common import add_data_argument, data_config
from lit_forecast.errors import UserError
from lit_forecast.evaluation.backtest import baseline_residual_quantiles
from lit_forecast.evaluation.baselines import seasonal_naive, seasonal_naive_lags, seasonal_naive_quantiles
from lit_forecast.evaluation.metrics import evaluate, quantile_scores
from lit_forecast.inference.cutoffs import read_series

PERIODS = {
    "December": ("2014-12-01", "2014-12-31", []),
    "January": ("2015-01-01", "2015-01-31", []),
    "January without 26-28": ("2015-01-01", "2015-01-31", ["2015-01-26", "2015-01-27", "2015-01-28"]),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_argument(parser, "a timestamp,value CSV at 30 min (default: the NAB file, read as training reads it)")
    parser.add_argument("--levels", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    parser.add_argument("--train-end", default="2014-12-01")
    args = parser.parse_args()
    data = data_config(args.data)
    try:
        series = read_series(data)  # the project's loader: the checksum, the checks, the data.freq grid
    except UserError as err:
        sys.exit(f"error: {err}")
    if len(series) != 1:
        sys.exit(f"error: {data.source}: expected one series (timestamp,value), found {len(series)}")
    values = series[0].values.astype(np.float64)  # missing slots NaN
    times = pd.date_range(series[0].start, periods=len(values), freq=data.freq)
    lags = seasonal_naive_lags(48)
    residuals = baseline_residual_quantiles(values, times, pd.Timestamp(args.train_end), times[0], lags, args.levels)
    print("residual quantiles (passengers): " + "; ".join(f"{n} {[round(v) for v in q]}" for n, q in residuals.items()))
    print(f"{'cutoffs (midnights)':<24}{'method':<14}{'MAE':>8}{'wQL':>9}{'COVER80':>9}")
    for label, (first, last, skip) in PERIODS.items():
        cutoffs = pd.date_range(first, last, freq="1D").difference(pd.DatetimeIndex(skip))
        at = np.array([times.get_loc(c) for c in cutoffs])
        history = np.stack([values[i - 336 : i] for i in at])
        actual = np.stack([values[i : i + 48] for i in at])
        for name, lag in lags.items():
            bands = seasonal_naive_quantiles(history, 48, lag, np.array([residuals[name]] * len(at)))
            scores = quantile_scores(bands, actual, args.levels)["overall"]
            mae = evaluate(seasonal_naive(history, 48, lag), actual, np.ones(len(at)))["overall"]["mae"]
            print(
                f"{label:<24}{name:<14}{mae:>8,.0f}{scores['wql']:>9.4f}{scores.get('coverage_80', float('nan')):>9.1%}"
            )


if __name__ == "__main__":
    main()
