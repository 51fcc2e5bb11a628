"""The headline backtest: January 2015, a cutoff at every midnight (31 cutoffs x 48 steps).

    python -m bench.accuracy                          # best checkpoint of the latest finished run in runs/
    python -m bench.accuracy --run runs/nyc_taxi_local
    python -m bench.accuracy --checkpoint PATH --data nyc_taxi.csv

The same as ``python infer.py --run RUN --cutoffs 2015-01-01..2015-01-31/1D`` with its default
flags (the bands refitted at each cutoff on the days before it): the model and the daily (lag 48)
and weekly (lag 336) seasonal-naive forecasts scored on the same windows; MASE is scaled by the
weekly seasonal-naive in-sample error on the training period. Targets: model MAE <= 0.75 x the
weekly seasonal-naive MAE, the 80 % interval covering 75-85 %, wQL below the weekly naive's.
"""

from __future__ import annotations

import argparse

from bench.common import add_data_argument, add_output_argument
from lit_forecast import cli
from lit_forecast.console import format_backtest
from lit_forecast.errors import UserError
from lit_forecast.inference import defaults
from lit_forecast.inference.cutoffs import parse_cutoffs
from lit_forecast.inference.pipeline import InferenceRequest, infer

HEADLINE_CUTOFFS = "2015-01-01..2015-01-31/1D"  # the test period of the default split
TARGET_RATIO = 0.75  # issue 11; the LightGBM direct baseline reaches 0.788
COVERAGE_TARGET = (0.75, 0.85)  # the 80 % interval's empirical coverage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run", help="run folder (default: latest finished run in --storage)")
    source.add_argument("--checkpoint", help="a Ray checkpoint folder or .ckpt file")
    parser.add_argument("--storage", default=defaults.STORAGE)
    add_data_argument(parser, "CSV or Parquet (default: the checkpoint's data.source)")
    parser.add_argument("--cutoffs", default=HEADLINE_CUTOFFS, help=f"see infer.py --help (default {HEADLINE_CUTOFFS})")
    add_output_argument(parser, "forecasts file (default: <run>/forecasts/forecast_<cutoffs>.csv)")
    parser.add_argument("--ray", action="store_true", help="forecast through the Ray tasks (default: a plain call)")
    parser.add_argument(
        "--recalibrate-days",
        type=float,
        default=defaults.RECALIBRATE_DAYS,
        metavar="N",
        help=f"as infer.py --recalibrate-days (default {defaults.RECALIBRATE_DAYS:g}, infer.py's; 0: off)",
    )
    args = parser.parse_args()
    cli.setup_logging()
    try:
        result = infer(
            InferenceRequest(
                run=args.run,
                checkpoint=args.checkpoint,
                storage=args.storage,
                data=args.data,
                cutoffs=parse_cutoffs([args.cutoffs]),
                output=args.output,
                use_ray=args.ray,
                recalibrate_days=args.recalibrate_days,
            )
        )
    except UserError as err:
        cli.die(str(err))
    if not result.table:
        cli.die(f"no actual values after the cutoffs {args.cutoffs} in the data: nothing to score")
    ratio = result.table["mae_ratio_model_vs_naive_weekly"]
    print(f"checkpoint  {result.checkpoint}")
    print(format_backtest(result.table))
    print()
    print(
        f"model MAE / weekly seasonal-naive MAE = {ratio:.3f}   target <= {TARGET_RATIO}: "
        f"{'MET' if ratio <= TARGET_RATIO else 'NOT MET'}"
    )
    if "wql_ratio_model_vs_naive_weekly" in result.table:
        model = result.table["methods"]["model"]["overall"]
        low, high = COVERAGE_TARGET
        if "coverage_80" in model:
            print(
                f"80 % interval coverage = {model['coverage_80']:.1%}   target {low:.0%}-{high:.0%}: "
                f"{'MET' if low <= model['coverage_80'] <= high else 'NOT MET'}"
            )
        wql = result.table["wql_ratio_model_vs_naive_weekly"]
        print(
            f"model wQL / weekly seasonal-naive (empirical quantiles) wQL = {wql:.3f}   target < 1: "
            f"{'MET' if wql < 1 else 'NOT MET'}"
        )
    print(f"table {result.table_path}\nplot  {result.plot}")


if __name__ == "__main__":
    main()
