"""What validation costs next to training, per window, and so per epoch for a fleet.

    python -m bench.studies.validation_cost --run runs/fleet_local [--config configs/fleet-local.yaml]

Times, on one thread (as each local Ray worker runs), a training step of the config's batch
(teacher-forced forward with scheduled sampling, backward, AdamW step) and validation of the
run's prepared validation windows (teacher-forced pass plus the 48-step autoregressive decode), per
window; then prints what share of an epoch's training part validation takes for fleets of
100-5,000 series, with ``data.val_windows_per_series`` and with every window kept. Untrained
weights: the cost does not depend on them.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lit_forecast import config as cfg
from lit_forecast import layout, storage
from lit_forecast.data.manifest import read_manifest
from lit_forecast.data.windows import WindowSet, segments_from_table
from lit_forecast.models.factory import module_from_config

ALL_PER_SERIES = 1441  # December's windows of one series at eval_stride 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a run folder: its prepared dataset (<run>/data) is timed")
    parser.add_argument("--config", default="configs/fleet-local.yaml")
    parser.add_argument(
        "--repeats", type=int, default=20, help="training steps timed (validation: a quarter as many passes)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = cfg.load(args.config)
    data = layout.data_dir(args.run)
    manifest = read_manifest(data)
    windows = WindowSet(
        segments_from_table(storage.read_parquet(storage.join(data, manifest.val_file))),
        manifest.series_stats(),
        manifest.window,
    )
    module = module_from_config(config, manifest)
    optimizer = torch.optim.AdamW(module.parameters(), lr=config.train.lr)
    train_batch = windows.batch(np.arange(min(config.train.batch_size, len(windows))))
    val_batch = windows.batch(np.arange(min(512, len(windows))))  # the data module's eval batch

    def train_step() -> None:
        loss = sum(
            module.member_loss(net, train_batch, config.train.sampling_max_prob / 2) for net in module.model.nets
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def validate() -> None:
        b = val_batch
        module.model.teacher_forced(b["past_target"], b["past_time"], b["future_time"], b["future_target"])
        module.model.forecast_scaled(b["past_target"], b["past_time"], b["future_time"])

    train_step(), validate()  # warm-up
    passes = max(1, args.repeats // 4)
    start = time.perf_counter()
    for _ in range(args.repeats):
        train_step()
    train_s = (time.perf_counter() - start) / (args.repeats * len(train_batch["past_target"]))
    start = time.perf_counter()
    for _ in range(passes):
        validate()
    val_s = (time.perf_counter() - start) / (passes * len(val_batch["past_target"]))
    print(
        f"per window, one thread: training {train_s * 1e3:.2f} ms, validation {val_s * 1e3:.2f} ms "
        f"(ratio {val_s / train_s:.2f})"
    )
    workers, per_series = config.cluster.max_workers, config.data.val_windows_per_series or ALL_PER_SERIES
    steps = config.train.limit_train_batches
    if not isinstance(steps, int):
        print("train.limit_train_batches is a share: an epoch's size depends on the data; no per-epoch shares printed")
        return
    per_rank = steps * config.train.batch_size
    print(f"an epoch: {steps} steps x {config.train.batch_size} windows per worker ({workers} workers)")
    for zones in (100, 1000, 5000):
        for kept in sorted({per_series, ALL_PER_SERIES}):
            val = zones * kept / workers
            print(
                f"{zones:>6,} series, {kept:>5} validation windows each: {val:>10,.0f} per worker = "
                f"{100 * val * val_s / (per_rank * train_s):8.1f} % of the epoch's training time"
            )


if __name__ == "__main__":
    main()
