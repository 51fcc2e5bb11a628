"""Does the quantile calibration fitted on validation hold forward in time? (issue 11)

    python -m bench.studies.calibration --run runs/accuracy          # a run of the local default

Training fits the calibration factors on every December window (models/quantiles.py,
QuantileCalibration) and they are then used on January. Whether a band fitted on one month
holds the next is a question about drift, and it can be asked inside validation alone: fit
on the windows whose targets lie in the first half of December, score the 80 % interval on
the windows of the second half. This script does that for each candidate ``margin`` (each
outer level fitted to hold that much more than its share) and picks the smallest margin
whose forward coverage reaches the nominal one: a choice made on December only.

January is then scored with factors fitted on the whole of December at each margin, as
training fits them, and reported, never used to choose. Forecasts are the checkpoint's own
autoregressive quantiles before calibration (``raw_forecast_scaled``), computed once.

What it showed on the local default (README, Results): factors fitted on the first half of
December hold 80 % there but 65 % of the second half, so static bands do not carry forward
through the holidays, and no fixed margin fits both halves. Hence ``infer.py
--recalibrate-days N``: the bands refitted at every cutoff on the N days before it.
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from lit_forecast import layout
from lit_forecast.errors import UserError
from lit_forecast.evaluation.metrics import quantile_scores
from lit_forecast.inference.checkpoint import load_checkpoint
from lit_forecast.inference.cutoffs import build_windows, parse_cutoffs, read_series
from lit_forecast.inference.forecaster import model_inputs
from lit_forecast.models.quantiles import QuantileCalibration, widen

MARGINS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1)
DECEMBER = "2014-12-01 00:00..2014-12-31 00:00/30min"  # every validation window (targets in December)
SPLIT = pd.Timestamp("2014-12-16")  # first half: targets before it; second half: cutoffs from it
JANUARY = "2015-01-01..2015-01-31/1D"
BLIZZARD = pd.DatetimeIndex(["2015-01-26", "2015-01-27", "2015-01-28"])


@torch.inference_mode()
def raw_quantiles(module, windows) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Uncalibrated quantiles (N, H, Q) scaled, actuals (N, H) scaled, and loc, scale (N,)."""
    inputs = {k: torch.as_tensor(v) for k, v in model_inputs(windows).items()}
    out = [
        module.raw_forecast_scaled(
            inputs["past_target"][i : i + 256], inputs["past_time"][i : i + 256], inputs["future_time"][i : i + 256]
        )
        for i in range(0, len(windows), 256)
    ]
    loc, scale = inputs["loc"].numpy().astype(np.float64), inputs["scale"].numpy().astype(np.float64)
    actual = (windows.actual() - loc[:, None]) / scale[:, None]
    return torch.cat(out).double().numpy(), actual, loc, scale


def fit(raw: np.ndarray, actual: np.ndarray, levels: list[float], margin: float) -> torch.Tensor:
    """(H, Q) factors fitted on these windows, as training fits them."""
    calibration = QuantileCalibration(levels, raw.shape[1], margin)
    calibration.update(torch.as_tensor(raw), torch.as_tensor(actual))
    return calibration.compute().double()


def coverage(raw, actual, loc, scale, factors, levels, median_index) -> tuple[float, float]:
    """80 % coverage and wQL in passengers of ``raw`` widened by ``factors``."""
    q = widen(torch.as_tensor(raw), factors, median_index).numpy()
    q = q * scale[:, None, None] + loc[:, None, None]
    y = actual * scale[:, None] + loc[:, None]
    scores = quantile_scores(q, y, levels)["overall"]
    return scores["coverage_80"], scores["wql"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/accuracy", help="run folder (its best checkpoint)")
    args = parser.parse_args()
    loaded = load_checkpoint(layout.best_checkpoint(args.run))
    module, levels = loaded.model, loaded.model.levels
    if 0.1 not in levels or 0.9 not in levels:
        raise SystemExit(f"error: the checkpoint's levels {levels} have no 80 % interval (0.1 and 0.9)")
    series = read_series(loaded.config.data)
    spec, stats, gap = loaded.window, loaded.series_stats, loaded.config.data.max_gap
    try:
        dec, _ = build_windows(series, stats, spec, parse_cutoffs([DECEMBER]), gap)
        jan, _ = build_windows(series, stats, spec, parse_cutoffs([JANUARY]), gap)
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
    d_raw, d_y, d_loc, d_scale = raw_quantiles(module, dec)
    j_raw, j_y, j_loc, j_scale = raw_quantiles(module, jan)
    first = np.asarray(dec.cutoffs + pd.Timedelta(spec.freq) * (spec.horizon - 1) < SPLIT)  # targets before the split
    second = np.asarray(dec.cutoffs >= SPLIT)
    calm = ~np.asarray(jan.cutoffs.isin(BLIZZARD))
    m = module.median_index
    print(f"checkpoint {loaded.path}")
    print(
        f"December windows {len(dec)} (first half {first.sum()}, second half {second.sum()}), January midnights "
        f"{len(jan)}"
    )
    stored = module.calibration.double() if hasattr(module, "calibration") else None
    if stored is not None:
        refit = fit(d_raw, d_y, levels, 0.0)
        print(
            "factors refitted on December at margin 0 equal the checkpoint's: "
            f"{bool(torch.allclose(refit, stored, atol=1e-6))}"
        )
    ones = torch.ones(spec.horizon, len(levels), dtype=torch.float64)
    print(
        f"raw head: December {coverage(d_raw, d_y, d_loc, d_scale, ones, levels, m)[0]:.1%}, "
        f"January {coverage(j_raw, j_y, j_loc, j_scale, ones, levels, m)[0]:.1%}"
    )
    print(
        f"{'margin':>7} {'Dec 1st half (in-sample)':>25} {'Dec 2nd half (forward)':>23} | "
        f"{'Dec':>6} {'Jan':>6} {'Jan wQL':>8} {'Jan w/o blizzard':>17}"
    )
    chosen = None
    for margin in MARGINS:
        half = fit(d_raw[first], d_y[first], levels, margin)
        inside = coverage(d_raw[first], d_y[first], d_loc[first], d_scale[first], half, levels, m)[0]
        forward = coverage(d_raw[second], d_y[second], d_loc[second], d_scale[second], half, levels, m)[0]
        whole = fit(d_raw, d_y, levels, margin)
        dec_cov = coverage(d_raw, d_y, d_loc, d_scale, whole, levels, m)[0]
        jan_cov, jan_wql = coverage(j_raw, j_y, j_loc, j_scale, whole, levels, m)
        calm_cov = coverage(j_raw[calm], j_y[calm], j_loc[calm], j_scale[calm], whole, levels, m)[0]
        if chosen is None and forward >= 0.80:
            chosen = (margin, dec_cov)
        print(
            f"{margin:>7.3f} {inside:>25.1%} {forward:>23.1%} | {dec_cov:>6.1%} {jan_cov:>6.1%} {jan_wql:>8.4f} "
            f"{calm_cov:>17.1%}"
        )
    if chosen:
        print(
            f"the smallest margin whose forward coverage reaches 80 % is {chosen[0]}, and it widens December's own "
            f"bands to {chosen[1]:.1%}: a static band cannot hold both halves of December"
        )


if __name__ == "__main__":
    main()
