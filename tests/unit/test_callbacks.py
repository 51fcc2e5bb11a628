"""Training callbacks without Ray: the divergence guard, the random state that makes resume exact, and the
weights' moving average."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from lit_forecast.inference.checkpoint import load_checkpoint
from lit_forecast.training.callbacks import DivergenceGuard, RandomState, Throughput, WeightAverage
from tests.unit.test_model import make_batch, make_module


class Batches(torch.utils.data.Dataset):
    """``n`` fixed batches; the one at ``poisoned`` has a NaN in its target (a diverging loss)."""

    def __init__(self, n: int, poisoned: int | None):
        self.batches = [make_batch(4, seed=i) for i in range(n)]
        if poisoned is not None:
            self.batches[poisoned]["future_target"][0, 0] = float("nan")

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.batches[i]


def quiet_trainer(**arguments) -> L.Trainer:
    """A Lightning Trainer on CPU with no logger, checkpointing, progress bar or summary."""
    return L.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **arguments
    )


def fit(poisoned: int | None, epochs: int = 3) -> tuple[L.Trainer, DivergenceGuard]:
    module = make_module().train()
    guard = DivergenceGuard()
    trainer = quiet_trainer(
        max_epochs=epochs,
        limit_val_batches=0,
        callbacks=[Throughput(), guard],
    )
    loader = DataLoader(Batches(5, poisoned), batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=loader)
    return trainer, guard


def test_a_finite_run_is_left_alone():
    trainer, guard = fit(poisoned=None)
    assert guard.diverged is None and trainer.current_epoch == 3


def test_a_nan_loss_stops_training_at_the_end_of_its_epoch_and_names_the_step():
    trainer, guard = fit(poisoned=2)  # the third optimiser step of epoch 1
    assert guard.diverged == (1, 3)
    assert trainer.current_epoch == 1  # stopped after the first epoch, not after all three


class SaveAfterFirstEpoch(L.Callback):
    """Checkpoints at the end of epoch 1, from on_train_epoch_end as Ray's report callback does."""

    def __init__(self, path):
        self.path = path

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            trainer.save_checkpoint(self.path)


def weights_after_two_epochs(callbacks, resume_from=None):
    """The module's state after two epochs (the average's, with a WeightAverage)."""
    L.seed_everything(7, verbose=False)
    module = make_module(dropout=0.1).train()  # dropout and scheduled sampling (tiny.yaml: up to 0.5) draw at random
    trainer = quiet_trainer(
        max_epochs=2,
        limit_val_batches=0,
        callbacks=callbacks,
    )
    loader = DataLoader([make_batch(1, seed=i) for i in range(12)], batch_size=None, shuffle=True)
    trainer.fit(module, train_dataloaders=loader, ckpt_path=resume_from)
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_a_run_resumed_at_an_epoch_boundary_ends_with_the_uninterrupted_weights(tmp_path):
    checkpoint = tmp_path / "epoch1.ckpt"
    uninterrupted = weights_after_two_epochs([RandomState(), SaveAfterFirstEpoch(checkpoint)])
    resumed = weights_after_two_epochs([RandomState()], resume_from=str(checkpoint))
    assert uninterrupted.keys() == resumed.keys()
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], resumed[name]), name
    # Without the random state the resumed epoch shuffles and samples differently.
    blind = weights_after_two_epochs([], resume_from=str(checkpoint))
    assert any(not torch.equal(uninterrupted[name], blind[name]) for name in uninterrupted)


@pytest.mark.parametrize("average", [False, True])
def test_a_run_with_the_weight_average_resumes_exactly_too(tmp_path, average):
    checkpoint = tmp_path / "epoch1.ckpt"
    extra = (lambda: [WeightAverage(0.9)]) if average else (lambda: [])
    uninterrupted = weights_after_two_epochs([RandomState(), *extra(), SaveAfterFirstEpoch(checkpoint)])
    resumed = weights_after_two_epochs([RandomState(), *extra()], resume_from=str(checkpoint))
    for name in uninterrupted:
        assert torch.equal(uninterrupted[name], resumed[name]), name


class KeepScore(SaveAfterFirstEpoch):
    """Checkpoints after epoch 1 and keeps the val/mae that epoch logged."""

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == 0:
            self.val_mae = trainer.callback_metrics["val/mae"].item()
        super().on_train_epoch_end(trainer, pl_module)


def test_validation_checkpoints_and_inference_all_see_the_average_and_its_own_calibration(tmp_path):
    L.seed_everything(7, verbose=False)
    module = make_module().train()  # quantiles 0.1, 0.5, 0.9: a calibration buffer fitted at each validation
    keep = KeepScore(tmp_path / "epoch1.ckpt")
    trainer = quiet_trainer(
        max_epochs=2,
        num_sanity_val_steps=0,
        callbacks=[WeightAverage(0.8), keep],
    )
    val = [make_batch(4, seed=100 + i) for i in range(6)]  # 24 windows: enough to fit the factors
    trainer.fit(module, DataLoader(Batches(8, None), batch_size=None), DataLoader(val, batch_size=None))

    saved = torch.load(keep.path, weights_only=True)
    averaged, raw = saved["state_dict"], saved["current_model_state"]
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged if ".nets." in k)  # the average is saved
    fitted = raw["model.calibration"]
    assert not torch.equal(fitted, torch.ones_like(fitted))  # fitted on the first validation...
    assert torch.equal(averaged["model.calibration"], fitted)  # ...and saved as fitted, not averaged

    model = load_checkpoint(str(keep.path)).model  # what inference forecasts with
    with torch.no_grad():
        medians = [model.median(model.forecast_scaled(b["past_target"], b["past_time"], b["future_time"])) for b in val]
    errors = [(m - b["future_target"]).abs() * b["scale"][:, None] for m, b in zip(medians, val)]
    assert torch.cat(errors).mean().item() == pytest.approx(keep.val_mae, rel=1e-5)  # the score validation gave it
