"""Exposure bias, measured: teacher-forced vs autoregressive error by horizon step on validation.

    python bench/exposure_bias.py --run runs/nyc_taxi_local

Teacher forcing feeds the decoder the true previous values; the forecast feeds it its own.
A model that only learned to copy its input looks good under the first and fails under the
second. Errors are MAE in scaled units (passengers / training std), as in issue 3's prototype
(teacher-forced 0.14, autoregressive 1.00, repeating the last day 0.45), over every validation
window of the run's prepared data (December 2014, stride 1).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from lit_forecast import storage  # noqa: E402
from lit_forecast.data.dataset import WindowDataset, segments_from_table  # noqa: E402
from lit_forecast.data.prepare import read_manifest  # noqa: E402
from lit_forecast.inference.checkpoint import best_checkpoint, latest_run, load_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run folder (default: the latest finished run in runs/)")
    args = parser.parse_args()
    run = args.run or latest_run("runs")
    module = load_checkpoint(best_checkpoint(run)).module
    manifest = read_manifest(storage.join(run, "data"))
    w = manifest["window"]
    table = storage.read_parquet(storage.join(run, "data", manifest["files"]["val"]))
    dataset = WindowDataset(segments_from_table(table), manifest["series"], w["input_window"], w["horizon"], w["freq"])
    W, H, day = w["input_window"], w["horizon"], w["slots_per_day"]
    errors = {name: torch.zeros(H) for name in ("teacher-forced", "autoregressive", "repeat last day", "repeat last week")}
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=512):
            past, future = batch["past_target"], batch["future_target"]
            forced = module.teacher_forced(past, batch["past_time"], batch["future_time"], future)
            forecast = module.forecast_scaled(past, batch["past_time"], batch["future_time"])
            for name, prediction in (
                ("teacher-forced", forced),
                ("autoregressive", forecast),
                ("repeat last day", past[:, W - day : W - day + H]),
                ("repeat last week", past[:, W - 7 * day : W - 7 * day + H] if W >= 7 * day else torch.full_like(future, float("nan"))),
            ):
                errors[name] += (prediction - future).abs().sum(dim=0)
    steps = [1, 6, 12, 24, 36, 48]
    print(f"run {run}: {len(dataset)} validation windows; MAE in scaled units by horizon step")
    print(f"{'':<18}{'all':>7}" + "".join(f"{'step ' + str(s):>9}" for s in steps if s <= H))
    for name, total in errors.items():
        mae = total / len(dataset)
        print(f"{name:<18}{mae.mean().item():>7.3f}" + "".join(f"{mae[s - 1].item():>9.3f}" for s in steps if s <= H))


if __name__ == "__main__":
    main()
