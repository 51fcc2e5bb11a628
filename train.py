"""Train the forecaster on Ray Train (local Ray by default, a cluster with RAY_ADDRESS set).

    python train.py                                  # configs/local.yaml, run runs/nyc_taxi_local
    python train.py --config configs/8gpu.yaml --storage s3://bucket/runs --name exp1
    python train.py --prepare-only                   # only write the Parquet shards, print a summary
    python train.py --set train.max_epochs=20 --name longer
"""

from __future__ import annotations

import argparse

from lit_forecast import cli, storage
from lit_forecast.config import ConfigError, dump
from lit_forecast.data.prepare import summary
from lit_forecast.data.source import DataError
from lit_forecast.training import runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cli.add_config_arguments(parser)
    parser.add_argument("--prepare-only", action="store_true", help="prepare the data shards of the run and exit")
    parser.add_argument("--resume", action="store_true", help="continue an existing run with its saved config, even if this config differs")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    try:
        config = cli.load_config(args)
        if args.print_config:
            print(dump(config), end="")
            return
        cli.setup_logging(args.verbose)
        if args.prepare_only:
            manifest, folder = runs.prepare_only(config)
            print(summary(manifest, folder))
        else:
            print(runs.format_summary(runs.train(config, resume=args.resume)))
    except (ConfigError, DataError, runs.RunError, storage.StorageError) as err:
        cli.die(str(err))


if __name__ == "__main__":
    main()
