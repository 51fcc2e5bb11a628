"""Command-line plumbing shared by train.py and infer.py: config flags and readable logging."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from typing import NoReturn

from lit_forecast import config as cfg
from lit_forecast import layout
from lit_forecast.errors import ConfigError, cut


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --data, --storage, --name, --set, --print-config."""
    parser.add_argument("--config", default=None, help="YAML config (default: configs/local.yaml)")
    parser.add_argument("--data", help="CSV to use instead of data.source: local path, URL or pyarrow.fs URI")
    parser.add_argument("--storage", help="where runs live (run.storage): a folder or a URI such as s3://bucket/prefix")
    parser.add_argument("--name", help="run name (run.name): the run lives in <storage>/<name>")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. --set model.d_model=128 (repeatable)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")


def load_config(args: argparse.Namespace) -> cfg.Config:
    """The config file with --set overrides, then the dedicated flags (which win).

    --data, --storage and --name are taken as plain strings (``--name 2024`` stays a name).
    """
    for flag in ("data", "storage"):
        value = getattr(args, flag)
        if value is not None and not value.strip():
            raise ConfigError(f"--{flag} is empty: give a path or a URI")
    config = cfg.load(args.config, list(args.set))
    if args.data:
        config.data.source = args.data
        if args.data != cfg.NAB_NYC_TAXI_URL:
            config.data.sha256 = None  # the configured checksum belongs to the NAB file
    if args.storage:
        config.run.storage = args.storage
    if args.name is not None:  # an empty --name is refused below, not ignored
        config.run.name = args.name
    config = cfg.validate(config)
    if config.run.name is not None:
        layout.check_run_name(config.run.name)
    return config


def setup_logging(verbose: bool = False) -> None:
    """One readable line per event on stderr; third-party chatter down to warnings.

    The handler sits on the package logger, not the root, because ``ray.init`` reconfigures
    the root logger.
    """
    package = logging.getLogger("lit_forecast")
    package.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    package.addHandler(handler)
    package.setLevel(logging.DEBUG if verbose else logging.INFO)
    package.propagate = False
    quiet_third_parties()


def quiet_third_parties() -> None:
    """Silence the known-noisy loggers and warnings of Lightning, Ray and friends."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning", "ray", "urllib3", "matplotlib",
                 "botocore", "boto3", "s3fs", "aiobotocore"):  # "Found endpoint for s3 via ..." on every S3 client
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*does not have many workers.*",
        ".*isinstance\\(treespec, LeafSpec\\).*",
        ".*litlogger.*",
        ".*The number of training batches.*",
        ".*Checkpoint directory .* exists and is not empty.*",
        ".*enable_nested_tensor.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


MESSAGE_LINE_MAX = 2000  # a longer line is a value shown whole by mistake: cut, with its size


def die(message: str) -> NoReturn:
    """Print a user-facing error and exit with status 2 (each line at most MESSAGE_LINE_MAX characters)."""
    lines = [cut(line, MESSAGE_LINE_MAX) for line in message.splitlines()] or [""]
    print("error: " + "\n".join(lines), file=sys.stderr)
    raise SystemExit(2)
