"""Lightning callbacks for training that know nothing of Ray: throughput and the epoch line."""

from __future__ import annotations

import logging
import time

import lightning as L

log = logging.getLogger(__name__)


class Throughput(L.Callback):
    """Logs ``train/windows_per_s`` (all ranks together) and ``train/epoch_time_s`` every epoch.

    The training part of an epoch ends where its validation starts, so both are logged there
    (``on_train_epoch_end`` runs after other callbacks have read the epoch's metrics). Each
    rank counts its own windows, so ranks with unequal shards still add up to the true rate.
    """

    def __init__(self) -> None:
        self.start, self.windows = 0.0, 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.start, self.windows = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.windows += len(batch["past_target"])

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if trainer.state.fn != "fit" or self.windows == 0:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        pl_module.log("train/windows_per_s", self.windows / elapsed, sync_dist=True, reduce_fx="sum")
        pl_module.log("train/epoch_time_s", elapsed, sync_dist=True)  # mean over ranks


class EpochLine(L.Callback):
    """One readable line per epoch from rank 0, and one when the first step is done."""

    KEYS = (("train/loss_epoch", ".4f"), ("val/loss", ".4f"), ("val/mae", ".0f"), ("val/smape", ".3f"), ("train/windows_per_s", ".0f"))

    def __init__(self, launched_at: float):
        self.launched_at, self.stepped = launched_at, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.stepped and trainer.global_rank == 0:
            log.info("first training step done, %.1f s after launch", time.time() - self.launched_at)
        self.stepped = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.global_rank != 0:
            return
        m = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        parts += [f"{key} {format(m[key].item(), fmt)}" for key, fmt in self.KEYS if key in m]
        if "train/epoch_time_s" in m:
            parts.append(f"({m['train/epoch_time_s'].item():.1f} s training)")
        log.info("  ".join(parts))
