"""The one module that imports Ray Train: TorchTrainer + Lightning, checkpoints, resume.

Model and data code do not change for Ray; only the Lightning Trainer's arguments do
(``strategy``, ``plugins``, ``callbacks``, ``devices="auto"``), and each worker builds its own
data module for its rank's shard. The driver hands workers plain dicts and gets plain dicts back.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path

import lightning as L
import ray
import ray.train
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, RayTrainReportCallback, prepare_trainer
from ray.train.torch import TorchConfig, TorchTrainer

from lit_forecast import cli, ray_cluster, storage
from lit_forecast.config import Config, from_dict, to_dict, validate
from lit_forecast.data.datamodule import ShardDataModule
from lit_forecast.models.module import ForecastModule
from lit_forecast.training.runs import CHECKPOINT_FILE, RunError, data_dir, tensorboard_dir

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
    return ScalingConfig(num_workers=c.num_workers, use_gpu=c.use_gpu, resources_per_worker=resources)


def torch_config(config: Config) -> TorchConfig:
    """Process-group backend (gloo on CPU, nccl on GPU) and collective timeout."""
    # RayDDPStrategy ignores its own process-group settings: backend and timeout live here.
    return TorchConfig(backend=config.cluster.backend, timeout_s=config.cluster.timeout_s)


def run_config(config: Config, run: str) -> RunConfig:
    """Where the run lives, which checkpoints to keep, how many failures to survive."""
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
    )


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
    """Reports metrics every epoch and a checkpoint every ``every_n_epochs`` (and at the end).

    Only rank 0 uploads the checkpoint (Lightning writes it on rank 0 alone); every rank reports,
    as Ray Train requires. The checkpoint also carries the full resolved config.
    """

    def __init__(self, every_n_epochs: int, config: dict):
        super().__init__()
        self.every_n_epochs, self.config = every_n_epochs, config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["lit_forecast_config"] = self.config

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
        metrics.update(epoch=trainer.current_epoch, step=trainer.global_step)
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs and epoch != trainer.max_epochs:
            ray.train.report(metrics=metrics)
            return
        tmpdir = Path(self.tmpdir_prefix, str(trainer.current_epoch))
        tmpdir.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(tmpdir / CHECKPOINT_FILE, weights_only=False)
        checkpoint = Checkpoint.from_directory(tmpdir) if trainer.global_rank == 0 else None
        ray.train.report(metrics=metrics, checkpoint=checkpoint)
        trainer.strategy.barrier()
        shutil.rmtree(tmpdir, ignore_errors=True)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        shutil.rmtree(self.tmpdir_prefix, ignore_errors=True)


class EpochLine(L.Callback):
    """One readable line per epoch from rank 0, and one when the first step is done."""

    def __init__(self, launched_at: float):
        self.start, self.launched_at, self.stepped = 0.0, launched_at, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.stepped and trainer.global_rank == 0:
            log.info("first training step done, %.1f s after launch", time.time() - self.launched_at)
        self.stepped = True

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0:
            return
        m = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        for key, fmt in (("train/loss_epoch", ".4f"), ("val/loss", ".4f"), ("val/mae", ".0f"), ("val/smape", ".3f"), ("train/windows_per_s", ".0f")):
            if key in m:
                parts.append(f"{key} {format(m[key].item(), fmt)}")
        parts.append(f"({time.perf_counter() - self.start:.1f} s)")
        log.info("  ".join(parts))


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point: one Lightning Trainer per worker over its rank's shard."""
    _worker_logging()
    try:
        _train_worker(loop_config)
    except Exception as err:
        # Storage that stops answering fails every client in its own way (pyarrow, botocore
        # for TensorBoard, Ray's checkpoint upload), each with a long traceback: one line instead.
        if storage.is_unreachable(err):
            raise storage.StorageError(storage.unreachable_message(loop_config["run"], err)) from None
        raise


def _train_worker(loop_config: dict) -> None:
    config = validate(from_dict(loop_config["config"]))
    run = loop_config["run"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    torch.set_num_threads(max(1, int(config.cluster.cpus_per_worker)))

    datamodule = ShardDataModule(data_dir(run), config.train.batch_size)
    plain = to_dict(config)
    module = ForecastModule(plain["model"], datamodule.manifest["window"], plain["train"], datamodule.manifest["series"])
    trainer = L.Trainer(
        **trainer_arguments(config),
        strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()],
        callbacks=[EpochLine(loop_config["launched_at"]), ReportCallback(config.cluster.checkpoint_every_n_epochs, plain)],
        logger=TensorBoardLogger(tensorboard_dir(run), name="", version="", default_hp_metric=False),
    )
    trainer = prepare_trainer(trainer)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        trainer.fit(module, datamodule=datamodule)
        return
    with checkpoint.as_directory() as folder:
        path = os.path.join(folder, CHECKPOINT_FILE)
        epoch = torch.load(path, map_location="cpu", weights_only=True)["epoch"]
        if rank == 0:  # Lightning counts epochs from 0, people from 1
            log.warning(
                "RESUMED from checkpoint %s (epoch %d/%d done); continuing with epoch %d",
                checkpoint.path, epoch + 1, config.train.max_epochs, epoch + 2,
            )
        trainer.fit(module, datamodule=datamodule, ckpt_path=path)


def _worker_logging() -> None:
    cli.quiet_third_parties()
    # "Reporting training result N: ..." comes from a logger named after its file path.
    from ray.train.v2._internal.execution import context as ray_train_context

    logging.getLogger(ray_train_context.__file__).setLevel(logging.WARNING)
    package = logging.getLogger("lit_forecast")
    if not package.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        package.addHandler(handler)
        package.setLevel(logging.INFO)
        package.propagate = False


# -- the driver -----------------------------------------------------------------------------------


def init_ray(config: Config) -> None:
    """Join RAY_ADDRESS or start a local Ray that can hold every worker."""
    c = config.cluster
    try:
        ray_cluster.init_ray(c.num_workers * c.cpus_per_worker, c.num_workers * c.gpus_per_worker if c.use_gpu else 0)
    except ray_cluster.ResourceError as err:
        raise RunError(f"{err} (config: {c.num_workers} workers)") from None


def fit(config: Config, run: str) -> dict:
    """Train ``config`` into the run folder ``run``; returns a plain summary of the result."""
    init_ray(config)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": to_dict(config), "run": run, "launched_at": time.time()},
        scaling_config=scaling_config(config),
        torch_config=torch_config(config),
        run_config=run_config(config, run),
    )
    started = time.perf_counter()
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        if not storage.is_unreachable(err):
            raise
        # The workers' StorageError arrives as text inside Ray's error: take its one line back.
        detail = next((line for line in str(err).splitlines() if "StorageError: " in line), "")
        raise RunError(
            (detail.split("StorageError: ", 1)[-1] or storage.unreachable_message(run, err))
            + f"\nCheckpoints already in {run} are complete (Ray registers one only after its upload)."
            "\nRun the same command again once the storage answers: training resumes from the latest checkpoint."
        ) from None
    ranked = sorted(result.best_checkpoints, key=lambda pair: pair[1].get(SCORE, float("inf")))
    best, best_metrics = ranked[0] if ranked else (result.checkpoint, result.metrics or {})

    def location(checkpoint: Checkpoint | None) -> str | None:
        # Ray gives paths inside its filesystem: put the URI scheme back for remote storage.
        if checkpoint is None:
            return None
        path = checkpoint.path
        if storage.is_uri(run) and "://" not in path:
            path = f"{run.split('://', 1)[0]}://{path.lstrip('/')}"
        return storage.join(path, CHECKPOINT_FILE)

    return {
        "run_dir": run,
        "epochs": config.train.max_epochs,
        "best_checkpoint": location(best),
        "best_metrics": {k: v for k, v in (best_metrics or {}).items() if isinstance(v, (int, float))},
        "latest_checkpoint": location(result.checkpoint),
        "tensorboard": tensorboard_dir(run),
        "train_seconds": round(time.perf_counter() - started, 1),
    }
