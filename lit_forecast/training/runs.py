"""Run folders and the driver's side of training, without Ray (that lives in ray_train.py).

A run is one folder, ``<storage>/<name>``, that holds its whole record::

    config.yaml              the resolved config (a rerun with another config is refused)
    data/                    the Parquet shards and manifest it trained on
    tensorboard/             event files written by rank 0
    checkpoint_*/            Ray Train checkpoints (checkpoint.ckpt inside)
    summary.json             written when training finishes: best checkpoint and its metrics
"""

from __future__ import annotations

import logging

import yaml

from lit_forecast import storage
from lit_forecast.config import Config, ConfigError, dump, from_dict, to_dict, validate
from lit_forecast.data.prepare import prepare, summary

log = logging.getLogger(__name__)

CONFIG_FILE, SUMMARY_FILE = "config.yaml", "summary.json"
CHECKPOINT_FILE = "checkpoint.ckpt"  # inside each checkpoint_*/ (RayTrainReportCallback.CHECKPOINT_NAME)
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's record of reported checkpoints


class RunError(RuntimeError):
    """A run cannot start or continue as asked; the message says what to do instead."""


def run_dir(config: Config) -> str:
    """``<storage>/<name>`` as an absolute path or URI."""
    if not config.run.name:
        raise ConfigError("'run.name' is not set: pass --name or set run.name in the config")
    return storage.join(storage.absolute(config.run.storage), config.run.name)


def data_dir(run: str) -> str:
    """The run's prepared dataset."""
    return storage.join(run, "data")


def tensorboard_dir(run: str) -> str:
    """Where rank 0 writes TensorBoard events."""
    return storage.join(run, "tensorboard")


def read_config(run: str) -> Config:
    """The config a run was started with."""
    raw = yaml.safe_load(storage.read_text(storage.join(run, CONFIG_FILE)))
    return validate(from_dict(raw))


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def prepare_only(config: Config) -> tuple[dict, str]:
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
    d["data"].pop("cache_dir")  # where a download is cached does not change the run
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
    for line in summary(manifest, data_dir(run)).splitlines():
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


def format_summary(result: dict) -> str:
    """Closing words of a run: best checkpoint, its metrics, where to look next."""
    best = result.get("best_checkpoint")
    metrics = result.get("best_metrics", {})
    shown = "  ".join(f"{k} {metrics[k]:.4g}" for k in ("val/mae", "val/rmse", "val/mape", "val/smape", "val/loss") if k in metrics)
    return "\n".join(
        [
            "",
            f"run          {result['run_dir']}",
            f"epochs       {result.get('epochs')}" + (f" (epoch {int(metrics['epoch']) + 1} best)" if "epoch" in metrics else ""),  # Lightning counts from 0
            f"best         {best}",
            f"metrics      {shown}  (passengers; mape/smape as fractions)",
            f"tensorboard  tensorboard --logdir {result['tensorboard']}",
            f"forecast     python infer.py --run {result['run_dir']}",
        ]
    )
