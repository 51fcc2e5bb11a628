"""The network and its LightningModule: causality, positions, one decoding path, quantiles, checkpoints."""

from __future__ import annotations

import types

import lightning as L
import pytest
import torch

from lit_forecast import config as cfg
from lit_forecast.evaluation.metrics import quantile_scores
from lit_forecast.models.factory import model_from_hyperparameters, module_from_hyperparameters
from lit_forecast.models.module import ForecastModule
from lit_forecast.models.quantiles import QuantileCalibration, QuantileScores, pinball_loss, widen
from lit_forecast.models.transformer import Seq2SeqTransformer, sinusoidal
from lit_forecast.spec import WindowSpec

TINY = cfg.load(cfg.DEFAULT_CONFIG.parent / "tiny.yaml")
W, H = TINY.data.input_window, TINY.data.horizon
WINDOW = WindowSpec(W, H, "30min").to_dict()
SERIES = {"0": {"mean": 1000.0, "std": 200.0}}


def make_module(**model_overrides) -> ForecastModule:
    torch.manual_seed(0)
    plain = cfg.to_dict(TINY)
    return module_from_hyperparameters(hparams({**plain["model"], **model_overrides})).eval()


def hparams(model: dict, **train_overrides) -> dict:
    """The plain values a checkpoint carries, for the tiny config on WINDOW and SERIES."""
    return {
        "model": model,
        "window": WINDOW,
        "train": {**cfg.to_dict(TINY)["train"], **train_overrides},
        "series": SERIES,
    }


def make_batch(batch_size: int = 3, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    slots = torch.arange(W + H) + 7  # start at 03:30 on a Tuesday
    times = torch.stack([slots % 48, (slots // 48 + 1) % 7, slots // 48 == 0], dim=-1).long().expand(batch_size, -1, -1)
    values = torch.randn(batch_size, W + H, generator=g)
    return {
        "past_target": values[:, :W],
        "future_target": values[:, W:],
        "past_time": times[:, :W],
        "future_time": times[:, W:],
        "loc": torch.full((batch_size,), 1000.0),
        "scale": torch.full((batch_size,), 200.0),
    }


def teacher_forced(net: Seq2SeqTransformer, batch: dict, future: torch.Tensor) -> torch.Tensor:
    """(B, H, Q) quantiles with ``future`` (B, H) fed back."""
    decoder_input = net.shift(batch["past_target"], future)
    return net(batch["past_target"], batch["past_time"], batch["future_time"], decoder_input)


# The default (quantiles 0.1, 0.5, 0.9), the optional inputs, and a point head (Q = 1).
OPTIONS = [{}, {"window_norm": True, "holidays": True, "daily_lag": H, "residual": True}, {"quantiles": []}]


@pytest.mark.parametrize("options", OPTIONS)
def test_changing_target_k_changes_no_teacher_forced_output_before_k(options):
    net, batch = make_module(**options).model.nets[0], make_batch()
    base = teacher_forced(net, batch, batch["future_target"])
    for k in range(H):
        future = batch["future_target"].clone()
        future[:, k] += 5.0
        out = teacher_forced(net, batch, future)
        # target k is fed to step k+1: outputs up to and including k must not move
        torch.testing.assert_close(out[:, : k + 1], base[:, : k + 1])
        if k + 1 < H:
            assert not torch.allclose(out[:, k + 1 :], base[:, k + 1 :]), f"target {k} never reaches later steps"


def test_reordering_past_patches_changes_the_forecast():
    # Without calendar or seasonal inputs, only positional encodings tell patches apart:
    # attention over an unordered set would give the same forecast for any patch order.
    # The last patch stays put, so the decoder's first input (the last past value) is unchanged.
    net = make_module(covariates=False, seasonal_lag=0).model.nets[0]
    batch = make_batch()
    P = TINY.model.patch_len
    patches = batch["past_target"].view(len(batch["past_target"]), W // P, P)
    reordered = torch.cat([patches[:, :-1].flip(1), patches[:, -1:]], dim=1).reshape(len(patches), W)
    assert torch.equal(reordered[:, -P:], batch["past_target"][:, -P:])
    base = net.forecast(batch["past_target"], batch["past_time"], batch["future_time"])
    moved = net.forecast(reordered, batch["past_time"], batch["future_time"])
    assert (base - moved).abs().max() > 1e-3


def test_positions_reach_the_activations():
    # Shift the encoder's and then the decoder's position table: if positions were never
    # added to the tokens (a no-op encoding), the outputs could not change.
    net, batch = make_module(covariates=False, seasonal_lag=0).model.nets[0], make_batch()
    base = teacher_forced(net, batch, batch["future_target"])
    for name, table in (("enc_pos", net.enc_pos), ("dec_pos", net.dec_pos)):
        original = table.clone()
        table.copy_(torch.roll(original, shifts=1, dims=0))
        moved = teacher_forced(net, batch, batch["future_target"])
        table.copy_(original)
        assert (base - moved).abs().max() > 1e-3, f"{name} does not reach the outputs"


def test_decoder_positions_continue_after_the_encoder():
    net = make_module().model.nets[0]
    torch.testing.assert_close(net.dec_pos, sinusoidal(torch.arange(W, W + H), net.shape.d_model))
    torch.testing.assert_close(net.enc_pos, sinusoidal(torch.arange(0, W, TINY.model.patch_len), net.shape.d_model))


def test_teacher_forced_and_autoregressive_agree_on_the_first_step():
    net, batch = make_module().model.nets[0], make_batch()
    forecast = net.forecast(batch["past_target"], batch["past_time"], batch["future_time"])
    forced = teacher_forced(net, batch, batch["future_target"])
    torch.testing.assert_close(forecast[:, 0], forced[:, 0])  # every level
    assert not torch.allclose(forecast[:, 1:], forced[:, 1:])  # later steps differ: inputs differ


@pytest.mark.parametrize("options", OPTIONS)
def test_cached_decoding_equals_a_full_pass_over_its_own_predictions(options):
    # Feeding the forecast back as teacher-forcing input must reproduce it exactly:
    # proves the key/value cache and the causal mask compute the same function.
    net, batch = make_module(**options).model.nets[0], make_batch()
    forecast = net.forecast(batch["past_target"], batch["past_time"], batch["future_time"])
    assert forecast.shape == (3, H, max(1, len(net.levels)))
    torch.testing.assert_close(teacher_forced(net, batch, net.median(forecast)), forecast, rtol=1e-5, atol=1e-5)


def test_overfits_one_small_batch():
    module = make_module().train()
    batch = make_batch(batch_size=8)
    optimizer = torch.optim.Adam(module.model.nets.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        loss = module.loss_fn(
            teacher_forced(module.model.nets[0], batch, batch["future_target"]), batch["future_target"]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])


@pytest.mark.parametrize("members", [1, 2])
def test_checkpoint_round_trip_needs_only_the_checkpoint(tmp_path, members):
    module, batch = make_module(members=members), make_batch()
    assert module.levels == [0.1, 0.5, 0.9]
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    raw = torch.load(path, weights_only=True)  # plain tensors and primitives only
    assert raw["hyper_parameters"]["series"] == SERIES
    assert raw["hyper_parameters"]["window"]["horizon"] == H
    assert raw["hyper_parameters"]["model"]["quantiles"] == [0.1, 0.5, 0.9]
    loaded = model_from_hyperparameters(raw["hyper_parameters"])
    loaded.load_state_dict(raw["state_dict"])
    torch.testing.assert_close(loaded.eval().forecast(batch), module.model.forecast(batch), rtol=0, atol=0)


def test_a_checkpoint_from_before_quantiles_loads_as_a_point_model(tmp_path):
    # Older checkpoints have no quantiles, daily_lag or residual in their hyperparameters.
    plain = cfg.to_dict(TINY)
    old = {k: v for k, v in plain["model"].items() if k not in ("quantiles", "daily_lag", "residual")}
    torch.manual_seed(0)
    module = module_from_hyperparameters(hparams(old)).eval()
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "old.ckpt")
    raw = torch.load(tmp_path / "old.ckpt", weights_only=True)
    loaded = model_from_hyperparameters(raw["hyper_parameters"])
    loaded.load_state_dict(raw["state_dict"])
    assert loaded.shape.daily_lag == 0 and not loaded.shape.residual
    assert loaded.levels == [] and loaded.eval().forecast(make_batch()).shape == (3, H, 1)


def test_metrics_are_in_passengers_and_match_a_hand_computation():
    module = make_module()
    batch = make_batch(batch_size=2)
    scaled_forecast = torch.zeros(2, H, 3)  # every level = loc = 1000 passengers at every step
    module.model.raw_forecast_scaled = lambda *args: scaled_forecast
    truth = batch["future_target"] * 200.0 + 1000.0
    with pytest.warns(UserWarning, match="self.log"):  # no Trainer attached: logging is skipped
        module.validation_step(batch, 0)
    got = {k: v.item() for k, v in module.val_metrics.compute().items()}
    error = (truth - 1000.0).abs()
    assert got["mae"] == pytest.approx(error.mean().item(), rel=1e-5)
    assert got["rmse"] == pytest.approx(((truth - 1000.0) ** 2).mean().sqrt().item(), rel=1e-5)
    assert got["mape"] == pytest.approx((error / truth.abs()).mean().item(), rel=1e-5)
    assert got["smape"] == pytest.approx((2 * error / (truth.abs() + 1000.0)).mean().item(), rel=1e-5)
    torch.testing.assert_close(module.model.forecast(batch), scaled_forecast * 200.0 + 1000.0)


def test_learning_rate_warms_up_then_decays_to_its_floor():
    module = make_module()
    module._trainer = types.SimpleNamespace(estimated_stepping_batches=100)  # all the schedule reads
    optimizers = module.configure_optimizers()
    optimizer, scheduler = optimizers["optimizer"], optimizers["lr_scheduler"]["scheduler"]
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lr, warmup, floor = TINY.train.lr, TINY.train.warmup_steps, TINY.train.min_lr_ratio
    assert rates[0] == pytest.approx(lr / warmup) and rates[warmup - 1] == pytest.approx(lr)
    assert all(a < b for a, b in zip(rates[:warmup], rates[1:warmup]))
    assert all(a >= b for a, b in zip(rates[warmup:], rates[warmup + 1 :]))
    assert rates[-1] == pytest.approx(lr * floor, rel=0.02)


def test_scheduled_sampling_grows_from_zero_to_its_maximum():
    module = make_module()
    top = TINY.train.sampling_max_prob
    for step, expected in ((0, 0.0), (50, top / 2), (100, top), (150, top)):
        module._trainer = types.SimpleNamespace(estimated_stepping_batches=100, global_step=step)
        assert module.sampling_probability() == pytest.approx(expected)


def test_ensemble_forecast_is_the_mean_of_independent_members():
    module, batch = make_module(members=3), make_batch()
    first = [p.detach().clone() for p in module.model.nets[0].parameters()]
    assert any((a - b).abs().max() > 0 for a, b in zip(first, module.model.nets[1].parameters())), "members start alike"
    members = [
        net.forecast(batch["past_target"], batch["past_time"], batch["future_time"]) for net in module.model.nets
    ]
    expected = torch.stack(members).mean(dim=0) * 200.0 + 1000.0
    torch.testing.assert_close(module.model.forecast(batch), expected)

    # Training: member i's gradient is that of member i's own loss, untouched by the others
    # (eval mode, so dropout draws do not differ between the two passes).
    module.log = lambda *args, **kwargs: None
    module.optimizers = lambda: types.SimpleNamespace(param_groups=[{"lr": 0.0}])
    module.training_step(batch, 0).backward()
    together = [p.grad.clone() for p in module.model.nets[1].parameters()]
    module.zero_grad()
    module.member_loss(module.model.nets[1], batch, 0.0).backward()
    for a, p in zip(together, module.model.nets[1].parameters()):
        torch.testing.assert_close(a, p.grad)


def test_each_member_is_clipped_on_its_own():
    module = make_module(members=2)
    for net, size in zip(module.model.nets, (100.0, 0.001)):  # one huge gradient, one tiny
        for p in net.parameters():
            p.grad = torch.full_like(p, size)
    small = [p.grad.clone() for p in module.model.nets[1].parameters()]
    module.configure_gradient_clipping(None, gradient_clip_val=1.0)
    norm = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.grad) for p in module.model.nets[0].parameters()])
    )
    assert norm.item() == pytest.approx(1.0, rel=1e-4)
    # A clip over both members together would have shrunk the tiny gradient as well.
    for before, p in zip(small, module.model.nets[1].parameters()):
        torch.testing.assert_close(p.grad, before)


# -- quantiles ---------------------------------------------------------------------------------------


def test_quantiles_never_cross_even_for_a_wild_head():
    module = make_module(members=2)
    with torch.no_grad():
        for net in module.model.nets:  # large random head weights: raw outputs in any order
            net.head.weight.normal_(0, 5.0)
            net.head.bias.normal_(0, 5.0)
    batch = make_batch(batch_size=16)
    for quantiles in (
        module.model.forecast(batch),
        teacher_forced(module.model.nets[0], batch, batch["future_target"]),
    ):
        assert quantiles.shape == (16, H, 3)
        assert (quantiles.diff(dim=-1) >= 0).all()


def test_the_median_of_the_quantile_head_is_its_point_forecast():
    # A point network with the quantile network's weights and only its median row of the head
    # forecasts exactly the quantile network's median: the other levels never reach the
    # decoding path (only the median is fed back).
    quantile_net = make_module().model.nets[0]
    point_net = make_module(quantiles=[]).model.nets[0]
    state = quantile_net.state_dict()
    m = quantile_net.median_index
    state["head.weight"], state["head.bias"] = state["head.weight"][m : m + 1], state["head.bias"][m : m + 1]
    point_net.load_state_dict(state)
    batch = make_batch()
    args = batch["past_target"], batch["past_time"], batch["future_time"]
    # Equal up to float32 rounding: a 3-row and a 1-row head are different matrix products.
    torch.testing.assert_close(
        quantile_net.median(quantile_net.forecast(*args)), point_net.forecast(*args)[..., 0], rtol=0, atol=1e-6
    )
    module = make_module(members=2)
    torch.testing.assert_close(
        module.model.median(module.model.forecast(batch)),
        torch.stack([net.median(net.forecast(*args)) for net in module.model.nets]).mean(0) * 200 + 1000,
    )


def test_pinball_loss_and_scores_equal_a_hand_computation():
    levels = [0.1, 0.5, 0.9]
    quantiles = torch.tensor([[[8.0, 10.0, 12.0], [0.0, 1.0, 2.0]]])  # (1, 2, 3)
    actual = torch.tensor([[13.0, 1.0]])
    # step 0: y = 13 above all: 0.1*5, 0.5*3, 0.9*1 = 0.5, 1.5, 0.9; step 1: y = 1 in [0, 2]: 0.1*1, 0, 0.1*1
    pinball = torch.tensor([[0.5, 1.5, 0.9], [0.1, 0.0, 0.1]])
    assert pinball_loss(quantiles, actual, torch.tensor(levels)).item() == pytest.approx(pinball.mean().item())
    # wQL = mean over levels of 2 * sum pinball / sum |y| = mean(2 * [0.6, 1.5, 1.0] / 14)
    wql = (2 * pinball.sum(0) / 14.0).mean().item()
    scores = QuantileScores(levels)
    scores.update(quantiles[:, :1], actual[:, :1])  # two updates: sums, not means of means
    scores.update(quantiles[:, 1:], actual[:, 1:])
    got = {k: v.item() for k, v in scores.compute().items()}
    assert got == pytest.approx({"wql": wql, "coverage_80": 0.5})  # 13 is outside [8, 12], 1 inside [0, 2]
    numpy = quantile_scores(quantiles.numpy(), actual.numpy(), levels)
    assert numpy["overall"] == pytest.approx({"wql": wql, "coverage_80": 0.5})
    assert numpy["by_step"]["coverage_80"] == [0.0, 1.0]
    assert numpy["by_step"]["wql"] == pytest.approx(
        [(2 * pinball[0] / 13).mean().item(), (2 * pinball[1] / 1).mean().item()]
    )


def test_validation_logs_quantile_scores_in_passengers():
    module = make_module()
    batch = make_batch(batch_size=2)
    module.model.raw_forecast_scaled = lambda *args: (
        torch.zeros(2, H, 3) + torch.tensor([-1.0, 0.0, 1.0])
    )  # 800, 1000, 1200
    with pytest.warns(UserWarning, match="self.log"):
        module.validation_step(batch, 0)
    truth = batch["future_target"] * 200.0 + 1000.0
    got = module.val_quantiles.compute()
    inside = ((truth >= 800) & (truth <= 1200)).float().mean().item()
    assert got["coverage_80"].item() == pytest.approx(inside)
    expected = quantile_scores(
        (torch.zeros(2, H, 3) + torch.tensor([800.0, 1000.0, 1200.0])).numpy(), truth.numpy(), module.levels
    )
    assert got["wql"].item() == pytest.approx(expected["overall"]["wql"], rel=1e-5)


def test_forecast_figure_draws_one_fixed_validation_window_on_rank_0():
    import numpy as np
    import pandas as pd

    from lit_forecast.data.windows import Segment, WindowSet
    from lit_forecast.spec import SeriesStats
    from lit_forecast.training.callbacks import ForecastFigure

    module = make_module()
    values = 1000 + 200 * np.sin(np.arange(200) / 7)
    segment = Segment("0", pd.Timestamp("2024-01-01 12:00"), values, np.arange(W, 200 - H))  # first cutoff Mon 20:00
    windows = WindowSet([segment], {"0": SeriesStats(1000.0, 200.0)}, WindowSpec(W, H, "30min"))
    drawn = []
    experiment = types.SimpleNamespace(add_figure=lambda tag, figure, global_step, close: drawn.append((tag, figure)))
    trainer = types.SimpleNamespace(
        global_rank=0,
        sanity_checking=False,
        current_epoch=1,
        max_epochs=5,
        global_step=7,
        logger=types.SimpleNamespace(experiment=experiment),
        val_dataloaders=types.SimpleNamespace(dataset=windows),
    )
    ForecastFigure(every_n_epochs=2).on_validation_epoch_end(trainer, module)
    assert [tag for tag, _ in drawn] == ["val/forecast"]
    title = drawn[0][1].axes[0].get_title()
    assert "from Tue 2024-01-02 00:00" in title  # the first window starting at midnight
    assert any("80 % interval" in t.get_text() for t in drawn[0][1].axes[0].get_legend().get_texts())
    for rank, epoch in ((1, 1), (0, 0)):  # not rank 0, or not an epoch to draw: nothing
        trainer.global_rank, trainer.current_epoch = rank, epoch
        ForecastFigure(every_n_epochs=2).on_validation_epoch_end(trainer, module)
    assert len(drawn) == 1


@pytest.mark.parametrize("source", ["teacher_forced", "rollout"])
def test_scheduled_sampling_feeds_back_the_chosen_predictions(source, monkeypatch):
    """At p = 1 every fed-back input after step 0 is the member's own median: from a parallel
    teacher-forced pass, or (rollout) from its autoregressive forecast, run with dropout off."""
    plain = cfg.to_dict(TINY)
    torch.manual_seed(0)
    module = module_from_hyperparameters(
        hparams({**plain["model"], "quantiles": [0.1, 0.5, 0.9]}, sampling_source=source)
    ).train()
    net, batch = module.model.nets[0], make_batch()
    past, future = batch["past_target"], batch["future_target"]
    if source == "rollout":
        net.eval()
        expected = net.shift(past, net.median(net.forecast(past, batch["past_time"], batch["future_time"])))
        net.train()
    seen = []
    original = type(net).forward

    def spy(self, past_target, past_time, future_time, decoder_input):
        seen.append(decoder_input.detach().clone())
        return original(self, past_target, past_time, future_time, decoder_input)

    monkeypatch.setattr(type(net), "forward", spy)
    module.member_loss(net, batch, 1.0)
    assert net.training  # the rollout puts dropout back on
    fed = seen[-1]  # the pass the loss is computed on
    assert torch.equal(fed[:, 0], past[:, -1])  # step 0 is always the last observed value
    assert not torch.equal(fed[:, 1:], future[:, :-1])  # not teacher forcing
    if source == "rollout":
        torch.testing.assert_close(fed, expected)
    else:
        assert len(seen) == 2  # one teacher-forced pass for the predictions, one for the loss


def test_calibration_factors_equal_a_hand_computation():
    # Median 0, q0.1 at -1 and q0.9 at +2 for every window; actuals 0.1, 0.2, ..., 1.0 above and
    # -0.1 .. -1.0 below the median (ratios 0.05 .. 0.5 for q0.9 and 0.1 .. 1.0 for q0.1).
    levels = [0.1, 0.5, 0.9]
    quantiles = torch.tensor([-1.0, 0.0, 2.0]).expand(20, 1, 3)
    actual = torch.cat([torch.arange(1, 11) / 10, -torch.arange(1, 11) / 10])[:, None]
    calibration = QuantileCalibration(levels, horizon=1)
    calibration.update(quantiles, actual)
    factors = calibration.compute()[0]
    # q0.9: 90 % of the 20 ratios (y - m) / 2 must lie at or below s: the 18th smallest is 0.4
    # (the 10 negative ones, then 0.05 .. 0.40). q0.1: (y - m) / -1, the 18th smallest is 0.8.
    assert factors.tolist() == pytest.approx(
        [0.8, 1.0, 0.4], abs=QuantileCalibration.BIN_WIDTH + 1e-6
    )  # exact to one bin
    widened = widen(quantiles, torch.tensor([[0.8, 1.0, 0.4]]), 1)
    assert widened[0, 0].tolist() == pytest.approx([-0.8, 0.0, 0.8])
    inside = ((widened[..., 0] <= actual) & (actual <= widened[..., 2])).float().mean()
    assert inside.item() == pytest.approx(0.8)  # 16 of 20: the four largest |y| fall outside


def test_too_few_windows_leave_the_head_uncalibrated():
    calibration = QuantileCalibration([0.1, 0.5, 0.9], horizon=2)
    calibration.update(torch.tensor([-1.0, 0.0, 1.0]).expand(5, 2, 3), torch.full((5, 2), 3.0))
    assert torch.equal(calibration.compute(), torch.ones(2, 3))


def test_validation_calibrates_the_next_forecasts_and_keeps_the_median():
    module = make_module(quantiles=[0.05, 0.1, 0.5, 0.9, 0.95])
    module.log = module.log_dict = lambda *args, **kwargs: None
    batches = [make_batch(batch_size=32, seed=s) for s in range(4)]
    before = [module.model.forecast(b) for b in batches]
    for i, b in enumerate(batches):
        module.validation_step(b, i)
    module.on_validation_epoch_end()
    assert not torch.equal(module.model.calibration, torch.ones_like(module.model.calibration))
    after = [module.model.forecast(b) for b in batches]
    for raw, calibrated in zip(before, after):
        torch.testing.assert_close(calibrated[..., 2], raw[..., 2])  # the median (point forecast) is untouched
        assert (calibrated.diff(dim=-1) >= 0).all()  # no two levels cross
    forecast, actual = torch.cat(after), torch.cat([b["future_target"] * 200.0 + 1000.0 for b in batches])
    for low, high, share in ((1, 3, 0.8), (0, 4, 0.9)):  # in-sample, the fitted data: within a bin and ties
        inside = ((forecast[..., low] <= actual) & (actual <= forecast[..., high])).float().mean().item()
        assert inside == pytest.approx(share, abs=0.03)
    # The factors travel in the checkpoint's state dict; an older one without them loads as uncalibrated.
    state = module.state_dict()
    fresh = make_module(quantiles=[0.05, 0.1, 0.5, 0.9, 0.95])
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.model.forecast(batches[0]), after[0])
    fresh.load_state_dict({k: v for k, v in state.items() if k != "model.calibration"})
    torch.testing.assert_close(fresh.model.forecast(batches[0]), before[0])


def test_calibration_off_leaves_the_head_as_trained():
    plain = cfg.to_dict(TINY)
    torch.manual_seed(0)
    module = module_from_hyperparameters(hparams(plain["model"], calibrate_quantiles=False)).eval()
    module.log = module.log_dict = lambda *args, **kwargs: None
    batch = make_batch(batch_size=32)
    before = module.model.forecast(batch)
    module.validation_step(batch, 0)
    module.on_validation_epoch_end()
    torch.testing.assert_close(module.model.forecast(batch), before, rtol=0, atol=0)
    assert torch.equal(module.model.calibration, torch.ones_like(module.model.calibration))


def test_the_network_shape_has_no_defaults_and_the_config_names_every_field():
    """NetShape is built from the config (or a checkpoint): it has no default that could disagree with either."""
    import dataclasses

    from lit_forecast.models.factory import BEFORE_THE_KEY_EXISTED, net_shape
    from lit_forecast.models.transformer import NetShape

    fields = dataclasses.fields(NetShape)
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields)
    from_window = {"input_window", "horizon", "slots_per_day"}
    assert {f.name for f in fields} - from_window <= set(cfg.to_dict(TINY)["model"])  # the fill is for checkpoints only
    assert set(BEFORE_THE_KEY_EXISTED) <= {f.name for f in fields}
    shape = net_shape(cfg.to_dict(TINY)["model"], WindowSpec.from_dict(WINDOW))
    assert (shape.quantiles, shape.daily_lag, shape.median_index) == (
        tuple(TINY.model.quantiles),
        TINY.model.daily_lag,
        1,
    )
    assert (shape.input_window, shape.horizon, shape.slots_per_day) == (W, H, 48)
    with pytest.raises(ValueError, match="must be increasing and include 0.5"):
        net_shape({**cfg.to_dict(TINY)["model"], "quantiles": [0.1, 0.9]}, WindowSpec.from_dict(WINDOW))
    with pytest.raises(KeyError, match="d_model"):
        net_shape({k: v for k, v in cfg.to_dict(TINY)["model"].items() if k != "d_model"}, WindowSpec.from_dict(WINDOW))
