"""The one module that imports Ray Train: TorchTrainer + Lightning, checkpoints, resume.

Model and data code do not change for Ray; only the Lightning Trainer's arguments do
(``strategy``, ``plugins``, ``callbacks``, ``devices="auto"``), and each worker builds its own
data module for its rank's shard. The driver hands workers plain dicts and gets plain dicts back.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import lightning as L
import ray
import ray.train
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
from ray.train.lightning import RayDDPStrategy, RayLightningEnvironment, RayTrainReportCallback, prepare_trainer
from ray.train.torch import TorchConfig, TorchTrainer

from lit_forecast import cli, ray_cluster, storage
from lit_forecast.config import Config, from_dict, to_dict
from lit_forecast.data.datamodule import ShardDataModule
from lit_forecast.errors import RunError
from lit_forecast.layout import CHECKPOINT_FILE, data_dir, tensorboard_dir
from lit_forecast.models.module import ForecastModule
from lit_forecast.spec import stats_to_dict
from lit_forecast.training.callbacks import EpochLine, ForecastFigure, Throughput

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
    """Ray's report callback, checkpointing every ``every_n_epochs`` epochs (and at the last one).

    On those epochs it is Ray's own: every rank reports the epoch's metrics and its checkpoint
    folder (Lightning writes the file on rank 0 only). On the others it reports metrics alone,
    which Ray Train requires of every rank each epoch. Each checkpoint also carries the full
    resolved config under ``lit_forecast_config``, so inference needs no other file.
    """

    def __init__(self, every_n_epochs: int, config: dict):
        super().__init__()
        self.every_n_epochs, self.config = every_n_epochs, config

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["lit_forecast_config"] = self.config

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs == 0 or epoch == trainer.max_epochs:
            super().on_train_epoch_end(trainer, pl_module)
            return
        metrics = {k: v.item() for k, v in trainer.callback_metrics.items()}
        ray.train.report(metrics={**metrics, "epoch": trainer.current_epoch, "step": trainer.global_step})


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point: one Lightning Trainer per worker over its rank's shard."""
    _worker_logging()
    config = from_dict(loop_config["config"])
    run = loop_config["run"]
    context = ray.train.get_context()
    rank = context.get_world_rank()
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    torch.set_num_threads(max(1, int(config.cluster.cpus_per_worker)))

    datamodule = ShardDataModule(data_dir(run), config.train.batch_size)
    plain, manifest = to_dict(config), datamodule.manifest
    module = ForecastModule(plain["model"], manifest.window.to_dict(), plain["train"], stats_to_dict(manifest.series_stats()))
    trainer = L.Trainer(
        **trainer_arguments(config),
        strategy=RayDDPStrategy(),
        plugins=[RayLightningEnvironment()],
        callbacks=[
            Throughput(),
            EpochLine(loop_config["launched_at"]),
            ForecastFigure(),
            ReportCallback(config.cluster.checkpoint_every_n_epochs, plain),
        ],
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
    result = trainer.fit()
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
