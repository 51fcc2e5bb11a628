"""Lightning callbacks for training that know nothing of Ray: throughput, the epoch line, a forecast
figure, a guard that stops a diverging run before it checkpoints NaNs, random state that makes
resume exact, and the weights' moving average."""

from __future__ import annotations

import logging
import random
import time

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging

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

    KEYS = (
        ("train/loss_epoch", ".4f"),
        ("val/loss", ".4f"),
        ("val/mae", ".0f"),
        ("val/smape", ".3f"),
        ("val/wql", ".4f"),
        ("val/coverage_80", ".3f"),
        ("train/windows_per_s", ".0f"),
    )

    def __init__(self, launched_at: float):
        self.launched_at, self.stepped = launched_at, False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.stepped and trainer.global_rank == 0:
            log.info("first training step done, %.1f s after launch", time.time() - self.launched_at)
        self.stepped = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Every rank reads the metrics: the first read computes the epoch values, which for
        # sync_dist values is a collective that all ranks must enter at the same point.
        m = trainer.callback_metrics
        if trainer.global_rank != 0:
            return
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        parts += [f"{key} {format(m[key].item(), fmt)}" for key, fmt in self.KEYS if key in m]
        if "train/epoch_time_s" in m:
            parts.append(f"({m['train/epoch_time_s'].item():.1f} s training)")
        log.info("  ".join(parts))


class DivergenceGuard(L.Callback):
    """Stops training at the end of the epoch in which the loss stopped being finite.

    Each step folds ``isfinite(loss)`` into a tensor on the device (no host synchronisation in
    the hot path); the epoch's end reads it once. If any rank saw a NaN or infinite loss, every
    rank stops (the decision is reduced across ranks, so DDP stays in step) and
    :attr:`diverged` holds ``(epoch, first bad global step)`` as counted from 1, for the report
    callback to skip that epoch's checkpoint and for the driver to name in its error.
    """

    def __init__(self) -> None:
        self.first_bad: torch.Tensor | None = None
        self.diverged: tuple[int, int] | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=pl_module.device)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or self.first_bad is None:
            return
        # global_step has already advanced past this batch's optimiser step: it is the step's number from 1.
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, trainer.global_step), self.first_bad)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.first_bad is None:
            return
        step = int(self.first_bad)
        if trainer.strategy.reduce_boolean_decision(step >= 0, all=False):
            self.diverged = (trainer.current_epoch + 1, step if step >= 0 else trainer.global_step)
            trainer.should_stop = True
            if trainer.global_rank == 0:
                log.error(
                    "the training loss became NaN or infinite in epoch %d (first at step %d): stopping", *self.diverged
                )


class RandomState(L.Callback):
    """Saves the random generators with every checkpoint and restores them on resume.

    With them, a run resumed from a checkpoint draws what the uninterrupted run would have:
    the next epoch's shuffle, dropout masks and scheduled-sampling draws. (The model, the
    optimiser, the LR schedule and the global step, which sets the scheduled-sampling share,
    are restored by Lightning itself.) Every rank is seeded alike and draws alike (equal shards,
    equal batch shapes), so rank 0's generators, which the checkpoint holds, serve every rank.
    """

    KEY = "lit_forecast_random_state"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        state = {"torch": torch.get_rng_state(), "python": list(_python_state())}
        if torch.cuda.is_available() and pl_module.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(pl_module.device)
        checkpoint[self.KEY] = state

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        state = checkpoint.get(self.KEY)
        if state is None:  # written by an older version: resume, but not draw for draw
            log.warning(
                "the checkpoint holds no random state: the resumed run will not repeat the uninterrupted one exactly"
            )
            return
        torch.set_rng_state(state["torch"])
        random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
        if "cuda" in state and pl_module.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"], pl_module.device)


def _python_state() -> tuple:
    version, internal, gauss = random.getstate()
    return version, list(internal), gauss


class ForecastFigure(L.Callback):
    """Every ``every_n_epochs`` epochs, rank 0 draws one fixed validation window into TensorBoard.

    The window is the first of rank 0's validation windows whose forecast starts at midnight
    (the first window if none does): the history before it (the figure draws the last two
    horizons of it), the actuals, the median and the
    quantile bands, logged as ``val/forecast`` with ``experiment.add_figure``. The model
    knows nothing of matplotlib; only this callback does.
    """

    def __init__(self, every_n_epochs: int = 2):
        self.every_n_epochs = every_n_epochs

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if (
            trainer.global_rank != 0
            or trainer.sanity_checking
            or (epoch % self.every_n_epochs and epoch != trainer.max_epochs)
        ):
            return
        experiment = getattr(trainer.logger, "experiment", None)
        windows = getattr(trainer.val_dataloaders, "dataset", None)
        if not hasattr(experiment, "add_figure") or windows is None or len(windows) == 0:
            return
        midnight = [i for i, c in enumerate(windows.cutoffs) if c == c.normalize()]
        i = midnight[0] if midnight else 0
        batch = {k: v.to(pl_module.device) for k, v in windows.batch(torch.tensor([i])).items()}
        with torch.no_grad():
            quantiles = pl_module.model.forecast(batch)[0].float().cpu().numpy()  # (H, Q) passengers
        spec, at = windows.spec, windows.cutoffs[i]
        past = min(spec.input_window, int(windows.history_available()[i]))
        step = pd.Timedelta(spec.freq)
        history = pd.Series(
            windows.history([i], past)[0], index=pd.date_range(at - past * step, periods=past, freq=spec.freq)
        )
        times = pd.date_range(at, periods=spec.horizon, freq=spec.freq)
        figure = forecast_figure(
            history,
            pd.Series(quantiles[:, pl_module.model.median_index], index=times),
            pd.Series(windows.actual([i])[0], index=times),
            title=f"validation window from {at:%a %Y-%m-%d %H:%M}, epoch {epoch}",
            freq=spec.freq,
            bands=interval_bands(quantiles, pl_module.model.levels, times),
        )
        experiment.add_figure("val/forecast", figure, global_step=trainer.global_step, close=True)


class WorldSize(L.Callback):
    """Records how many workers train: in every checkpoint, and as ``cluster/world_size`` in TensorBoard.

    An elastic run (``cluster.num_workers: [min, max]``) may restart with another number of
    workers; the checkpoint's count is what a resumed run compares its own with (the console's
    ``workers: N (was M)`` line), and the scalar, logged by rank 0 at every epoch's start, shows
    in TensorBoard the epoch at which the run shrank or grew.
    """

    KEY = "lit_forecast_world_size"
    TAG = "cluster/world_size"

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[self.KEY] = trainer.world_size

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.global_rank == 0 and trainer.logger is not None:
            trainer.logger.log_metrics({self.TAG: float(trainer.world_size)}, step=trainer.global_step)


def workers_line(world: int, previous: int | None, resumed_epoch: int | None) -> str:
    """The console line of a worker-group (re)start: ``workers: 3 (was 4), resuming at epoch 5``.

    ``previous``: the workers that wrote the checkpoint (None: unknown or no checkpoint);
    ``resumed_epoch``: the first epoch to train, counted from 1 (None: a start from scratch).
    """
    if resumed_epoch is None:
        return f"workers: {world}, starting at epoch 1"
    was = f" (was {previous})" if previous is not None else ""
    return f"workers: {world}{was}, resuming at epoch {resumed_epoch}"


class WeightAverage(EMAWeightAveraging):
    """An exponential moving average of the weights (``train.ema_decay``), used wherever the model is judged.

    Lightning's callback keeps the averaged copy, swaps it in for every validation and writes it
    as each checkpoint's weights, so ``val/mae``, the best checkpoint and inference all see the
    average; the raw weights travel beside them and a resumed run goes on from both. One thing
    is added. The calibration factors are fitted after each validation, on the average's
    forecasts, into the training module's buffer: they are copied into the average wherever it
    is read (validation, a checkpoint, the end of training) instead of being averaged.
    """

    def __init__(self, decay: float):
        super().__init__(decay=decay)

    def _share_calibration(self, pl_module) -> None:
        fitted = getattr(pl_module.model, "calibration", None)
        if self._average_model is not None and fitted is not None:
            self._average_model.module.model.calibration.copy_(fitted)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._share_calibration(pl_module)
        super().on_validation_epoch_start(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._share_calibration(pl_module)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_train_end(self, trainer, pl_module) -> None:
        self._share_calibration(pl_module)
        super().on_train_end(trainer, pl_module)
