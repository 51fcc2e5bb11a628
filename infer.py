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

Online forecasts (--serve): a Ray Serve application answers POST /forecast, POST /forecast/batch,
GET /model and GET /healthz on --port (default 8000) with the run's best checkpoint (--run,
--checkpoint), warm and dynamically batched; with --data it also answers requests that give a
cutoff instead of the history. The serve: section of --config sets replicas, CPUs and GPU
share per replica and the batching limits; the flags below win. kill -HUP deploys the run's
newest best checkpoint (or the newest run's) without dropping a request; Ctrl-C stops.

--engine: plain reads every reading into this process and forecasts there (or in Ray tasks);
stream (lit_forecast/inference/streaming.py) reads groups of whole series on Ray Data, cuts
their windows in workers and forecasts on an actor pool that loads the model once, writing a
Parquet dataset (--output DIR; columns series_id, cutoff, timestamp, step, median, q<level>...,
actual, in_checkpoint) that never passes through this process. auto (the default) streams
inputs of more than 5,000,000 readings (about 500 series of ten months of half-hours). Both
give the same numbers. A .csv output of such an input is refused (give a folder).
"""

from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C or SIGTERM while the imports below run: one line, not a traceback
    from lit_forecast.startup import guard_startup

    guard_startup()

import argparse
import os
import shlex
import sys
from pathlib import Path

from lit_forecast import cli, layout, output_guard, storage
from lit_forecast.console import format_backtest, format_fleet, format_forecasts
from lit_forecast.errors import ConfigError, UserError
from lit_forecast.inference import defaults
from lit_forecast.inference.cutoffs import parse_cutoffs
from lit_forecast.inference.pipeline import InferenceRequest, infer

ENGINES = ("auto", "plain", "stream")
FILE_SUFFIXES = (".csv", ".parquet")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--run", help="run folder <storage>/<name>: its best checkpoint (default: latest finished run)")
    source.add_argument("--checkpoint", help="a Ray checkpoint folder (checkpoint_*/) or a .ckpt file")
    parser.add_argument(
        "--storage", default=defaults.STORAGE, help=f"where to look for the latest run (default: {defaults.STORAGE})"
    )
    parser.add_argument(
        "--data", help="CSV in the training format: path, URL or pyarrow.fs URI (default: the checkpoint's data.source)"
    )
    parser.add_argument(
        "--cutoffs",
        nargs="+",
        metavar="WHEN",
        help="timestamps, lists or START..END/STEP ranges (see above); default: after the end of the data",
    )
    parser.add_argument(
        "--horizon", type=int, help="steps to forecast; must match the checkpoint (default: the checkpoint's)"
    )
    parser.add_argument(
        "--output",
        help="forecasts file, .csv or .parquet, or with --engine stream a folder for the Parquet "
        "dataset (default: <run>/forecasts/forecast_<cutoff>.csv, or forecast_<cutoff>/)",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default="auto",
        help="plain: in this process; stream: Ray Data and an actor pool, for fleets; auto: stream above "
        "5,000,000 readings (default auto)",
    )
    parser.add_argument(
        "--actors",
        type=int,
        default=0,
        help="--engine stream: forecasting actors at most (default: as many as --num-cpus/--num-gpus allow)",
    )
    parser.add_argument("--plot", help="PNG file (default: next to --output)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --output (a file, or a folder of the streaming path), --plot and the files next "
        "to them if they exist (never an input, a run's data or checkpoints, or a read-only file)",
    )
    parser.add_argument("--plot-cutoff", metavar="WHEN", help="cutoff drawn in the plot (default: the last one)")
    parser.add_argument(
        "--plot-series", metavar="ID", help="series drawn in the plot (default: the busiest, largest mean)"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="a window with a hole in its history or too little history is an error (default: skipped and counted)",
    )
    parser.add_argument(
        "--num-cpus",
        type=float,
        default=defaults.CPUS_PER_TASK,
        help=f"CPUs per Ray task or actor (default {defaults.CPUS_PER_TASK:g})",
    )
    parser.add_argument(
        "--num-gpus",
        type=float,
        default=defaults.GPUS_PER_TASK,
        help="GPUs per Ray task or actor, e.g. 1 or 0.25; CPU if the cluster has none "
        f"(default {defaults.GPUS_PER_TASK:g})",
    )
    parser.add_argument(
        "--windows-per-task",
        type=int,
        default=defaults.WINDOWS_PER_TASK,
        help=f"windows each Ray task forecasts (default {defaults.WINDOWS_PER_TASK})",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=defaults.BATCH_SIZE,
        help=f"windows per forward pass (default {defaults.BATCH_SIZE})",
    )
    parser.add_argument("--no-ray", action="store_true", help="forecast in this process with a plain call, without Ray")
    parser.add_argument(
        "--recalibrate-days",
        type=float,  # None: the default, so that --serve can tell a flag given from one left out
        metavar="N",
        help="refit the quantile bands at each cutoff on the series' own forecasts at the same time of day on "
        "each of the N days before it (actuals known by then); about N extra forecasts per series; a series "
        f"with less known past keeps the checkpoint's bands (default {defaults.RECALIBRATE_DAYS:g}; 0: off)",
    )
    add_serve_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    cli.setup_logging(args.verbose)
    if args.serve or any(getattr(args, flag) is not None for flag in SERVE_FLAGS) or args.config:
        try:
            serve(args, batch_only_flags(parser, args))
        except UserError as err:
            cli.die(str(err))
        return
    command = "python infer.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    before = _stamps(args)
    try:
        with cli.interrupts(lambda signum: interruption(args, cli.SIGNAL_WORDS[signum], command, before)):
            check_arguments(args)
            request = InferenceRequest(
                run=args.run,
                checkpoint=args.checkpoint,
                storage=args.storage,
                data=args.data,
                cutoffs=parse_cutoffs(args.cutoffs) if args.cutoffs else None,
                horizon=args.horizon,
                output=args.output,
                plot=args.plot,
                plot_cutoff=parse_cutoffs([args.plot_cutoff])[0] if args.plot_cutoff else None,
                use_ray=not args.no_ray,
                num_cpus=args.num_cpus,
                num_gpus=args.num_gpus,
                windows_per_task=args.windows_per_task,
                batch_size=args.batch_size,
                plot_series=args.plot_series,
                strict=args.strict,
                recalibrate_days=defaults.RECALIBRATE_DAYS if args.recalibrate_days is None else args.recalibrate_days,
            )
            if _engine(args, request) == "stream":
                result = _stream(args, request)
            else:
                result = infer(request)
    except UserError as err:
        cli.die(str(err))
    except PermissionError as err:  # anywhere: a path this user may not read or write
        cli.die(cli.permission_message(err))
    report(result)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """--serve and the server's settings (each overrides the serve: section of --config)."""
    group = parser.add_argument_group("online forecasts (--serve)")
    group.add_argument("--serve", action="store_true", help="answer forecasts over HTTP until stopped (see above)")
    group.add_argument("--config", help="YAML config whose serve: section sets the server (default: built-in defaults)")
    group.add_argument("--host", help="address to listen on (serve.host, default 127.0.0.1; 0.0.0.0: other machines)")
    group.add_argument("--port", type=int, help="HTTP port (serve.port, default 8000)")
    group.add_argument("--replicas", type=int, help="model replicas (serve.replicas, default 1)")
    group.add_argument("--replica-cpus", type=float, help="CPUs per replica (serve.cpus_per_replica, default 1)")
    group.add_argument(
        "--replica-gpus", type=float, help="GPU share per replica, e.g. 0.25 (serve.gpus_per_replica, default 0)"
    )
    group.add_argument(
        "--max-batch-size", type=int, help="forecasts decoded together (serve.max_batch_size, default 32)"
    )
    group.add_argument("--batch-wait-ms", type=float, help="wait for a batch to fill (serve.batch_wait_ms, default 2)")


def batch_only_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """The flags given away from their defaults that only a batch forecast reads: every one but the server's
    (SERVE_FLAGS, --serve, --config) and SHARED_WITH_SERVE, so a flag added to the parser needs no list here."""
    served = set(SERVE_FLAGS) | {"serve", "config"} | SHARED_WITH_SERVE
    return [
        "--" + dest.replace("_", "-")
        for dest, value in vars(args).items()
        if dest not in served and value != parser.get_default(dest)
    ]


# Flags that --serve reads besides its own group: the run selection and the data of cutoff requests.
SHARED_WITH_SERVE = {"run", "checkpoint", "storage", "data", "verbose"}
SERVE_FLAGS = {
    "host": "host",
    "port": "port",
    "replicas": "replicas",
    "replica_cpus": "cpus_per_replica",
    "replica_gpus": "gpus_per_replica",
    "max_batch_size": "max_batch_size",
    "batch_wait_ms": "batch_wait_ms",
}


def serve(args: argparse.Namespace, batch_only: list[str]) -> None:
    """python infer.py --serve: the serve settings from --config and the flags, then the server until stopped.

    ``batch_only``: the batch-forecast flags given, refused here (see :func:`batch_only_flags`).
    """
    import dataclasses

    from lit_forecast import config as cfg

    if not args.serve:
        raise ConfigError(
            "--config, --host, --port, --replicas, --replica-cpus, --replica-gpus, --max-batch-size and "
            "--batch-wait-ms set the server: add --serve"
        )
    if batch_only:
        raise ConfigError(
            f"{', '.join(batch_only)}: not used by --serve (a request gives its own history or cutoff); "
            f"leave {'them' if len(batch_only) > 1 else 'it'} out, or forecast without --serve"
        )
    settings = cfg.load(args.config).serve if args.config else cfg.ServeConfig()
    settings = dataclasses.replace(
        settings, **{key: getattr(args, flag) for flag, key in SERVE_FLAGS.items() if getattr(args, flag) is not None}
    )
    if settings.max_ongoing_requests <= settings.max_batch_size:  # a larger batch asked by flag raises the cap with it
        settings.max_ongoing_requests = 4 * settings.max_batch_size
    cfg.validate_serve(settings)
    from lit_forecast.serving.app import ServeRequest, serve_forever  # Ray and FastAPI only when serving

    serve_forever(
        ServeRequest(settings, run=args.run, checkpoint=args.checkpoint, storage=args.storage, data=args.data)
    )


def _stamps(args: argparse.Namespace) -> dict[str, float]:
    """Modification times of the given outputs that exist (what an interruption compares against)."""
    found = {}
    for _, location in output_guard.outputs_of(args.output, args.plot):
        if not storage.is_uri(location) and os.path.exists(location):
            found[location] = os.path.getmtime(location)
    return found


def interruption(args: argparse.Namespace, signal_name: str, command: str, before: dict[str, float]) -> str:
    """What an interrupted infer.py says: that forecasting stopped, which files it had written, how to run it again."""
    written = [location for location, mtime in _stamps(args).items() if before.get(location) != mtime]
    if written:
        kept = f"these files were already written, each whole: {', '.join(written)}; add --overwrite to run again"
    else:
        kept = "no output was written (each file is written whole, at the end)"
    return f"forecasting was interrupted ({signal_name}): {kept}. Run again with: {command}"


def _engine(args: argparse.Namespace, request: InferenceRequest) -> str:
    """The path to take; a folder output needs the streaming one, a huge result is refused as one CSV file."""
    from lit_forecast.inference import streaming  # Ray Data only when asked for

    folder = args.output is not None and not args.output.endswith(FILE_SUFFIXES)
    if folder and args.engine == "plain":
        raise ConfigError(
            f"--output {args.output}: --engine plain writes one file; the name must end in .csv or .parquet"
        )
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
    options = streaming.StreamOptions(
        actors=args.actors,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
        batch_size=args.batch_size,
        overwrite=args.overwrite,
    )
    return streaming.infer_streaming(request, options)


def report(result) -> None:
    """What infer.py prints, for either path: the backtest's scores (or the forecasts), what was skipped, where it went.

    ``result``: the plain path's InferenceResult or the streaming path's StreamResult. A backtest
    prints its scores only: every forecast row is in the file or dataset named at the end.
    """
    streamed = hasattr(result, "sample")  # a StreamResult: a bounded sample of the forecasts, counts not lists
    if result.table:
        print(format_backtest(result.table))
        if "fleet" in result.table:
            print()
            print(format_fleet(result.table))
    else:
        print(format_forecasts(result.sample if streamed else result.frame))
    bad = getattr(result, "bad_series", [])
    for line in filter(None, [result.skipped, bad and f"{len(bad):,} series skipped whole: " + "; ".join(bad[:3])]):
        print()
        print(line)
    unseen = result.unseen if streamed else len(result.unseen)
    if unseen:
        print(f"{unseen:,} series not in the checkpoint: scaled on their own history before each cutoff", end="")
        print(" (column in_checkpoint)")
    print()
    print(f"checkpoint  {result.checkpoint}")
    if streamed:
        print(f"forecasts   {result.output}  ({result.windows:,} windows, Parquet dataset; {result.seconds:.1f} s)")
    else:
        print(f"forecasts   {result.output}")
    if result.table_path:
        print(f"backtest    {result.table_path}")
    if result.zones_path:
        print(f"per series  {result.zones_path}")
        print(f"fleet plot  {result.fleet_plot}")
    if not streamed:
        print(f"plot        {result.plot}")


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse impossible output paths before anything is loaded or written (infer() checks the rest of the request)."""
    if args.actors < 0:
        raise ConfigError(f"--actors {args.actors}: the most forecasting actors, >= 1 (or 0: as many as fit)")
    for flag, suffixes in (("--output", FILE_SUFFIXES), ("--plot", (".png",))):
        location = getattr(args, flag[2:])
        streamed = flag == "--output" and args.engine != "plain" and not args.no_ray  # --no-ray: one file
        if location is None or (streamed and not location.endswith(suffixes)):
            continue  # a folder for the streaming path: checked there
        if not storage.is_uri(location) and Path(storage.absolute(location)).is_dir():
            raise ConfigError(
                f"{flag} {location} is an existing folder: give a file name inside it, "
                f"e.g. {Path(storage.absolute(location)) / ('forecast' + suffixes[0])}"
            )
        if not location.endswith(suffixes):
            raise ConfigError(f"{flag} {location}: the file name must end in {' or '.join(suffixes)}")
        if not storage.is_uri(location):
            path = Path(storage.absolute(location))
            parent = next((p for p in path.parents if p.exists()), None)
            if parent is not None and not parent.is_dir():
                raise ConfigError(f"{flag} {location}: {parent} is a file, so nothing can be written below it")
    check_outputs(args)


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse an --output or --plot (or a file written next to them) that would replace an input, land in a run's
    data or checkpoints, or replace an existing file without --overwrite (output_guard); nothing is loaded."""
    outputs = output_guard.outputs_of(args.output, args.plot)
    if not outputs:
        return  # the default output: a new file in the run's forecasts/ folder
    inputs: list[tuple[str, str]] = []
    if args.data and not args.data.startswith(("http://", "https://")):
        inputs.append(("--data", args.data))
    runs = {storage.absolute(location) for _, location in outputs for location in _run_folders_above(location)}
    try:  # the run whose checkpoint is read; a missing one is reported by the forecast itself
        if args.checkpoint:
            inputs.append(("--checkpoint", args.checkpoint))
            runs.add(layout.run_of(layout.checkpoint_file(args.checkpoint)) or "")
        else:
            runs.add(storage.absolute(args.run) if args.run else layout.latest_run(args.storage))
    except UserError:
        pass
    sealed: list[tuple[str, str]] = []
    for run in sorted(r for r in runs if r and storage.exists(r)):
        sealed.append((f"the prepared data of run {run}", layout.data_dir(run)))
        sealed += [(f"a checkpoint of run {run}", storage.join(run, name)) for name in layout.checkpoint_folders(run)]
        inputs += [
            ("run file", storage.join(run, name)) for name in storage.list_dir(run) if name != "forecasts"
        ]  # its own outputs: replaceable with --overwrite
        if not args.data:
            try:
                source = layout.read_config(run).data.source
            except UserError:
                continue
            if not source.startswith(("http://", "https://")):
                inputs.append(("data.source", source))
    output_guard.check_outputs(outputs, inputs, sealed, overwrite=args.overwrite)


def _run_folders_above(location: str) -> list[str]:
    """The run folders (a config.yaml next to data/, a summary or checkpoints) that hold ``location``."""
    if storage.is_uri(location):
        return []
    found = []
    for folder in Path(storage.absolute(location)).parents:
        try:
            names = set(os.listdir(folder))
        except OSError:  # missing, not a folder, or not ours to list
            continue
        if layout.CONFIG_FILE in names and (
            "data" in names
            or layout.SUMMARY_FILE in names
            or any(n.startswith(layout.CHECKPOINT_PREFIX) for n in names)
        ):
            found.append(str(folder))
    return found


if __name__ == "__main__":
    main()
