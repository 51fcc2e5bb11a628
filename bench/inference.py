"""Inference speed: 1,000 windows through the Ray tasks, a warm single forecast, Ray's overhead.

    python -m bench.inference                       # configs/local.yaml model, random weights
    python -m bench.inference --checkpoint runs/nyc_taxi_local/checkpoint_000009

Targets (issue 5): 1,000 windows of 48 autoregressive steps in <= 5 s on 2 CPU cores through
the Ray tasks, and a warm single forecast in <= 50 ms. Timings are medians of repeated warm
calls; the first Ray call (worker start-up, imports) is shown apart. The load average is
printed with the figures: on a shared machine they are upper bounds.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time

import lightning as L
import numpy as np
import pandas as pd
import ray
import torch

from lit_forecast import cli
from lit_forecast import config as cfg
from lit_forecast.data.source import Series
from lit_forecast.errors import UserError
from lit_forecast.inference.checkpoint import load_checkpoint
from lit_forecast.inference.cutoffs import build_windows
from lit_forecast.inference.forecaster import forecast, model_inputs
from lit_forecast.inference.remote import forecast_remote
from lit_forecast.models.factory import hyperparameters, module_from_hyperparameters
from lit_forecast.spec import SINGLE_SERIES, SeriesStats, WindowSpec


def random_checkpoint(folder: str) -> str:
    """The local config's model with random weights, saved as training saves it."""
    config = cfg.load()
    d = config.data
    window = WindowSpec(d.input_window, d.horizon, d.freq, d.stride, d.eval_stride)
    stats = {SINGLE_SERIES: SeriesStats(mean=15000.0, std=6900.0)}
    torch.manual_seed(0)
    module = module_from_hyperparameters(hyperparameters(config, window, stats))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    path = os.path.join(folder, "checkpoint.ckpt")
    trainer.save_checkpoint(path)
    return path


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls (s), and the last result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a trained checkpoint (default: the local config's model, random weights)")
    parser.add_argument("--windows", type=int, default=1000)
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray (default 2)")
    parser.add_argument(
        "--windows-per-task", type=int, default=500, help="default: 1,000 windows -> 2 tasks, 1 per CPU"
    )
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cli.quiet_third_parties()
    logging.basicConfig(level=logging.WARNING)

    folder = tempfile.TemporaryDirectory(prefix="bench_inference_")
    try:
        path = args.checkpoint or random_checkpoint(folder.name)
        loaded = load_checkpoint(path)
    except UserError as err:
        cli.die(str(err))
    spec = loaded.window
    W, H, freq = spec.input_window, spec.horizon, spec.freq
    sid = next(iter(loaded.series_stats))
    # A taxi-like series long enough for ``windows`` consecutive cutoffs (values do not change the cost).
    t = np.arange(W + args.windows)
    values = 15000 + 9000 * np.sin(2 * np.pi * t / 48) + 2000 * np.sin(2 * np.pi * t / 336)
    series = [Series(sid, pd.Timestamp("2014-12-01"), values)]
    start = series[0].start
    cutoffs = [start + (W + i) * pd.Timedelta(freq) for i in range(args.windows)]
    windows, _ = build_windows(series, loaded.series_stats, spec, cutoffs)
    one, _ = build_windows(series, loaded.series_stats, spec, cutoffs[:1])

    print(
        f"model     {args.checkpoint or 'configs/local.yaml, random weights'}  "
        f"({sum(p.numel() for p in loaded.model.parameters()):,} parameters; {W} past -> {H} steps)"
    )
    print(f"machine   {load()}")
    torch.set_num_threads(args.cpus)
    forecast(loaded.model, model_inputs(one))  # warm-up
    single, _ = timed(lambda: forecast(loaded.model, model_inputs(one)), 20)
    plain, _ = timed(lambda: forecast(loaded.model, model_inputs(windows), args.batch_size), args.repeats)

    started_ray = not ray.is_initialized() and not os.environ.get("RAY_ADDRESS")
    if started_ray:
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        run = lambda w: forecast_remote(path, w, args.windows_per_task, num_cpus=1, batch_size=args.batch_size)  # noqa: E731
        cold, _ = timed(lambda: run(windows), 1)
        remote, result = timed(lambda: run(windows), args.repeats)
        remote_single, _ = timed(lambda: run(one), 5)
    finally:
        if started_ray:
            ray.shutdown()
    tasks = -(-args.windows // args.windows_per_task)
    plain_result = forecast(loaded.model, model_inputs(windows), args.batch_size)
    print(f"machine   {load()} (after)")
    print()
    print(
        f"{args.windows:,} windows x {H} steps, Ray tasks ({tasks} x 1 CPU, {args.cpus} CPUs)   {remote:6.2f} s   "
        "target <= 5 s"
        f"   ({args.windows / remote:,.0f} windows/s; first call incl. worker start {cold:.2f} s)"
    )
    print(f"{args.windows:,} windows, plain call ({args.cpus} threads)            {plain:6.2f} s")
    print(f"single forecast, plain, warm                        {1000 * single:6.1f} ms  target <= 50 ms")
    print(f"single forecast, one Ray task, warm                 {1000 * remote_single:6.1f} ms")
    print(
        f"Ray overhead per call (1 window: task - plain)      {1000 * (remote_single - single):6.1f} ms"
        f"   (ships the checkpoint, loads it in the task, returns the result)"
    )
    print(f"Ray vs plain on {args.windows:,} windows                      {remote - plain:+6.2f} s")
    print(f"Ray and plain forecasts agree to {np.abs(result - plain_result).max():.2g} passengers")


if __name__ == "__main__":
    main()
