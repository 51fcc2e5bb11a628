"""Exposure bias, measured: teacher-forced vs autoregressive error by horizon step on validation.

    python -m bench.studies.exposure_bias --run runs/nyc_taxi_local

Teacher forcing feeds the decoder the true previous values; the forecast feeds it its own.
A model that only learned to copy its input looks good under the first and fails under the
second. Errors are MAE in scaled units (passengers / training std), as in issue 3's prototype
(teacher-forced 0.14, autoregressive 1.00, repeating the last day 0.45), over every validation
window of the run's prepared data (December 2014, stride 1).
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.data import DataLoader

from lit_forecast import cli, layout, storage
from lit_forecast.data.manifest import read_manifest
from lit_forecast.data.windows import WindowSet, collate_batch, segments_from_table
from lit_forecast.errors import UserError
from lit_forecast.inference.checkpoint import load_checkpoint
from lit_forecast.models.ensemble import ForecastModel


def validation_windows(run: str) -> WindowSet:
    """Every validation window of the run's prepared data (``<run>/data/val.parquet``)."""
    data = layout.data_dir(run)
    manifest = read_manifest(data)
    table = storage.read_parquet(storage.join(data, manifest.val_file))
    return WindowSet(segments_from_table(table), manifest.series_stats(), manifest.window)


def step_errors(module: ForecastModel, windows: WindowSet, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Summed absolute error (scaled units) by horizon step, (H,) per method, over ``windows``."""
    W, H, day = windows.spec.input_window, windows.spec.horizon, windows.spec.slots_per_day
    errors = {
        name: torch.zeros(H) for name in ("teacher-forced", "autoregressive", "repeat last day", "repeat last week")
    }
    with torch.inference_mode():
        for batch in DataLoader(windows, batch_size=batch_size, collate_fn=collate_batch):
            past, future = batch["past_target"], batch["future_target"]
            # The median: the point forecast (and the value fed back) of a quantile model.
            forced = module.median(module.teacher_forced(past, batch["past_time"], batch["future_time"], future))
            forecast = module.median(module.forecast_scaled(past, batch["past_time"], batch["future_time"]))
            for name, prediction in (
                ("teacher-forced", forced),
                ("autoregressive", forecast),
                ("repeat last day", past[:, W - day : W - day + H]),
                (
                    "repeat last week",
                    past[:, W - 7 * day : W - 7 * day + H] if W >= 7 * day else torch.full_like(future, float("nan")),
                ),
            ):
                errors[name] += (prediction.float() - future).abs().sum(dim=0)
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="run folder (default: the latest finished run in runs/)")
    args = parser.parse_args()
    cli.quiet_third_parties()
    try:
        run = args.run or layout.latest_run("runs")
        module = load_checkpoint(layout.best_checkpoint(run)).model
        windows = validation_windows(run)
    except UserError as err:
        cli.die(str(err))
    trained, data = module.window, windows.spec
    if (trained.input_window, trained.horizon, trained.freq) != (data.input_window, data.horizon, data.freq):
        cli.die(f"the checkpoint's window {trained} does not match the run's prepared data {data}")
    errors = step_errors(module, windows)
    H = windows.spec.horizon
    steps = [1, 6, 12, 24, 36, 48]
    print(f"run {run}: {len(windows)} validation windows; MAE in scaled units by horizon step")
    print(f"{'':<18}{'all':>7}" + "".join(f"{'step ' + str(s):>9}" for s in steps if s <= H))
    for name, total in errors.items():
        mae = total / len(windows)
        print(f"{name:<18}{mae.mean().item():>7.3f}" + "".join(f"{mae[s - 1].item():>9.3f}" for s in steps if s <= H))


if __name__ == "__main__":
    main()
