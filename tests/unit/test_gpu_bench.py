"""The GPU levers that can be checked without a GPU: train.compile and fused AdamW (bench.gpu measures them)."""

from __future__ import annotations

import torch

from lit_forecast import config as cfg
from lit_forecast.models.factory import module_from_hyperparameters
from lit_forecast.spec import WindowSpec
from lit_forecast.training import ray_train

CONFIGS = cfg.DEFAULT_CONFIG.parent


def test_compile_flag_defaults_off_and_compiles_members_in_place():
    assert cfg.load(CONFIGS / "local.yaml").train.compile is False
    config = cfg.load(CONFIGS / "tiny.yaml", ["train.compile=true", "model.members=2"])
    assert config.train.compile is True
    plain = cfg.to_dict(config)
    window = WindowSpec(16, 4, "30min", 1, 1).to_dict()
    module = module_from_hyperparameters(
        {"model": plain["model"], "window": window, "train": plain["train"], "series": {"0": {"mean": 0.0, "std": 1.0}}}
    )
    keys = list(module.state_dict())
    ray_train.compile_members(module)
    # compiled in place: the same parameter names, so checkpoints load either way
    assert all(net._compiled_call_impl is not None for net in module.model.nets)
    assert list(module.state_dict()) == keys


def test_fused_adamw_only_on_gpu_parameters():
    config = cfg.load(CONFIGS / "tiny.yaml")
    plain = cfg.to_dict(config)
    window = WindowSpec(16, 4, "30min", 1, 1).to_dict()
    module = module_from_hyperparameters(
        {"model": plain["model"], "window": window, "train": plain["train"], "series": {"0": {"mean": 0.0, "std": 1.0}}}
    )

    class Trainer:  # configure_optimizers reads only the step count for its schedule
        estimated_stepping_batches = 10

    module._trainer = Trainer()
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW) and not optimizer.defaults["fused"]
