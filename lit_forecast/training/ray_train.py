"""The one module that imports Ray Train: TorchTrainer + Lightning, checkpoints, resume.

Model and data code do not change for Ray; only the Lightning Trainer's arguments do
(``strategy``, ``plugins``, ``callbacks``, ``devices="auto"``), and each worker builds its own
data module for its rank's shard. The driver hands workers plain dicts and gets plain dicts back.
"""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import time
from collections.abc import Sequence

import lightning as L
import ray
import ray.exceptions
import ray.train
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, RayTrainReportCallback, prepare_trainer
from ray.train.torch import TorchConfig, TorchTrainer

from lit_forecast import cli, ray_cluster, storage
from lit_forecast.config import Config, from_dict, to_dict
from lit_forecast.data.datamodule import ShardDataModule
from lit_forecast.data.manifest import read_manifest
from lit_forecast.errors import RunError, StorageError
from lit_forecast.layout import (
    CHECKPOINT_FILE,
    DIVERGED_FILE,
    checkpoint_folders,
    data_dir,
    relative_to_run,
    tensorboard_dir,
)
from lit_forecast.models.factory import module_from_config
from lit_forecast.models.module import ForecastModule
from lit_forecast.training.callbacks import (
    DivergenceGuard,
    EpochLine,
    ForecastFigure,
    RandomState,
    Throughput,
    WeightAverage,
    WorldSize,
    workers_line,
)

log = logging.getLogger(__name__)

SCORE = "val/mae"  # autoregressive validation MAE in passengers ranks checkpoints
assert CHECKPOINT_FILE == RayTrainReportCallback.CHECKPOINT_NAME  # the run layout follows Ray's name

# -- configuration objects (pure: CI builds them for configs/8gpu.yaml without GPUs) -------------


def scaling_config(config: Config) -> ScalingConfig:
    """Workers and the resources of each."""
    c = config.cluster
    resources = {"CPU": c.cpus_per_worker}
    if c.use_gpu:
        resources["GPU"] = c.gpus_per_worker
    if not c.elastic:
        return ScalingConfig(num_workers=c.num_workers, use_gpu=c.use_gpu, resources_per_worker=resources)
    # Elastic: Ray starts once min_workers can be placed, restarts from the last checkpoint with
    # the workers left after a loss, and grows toward max_workers at the next check.
    return ScalingConfig(
        num_workers=(c.min_workers, c.max_workers),
        use_gpu=c.use_gpu,
        resources_per_worker=resources,
        elastic_resize_monitor_interval_s=c.resize_check_s,
    )


def torch_config(config: Config) -> TorchConfig:
    """Process-group backend (gloo on CPU, nccl on GPU) and collective timeout."""
    # RayDDPStrategy ignores its own process-group settings: backend and timeout live here.
    return TorchConfig(backend=config.cluster.backend, timeout_s=config.cluster.timeout_s)


def run_config(config: Config, run: str, callbacks: Sequence = ()) -> RunConfig:
    """Where the run lives, which checkpoints to keep, how many failures to survive; ``callbacks``
    are Ray Train controller callbacks (a sweep's trial passes Tune's report callback)."""
    parent, name = run.rsplit("/", 1)
    return RunConfig(
        name=name,
        storage_path=parent,
        checkpoint_config=CheckpointConfig(
            num_to_keep=config.cluster.num_to_keep, checkpoint_score_attribute=SCORE, checkpoint_score_order="min"
        ),
        failure_config=FailureConfig(max_failures=config.cluster.max_failures),
        # Controller chatter (resource requests, "checkpoint created") down to warnings.
        logging_config=LoggingConfig(log_level="WARNING"),
        callbacks=list(callbacks),
    )


def worker_batch_size(config: Config, world: int) -> int:
    """Windows per optimiser step on each of ``world`` workers.

    Fixed ``cluster.num_workers``: ``train.batch_size``. Elastic (``[min, max]``): the global
    batch is ``train.batch_size x max`` at any world size, so each worker takes
    ``global // world`` (at least 1; 256 on 6 workers is 42 each, 252 in all). The learning
    rate and its schedule then see the same batch, and about the same steps per epoch, after
    a resize as before it.
    """
    t, c = config.train, config.cluster
    if not c.elastic:
        return t.batch_size
    return max(1, t.batch_size * c.max_workers // world)


def trainer_arguments(config: Config) -> dict:
    """Lightning Trainer arguments other than the Ray plugins (which need a live worker)."""
    t = config.train
    precision = t.precision if t.precision != "auto" else ("bf16-mixed" if config.cluster.use_gpu else "32-true")
    return {
        "max_epochs": t.max_epochs,
        "accelerator": "gpu" if config.cluster.use_gpu else "cpu",
        "devices": "auto",
        "precision": precision,
        "gradient_clip_val": t.grad_clip,
        "limit_train_batches": t.limit_train_batches,
        "num_sanity_val_steps": 0,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,  # Ray's report callback checkpoints
        # Each rank already reads its own shard (and its own val/test windows): Lightning's
        # DistributedSampler would split every rank's data again.
        "use_distributed_sampler": False,
        "log_every_n_steps": 10,
        "deterministic": False,
    }


# -- inside each worker ---------------------------------------------------------------------------


class ReportCallback(RayTrainReportCallback):
    """Ray's report callback, checkpointing every ``every_n_epochs`` epochs (and at the last one).

    On those epochs it is Ray's own: every rank reports the epoch's metrics and its checkpoint
    folder (Lightning writes the file on rank 0 only). On the others it reports metrics alone,
    which Ray Train requires of every rank each epoch. Each checkpoint also carries the full
    resolved config under ``lit_forecast_config``, so inference needs no other file. An epoch
    whose loss diverged (``guard``) reports its metrics and where it diverged, and no checkpoint.
    """

    def __init__(self, every_n_epochs: int, config: dict, guard: DivergenceGuard, run: str):
        super().__init__()
        self.every_n_epochs, self.config, self.guard, self.run = every_n_epochs, config, guard, run

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["lit_forecast_config"] = self.config

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if self.guard.diverged is None and (epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs):
            super().on_train_epoch_end(trainer, pl_module)
            return
        metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
        if self.guard.diverged is not None and trainer.global_rank == 0:  # for the driver to name
            epoch, step = self.guard.diverged
            storage.write_json(storage.join(self.run, DIVERGED_FILE), {"epoch": epoch, "step": step})
        ray.train.report(metrics={**metrics, "epoch": trainer.current_epoch, "step": trainer.global_step})


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point: one Lightning Trainer per worker over its rank's shard."""
    _worker_logging()
    try:
        _train_worker(loop_config)
    except Exception as err:
        # Storage that stops answering fails every client in its own way (pyarrow, botocore
        # for TensorBoard, Ray's checkpoint upload), each with a long traceback: one line instead.
        if storage.is_unreachable(err):
            raise StorageError(storage.unreachable_message(loop_config["run"], err)) from None
        if storage.is_unwritable(err):  # a full or read-only run folder (checkpoint, TensorBoard, marker)
            raise StorageError(storage.unwritable_message(loop_config["run"], err)) from None
        raise


def _train_worker(loop_config: dict) -> None:
    config = from_dict(loop_config["config"])
    run = loop_config["run"]
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    torch.set_num_threads(max(1, int(config.cluster.cpus_per_worker)))

    datamodule = ShardDataModule(data_dir(run), worker_batch_size(config, world))
    plain, manifest, guard = to_dict(config), datamodule.manifest, DivergenceGuard()
    module = module_from_config(config, manifest)
    if config.train.compile:
        compile_members(module)
    trainer = L.Trainer(
        **trainer_arguments(config),
        strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()],
        callbacks=[
            guard,  # first: its epoch-end decision is a collective, and the report must know it
            Throughput(),
            EpochLine(loop_config["launched_at"]),
            RandomState(),
            WorldSize(),
            ForecastFigure(),
            *([WeightAverage(config.train.ema_decay)] if config.train.ema_decay else []),  # after the figure
            ReportCallback(config.cluster.checkpoint_every_n_epochs, plain, guard, run),
        ],
        logger=TensorBoardLogger(tensorboard_dir(run), name="", version="", default_hp_metric=False),
    )
    trainer = prepare_trainer(trainer)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        if rank == 0:
            log.info(workers_line(world, None, None))
        trainer.fit(module, datamodule=datamodule)
        return
    with tempfile.TemporaryDirectory() as scratch:
        path, name, epoch, previous = _readable_checkpoint(
            run, os.path.basename(checkpoint.path.rstrip("/")), scratch, rank
        )
        if rank == 0:  # Lightning counts epochs from 0, people from 1
            log.info(workers_line(world, previous, epoch + 2))
            log.warning(
                "RESUMED from checkpoint %s (epoch %d/%d done); continuing with epoch %d",
                storage.join(run, name),
                epoch + 1,
                config.train.max_epochs,
                epoch + 2,
            )
        trainer.fit(module, datamodule=datamodule, ckpt_path=path)


def _readable_checkpoint(run: str, latest: str, scratch: str, rank: int) -> tuple[str, str, int, int | None]:
    """A local copy of the newest checkpoint that loads: Ray's latest, or failing that an older one.

    Returns (local path, checkpoint folder name, epoch, the workers that wrote it or None if it
    does not say). Only Ray's latest and the folders older than it are candidates: a newer folder
    is one whose upload never completed. A checkpoint that cannot be read is named in a warning
    and skipped; if none can be read, the error names them all.
    """
    older = [name for name in reversed(checkpoint_folders(run)) if name < latest]
    problems = []
    for name in [latest, *older]:
        source = storage.join(run, name, CHECKPOINT_FILE)
        try:
            blob = storage.read_bytes(source)
            state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
            epoch, previous = int(state["epoch"]), state.get(WorldSize.KEY)
        except Exception as err:  # any way a file can be broken: truncated, corrupt, missing, not ours
            problems.append(f"{source}: {str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}")
            if rank == 0:
                log.warning("checkpoint %s cannot be read (%s): trying the one before it", source, problems[-1])
            continue
        local = os.path.join(scratch, CHECKPOINT_FILE)
        with open(local, "wb") as out:
            out.write(blob)
        return local, name, epoch, None if previous is None else int(previous)
    raise RunError("no readable checkpoint to resume from:\n  " + "\n  ".join(problems))


def compile_members(module: ForecastModule) -> None:
    """torch.compile each member's ``forward`` (the teacher-forced training pass) in place.

    In place (``nn.Module.compile``), so parameter names and checkpoints do not change. The
    autoregressive ``forecast`` stays eager: its key/value cache grows by one step per call.
    """
    for net in module.model.nets:
        net.compile()


def _worker_logging() -> None:
    cli.quiet_third_parties()
    # Ray 2.60 (Train V2) logs "Reporting training result N: ..." at INFO on a logger named after
    # the file path of its private module ray/train/v2/_internal/execution/context.py; there is
    # no public setting for it. If a later Ray moves the module, the line simply comes back.
    try:
        from ray.train.v2._internal.execution import context as ray_train_context

        logging.getLogger(ray_train_context.__file__).setLevel(logging.WARNING)
    except ImportError:
        pass
    package = logging.getLogger("lit_forecast")
    if not package.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)
        package.propagate = False


# -- the driver -----------------------------------------------------------------------------------


def _failure_message(err: Exception, config: Config, run: str) -> str:
    """What to tell the user when Ray Train gives up: the workers' first error, and how to resume."""
    failures = getattr(err, "worker_failures", None) or {}
    cause = next(iter(failures.values()), None) or getattr(err, "controller_failure", None) or err
    # A worker's error arrives wrapped by Ray; its last line names the exception that ended it.
    lines = [line for line in str(cause).strip().splitlines() if line.strip()]
    reason = lines[-1].strip() if lines else type(cause).__name__
    return (
        f"training failed and Ray Train gave up after cluster.max_failures={config.cluster.max_failures} "
        f"restart(s): {reason}\nThe run keeps every checkpoint it reported: once the cause is fixed, run the "
        f"same command again to resume {run} from its last checkpoint (raise cluster.max_failures to survive "
        f"more failures in one attempt)."
    )


# What reaches the driver when the Ray node under it dies (its raylet killed, out of memory):
# the Train controller actor dies with its node, or the driver loses its own raylet.
_CLUSTER_DIED = tuple(
    getattr(ray.exceptions, name)
    for name in (
        "ActorDiedError",
        "ActorUnavailableError",
        "NodeDiedError",
        "LocalRayletDiedError",
        "OwnerDiedError",
        "RaySystemError",
    )
    if hasattr(ray.exceptions, name)
)


def _failure_causes(err: Exception) -> list:
    """Ray Train's error and what it carries: the workers' errors and the controller's."""
    failures = getattr(err, "worker_failures", None) or {}
    return [err, *failures.values(), getattr(err, "controller_failure", None)]


def _cluster_died_message(err: Exception | None, run: str) -> str:
    """What to tell the user when the Ray cluster under the driver died in the middle of a run
    (``err``: Ray's exception, or None when the driver saw its local raylet go first)."""
    lines = [line.strip() for line in str(err or "").splitlines() if line.strip()]
    detail = next(
        (line for line in lines if "node" in line.lower() or "raylet" in line.lower()), lines[0] if lines else ""
    )
    cluster = (
        f"the Ray cluster at {os.environ['RAY_ADDRESS']} lost the node running this run's controller"
        if os.environ.get("RAY_ADDRESS")
        else "the local Ray cluster this driver started died"
    )
    cause = f" ({type(err).__name__}: {detail[:300]})" if err is not None else " (its raylet process is gone)"
    return (
        f"{cluster} during training{cause}; a raylet killed or out of memory ends "
        f"it this way. Every checkpoint reported so far is kept: run the same command again to resume {run} from its "
        "last checkpoint."
    )


RESOURCE_KEYS = "cluster.num_workers, cluster.cpus_per_worker or cluster.gpus_per_worker (or use_gpu)"


def resources_needed(config: Config) -> tuple[float, float]:
    """(CPUs, GPUs) the workers need to start: an elastic run (``[min, max]``) needs its minimum only."""
    c = config.cluster
    return c.min_workers * c.cpus_per_worker, c.min_workers * c.gpus_per_worker if c.use_gpu else 0


def check_resources(config: Config) -> None:
    """Refuse, before anything is written, a config this machine cannot run (without RAY_ADDRESS).

    An elastic run (``[min, max]`` workers) needs room for its minimum only: it grows when more frees up.
    """
    c = config.cluster
    try:
        ray_cluster.check_resources(*resources_needed(config), RESOURCE_KEYS)
    except ray_cluster.ResourceError as err:
        each = f"{c.cpus_per_worker:g} CPU" + (f" and {c.gpus_per_worker:g} GPU" if c.use_gpu else "")
        workers = (
            f"at least {c.min_workers} of {c.num_workers} workers (the elastic minimum)"
            if c.elastic
            else f"{c.num_workers} workers"
        )
        raise RunError(f"{err} (config: {workers} x {each} each)") from None


def check_shards(config: Config, num_shards: int, data: str) -> None:
    """Refuse a prepared dataset with fewer training shards than the most workers the run may have."""
    c = config.cluster
    if num_shards < c.max_workers:
        raise RunError(
            f"{data} holds {num_shards} training shard(s), too few for up to {c.max_workers} worker(s) "
            f"(cluster.num_workers: {c.num_workers}); delete {data} and prepare it again with this config "
            "(python train.py --prepare-only), or lower cluster.num_workers"
        )


def init_ray(config: Config) -> None:
    """Join RAY_ADDRESS (saying so if it cannot hold the workers yet) or start a local Ray that can."""
    check_resources(config)
    ray_cluster.init_ray(*resources_needed(config), RESOURCE_KEYS)


def fit(config: Config, run: str, callbacks: Sequence = ()) -> dict:
    """Train ``config`` into the run folder ``run``; returns a plain summary of the result, its
    paths relative to ``run`` (see :func:`lit_forecast.layout.read_summary`). ``callbacks``: see
    :func:`run_config`."""
    check_shards(config, read_manifest(data_dir(run)).num_shards, data_dir(run))
    init_ray(config)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_dict(config), "run": run, "launched_at": time.time()},
        scaling_config=scaling_config(config),
        torch_config=torch_config(config),
        run_config=run_config(config, run, callbacks),
    )
    started = time.perf_counter()
    storage.delete(storage.join(run, DIVERGED_FILE))  # a marker left by an attempt whose driver died
    try:
        with ray_cluster.exit_if_local_ray_dies(_cluster_died_message(None, run)):
            result = trainer.fit()
    except _CLUSTER_DIED as err:
        # Shut down now, not at interpreter exit, where Ray's core worker, finding its raylet gone,
        # ends the process with status 1 before ours (2) is returned.
        try:
            ray.shutdown()
        except Exception as shutdown_error:  # the cluster is gone: nothing left to clean up
            log.debug("ray.shutdown after the cluster died: %s", shutdown_error)
        raise RunError(_cluster_died_message(err, run)) from None
    except ray.train.TrainingFailedError as err:
        unwritable = next(
            (cause for cause in _failure_causes(err) if cause is not None and storage.is_unwritable(cause)), None
        )
        if unwritable is not None:  # a full or read-only run folder: one paragraph, not Ray's retries' story
            raise RunError(storage.unwritable_message(run, unwritable)) from None
        if storage.is_unreachable(err):
            # The workers' StorageError arrives as text inside Ray's error: take its one line back.
            detail = next((line for line in str(err).splitlines() if "StorageError: " in line), "")
            raise RunError(
                (detail.split("StorageError: ", 1)[-1] or storage.unreachable_message(run, err))
                + f"\nCheckpoints already in {run} are complete (Ray registers one only after its upload)."
                "\nRun the same command again once the storage answers: training resumes from the latest checkpoint."
            ) from None
        raise RunError(_failure_message(err, config, run)) from None
    diverged = storage.join(run, DIVERGED_FILE)
    if storage.exists(diverged):
        where = storage.read_json(diverged)
        storage.delete(diverged)  # said once; a rerun starts clean
        raise RunError(
            f"training diverged: the loss became NaN or infinite in epoch {where['epoch']} "
            f"(first at step {where['step']}), so that epoch was not checkpointed. Lower train.lr "
            f"(now {config.train.lr:g}) or train.grad_clip and start a new run with --name NEW "
            f"(the same command would resume from the last good checkpoint with the same settings)"
        )
    ranked = sorted(result.best_checkpoints, key=lambda pair: pair[1].get(SCORE, float("inf")))
    best, best_metrics = ranked[0] if ranked else (result.checkpoint, result.metrics or {})

    def location(checkpoint: Checkpoint | None) -> str | None:
        # Relative to the run folder, so a copied or moved run reads its own checkpoints: Ray
        # writes each checkpoint_* folder directly inside the run folder.
        if checkpoint is None:
            return None
        return f"{checkpoint.path.rstrip('/').rsplit('/', 1)[-1]}/{CHECKPOINT_FILE}"

    metrics = {k: v for k, v in (best_metrics or {}).items() if isinstance(v, (int, float))}
    epoch = metrics.pop("epoch", None)  # Lightning's, counted from 0; the summary counts as the epoch lines do
    return {
        "epochs": config.train.max_epochs,
        "best_epoch": None if epoch is None else int(epoch) + 1,
        "best_checkpoint": location(best),
        "best_metrics": metrics,
        "latest_checkpoint": location(result.checkpoint),
        "tensorboard": relative_to_run(run, tensorboard_dir(run)),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
