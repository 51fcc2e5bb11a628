"""The one module that imports Ray Tune: a search over real Ray Train runs (``train.py --tune``).

Ray Train V2 is tuned from a function trainable: each trial is a Tune function that trains
its config with :func:`lit_forecast.training.runs.train`, the same path as ``train.py``, and
hands Tune's report callback to Ray Train, which forwards every epoch's metrics. ASHA stops
weak trials on ``val/mae``. The sweep's folder ``<storage>/<name>`` holds::

    sweep.yaml                  the sweep file and the trials' base config (a rerun must match)
    <trial id>/                 one normal run folder per trial (config, data, tensorboard/, checkpoints),
                                plus Tune's progress.csv, result.json and params.json
    experiment_state-*.json     Tune's own state: the same command resumes a killed sweep
    trials.csv, best.yaml       written at the end (see :mod:`lit_forecast.training.sweep`)

``tensorboard --logdir <storage>/<name>`` compares every trial.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import ray
import yaml
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.util.placement_group import PlacementGroup, get_current_placement_group, remove_placement_group

from lit_forecast import cli, ray_cluster, storage
from lit_forecast.errors import RunError
from lit_forecast.layout import SUMMARY_FILE, check_run_name, check_storage, read_summary
from lit_forecast.training import runs
from lit_forecast.training.run_lock import RunLock
from lit_forecast.training.sweep import (
    BEST_FILE,
    METRIC,
    SWEEP_FILE,
    TRIALS_FILE,
    Dimension,
    Sweep,
    Trial,
    base_config,
    best,
    best_config,
    changes_since,
    dimensions,
    record,
    sweep_folder,
    trial_config,
    trial_status,
    trials_csv,
)  # fmt: skip

log = logging.getLogger(__name__)

EPOCHS = "epochs"  # epochs completed, added to every report: ASHA's clock (Tune's own iteration count
# restarts when a resumed trial starts again from its run's last checkpoint)
# In the sweep's folder: the scheduler's rungs, for a resumed sweep (ResumableASHA). Not .json or .pkl:
# Tune copies those of the folder's top level to its staging folder on a resume and later uploads
# them back over the newer ones.
ASHA_FILE = "asha.yaml"
DRIVER_CPUS = 1.0  # each trial's driver (the Tune function that runs the TorchTrainer)


class EpochReport(TuneReportCallback):
    """Tune's report callback (in the trial's Ray Train controller), adding ``epochs`` to each report."""

    def after_report(self, run_context, metrics: list[dict[str, Any]], checkpoint) -> None:
        first = dict(metrics[0])
        if "epoch" in first:  # Lightning's current_epoch, from 0
            first[EPOCHS] = int(first["epoch"]) + 1
        super().after_report(run_context, [first, *metrics[1:]], checkpoint)


class ResumableASHA(ASHAScheduler):
    """ASHA whose rungs survive a resumed sweep.

    Tune restores a sweep's trials and searcher, not its scheduler: resumed, ASHA would start with
    empty rungs and let every trial after it through the first ones unopposed. The rungs (trial
    id -> val/mae at each milestone) live in ``state`` as well: before each decision the ones
    found there are added to the scheduler's, and after it the union is written back, so no
    record is lost whichever copy of the scheduler Tune asks.
    """

    def __init__(self, state: str, **asha):
        super().__init__(**asha)
        self._state = state

    def _saved(self) -> list:
        return (yaml.safe_load(storage.read_text(self._state)) or []) if storage.exists(self._state) else []

    def _merge(self, saved: list) -> None:
        for bracket, rungs in zip(self._brackets, saved):
            for (_, recorded), kept in zip(bracket._rungs, rungs):
                for trial_id, value in kept.items():
                    recorded.setdefault(trial_id, value)

    def _sync(self) -> None:
        self._merge(self._saved())
        rungs = [[{k: float(v) for k, v in recorded.items()} for _, recorded in b._rungs] for b in self._brackets]
        storage.write_text(self._state, yaml.safe_dump(rungs))

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        self._merge(self._saved())
        decision = super().on_trial_result(tune_controller, trial, result)
        self._sync()
        return decision

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        self._merge(self._saved())
        super().on_trial_complete(tune_controller, trial, result)
        self._sync()


def _trial(values: dict, base: dict, folder: str, alone: bool) -> None:
    """Tune function trainable: train ``base`` with the sampled ``values`` as run ``<folder>/<trial id>``.

    ``alone``: the only trial on a local Ray this sweep started (see :func:`remove_stopped_trials_workers`).
    """
    cli.setup_logging()  # the trial's lines reach the driver's terminal through Ray, prefixed by the trial
    if alone:
        remove_stopped_trials_workers()
    trial_id = tune.get_context().get_trial_id()
    config = trial_config(base, values, folder, trial_id)
    if storage.exists(storage.join(folder, trial_id, SUMMARY_FILE)):
        # Its run finished just before the sweep was stopped, too late for Tune to record: report it again.
        summary = read_summary(storage.join(folder, trial_id))
        tune.report({METRIC: summary["best_metrics"][METRIC], EPOCHS: summary["epochs"]})
        return
    runs.train(config, callbacks=[EpochReport()])


def remove_stopped_trials_workers() -> None:
    """Free the workers' resources of trials that ASHA stopped: every placement group but this trial's own.

    Tune stops a trial by ending its process, and with it the trial's Ray Train controller, which
    never gets to remove its workers' placement group. Ray leaves that to a cleaner that asks the
    State API whether the controller lives; a local Ray started without the dashboard has no
    State API, so the group would hold its CPUs for good and the next trial would wait forever for
    workers. Only for a trial that runs alone on a local Ray of this sweep, where every other
    placement group is a stopped trial's.
    """
    own = get_current_placement_group()
    if own is None:  # not inside a Tune placement group: nothing tells ours from another's
        return
    for hex_id, group in ray.util.placement_group_table().items():
        if group["state"] in ("CREATED", "PENDING", "PREPARED", "RESCHEDULING") and hex_id != own.id.hex():
            log.info("freeing the workers of a stopped trial (placement group %s)", hex_id[:8])
            remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(hex_id))))


def _trial_dirname(trial) -> str:
    return trial.trial_id  # Tune's trial folder is the trial's run folder, and its name in Tune's tables


def distribution(dimension: Dimension):
    """The Tune sampler of one searched key."""
    low_high = dimension.values
    if dimension.kind == "choice":
        return tune.choice(list(dimension.values))
    if dimension.kind == "uniform":
        return tune.uniform(*low_high)
    if dimension.kind == "loguniform":
        return tune.loguniform(*low_high)
    return tune.randint(low_high[0], low_high[1] + 1)  # both bounds included


class SweepInterrupted(RunError):
    """Tune ended before every trial had: it was stopped (Ctrl-C, SIGTERM); the same command resumes it."""

    def __init__(self, folder: str, started: int, trials: int):
        super().__init__(f"sweep {folder} stopped after {started} of {trials} trials had started")
        self.folder, self.started, self.trials = folder, started, trials


def check_resources(sweep: Sweep, base: dict) -> None:
    """Refuse a budget this machine cannot run at once: every concurrent trial holds a driver CPU and its workers."""
    c = base["cluster"]
    # An elastic trial ([min, max] workers) starts with its minimum and grows only into free room.
    workers = c["num_workers"][0] if isinstance(c["num_workers"], list) else c["num_workers"]
    per_trial = DRIVER_CPUS + workers * c["cpus_per_worker"]
    gpus = sweep.budget.concurrent * workers * c["gpus_per_worker"] if c["use_gpu"] else 0
    try:
        ray_cluster.check_resources(
            sweep.budget.concurrent * per_trial,
            gpus,
            f"budget.concurrent (each trial takes {per_trial:g} CPUs: {DRIVER_CPUS:g} for its driver and "
            f"{workers} worker(s) x {c['cpus_per_worker']:g}) or cluster.num_workers in the overrides",
        )
    except ray_cluster.ResourceError as err:
        raise RunError(str(err)) from None


def run(sweep: Sweep, stopped: Callable[[], bool] = lambda: False) -> tuple[list[Trial], list[str], str]:
    """Run (or resume) ``sweep``; returns its trials, the searched keys and the sweep's folder.

    Writes ``trials.csv`` and ``best.yaml`` into the folder. A folder holding another sweep is
    refused; a folder holding this one resumes it (finished trials stay as they are, the
    interrupted ones continue from their runs' last checkpoints). ``stopped`` says whether the
    caller asked Tune to stop: :class:`SweepInterrupted` is raised then, and no table written.
    """
    check_storage(sweep.run.storage)
    check_run_name(sweep.run.name)
    folder = sweep_folder(sweep)
    base = base_config(sweep)
    space = dimensions(sweep, base)
    keys = [d.key for d in space]
    check_resources(sweep, base)
    with RunLock(folder) as lock:
        _check_folder(folder, record(sweep, base))
        lock.keep()
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no TensorBoard files of Tune's own
        ray_cluster.init_ray()
        alone = sweep.budget.concurrent == 1 and not os.environ.get("RAY_ADDRESS")
        trainable = tune.with_resources(
            tune.with_parameters(_trial, base=base, folder=folder, alone=alone), {"CPU": DRIVER_CPUS}
        )
        if tune.Tuner.can_restore(folder):
            log.warning("RESUMING sweep %s: finished trials are kept, interrupted ones continue", folder)
            tuner = tune.Tuner.restore(folder, trainable, resume_unfinished=True, resume_errored=False)
        else:
            tuner = _new_tuner(sweep, space, trainable, folder, base["train"]["max_epochs"])
        grid = tuner.fit()
        # Stopped early (Ctrl-C: Tune counts the trial it stopped as ended): no table yet, the sweep resumes.
        if stopped() or grid.num_terminated + grid.num_errors < sweep.budget.trials:
            raise SweepInterrupted(folder, len(grid), sweep.budget.trials)
        trials = [_row(result, keys, base["train"]["max_epochs"]) for result in grid]
        trials.sort(key=lambda t: t.trial)
        storage.write_text(storage.join(folder, TRIALS_FILE), trials_csv(trials, keys))
        top = best(trials)
        if top is not None:
            storage.write_text(storage.join(folder, BEST_FILE), best_config(base, top, f"{sweep.run.name}-best"))
    return trials, keys, folder


def _check_folder(folder: str, wanted: dict) -> None:
    """Write the sweep's record, or check that the folder's record is this sweep's."""
    path = storage.join(folder, SWEEP_FILE)
    if not storage.exists(path):
        storage.write_text(path, yaml.safe_dump(wanted, sort_keys=False))
        return
    changed = changes_since(yaml.safe_load(storage.read_text(path)) or {}, wanted)
    if changed:
        raise RunError(
            f"sweep {folder} exists with a different sweep or base config:\n  "
            + "\n  ".join(changed[:20])
            + "\nUse --name NEW for a new sweep, or the same sweep file and --set values to resume this one."
        )


def _new_tuner(sweep: Sweep, space: list[Dimension], trainable, folder: str, max_epochs: int) -> tune.Tuner:
    b = sweep.budget
    parent, name = folder.rsplit("/", 1)
    return tune.Tuner(
        trainable,
        param_space={d.key: distribution(d) for d in space},
        tune_config=tune.TuneConfig(
            metric=METRIC,
            mode="min",
            num_samples=b.trials,
            # Tune's max_concurrent_trials does not limit its own basic generator: the generator does.
            search_alg=BasicVariantGenerator(max_concurrent=b.concurrent, random_state=b.seed),
            # stop_last_trials=False: a trial that reaches max_epochs ends by itself, its run finished and summarised.
            scheduler=ResumableASHA(
                storage.join(folder, ASHA_FILE),
                time_attr=EPOCHS,
                max_t=max_epochs,
                grace_period=b.grace_epochs,
                reduction_factor=b.reduction_factor,
                stop_last_trials=False,
            ),
            trial_dirname_creator=_trial_dirname,
            trial_name_creator=_trial_dirname,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=parent,
            failure_config=tune.FailureConfig(max_failures=0),  # a failed trial is recorded; the sweep goes on
            callbacks=[CSVLoggerCallback(), JsonLoggerCallback()],
            verbose=1,
        ),
    )


def _row(result, keys: list[str], max_epochs: int) -> Trial:
    """A finished (or stopped, or failed) trial of Tune's result grid as a row of the table."""
    frame = result.metrics_dataframe
    maes = frame[METRIC].dropna() if frame is not None and METRIC in frame else []
    epochs = int(frame[EPOCHS].max()) if frame is not None and EPOCHS in frame and len(frame) else 0
    error = ""
    if result.error is not None:
        lines = [line.strip() for line in str(result.error).splitlines() if line.strip()]
        error = lines[-1][:300] if lines else type(result.error).__name__
    return Trial(
        trial=result.path.rstrip("/").rsplit("/", 1)[-1],
        status=trial_status(result.error is not None, epochs, max_epochs),
        best_val_mae=float(min(maes)) if len(maes) else None,
        epochs=epochs,
        values={k: result.config.get(k) for k in keys},
        error=error,
    )
