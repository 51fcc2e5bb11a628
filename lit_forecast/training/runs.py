"""The driver's side of training, without Ray (that lives in ray_train.py): check the run
folder against the config, prepare the data, hand over to Ray Train, write the summary.

The run folder's layout is :mod:`lit_forecast.layout`. Everything that can be checked is
checked before the run folder gets a file: the name, the storage, the config against a run of
the same name, the machine's resources, TensorBoard's storage and the data. One driver at a
time works on a run folder (:mod:`lit_forecast.training.run_lock`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pandas as pd

from lit_forecast import console, storage
from lit_forecast.config import Config, differences, dump, to_dict
from lit_forecast.data.manifest import Manifest
from lit_forecast.data.prepare import prepare
from lit_forecast.errors import RunError
from lit_forecast.layout import (
    CONFIG_FILE,
    RAY_SNAPSHOT_FILE,
    SUMMARY_FILE,
    check_storage,
    data_dir,
    has_checkpoint,
    read_config,
    read_summary,
    run_dir,
)
from lit_forecast.training.run_lock import RunLock

log = logging.getLogger(__name__)


def prepare_only(config: Config) -> tuple[Manifest, str]:
    """Prepare the run's data shards; returns the manifest and where they are."""
    run = run_dir(config)
    check_storage(config.run.storage)
    with RunLock(run) as lock:
        config, _ = check_run(config, resume=False)  # never re-prepare under another run's config
        folder = data_dir(run)
        manifest = prepare(config, folder)
        lock.keep()
    warn_if_little_training(manifest)
    return manifest, folder


# A training period this many windows long (past + future) per series, or shorter, is legal but learns little.
TRAIN_SPANS_MIN = 3


def warn_if_little_training(manifest: Manifest) -> None:
    """One warning line if the training period is shorter than a few windows per series, or than half the validation."""
    train, val = manifest.splits.get("train"), manifest.splits.get("val")
    if train is None or not manifest.series:
        return
    w = manifest.window
    step = pd.Timedelta(w.freq)
    per_series = train.windows * w.stride / len(manifest.series) + w.input_window + w.horizon - 1  # slots it covers
    window = w.input_window + w.horizon

    def span(info) -> pd.Timedelta:
        if not (info and info.first_target and info.last_target):
            return pd.Timedelta(0)
        return pd.Timestamp(info.last_target) - pd.Timestamp(info.first_target) + step

    where = f"training targets {train.first_target} .. {train.last_target}"
    if per_series < TRAIN_SPANS_MIN * window:
        log.warning(
            "the training period covers %.1f windows per series (%s; one window is %d slots of %s): a model "
            "learns little from so few; move data.train_end later, or give data that starts earlier",
            per_series / window,
            where,
            window,
            w.freq,
        )
    elif val is not None and span(train) < span(val) / 2:
        log.warning(
            "the training period (%s, %s) is less than half the validation period (%s): move data.train_end "
            "later, or data.val_end earlier",
            span(train),
            where,
            span(val),
        )


def check_run(config: Config, resume: bool) -> tuple[Config, bool]:
    """Check ``config`` against its run folder, writing nothing; returns (config to use, resumes).

    A new name starts a run. The same name with the same config resumes it. The same name with
    another config is refused unless ``resume`` is set, which continues with the saved config.
    A run folder without a checkpoint holds nothing worth keeping: a new config replaces its
    config (with a warning) instead of being refused.
    """
    run = run_dir(config)
    if not storage.exists(storage.join(run, CONFIG_FILE)):
        if resume:
            raise RunError(f"nothing to resume: {run} holds no run")
        return config, False
    started = has_checkpoint(run) or storage.exists(storage.join(run, SUMMARY_FILE))
    try:
        saved = read_config(run)
    except RunError:
        if started:
            raise
        log.warning(
            "run %s: its %s is unreadable and it holds no checkpoint: starting it afresh with this config",
            run,
            CONFIG_FILE,
        )
        return config, False
    changed = differences(_comparable(saved), _comparable(config))
    if changed and not resume and not started:
        log.warning("run %s holds no checkpoint yet: replacing its config (%s)", run, "; ".join(changed))
        return config, False
    if changed and not resume:
        raise RunError(
            f"run {run} exists with a different config:\n  "
            + "\n  ".join(changed)
            + "\nUse --name NEW for a new run, or --resume to continue this one with its saved config."
        )
    if changed:
        log.warning("--resume: continuing %s with its saved config (ignoring %d changed values)", run, len(changed))
    return saved, True


def _comparable(config: Config) -> dict:
    d = to_dict(config)
    d["data"].pop("cache_dir")  # where a download is cached does not change the run,
    d["data"].pop("prepare_with")  # nor which path writes the (identical) shards
    return d


def train(config: Config, resume: bool = False, callbacks: Sequence = ()) -> dict:
    """Prepare the data, train on Ray Train, write the run summary and return it (paths resolved).

    ``callbacks``: Ray Train controller callbacks (a sweep's trial reports to Ray Tune with one).
    """
    run = run_dir(config)
    check_storage(config.run.storage)
    with RunLock(run) as lock:  # refuses at once if another driver works on this run
        config, resumed = check_run(config, resume)
        if storage.exists(storage.join(run, SUMMARY_FILE)):
            log.info("run %s already finished; nothing to do (use --name NEW for a new run)", run)
            return read_summary(run)
        from lit_forecast.training import ray_train  # the only module that imports Ray Train

        # Check what can be checked before the run folder gets anything, and before Ray:
        # Ray Train V2 retries every worker error max_failures times.
        ray_train.check_resources(config)
        _check_tensorboard_storage(run)
        manifest = prepare(config, data_dir(run))  # validates the data before writing a shard
        lock.keep()
        warn_if_little_training(manifest)
        for line in console.format_dataset(manifest, data_dir(run)).splitlines():
            log.info(line)
        if not resumed:
            storage.write_text(storage.join(run, CONFIG_FILE), dump(config))
        elif storage.exists(storage.join(run, RAY_SNAPSHOT_FILE)):
            log.warning("=" * 70)
            log.warning("RESUMING run %s from its latest checkpoint", run)
            log.warning("=" * 70)
        else:
            log.warning("run %s exists but holds no checkpoint yet: starting it from epoch 1", run)
        log.info("run %s: resume after an interruption with the same command (--name %s)", run, config.run.name)

        result = ray_train.fit(config, run, callbacks)
        storage.write_json(storage.join(run, SUMMARY_FILE), result)
    return read_summary(run)


def _check_tensorboard_storage(run: str) -> None:
    """TensorBoard writes through fsspec, which needs a package per URI scheme (s3fs for s3://)."""
    if not storage.is_uri(run):
        return
    import fsspec

    scheme = run.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as err:
        raise RunError(
            f"TensorBoard logs for {run} go through fsspec, which cannot write {scheme}:// here ({err})"
        ) from None


def last_checkpoint(run: str) -> tuple[str, int | None] | None:
    """The run's latest checkpoint that Ray registered (whole), and the epochs it holds (None if unknown)."""
    snapshot = storage.join(run, RAY_SNAPSHOT_FILE)
    try:
        latest = storage.read_json(snapshot).get("latest_checkpoint_result") or {}
        name, epoch = latest["checkpoint_dir_name"], latest.get("metrics", {}).get("epoch")
        return storage.join(run, name), (int(epoch) + 1 if isinstance(epoch, int) else None)  # Lightning counts from 0
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def interruption(config: Config | None, signal_name: str, command: str, prepare_only: bool = False) -> str:
    """What an interrupted train.py says: what stopped, what was kept, and the command that resumes."""
    if config is None or config.run.name is None:
        return f"interrupted ({signal_name}) before the run started: nothing was written. Run again with: {command}"
    run = run_dir(config)
    if prepare_only:
        return (
            f"preparing the data of run {run} was interrupted ({signal_name}): no shard is half-written, and the "
            f"same command prepares it again: {command}"
        )
    found = last_checkpoint(run)
    if found is None:
        kept = "it had no checkpoint yet (a complete prepared dataset is reused)"
    else:
        epochs = f" (epoch {found[1]}/{config.train.max_epochs} done)" if found[1] is not None else ""
        kept = f"its last checkpoint is kept: {found[0]}{epochs}"
    return f"training of run {run} was interrupted ({signal_name}); {kept}. The same command resumes it: {command}"
