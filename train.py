"""Train the forecaster on Ray Train (local Ray by default, a cluster with RAY_ADDRESS set).

python train.py                                  # configs/local.yaml, run runs/nyc_taxi_local
python train.py --config configs/8gpu.yaml --storage s3://bucket/runs --name exp1
python train.py --prepare-only                   # only write the Parquet shards, print a summary
python train.py --set train.max_epochs=20 --name longer
python train.py --tune configs/tune.yaml         # search with Ray Tune: runs/tune, trials.csv, best.yaml
"""

from __future__ import annotations

if __name__ == "__main__":  # Ctrl-C or SIGTERM while the imports below run: one line, not a traceback
    from lit_forecast.startup import guard_startup

    guard_startup()

import argparse
import os
import shlex
import signal
import sys

from lit_forecast import cli, console
from lit_forecast.config import dump
from lit_forecast.errors import ConfigError, RunError, UserError
from lit_forecast.training import runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_arguments(parser)
    parser.add_argument("--prepare-only", action="store_true", help="prepare the data shards of the run and exit")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an existing run with its saved config, even if this config differs",
    )
    parser.add_argument(
        "--tune",
        metavar="SWEEP",
        help="search with Ray Tune as the sweep file says (configs/tune.yaml); --storage, --name and "
        "--set apply to the sweep, --set KEY=VALUE of a training key to every trial",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    command = "python train.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    state: dict = {"config": None}  # what an interruption can report, filled as the run gets going

    def interrupted(signum: int) -> str:
        return runs.interruption(state["config"], cli.SIGNAL_WORDS[signum], command, prepare_only=args.prepare_only)

    try:
        if args.tune:  # Ray Tune handles Ctrl-C itself: it saves the sweep, and the same command resumes it
            tune_command(args, command)
            return
        with cli.interrupts(interrupted):
            config = cli.load_config(args)
            if args.print_config:
                print(dump(config), end="")
                return
            state["config"] = config
            cli.setup_logging(args.verbose)
            if args.prepare_only:
                manifest, folder = runs.prepare_only(config)
                print(console.format_dataset(manifest, folder))
            else:
                print(console.format_run(runs.train(config, resume=args.resume)))
    except UserError as err:
        cli.die(str(err))
    except PermissionError as err:  # anywhere: a path this user may not read or write
        cli.die(cli.permission_message(err))


def tune_command(args: argparse.Namespace, command: str) -> None:
    """``--tune SWEEP``: load and check the sweep file, run or resume it, print its table.

    Ctrl-C stops the sweep through Tune, which saves it: one line then says how many trials had
    started and gives the command that resumes it (status 130). SIGTERM does the same (143).
    Before Tune has started, or at a second signal, the process stops at once, with the same command.
    """
    from lit_forecast.training import sweep as sweeps

    for flag in ("config", "data", "prepare_only", "resume", "print_config"):
        if getattr(args, flag):
            raise ConfigError(
                f"--{flag.replace('_', '-')} does not apply to --tune: the sweep file names its base "
                "config (base:) and its fixed changes (overrides:, or --set)"
            )
    sweep = sweeps.load(args.tune, list(args.set))
    if args.storage is not None:
        sweep.run.storage = args.storage
    if args.name is not None:
        sweep.run.name = args.name
    cli.setup_logging(args.verbose)
    folder, received = sweeps.sweep_folder(sweep), []

    def stop_now(signum: int) -> None:
        first = received[0] if received else signum
        said = f"sweep {folder} stopped at once ({cli.SIGNAL_WORDS[first]}). The same command resumes it: {command}"
        print(f"error: {said}", file=sys.stderr, flush=True)
        os._exit(cli.EXIT_STATUS[first])

    def interrupt(signum: int, frame) -> None:
        """The first Ctrl-C or SIGTERM asks Tune to stop and save the sweep (its SIGUSR1); a second one ends it now."""
        tune_stops = signal.getsignal(signal.SIGUSR1)  # Tune's own handler while the sweep runs
        if received or not callable(tune_stops):
            stop_now(signum)
        received.append(signum)
        tune_stops(signal.SIGUSR1, frame)

    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C is ours: Tune stops on SIGUSR1 too
    before = {each: signal.signal(each, interrupt) for each in (signal.SIGINT, signal.SIGTERM)}
    from lit_forecast.training import tune  # Ray Tune only when a sweep runs

    try:
        trials, keys, folder = tune.run(sweep, stopped=lambda: bool(received))
    except tune.SweepInterrupted as stopped:
        signum = received[0] if received else signal.SIGINT
        print(
            f"error: sweep {stopped.folder} was interrupted ({cli.SIGNAL_WORDS[signum]}) after {stopped.started} of "
            f"{stopped.trials} trials had started; the finished ones are kept, and an interrupted trial goes on "
            f"from its last checkpoint. The same command resumes it: {command}",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(cli.EXIT_STATUS[signum]) from None
    finally:  # for a caller that goes on (a test calling main): its own handlers back
        for each, handler in before.items():
            signal.signal(each, handler)
    print(sweeps.format_trials(trials, keys))
    print(f"trials  {folder}/{sweeps.TRIALS_FILE}")
    if sweeps.best(trials) is None:
        raise RunError(f"every trial of the sweep failed (reasons above, and in {folder}/{sweeps.TRIALS_FILE})")
    print(f"best    python train.py --config {folder}/{sweeps.BEST_FILE}")


if __name__ == "__main__":
    main()
