"""Fleet forecasting at scale: the plain and the streaming path, side by side, at N zones.

    python -m bench.make_zones --zones 1000 --output /tmp/stream/zones-1000.parquet       # the input, once
    python -m bench.stream_scale checkpoint --data /tmp/stream/zones-1000.parquet --work /tmp/stream/w1000
    python -m bench.stream_scale all --data /tmp/stream/zones-1000.parquet --work /tmp/stream/w1000 \\
        --output /tmp/stream/results-1000.json
    python -m bench.stream_scale fit /tmp/stream/results-1000.json /tmp/stream/results-5000.json

checkpoint  a model of configs/fleet-local.yaml with random weights and each zone's scaler
            statistics (mean and std of its readings before data.train_end): what forecasting
            costs does not depend on the weights. Saved as <work>/model.ckpt, as training saves.
run         one request in this process: ``--step forecast`` (the next day of every zone) or
            ``backtest`` (31 January midnights), ``--engine plain`` (infer.py's in-process path:
            every reading read here, windows forecast by Ray tasks) or ``stream``
            (lit_forecast/inference/streaming.py). Ray is started first and timed apart, as on a
            cluster that is up. Figures: wall time, windows, forecasts/s (windows x horizon),
            the peak resident memory of the largest process in the tree (driver, raylet, Ray
            workers; psutil every 0.1 s), the load average before and after.
            ``--recalibrate-days N``: as infer.py's (default: infer.py's default; 0: the checkpoint's
            bands), recorded in the results under ``<step>.<engine>.recalibrate<N>`` when not the default.
all         run for both steps and both engines, each in a fresh process (``--engines`` to pick).
fit         cost = a x zones^b for every figure the results files share.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import ROOT, TreeMemory
from lit_forecast.inference import defaults

JANUARY = "2015-01-01..2015-01-31/1D"
COSTS = ("wall_s", "peak_rss_bytes")


def make_checkpoint(source: str, work: str) -> str:
    """<work>/model.ckpt: configs/fleet-local.yaml's model, random weights, each zone's statistics."""
    import lightning as L
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    import torch

    from lit_forecast import config as cfg
    from lit_forecast.models.factory import hyperparameters, module_from_hyperparameters
    from lit_forecast.spec import SeriesStats, WindowSpec

    config = cfg.load(ROOT / "configs" / "fleet-local.yaml", [f"data.source={source}", "data.sha256=null"])
    d = config.data
    table = pq.read_table(source, columns=["timestamp", d.series_column, "value"])
    table = table.filter(pc.less(table["timestamp"], pa.scalar(pd.Timestamp(d.train_end), table["timestamp"].type)))
    frame = table.to_pandas()
    stats = {
        str(z): SeriesStats.fit(g["value"].to_numpy()) for z, g in frame.groupby(d.series_column)
    }  # the one scaler
    plain = cfg.to_dict(config)
    torch.manual_seed(0)
    module = module_from_hyperparameters(hyperparameters(config, WindowSpec(d.input_window, d.horizon, d.freq), stats))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, "model.ckpt")
    trainer.save_checkpoint(path)
    raw = torch.load(path, weights_only=True)
    raw["lit_forecast_config"] = plain  # as training's checkpoints carry it
    torch.save(raw, path)
    print(f"checkpoint {path}: {len(stats):,} zones", flush=True)
    return path


def measure(step: str, engine: str, source: str, work: str, recalibrate_days: float) -> dict:
    """One forecast request on ``engine``, timed after Ray has started."""
    import logging

    from lit_forecast import cli
    from lit_forecast.inference.cutoffs import parse_cutoffs
    from lit_forecast.inference.pipeline import InferenceRequest, infer
    from lit_forecast.ray_cluster import init_ray

    cli.setup_logging(False)
    logging.getLogger("lit_forecast").setLevel(logging.INFO)
    memory = TreeMemory()
    started = time.perf_counter()
    init_ray()
    ray_start = time.perf_counter() - started
    cutoffs = parse_cutoffs([JANUARY]) if step == "backtest" else None
    checkpoint = os.path.join(work, "model.ckpt")
    started = time.perf_counter()
    request = InferenceRequest(
        checkpoint=checkpoint,
        data=source,
        cutoffs=cutoffs,
        output=os.path.join(work, f"plain-{step}.parquet" if engine == "plain" else f"stream-{step}"),
        recalibrate_days=recalibrate_days,
    )
    if engine == "plain":
        result = infer(request)
        windows, table = len(result.windows), result.table
    else:
        from lit_forecast.inference.streaming import StreamOptions, infer_streaming

        result = infer_streaming(request, StreamOptions(overwrite=True))
        windows, table = result.windows, result.table
    wall = time.perf_counter() - started
    memory.stop()
    peak, where = memory.peak_process, memory.peak_name
    import ray

    ray.shutdown()
    horizon = table["horizon"] if table else 48
    figures = {
        "step": step,
        "engine": engine,
        "recalibrate_days": recalibrate_days,
        "wall_s": wall,
        "ray_start_s": ray_start,
        "windows": windows,
        "forecasts_per_s": windows * horizon / wall,
        "windows_per_s": windows / wall,
        "peak_rss_bytes": peak,
        "peak_rss_process": where,
    }
    if table:
        figures["pooled_mae"] = {name: m["overall"]["mae"] for name, m in table["methods"].items()}
    return figures


def count_zones(source: str) -> int:
    """The zones of a generated fleet, read a row group at a time: this process's memory is part of the
    figures, and the whole zone column of 20,000 zones (206 M strings) would add gigabytes to it."""
    import pyarrow.parquet as pq

    seen: set[str] = set()
    for batch in pq.ParquetFile(source).iter_batches(columns=["zone"]):  # fleets name it zone
        seen.update(batch.column(0).unique().to_pylist())
    return len(seen)


def merge(path: str, zones: int, figures: dict) -> None:
    results = json.loads(Path(path).read_text()) if os.path.exists(path) else {"zones": zones}
    key = f"{figures['step']}.{figures['engine']}"
    if figures["recalibrate_days"] != defaults.RECALIBRATE_DAYS:
        key += f".recalibrate{figures['recalibrate_days']:g}"
    results.setdefault("runs", {})[key] = figures
    Path(path).write_text(json.dumps(results, indent=2) + "\n")


def line(f: dict) -> str:
    load = f"load {f['load_before'][0]:.1f} -> {f['load_after'][0]:.1f} on {os.cpu_count()} cores"
    return (
        f"{f['step']:<9} {f['engine']:<6} bands refitted on {f['recalibrate_days']:g} days  "
        f"{f['windows']:>9,} windows  wall {f['wall_s']:6.1f} s (Ray start "
        f"{f['ray_start_s']:.1f} s apart)  {f['forecasts_per_s']:>9,.0f} forecasts/s  largest process "
        f"{f['peak_rss_bytes'] / 2**30:.2f} GiB ({f['peak_rss_process']})  {load}"
    )


def fit(files: list[str]) -> None:
    """cost = a x zones^b, least squares on log-log, for every step.engine and cost the files share."""
    results = [json.loads(Path(f).read_text()) for f in files]
    for key in sorted(set.intersection(*(set(r["runs"]) for r in results))):
        for cost in COSTS:
            points = sorted((r["zones"], r["runs"][key][cost]) for r in results)
            if len(points) < 2:
                continue
            x, y = np.log([p[0] for p in points]), np.log([p[1] for p in points])
            b, _ = np.polyfit(x, y, 1)
            shown = ", ".join(
                f"{z:,}: {v / 2**30:.2f} GiB" if cost.endswith("bytes") else f"{z:,}: {v:.1f} s" for z, v in points
            )
            print(f"{key:<18} {cost:<15} b = {b:.2f}  ({shown})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("checkpoint", "run", "all", "fit"))
    parser.add_argument("files", nargs="*", help="fit: results files")
    parser.add_argument("--data", help="the fleet's Parquet (bench/make_zones.py)")
    parser.add_argument("--work", help="folder for the checkpoint and the outputs")
    parser.add_argument("--output", help="JSON file the figures are merged into")
    parser.add_argument("--step", choices=("forecast", "backtest"))
    parser.add_argument("--engine", choices=("plain", "stream"))
    parser.add_argument(
        "--engines", default="stream,plain", help="all: engines to run, in order (default stream,plain)"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="all: seconds per run")
    parser.add_argument(
        "--recalibrate-days",
        type=float,
        default=defaults.RECALIBRATE_DAYS,
        help=f"as infer.py's (default {defaults.RECALIBRATE_DAYS:g}; 0: the checkpoint's bands)",
    )
    args = parser.parse_args()
    if args.command == "fit":
        return fit(args.files)
    if args.command == "checkpoint":
        make_checkpoint(args.data, args.work)
        return
    zones = int(json.loads(Path(args.output).read_text())["zones"]) if os.path.exists(args.output or "") else None
    if zones is None:
        zones = count_zones(args.data)
    if args.command == "run":
        before = list(os.getloadavg())
        figures = measure(args.step, args.engine, args.data, args.work, args.recalibrate_days)
        figures["load_before"], figures["load_after"], figures["zones"] = before, list(os.getloadavg()), zones
        if args.output:
            merge(args.output, zones, figures)
        print(line(figures), flush=True)
        return
    for engine in args.engines.split(","):
        for step in ("forecast", "backtest"):
            command = [
                sys.executable,
                "-m",
                "bench.stream_scale",
                "run",
                "--step",
                step,
                "--engine",
                engine,
                "--data",
                args.data,
                "--work",
                args.work,
                "--output",
                args.output,
                "--recalibrate-days",
                str(args.recalibrate_days),
            ]
            try:
                subprocess.run(command, check=True, timeout=args.timeout, cwd=ROOT)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
                print(f"{step} {engine}: failed ({err})", flush=True)
    if math.isfinite(zones):
        print(f"results in {args.output}")


if __name__ == "__main__":
    main()
