"""The driver's side of training, without Ray (that lives in ray_train.py): check the run
folder against the config, prepare the data, hand over to Ray Train, write the summary.

The run folder's layout is :mod:`lit_forecast.layout`.
"""

from __future__ import annotations

import logging

from lit_forecast import console, storage
from lit_forecast.config import Config, dump, to_dict
from lit_forecast.data.manifest import Manifest
from lit_forecast.data.prepare import prepare
from lit_forecast.errors import RunError
from lit_forecast.layout import CONFIG_FILE, RAY_SNAPSHOT_FILE, SUMMARY_FILE, data_dir, read_config, run_dir

log = logging.getLogger(__name__)


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def prepare_only(config: Config) -> tuple[Manifest, str]:
    """Prepare the run's data shards; returns the manifest and where they are."""
    config, _ = check_run(config, resume=False)  # never re-prepare under another run's config
    folder = data_dir(run_dir(config))
    return prepare(config, folder), folder


def check_run(config: Config, resume: bool) -> tuple[Config, bool]:
    """Check ``config`` against its run folder, writing nothing; returns (config to use, resumes).

    A new name starts a run. The same name with the same config resumes it. The same name with
    another config is refused unless ``resume`` is set, which continues with the saved config.
    """
    run = run_dir(config)
    if not storage.exists(storage.join(run, CONFIG_FILE)):
        if resume:
            raise RunError(f"nothing to resume: {run} holds no run")
        return config, False
    saved = read_config(run)
    changed = _differences(_comparable(saved), _comparable(config))
    if changed and not resume:
        raise RunError(
            f"run {run} exists with a different config:\n  " + "\n  ".join(changed)
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


def train(config: Config, resume: bool = False) -> dict:
    """Prepare the data, train on Ray Train, write the run summary and return it."""
    run = run_dir(config)
    config, resumed = check_run(config, resume)
    if storage.exists(storage.join(run, SUMMARY_FILE)):
        log.info("run %s already finished; nothing to do (use --name NEW for a new run)", run)
        return storage.read_json(storage.join(run, SUMMARY_FILE))
    # Validate the data and storage before the run folder gets anything, and before Ray:
    # Ray Train V2 retries every worker error max_failures times.
    _check_tensorboard_storage(run)
    manifest = prepare(config, data_dir(run))
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

    from lit_forecast.training import ray_train  # the only module that imports Ray Train

    result = ray_train.fit(config, run)
    storage.write_json(storage.join(run, SUMMARY_FILE), result)
    return result


def _check_tensorboard_storage(run: str) -> None:
    """TensorBoard writes through fsspec, which needs a package per URI scheme (s3fs for s3://)."""
    if not storage.is_uri(run):
        return
    import fsspec

    scheme = run.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as err:
        raise RunError(f"TensorBoard logs for {run} go through fsspec, which cannot write {scheme}:// here ({err})") from None
