"""Forecast from a trained run, locally or fanned out over a Ray cluster.

    python infer.py                                   # best checkpoint of the latest run in runs/,
                                                      # the 48 half-hours after the end of the data
    python infer.py --run runs/nyc_taxi_local --cutoffs 2015-01-01..2015-01-31/1D   # backtest
    python infer.py --checkpoint runs/x/checkpoint_000009 --data newer.csv --output f.parquet
    RAY_ADDRESS=auto python infer.py --num-gpus 1 --windows-per-task 4096           # on a cluster
    python infer.py --data zones.parquet --cutoffs 2015-01-01..2015-01-31/1D --output jan/   # a fleet, streamed

--cutoffs: the first slot of each forecast, as timestamps (2015-01-05 or 2015-01-05T12:00),
comma-separated lists of them, or ranges START..END/STEP with END included and STEP a duration
such as 30min, 6h or 1D (default 1D): 2015-01-01..2015-01-31/1D is every midnight of January
2015. A forecast at cutoff t uses only data strictly before t. Where the data holds actual
values after a cutoff, a backtest table (model vs daily and weekly seasonal-naive) is printed
and saved as JSON next to the forecasts.

Fleets (many series, --data in long format): a window whose history has a hole (a gap longer
than data.max_gap, or the slot before the cutoff missing) or too little history is skipped and
counted in one warning (--strict: an error instead); a series the checkpoint never saw is
scaled on its own history before each cutoff. A backtest of many series also writes
<output>.zones.csv (per-series scores), <output>.fleet.png (per-series MASE, model vs weekly
naive) and prints the mean and median MASE over series and the 10 worst series.

--engine: plain reads every reading into this process and forecasts there (or in Ray tasks);
stream (lit_forecast/inference/streaming.py) reads groups of whole series on Ray Data, cuts
their windows in workers and forecasts on an actor pool that loads the model once, writing a
Parquet dataset (--output DIR; columns series_id, cutoff, timestamp, step, median, q<level>...,
actual, in_checkpoint) that never passes through this process. auto (the default) streams
inputs of more than 5,000,000 readings (about 500 series of ten months of half-hours). Both
give the same numbers. A .csv output of such an input is refused (give a folder).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from lit_forecast import cli, storage
from lit_forecast.console import format_backtest, format_fleet, format_forecasts
from lit_forecast.errors import ConfigError, UserError
from lit_forecast.inference.cutoffs import parse_cutoffs
from lit_forecast.inference.pipeline import InferenceRequest, infer

ENGINES = ("auto", "plain", "stream")
FILE_SUFFIXES = (".csv", ".parquet")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run", help="run folder <storage>/<name>: its best checkpoint (default: latest finished run)")
    source.add_argument("--checkpoint", help="a Ray checkpoint folder (checkpoint_*/) or a .ckpt file")
    parser.add_argument("--storage", default="runs", help="where to look for the latest run (default: runs)")
    parser.add_argument("--data", help="CSV in the training format: path, URL or pyarrow.fs URI (default: the checkpoint's data.source)")
    parser.add_argument("--cutoffs", nargs="+", metavar="WHEN", help="timestamps, lists or START..END/STEP ranges (see above); default: after the end of the data")
    parser.add_argument("--horizon", type=int, help="steps to forecast; must match the checkpoint (default: the checkpoint's)")
    parser.add_argument("--output", help="forecasts file, .csv or .parquet, or with --engine stream a folder for the Parquet "
                                         "dataset (default: <run>/forecasts/forecast_<cutoff>.csv, or forecast_<cutoff>/)")
    parser.add_argument("--engine", choices=ENGINES, default="auto",
                        help="plain: in this process; stream: Ray Data and an actor pool, for fleets; auto: stream above "
                             "5,000,000 readings (default auto)")
    parser.add_argument("--overwrite", action="store_true", help="--engine stream: replace an --output folder that holds files")
    parser.add_argument("--actors", type=int, default=0,
                        help="--engine stream: forecasting actors at most (default: as many as --num-cpus/--num-gpus allow)")
    parser.add_argument("--plot", help="PNG file (default: next to --output)")
    parser.add_argument("--plot-cutoff", metavar="WHEN", help="cutoff drawn in the plot (default: the last one)")
    parser.add_argument("--plot-series", metavar="ID", help="series drawn in the plot (default: the busiest, largest mean)")
    parser.add_argument("--strict", action="store_true", help="a window with a hole in its history or too little history is an error (default: skipped and counted)")
    parser.add_argument("--num-cpus", type=float, default=1, help="CPUs per Ray task or actor (default 1)")
    parser.add_argument("--num-gpus", type=float, default=0,
                        help="GPUs per Ray task or actor, e.g. 1 or 0.25; CPU if the cluster has none (default 0)")
    parser.add_argument("--windows-per-task", type=int, default=256, help="windows each Ray task forecasts (default 256)")
    parser.add_argument("--batch-size", type=int, default=256, help="windows per forward pass (default 256)")
    parser.add_argument("--no-ray", action="store_true", help="forecast in this process with a plain call, without Ray")
    parser.add_argument("--recalibrate-days", type=float, default=0, metavar="N",
                        help="refit the quantile bands at each cutoff on the model's forecasts of the N days before it "
                             "(actuals known by then); costs one extra forecast per series for every slot from N days before "
                             "the first cutoff to the last, so for a few series, not a fleet; default 0: the checkpoint's bands")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    cli.setup_logging(args.verbose)
    try:
        check_arguments(args)
        request = InferenceRequest(
            run=args.run, checkpoint=args.checkpoint, storage=args.storage, data=args.data,
            cutoffs=parse_cutoffs(args.cutoffs) if args.cutoffs else None, horizon=args.horizon,
            output=args.output, plot=args.plot, plot_cutoff=parse_cutoffs([args.plot_cutoff])[0] if args.plot_cutoff else None,
            use_ray=not args.no_ray, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
            windows_per_task=args.windows_per_task, batch_size=args.batch_size,
            plot_series=args.plot_series, strict=args.strict, recalibrate_days=args.recalibrate_days,
        )
        if _engine(args, request) == "stream":
            return _print_stream(_stream(args, request))
        result = infer(request)
    except UserError as err:
        cli.die(str(err))
    print(format_forecasts(result.frame))
    if result.table:
        print()
        print(format_backtest(result.table))
        if "fleet" in result.table:
            print()
            print(format_fleet(result.table))
    if result.skipped:
        print()
        print(result.skipped)
    if result.unseen:
        print(f"{len(result.unseen):,} series not in the checkpoint: scaled on their own history before each cutoff "
              f"(column in_checkpoint)")
    print()
    print(f"checkpoint  {result.checkpoint}")
    print(f"forecasts   {result.output}")
    if result.table_path:
        print(f"backtest    {result.table_path}")
    if result.zones_path:
        print(f"per series  {result.zones_path}")
        print(f"fleet plot  {result.fleet_plot}")
    print(f"plot        {result.plot}")


def _engine(args: argparse.Namespace, request: InferenceRequest) -> str:
    """The path to take; a folder output needs the streaming one, a huge result is refused as one CSV file."""
    from lit_forecast.inference import streaming  # Ray Data only when asked for

    folder = args.output is not None and not args.output.endswith(FILE_SUFFIXES)
    if folder and args.engine == "plain":
        raise ConfigError(f"--output {args.output}: --engine plain writes one file; the name must end in .csv or .parquet")
    if folder and args.engine == "auto":
        return "stream"
    engine = "plain" if args.engine == "auto" and args.no_ray and not folder else args.engine  # --no-ray: no Ray at all
    if engine == "plain" and not (args.output or "").endswith(".csv"):
        return "plain"
    return streaming.choose_engine(engine, request)


def _stream(args: argparse.Namespace, request: InferenceRequest):
    from lit_forecast.inference import streaming

    if args.no_ray:
        raise ConfigError("--no-ray: the streaming path runs on Ray; use --engine plain to forecast in this process")
    options = streaming.StreamOptions(actors=args.actors, num_cpus=args.num_cpus, num_gpus=args.num_gpus,
                                      batch_size=args.batch_size, overwrite=args.overwrite)
    return streaming.infer_streaming(request, options)


def _print_stream(result) -> None:
    if len(result.sample):
        print(format_forecasts(result.sample))
    if result.table:
        print()
        print(format_backtest(result.table))
        if "fleet" in result.table:
            print()
            print(format_fleet(result.table))
    for line in filter(None, [result.skipped, f"{len(result.bad_series):,} series skipped whole: "
                              + "; ".join(result.bad_series[:3]) if result.bad_series else ""]):
        print()
        print(line)
    if result.unseen:
        print(f"{result.unseen:,} series not in the checkpoint: scaled on their own history before each cutoff "
              f"(column in_checkpoint)")
    print()
    print(f"checkpoint  {result.checkpoint}")
    print(f"forecasts   {result.output}  ({result.windows:,} windows, Parquet dataset; {result.seconds:.1f} s)")
    if result.table_path:
        print(f"backtest    {result.table_path}")
    if result.zones_path:
        print(f"per series  {result.zones_path}")
        print(f"fleet plot  {result.fleet_plot}")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse impossible requests before anything is loaded or written."""
    if not (math.isfinite(args.num_cpus) and args.num_cpus > 0):
        raise ConfigError(f"--num-cpus {args.num_cpus:g}: CPUs per Ray task must be a positive number, e.g. 1 or 0.5")
    if not (math.isfinite(args.num_gpus) and args.num_gpus >= 0):
        raise ConfigError(f"--num-gpus {args.num_gpus:g}: GPUs per Ray task must be 0 or a positive number, e.g. 1 or 0.25")
    if args.windows_per_task < 1 or args.batch_size < 1 or args.actors < 0:
        raise ConfigError("--windows-per-task and --batch-size must be >= 1, --actors >= 0")
    if not args.no_ray:  # a local Ray is sized to this machine: a task asking for more would wait forever
        import torch

        from lit_forecast import ray_cluster

        gpus = args.num_gpus if torch.cuda.device_count() else 0  # without GPUs, tasks fall back to CPU
        ray_cluster.check_resources(args.num_cpus, gpus, "--num-cpus or --num-gpus (per task)")
    for flag, suffixes in (("--output", FILE_SUFFIXES), ("--plot", (".png",))):
        location = getattr(args, flag[2:])
        if location is None or (flag == "--output" and args.engine != "plain" and not location.endswith(suffixes)):
            continue  # a folder for the streaming path: checked there
        if not storage.is_uri(location) and Path(storage.absolute(location)).is_dir():
            raise ConfigError(f"{flag} {location} is an existing folder: give a file name inside it, "
                              f"e.g. {Path(storage.absolute(location)) / ('forecast' + suffixes[0])}")
        if not location.endswith(suffixes):
            raise ConfigError(f"{flag} {location}: the file name must end in {' or '.join(suffixes)}")
        if not storage.is_uri(location):
            path = Path(storage.absolute(location))
            parent = next((p for p in path.parents if p.exists()), None)
            if parent is not None and not parent.is_dir():
                raise ConfigError(f"{flag} {location}: {parent} is a file, so nothing can be written below it")


if __name__ == "__main__":
    main()
