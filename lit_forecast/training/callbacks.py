"""Lightning callbacks for training that know nothing of Ray: throughput, the epoch line, a forecast figure."""

from __future__ import annotations

import logging
import time

import lightning as L
import pandas as pd
import torch

from lit_forecast.evaluation.plots import forecast_figure, interval_bands

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

    KEYS = (("train/loss_epoch", ".4f"), ("val/loss", ".4f"), ("val/mae", ".0f"), ("val/smape", ".3f"), ("val/wql", ".4f"),
            ("val/coverage_80", ".3f"), ("train/windows_per_s", ".0f"))

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


class ForecastFigure(L.Callback):
    """Every ``every_n_epochs`` epochs, rank 0 draws one fixed validation window into TensorBoard.

    The window is the first of rank 0's validation windows whose forecast starts at midnight
    (the first window if none does): a week of history, the actuals, the median and the
    quantile bands, logged as ``val/forecast`` with ``experiment.add_figure``. The model
    knows nothing of matplotlib; only this callback does.
    """

    def __init__(self, every_n_epochs: int = 2):
        self.every_n_epochs = every_n_epochs

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if trainer.global_rank != 0 or trainer.sanity_checking or (epoch % self.every_n_epochs and epoch != trainer.max_epochs):
            return
        experiment = getattr(trainer.logger, "experiment", None)
        windows = getattr(trainer.val_dataloaders, "dataset", None)
        if not hasattr(experiment, "add_figure") or windows is None or len(windows) == 0:
            return
        midnight = [i for i, c in enumerate(windows.cutoffs) if c == c.normalize()]
        i = midnight[0] if midnight else 0
        batch = {k: v.to(pl_module.device) for k, v in windows.batch(torch.tensor([i])).items()}
        with torch.no_grad():
            quantiles = pl_module.forecast(batch)[0].float().cpu().numpy()  # (H, Q) passengers
        spec, at = windows.spec, windows.cutoffs[i]
        past = min(spec.input_window, int(windows.history_available()[i]))
        step = pd.Timedelta(spec.freq)
        history = pd.Series(windows.history([i], past)[0], index=pd.date_range(at - past * step, periods=past, freq=spec.freq))
        times = pd.date_range(at, periods=spec.horizon, freq=spec.freq)
        figure = forecast_figure(
            history, pd.Series(quantiles[:, pl_module.median_index], index=times), pd.Series(windows.actual([i])[0], index=times),
            title=f"validation window from {at:%a %Y-%m-%d %H:%M}, epoch {epoch}", freq=spec.freq,
            bands=interval_bands(quantiles, pl_module.levels, times),
        )
        experiment.add_figure("val/forecast", figure, global_step=trainer.global_step, close=True)
