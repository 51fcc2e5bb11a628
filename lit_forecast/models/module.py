"""LightningModule that trains the forecaster: loss, scheduled sampling, metrics, optimiser, calibration fit.

A thin layer, as in GluonTS: the model it trains is the plain
:class:`~lit_forecast.models.ensemble.ForecastModel` (``self.model``), which forecasts on its own
and is what inference loads. The module's hyperparameters are the plain dicts the model was
built from (:func:`lit_forecast.models.factory.hyperparameters`), so a checkpoint carries the model
config, window parameters and scaler statistics and loads with ``torch.load(weights_only=True)``.
Build it with :func:`lit_forecast.models.factory.module_from_config`.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics

from lit_forecast.models.ensemble import ForecastModel
from lit_forecast.models.quantiles import QuantileCalibration, QuantileScores, pinball_loss
from lit_forecast.models.transformer import Seq2SeqTransformer

LOSSES = {"smooth_l1": F.smooth_l1_loss, "mse": F.mse_loss, "mae": F.l1_loss}


def passenger_metrics() -> torchmetrics.MetricCollection:
    """MAE, RMSE, MAPE and sMAPE (the last two as fractions), synchronised across ranks."""
    return torchmetrics.MetricCollection(
        {
            "mae": torchmetrics.MeanAbsoluteError(),
            "rmse": torchmetrics.MeanSquaredError(squared=False),
            "mape": torchmetrics.MeanAbsolutePercentageError(),
            "smape": torchmetrics.SymmetricMeanAbsolutePercentageError(),
        }
    )


class ForecastModule(L.LightningModule):
    """Trains ``model`` with teacher forcing (plus scheduled sampling); evaluates its autoregressive forecast.

    With quantile levels the loss is the pinball loss (mean over levels; ``train.loss`` applies
    only without levels), the median is the point forecast, and validation also logs ``val/wql``
    and ``val/coverage_80`` (in passengers) and fits the model's calibration factors.

    Args:
        model: the plain model to train, built by :mod:`lit_forecast.models.factory`.
        hparams: the plain dicts it was built from (``model``, ``window``, ``train``, ``series``),
            saved as the checkpoint's hyperparameters; ``train`` holds the ``TrainConfig`` fields.
    """

    def __init__(self, model: ForecastModel, hparams: dict):
        super().__init__()
        self.save_hyperparameters(hparams)
        self.model = model
        train = hparams["train"]
        self.levels = model.levels  # [] for a point forecast (Q = 1)
        self.register_buffer("level_tensor", torch.tensor(self.levels or [0.5]), persistent=False)
        self.point_loss = LOSSES[train["loss"]]
        self.val_metrics = passenger_metrics()
        self.val_quantiles = QuantileScores(self.levels) if self.levels else None
        # Per-step, per-level widening factors fitted on validation into the model's calibration
        # buffer (left at ones with train.calibrate_quantiles off).
        fit = self.levels and train.get("calibrate_quantiles", True)
        self.val_calibration = QuantileCalibration(self.levels, model.window.horizon) if fit else None
        # Window-weighted means, so ranks with unequal window counts still give the global value.
        self.val_losses = torch.nn.ModuleDict({"loss": torchmetrics.MeanMetric(), "loss_tf": torchmetrics.MeanMetric()})

    def loss_fn(self, quantiles: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, H, Q) scaled predictions, (B, H) scaled target -> the training loss (a scalar).

        The pinball loss averaged over levels with ``model.quantiles``, else ``train.loss``.
        """
        if self.levels:
            return pinball_loss(quantiles, target, self.level_tensor)
        return self.point_loss(quantiles[..., 0], target)

    # -- training -------------------------------------------------------------------------------

    def sampling_probability(self) -> float:
        """Share of decoder inputs replaced by own predictions: 0 at the start, rising linearly."""
        total = max(1, self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        return self.hparams.train["sampling_max_prob"] * min(1.0, self.global_step / total)

    def member_loss(self, net: Seq2SeqTransformer, batch: dict, p: float) -> torch.Tensor:
        """One member's training loss on a batch, with a share ``p`` of its own predictions fed back."""
        past, future = batch["past_target"], batch["future_target"]
        decoder_input = net.shift(past, future)
        if p > 0:
            # Scheduled sampling: a random share p of the fed-back inputs is replaced by the
            # model's own predictions, from a parallel teacher-forced pass or from its forecast.
            own = self.own_predictions(net, batch, decoder_input)
            replace = torch.rand_like(decoder_input) < p
            replace[:, 0] = False  # step 0 is fed the last observed value, which is always known
            decoder_input = torch.where(replace, net.shift(past, own), decoder_input)
        return self.loss_fn(net(past, batch["past_time"], batch["future_time"], decoder_input), future)

    @torch.no_grad()
    def own_predictions(self, net: Seq2SeqTransformer, batch: dict, decoder_input: torch.Tensor) -> torch.Tensor:
        """The member's own medians (B, H) to feed back, per ``train.sampling_source``.

        ``rollout`` is the autoregressive forecast, run as at inference (dropout off): step k
        then sees what it will see in use, its own earlier steps, errors and all. It costs one
        cached decode per member and step, about a third of a training step on a CPU.
        """
        past, past_time, future_time = batch["past_target"], batch["past_time"], batch["future_time"]
        if self.hparams.train.get("sampling_source", "teacher_forced") != "rollout":
            return net.median(net(past, past_time, future_time, decoder_input))
        net.eval()
        try:
            return net.median(net.forecast(past, past_time, future_time))
        finally:
            net.train()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        p = self.sampling_probability()
        losses = torch.stack([self.member_loss(net, batch, p) for net in self.model.nets])
        n = len(batch["past_target"])
        loss = losses.detach().mean()
        # No collective and no host synchronisation per step. The step value is this rank's own
        # (TensorBoard is written by rank 0); the epoch value is synchronised once, at the epoch's
        # end, so it stays the mean over all ranks. The learning rate goes in as a CPU tensor: a
        # Python float would be copied to the GPU, and that copy waits for the GPU every step.
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, batch_size=n)
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("train/lr", torch.tensor(float(self.optimizers().param_groups[0]["lr"])), on_step=True, on_epoch=False)
        return losses.sum()  # each member's parameters get the gradient of its own loss

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip each member's gradient norm (train.grad_clip) on its own, as if it were trained alone."""
        if gradient_clip_val:
            for net in self.model.nets:
                torch.nn.utils.clip_grad_norm_(net.parameters(), gradient_clip_val)

    def on_validation_epoch_start(self) -> None:
        # Logged here rather than in on_train_epoch_end, which runs after callbacks have read the epoch's metrics.
        if self.trainer.state.fn == "fit":
            self.log("train/sampling_p", self.sampling_probability(), sync_dist=True)

    # -- evaluation: the model's own autoregressive path, as inference runs it ------------------------

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        past, future = batch["past_target"], batch["future_target"]
        teacher_forced = self.model.teacher_forced(past, batch["past_time"], batch["future_time"], future)
        raw = self.model.raw_forecast_scaled(past, batch["past_time"], batch["future_time"])
        # Scored with the factors fitted at the previous validation (none at the first): the
        # weights have moved since, so the logged coverage is not the in-sample 80 % of a fit.
        scaled = self.model.calibrated(raw)
        n = len(past)
        self.val_losses["loss_tf"].update(self.loss_fn(teacher_forced, future), weight=n)
        self.val_losses["loss"].update(self.loss_fn(scaled, future), weight=n)
        self.log_dict({f"val/{k}": m for k, m in self.val_losses.items()}, batch_size=n)
        scale, loc = batch["scale"][:, None], batch["loc"][:, None]
        actual = future * scale + loc
        self.val_metrics.update(self.model.median(scaled) * scale + loc, actual)
        self.log_dict({f"val/{k}": m for k, m in self.val_metrics.items()}, batch_size=n)
        if self.val_quantiles is not None:
            self.val_quantiles.update(scaled * scale[..., None] + loc[..., None], actual)
        if self.val_calibration is not None:
            self.val_calibration.update(raw, future)

    def on_validation_epoch_end(self) -> None:
        if self.val_quantiles is not None:  # compute() sums the states over ranks first
            self.log_dict(
                {f"val/{k}": v for k, v in self.val_quantiles.compute().items()}, sync_dist=True
            )  # equal on every rank
            self.val_quantiles.reset()
        if self.val_calibration is not None:
            factors = self.val_calibration.compute()  # summed over ranks first: equal on every rank
            self.val_calibration.reset()
            if not (self._trainer is not None and self.trainer.sanity_checking):
                self.model.calibration.copy_(factors)
            outer = [j for j in (0, len(self.levels) - 1) if j != self.model.median_index]
            self.log(
                "val/calibration_widen", factors[:, outer].mean(), sync_dist=True
            )  # mean factor of the outer levels (equal on every rank)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Resume from any checkpoint this project wrote (see ``ForecastModel.plain_state_dict``)."""
        return self.model.load_state_dict(state_dict, strict=strict, assign=assign)

    # -- optimisation ---------------------------------------------------------------------------

    def configure_optimizers(self):
        cfg = self.hparams.train
        decay = [p for n, p in self.model.nets.named_parameters() if p.dim() >= 2 and "calendar" not in n]
        no_decay = [p for n, p in self.model.nets.named_parameters() if not (p.dim() >= 2 and "calendar" not in n)]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg["lr"],
            # One fused kernel for the whole update on GPUs; on CPUs PyTorch's default, unchanged.
            fused=True if all(p.is_cuda for p in decay + no_decay) else None,
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup, floor = min(cfg["warmup_steps"], total // 2), cfg["min_lr_ratio"]

        def factor(step: int) -> float:  # linear warm-up, then cosine decay to lr * floor
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
