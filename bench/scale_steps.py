"""The measured steps of bench/scale.py, one function each; every one returns plain figures (a dict).

Nothing here prints or parses arguments: ``python -m bench.scale`` runs each step in a process of its
own (so one step's memory and threads never reach the next) and writes the figures as JSON.
"""

from __future__ import annotations

import resource
import shutil
import time

from bench.common import TreeMemory
from lit_forecast import config as cfg
from lit_forecast.data.datamodule import ShardDataModule
from lit_forecast.data.manifest import read_manifest
from lit_forecast.data.prepare import prepare

JANUARY = "2015-01-01..2015-01-31/1D"  # the fleet backtest: 31 midnights


def own_peak_rss() -> int:
    """Peak resident memory of this process so far (bytes; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- prepare ----------------------------------------------------------------------------------


def measure_prepare(config: cfg.Config, path: str, cpus: int, folder: str) -> dict:
    """Prepare ``config``'s source into ``folder`` (emptied first) on ``path`` ("ray" or "local").

    On Ray a local cluster of ``cpus`` CPUs is started inside the timed span, as ``train.py``
    does, and its start-up is reported on its own too.
    """
    config.data.prepare_with = path
    shutil.rmtree(folder, ignore_errors=True)  # a fresh folder: never a reused dataset
    memory = TreeMemory(interval=0.1)  # this process and the Ray processes it starts
    started = time.perf_counter()
    ray_start = 0.0
    if path == "ray":
        import ray

        ray.init(address="local", num_cpus=cpus, include_dashboard=False, logging_level="ERROR")
        ray_start = time.perf_counter() - started
    try:
        manifest = prepare(config, folder, num_shards=config.cluster.max_workers)
        wall = time.perf_counter() - started
    finally:
        memory.stop()
        if path == "ray":
            ray.shutdown()
    rows = manifest.load_report["rows"]
    return {
        "path": path,
        "cpus": cpus if path == "ray" else 1,
        "series": len(manifest.series),
        "rows": rows,
        "wall_s": wall,
        "ray_start_s": ray_start,
        "rows_per_s": rows / wall,
        "rows_per_s_after_ray_start": rows / max(wall - ray_start, 1e-9),
        "peak_rss_bytes": memory.peak_process,
        "peak_rss_process": memory.peak_name,
        "train_windows": manifest.splits["train"].windows,
        "shard_windows": manifest.shard_windows,
        "val_windows": manifest.splits["val"].windows,
    }


def ensure_prepared(config: cfg.Config, folder: str) -> None:
    """Prepare ``folder`` (config.data.prepare_with, untimed) unless it already holds a manifest."""
    try:
        read_manifest(folder)
    except Exception:  # noqa: BLE001 - missing or unreadable: prepare it
        prepare(config, folder, num_shards=config.cluster.max_workers)


# -- training: one worker's epoch, plain Lightning ------------------------------------------------


class RankView(ShardDataModule):
    """The data module as rank ``rank`` of ``world`` workers sees it, in one plain process."""

    def __init__(self, data_dir: str, batch_size: int, rank: int, world: int):
        super().__init__(data_dir, batch_size)
        self.rank, self.world = rank, world

    def _rank_and_world(self) -> tuple[int, int]:
        return self.rank, self.world


def measure_epoch(config: cfg.Config, data_dir: str, checkpoint: str, epochs: int = 1) -> dict:
    """Train ``epochs`` epoch(s) as rank 0 of ``cluster.num_workers`` in a plain Lightning Trainer.

    One process with ``cluster.cpus_per_worker`` torch threads, the training shard of rank 0
    and its 1/N of the validation windows: what each local Ray worker does, minus Ray and
    DDP's gradient all-reduce. The training and validation parts of every epoch are timed by
    Lightning hooks. The weights are saved to ``checkpoint`` (a .ckpt infer.py loads) with the
    resolved config, as Ray Train's checkpoints carry it.
    """
    import lightning as L
    import torch

    from lit_forecast.models.factory import module_from_config
    from lit_forecast.training.ray_train import trainer_arguments

    class Phases(L.Callback):
        """Seconds of each epoch's training part and validation part, and the windows each saw."""

        def __init__(self) -> None:
            self.train_s, self.val_s, self.train_windows, self.val_windows = [], [], 0, 0
            self._t = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._t = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.train_windows += len(batch["past_target"])

        def on_validation_epoch_start(self, trainer, pl_module) -> None:
            if trainer.state.fn == "fit":
                self.train_s.append(time.perf_counter() - self._t)
            self._t = time.perf_counter()

        def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
            self.val_windows += len(batch["past_target"])

        def on_validation_epoch_end(self, trainer, pl_module) -> None:
            self.val_s.append(time.perf_counter() - self._t)

        def on_save_checkpoint(self, trainer, pl_module, saved: dict) -> None:
            saved["lit_forecast_config"] = plain  # as ray_train.ReportCallback stores it

    L.seed_everything(config.train.seed, workers=True, verbose=False)
    torch.set_num_threads(max(1, int(config.cluster.cpus_per_worker)))
    plain = cfg.to_dict(config)
    datamodule = RankView(data_dir, config.train.batch_size, 0, config.cluster.max_workers)
    manifest = datamodule.manifest
    module = module_from_config(config, manifest)
    phases = Phases()
    trainer = L.Trainer(**{**trainer_arguments(config), "max_epochs": epochs}, callbacks=[phases], logger=False)
    started = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    wall = time.perf_counter() - started
    trainer.save_checkpoint(checkpoint)
    train_s, val_s = sum(phases.train_s), sum(phases.val_s)
    return {
        "how": "plain Lightning, rank 0 of cluster.num_workers, no Ray (bench/scale_steps.py measure_epoch)",
        "epochs": epochs,
        "steps": trainer.global_step,
        "threads": torch.get_num_threads(),
        "workers": config.cluster.max_workers,
        "batch_size": config.train.batch_size,
        "fit_wall_s": wall,  # includes loading the shard and building the windows
        "epoch_s": (train_s + val_s) / epochs,
        "train_s": train_s / epochs,
        "validation_s": val_s / epochs,
        "validation_share": val_s / (train_s + val_s) if train_s + val_s else float("nan"),
        "train_windows_per_s": phases.train_windows / train_s if train_s else float("nan"),
        "validation_windows": phases.val_windows // max(epochs, 1),
        "checkpoint": checkpoint,
        "peak_rss_bytes": own_peak_rss(),
    }


# -- the training input alone ---------------------------------------------------------------------


def measure_loading(datamodule: ShardDataModule, batches: int, batch_size: int | None = None) -> dict:
    """Windows/s of the training DataLoader alone (sampler, ``__getitems__`` gathers), in this process.

    ``datamodule`` is set up here for fitting; its ``train_dataloader`` is iterated exactly as
    Lightning iterates it in a worker (no DataLoader worker processes: the training process
    itself cuts the batches), restarting the loader when an epoch of the shard ends.
    """
    built = time.perf_counter()
    datamodule.setup("fit")
    setup_s = time.perf_counter() - built
    if batch_size is not None:
        datamodule.batch_size = batch_size
    windows = datamodule.datasets["train"]
    next(iter(datamodule.train_dataloader()))  # warm-up: first gather, allocator
    done, seen = 0, 0
    started = time.perf_counter()
    while done < batches:
        for batch in datamodule.train_dataloader():
            seen += len(batch["past_target"])
            done += 1
            if done >= batches:
                break
    seconds = time.perf_counter() - started
    return {
        "how": "ShardDataModule.train_dataloader (ShuffledBatches, WindowSet.__getitems__), one process",
        "shard_windows": len(windows),
        "shard_slots": int(windows.values.numel()),
        "batch_size": datamodule.batch_size,
        "batches": done,
        "windows": seen,
        "seconds": seconds,
        "windows_per_s": seen / seconds if seconds else float("nan"),
        "setup_s": setup_s,
        "peak_rss_bytes": own_peak_rss(),
    }


# -- inference --------------------------------------------------------------------------------


def measure_inference(checkpoint: str, source: str, output: str, cutoffs: str | None, use_ray: bool) -> dict:
    """One ``infer.py`` request (lit_forecast.inference.pipeline.infer), timed after Ray has started.

    ``cutoffs`` None: the next day after the end of every series; else e.g. JANUARY. Ray (when
    used) is started first and timed on its own, so the wall time is the forecast's, as on a
    cluster that is already up.
    """
    from lit_forecast.inference.cutoffs import parse_cutoffs
    from lit_forecast.inference.pipeline import InferenceRequest, infer

    ray_start = 0.0
    if use_ray:
        from lit_forecast.ray_cluster import init_ray

        started = time.perf_counter()
        init_ray()
        ray_start = time.perf_counter() - started
    request = InferenceRequest(
        checkpoint=checkpoint,
        data=source,
        output=output,
        use_ray=use_ray,
        cutoffs=parse_cutoffs([cutoffs]) if cutoffs else None,
    )
    started = time.perf_counter()
    try:
        result = infer(request)
    finally:
        wall = time.perf_counter() - started
        if use_ray:
            import ray

            ray.shutdown()
    windows = len(result.windows)
    figures = {
        "ray": use_ray,
        "ray_start_s": ray_start,
        "wall_s": wall,
        "windows": windows,
        "windows_per_s": windows / wall,
        "series": len(set(result.windows.series_ids)),
        "cutoffs": len(set(result.windows.cutoffs)),
        "skipped": result.skipped or None,
        "peak_rss_bytes": own_peak_rss(),
        "output": output,
    }
    if result.table:
        methods = result.table["methods"]
        figures["pooled_mae"] = {name: m["overall"]["mae"] for name, m in methods.items()}
        figures["mae_ratio_model_vs_naive_weekly"] = result.table["mae_ratio_model_vs_naive_weekly"]
        if "fleet" in result.table:
            figures["fleet"] = {k: v for k, v in result.table["fleet"].items() if not isinstance(v, list)}
    return figures
