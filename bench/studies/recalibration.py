"""How far back, and per step or pooled, should each cutoff's bands be refitted? Chosen on December.

    python -m bench.studies.recalibration --run runs/accuracy                   # December midnights
    python -m bench.studies.recalibration --run runs/accuracy --days 7 14 21 28

infer.py refits the bands at every cutoff t on the series' own forecasts at t - 1 day, ...,
t - N days (lit_forecast/inference/recalibration.py). This script forecasts the cutoffs and
the calibration windows of the largest N once, as the plain path does, then refits with each
N, pooled over the horizon steps (one factor per level: what infer.py does) and per step and
level (``QuantileCalibration.MIN_WINDOWS`` windows needed, so only N >= 20), and prints the
80 % interval's coverage and the wQL of each, with the checkpoint's bands first. The choice:
of the fits whose coverage is within one binomial standard error of the one closest to 80 %,
the lowest wQL. Run it on December; January is scored once, with the chosen default, by
``python -m bench.accuracy``.
"""

from __future__ import annotations

import argparse
import math

from lit_forecast import cli, layout
from lit_forecast.errors import UserError
from lit_forecast.evaluation.baselines import seasonal_naive_lags
from lit_forecast.evaluation.metrics import quantile_scores
from lit_forecast.inference.checkpoint import load_checkpoint
from lit_forecast.inference.cutoffs import cut_windows, parse_cutoffs, read_series
from lit_forecast.inference.forecaster import forecast, model_inputs
from lit_forecast.inference.recalibration import RecentForecasts, calibration_windows, recalibrate

DECEMBER = "2014-12-01..2014-12-31/1D"
DAYS = (7, 14, 21, 28)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run", help="run folder (default: the latest finished run in runs/)")
    source.add_argument("--checkpoint", help="a Ray checkpoint folder or .ckpt file")
    parser.add_argument("--cutoffs", default=DECEMBER, help=f"see infer.py --help (default {DECEMBER})")
    parser.add_argument("--days", type=int, nargs="+", default=list(DAYS), help="look-backs to try (days)")
    args = parser.parse_args()
    cli.setup_logging()
    try:
        path = args.checkpoint or layout.best_checkpoint(args.run or layout.latest_run("runs"))
        loaded = load_checkpoint(path, "cpu")
        data, spec, levels = loaded.config.data, loaded.window, loaded.model.levels
        series = read_series(data)
        history = max(seasonal_naive_lags(spec.slots_per_day).values())
        at = parse_cutoffs([args.cutoffs])
        windows = cut_windows(series, loaded.series_stats, spec, at, data.max_gap, history).windows
    except UserError as err:
        cli.die(str(err))
    quantiles = forecast(loaded.model, model_inputs(windows), 256)
    extra = calibration_windows(
        series,
        windows,
        max(args.days),
        lambda group, cutoffs: cut_windows(group, loaded.series_stats, spec, cutoffs, data.max_gap, quiet=True).windows,
    )
    recent = RecentForecasts.join(
        [RecentForecasts(quantiles, windows.actual(), list(windows.series_ids), windows.cutoffs)]
        + [
            RecentForecasts(forecast(loaded.model, model_inputs(w), 256), w.actual(), list(w.series_ids), w.cutoffs)
            for w in extra
        ]
    )
    actual = windows.actual()
    rows = [("checkpoint's bands", "-", quantile_scores(quantiles, actual, levels)["overall"], None)]
    for days in args.days:
        for per_step in (False, True):
            refit, counts = recalibrate(
                quantiles, windows.series_ids, windows.cutoffs, recent, levels, days, spec.freq, per_step=per_step
            )
            name = "per step and level" if per_step else "pooled over steps"
            rows.append((name, days, quantile_scores(refit, actual, levels)["overall"], counts))
    print(f"cutoffs {args.cutoffs}: {len(windows):,} windows, checkpoint {loaded.path}")
    print("| fit | days | COVER80 | wQL | refitted / kept |")
    print("|---|---|---|---|---|")
    for name, days, scores, counts in rows:
        kept = f"{counts['refitted']:,} / {counts['kept']:,}" if counts else "-"
        print(f"| {name} | {days} | {scores['coverage_80']:.1%} | {scores['wql']:.4f} | {kept} |")
    fitted = [r for r in rows[1:] if r[3]["refitted"] == len(windows)]
    if fitted:
        # Coverages closer than one binomial standard error (about 1 point on 31 x 48 slots) are not told apart.
        tolerance = math.sqrt(0.8 * 0.2 / actual.size)
        closest = min(abs(r[2]["coverage_80"] - 0.8) for r in fitted)
        best = min(
            (r for r in fitted if abs(r[2]["coverage_80"] - 0.8) <= closest + tolerance), key=lambda r: r[2]["wql"]
        )
        print(
            f"chosen: {best[0]}, {best[1]} days (the lowest wQL of those within {tolerance:.1%} of the coverage "
            f"closest to 80 %)"
        )


if __name__ == "__main__":
    main()
