"""Fleet-scale figures (issue 10, item 10): what each step costs at N zones, and how it grows with N.

    python -m bench.make_zones --zones 1000 --output /tmp/scale/zones-1000.parquet     # the input, once
    python -m bench.scale all --zones 1000 --output /tmp/scale/results-1000.json       # every step below
    python -m bench.scale fit /tmp/scale/results-100.json /tmp/scale/results-1000.json # cost = a * zones^b

Steps (each also on its own: ``python -m bench.scale STEP --zones N --output FILE``):

  prepare   preparation of the input with configs/fleet-local.yaml's data settings, on Ray Data
            (``--path ray --cpus C``, a local Ray of C CPUs started inside the timed span) or in
            one process (``--path local``): wall time, rows/s, peak resident memory of the
            largest process in the tree (driver, Ray workers, raylet, ...; psutil every 0.1 s).
            ``--keep`` leaves the dataset in <work>/data for the next steps.
  train     one epoch (``--epochs``) of the config as rank 0 of its cluster.num_workers workers,
            in a plain Lightning Trainer without Ray (cluster.cpus_per_worker threads): epoch
            time and validation's share of it, training windows/s; saves <work>/model.ckpt.
  forecast  ``infer.py`` for the next day of every zone with that checkpoint: wall time.
  backtest  ``infer.py --cutoffs 2015-01-01..2015-01-31/1D`` over every zone: wall time,
            windows/s, pooled MAE of the model against the seasonal-naive forecasts.
  loading   the training DataLoader alone on rank 0's shard: windows/s of this one process.
  all       the above in order, each in a fresh process: prepare on Ray with 1 CPU, then
            2 CPUs (kept), [--with-local: in one process], train, forecast, backtest, loading.
  fit       reads several results files and fits b of cost = a * zones^b (least squares on
            log-log) for every cost they share.

Every step merges its figures, with the load average before and after it, into the JSON file
given by ``--output`` (created if missing), and prints them. forecast and backtest use the
checkpoint ``train`` saved: after one short epoch their times are the figures, not their
accuracy (``--epochs 5`` trains the config's whole budget). The machine's load matters: report it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import scale_steps as steps
from bench.common import ROOT, add_data_argument, add_output_argument, load_average
from lit_forecast import config as cfg

STEPS = ("prepare", "train", "forecast", "backtest", "loading")
# The costs "fit" fits, as paths into a results file; "prepare.*" expands to every prepare run.
COSTS = (
    "prepare.*.wall_s",
    "prepare.*.peak_rss_bytes",
    "train.epoch_s",
    "train.validation_s",
    "train.fit_wall_s",
    "forecast.wall_s",
    "backtest.wall_s",
    "loading.setup_s",
)


# -- results files ---------------------------------------------------------------------------------


def merge_results(path: str, key: str, figures: dict, zones: int, sub: str | None = None) -> dict:
    """Put ``figures`` under ``key`` (and ``sub``) of the JSON file ``path``; returns the whole file."""
    results = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
    results.setdefault("zones", zones)
    if results["zones"] != zones:
        raise SystemExit(
            f"error: {path} holds figures for {results['zones']} zones, not {zones}: use another --output file"
        )
    results["cores"] = os.cpu_count()
    if sub is None:
        results[key] = figures
    else:
        results.setdefault(key, {})[sub] = figures
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=1, default=str) + "\n")
    return results


def cost_series(results: list[dict], path: str) -> dict[str, list[tuple[int, float]]]:
    """{cost name: [(zones, value)]} for the dotted ``path`` ('*' matches any key at its level)."""
    found: dict[str, list[tuple[int, float]]] = {}
    for result in results:
        nodes = [("", result)]
        for part in path.split("."):
            nodes = [
                (f"{name}.{k}".strip("."), v)
                for name, node in nodes
                if isinstance(node, dict)
                for k, v in node.items()
                if part in ("*", k)
            ]
        for name, value in nodes:
            if isinstance(value, (int, float)) and math.isfinite(value) and value > 0:
                found.setdefault(name, []).append((int(result["zones"]), float(value)))
    return found


def fit_power_law(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(a, b) of cost = a * zones^b, least squares on (log zones, log cost); needs 2+ distinct zone counts."""
    zones = np.log([z for z, _ in points])
    costs = np.log([c for _, c in points])
    if len(set(zones.tolist())) < 2:
        raise ValueError("a power law needs costs at two or more zone counts")
    b, log_a = np.polyfit(zones, costs, 1)
    return float(math.exp(log_a)), float(b)


def fit_exponents(results: list[dict]) -> dict[str, dict]:
    """For every cost in COSTS present at 2+ zone counts: its points and fitted a, b."""
    out = {}
    for pattern in COSTS:
        for name, points in cost_series(results, pattern).items():
            if len({z for z, _ in points}) < 2:
                continue
            a, b = fit_power_law(points)
            out[name] = {"points": sorted(points), "a": a, "b": b}
    return out


# -- the steps -------------------------------------------------------------------------------------


def bench_config(args: argparse.Namespace) -> cfg.Config:
    """--config with --data as data.source (no checksum) and the --set overrides."""
    return cfg.load(args.config, [f"data.source={args.data}", "data.sha256=null", *args.set])


def run_step(args: argparse.Namespace) -> None:
    """One step in this process: measure, merge into --output, print."""
    config = bench_config(args)
    work = args.work
    data_dir, checkpoint = os.path.join(work, "data"), os.path.join(work, "model.ckpt")
    before = load_average()
    sub = None
    if args.step == "prepare":
        cpus = args.cpus if args.path == "ray" else 1
        folder = data_dir if args.keep else os.path.join(work, f"prepare-{args.path}-{cpus}")
        figures = steps.measure_prepare(config, args.path, cpus, folder)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        sub = f"ray-{cpus}cpu" if args.path == "ray" else "local"
    elif args.step == "train":
        steps.ensure_prepared(config, data_dir)
        figures = steps.measure_epoch(config, data_dir, checkpoint, args.epochs)
    elif args.step in ("forecast", "backtest"):
        if not os.path.isfile(checkpoint):
            raise SystemExit(
                f"error: {checkpoint} does not exist: run `python -m bench.scale train` with the same --work first"
            )
        cutoffs = steps.JANUARY if args.step == "backtest" else None
        output = os.path.join(work, f"{args.step}.parquet")
        figures = steps.measure_inference(checkpoint, args.data, output, cutoffs, use_ray=not args.no_ray)
    else:  # loading
        steps.ensure_prepared(config, data_dir)
        datamodule = steps.RankView(data_dir, config.train.batch_size, 0, config.cluster.max_workers)
        figures = steps.measure_loading(datamodule, args.batches)
        figures["target_windows_per_s"] = 50_000
    figures["load_average_before"], figures["load_average_after"] = before, load_average()
    merge_results(args.output, args.step, figures, args.zones, sub)
    print(format_step(args.step, sub, figures, args.zones), flush=True)


def format_step(step: str, sub: str | None, f: dict, zones: int) -> str:
    """A few readable lines of one step's figures."""
    load = (
        f"load average {f['load_average_before'][0]:.1f} -> {f['load_average_after'][0]:.1f} on {os.cpu_count()} cores"
    )
    if step == "prepare":
        return (
            f"prepare {sub:<9} {zones:,} zones  {f['rows']:,} rows  wall {f['wall_s']:.1f} s (Ray start "
            f"{f['ray_start_s']:.1f} s)  "
            f"{f['rows_per_s']:,.0f} rows/s ({f['rows_per_s_after_ray_start']:,.0f} after Ray start)  "
            f"peak RSS of one process {f['peak_rss_bytes'] / 2**30:.2f} GiB ({f['peak_rss_process']})  {load}"
        )
    if step == "train":
        return (
            f"train     {zones:,} zones  {f['steps']} steps x {f['batch_size']} windows (rank 0 of {f['workers']}, "
            f"{f['threads']} thread(s))  epoch {f['epoch_s']:.1f} s = training {f['train_s']:.1f} s + validation "
            f"{f['validation_s']:.1f} s ({100 * f['validation_share']:.1f} % of the epoch, {f['validation_windows']:,} "
            "windows)  "
            f"{f['train_windows_per_s']:.0f} training windows/s  {load}"
        )
    if step in ("forecast", "backtest"):
        line = (
            f"{step:<9} {zones:,} zones  {f['windows']:,} windows ({f['cutoffs']} cutoff(s), {f['series']:,} series)  "
            f"wall {f['wall_s']:.1f} s "
            f"({'Ray tasks, Ray start ' + format(f['ray_start_s'], '.1f') + ' s before' if f['ray'] else 'no Ray'})  "
            f"{f['windows_per_s']:,.0f} windows/s  {load}"
        )
        if "pooled_mae" in f:
            line += "\n          pooled MAE " + "  ".join(f"{k} {v:,.1f}" for k, v in f["pooled_mae"].items())
            line += f"  (model / weekly naive {f['mae_ratio_model_vs_naive_weekly']:.3f})"
        if f.get("skipped"):
            line += f"\n          {f['skipped']}"
        return line
    return (
        f"loading   {zones:,} zones  shard of {f['shard_windows']:,} windows  batch {f['batch_size']}  "
        f"{f['windows_per_s']:,.0f} windows/s in one process (target {f['target_windows_per_s']:,})  "
        f"setup {f['setup_s']:.1f} s  {load}"
    )


def run_all(args: argparse.Namespace) -> None:
    """Every step in order, each in a fresh process of this script, with a timeout each."""
    common = [
        "--zones",
        str(args.zones),
        "--data",
        args.data,
        "--output",
        args.output,
        "--work",
        args.work,
        "--config",
        args.config,
        *[a for kv in args.set for a in ("--set", kv)],
    ]
    plan = [["prepare", "--path", "ray", "--cpus", "1"], ["prepare", "--path", "ray", "--cpus", "2", "--keep"]]
    if args.with_local:
        plan.append(["prepare", "--path", "local"])
    plan += [
        ["train", "--epochs", str(args.epochs)],
        ["forecast"] + (["--no-ray"] if args.no_ray else []),
        ["backtest"] + (["--no-ray"] if args.no_ray else []),
        ["loading", "--batches", str(args.batches)],
    ]
    started = time.perf_counter()
    for step in plan:
        print(f"$ python -m bench.scale {' '.join(step)} --zones {args.zones} ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "bench.scale", step[0], *common, *step[1:]],
            cwd=ROOT,
            check=True,
            timeout=args.timeout,
        )
    print(f"all steps at {args.zones:,} zones: {time.perf_counter() - started:.0f} s; figures in {args.output}")


def run_fit(files: list[str], output: str | None) -> None:
    """Print the fitted exponents of the results files given (and write them to ``output`` as JSON)."""
    results = [json.loads(Path(f).read_text()) for f in files]
    fits = fit_exponents(results)
    if not fits:
        raise SystemExit("error: no cost was measured at two or more zone counts in these files")
    print(f"cost = a * zones^b, least squares on log-log, zone counts {sorted({r['zones'] for r in results})}")
    print(f"{'cost':<34} {'b':>6}  points (zones: value)")
    for name, fit in fits.items():
        points = "  ".join(f"{z:,}: {v:,.4g}" for z, v in fit["points"])
        print(f"{name:<34} {fit['b']:>6.2f}  {points}")
    if output:
        Path(output).write_text(
            json.dumps({"zones": sorted({r["zones"] for r in results}), "fits": fits}, indent=1) + "\n"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=[*STEPS, "all", "fit"])
    parser.add_argument("files", nargs="*", help="fit: the results files to read")
    parser.add_argument("--zones", type=int, default=1000, help="zones in the input (default 1000)")
    add_data_argument(parser, "long-format timestamp,zone,value file (default /tmp/scale/zones-<zones>.parquet)")
    add_output_argument(
        parser,
        "JSON file the figures are merged into (default /tmp/scale/results-<zones>.json); "
        "fit: where to write the fits (default: only printed)",
    )
    parser.add_argument(
        "--work", help="folder for the dataset, checkpoint and forecasts (default /tmp/scale/work-<zones>)"
    )
    parser.add_argument("--config", default=str(ROOT / "configs" / "fleet-local.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    parser.add_argument("--path", choices=["local", "ray"], default="ray", help="prepare: data.prepare_with")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="prepare: CPUs given to Ray")
    parser.add_argument("--keep", action="store_true", help="prepare: leave the dataset in <work>/data")
    parser.add_argument("--with-local", action="store_true", help="all: also prepare in one process")
    parser.add_argument(
        "--epochs", type=int, default=1, help="train: epochs (default 1; the config's limit_train_batches each)"
    )
    parser.add_argument(
        "--no-ray", action="store_true", help="forecast, backtest: forecast in this process, as infer.py --no-ray"
    )
    parser.add_argument("--batches", type=int, default=2000, help="loading: batches timed (default 2000)")
    parser.add_argument("--timeout", type=float, default=3600, help="all: seconds each step may take (default 3600)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.step == "fit":
        run_fit(args.files, args.output)
        return
    args.data = args.data or f"/tmp/scale/zones-{args.zones}.parquet"
    args.output = args.output or f"/tmp/scale/results-{args.zones}.json"
    args.work = args.work or f"/tmp/scale/work-{args.zones}"
    if args.step == "all":
        run_all(args)
    else:
        run_step(args)


if __name__ == "__main__":
    main()
