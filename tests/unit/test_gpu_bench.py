"""bench/gpu.py in its CPU smoke mode, and the GPU levers that can be checked without a GPU."""

from __future__ import annotations

import importlib.util
import json
import sys

import torch

from lit_forecast import config as cfg
from lit_forecast.models.factory import module_from_hyperparameters
from lit_forecast.spec import WindowSpec
from lit_forecast.training import ray_train

CONFIGS = cfg.DEFAULT_CONFIG.parent
BENCH = CONFIGS.parent / "bench" / "gpu.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cpu_smoke_run_writes_every_report(tmp_path, monkeypatch):
    bench = load_bench()
    args = ["--config", str(CONFIGS / "tiny.yaml"), "--device", "cpu", "--zones", "3", "--days", "2", "--batch-sizes", "4",
            "--steps", "3", "--warmup", "1", "--profile-steps", "1", "--infer-windows", "6", "--infer-batch", "4",
            "--out", str(tmp_path)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["gpu.py", *args])
    bench.main()

    report = json.loads((tmp_path / "gpu_bench.json").read_text())
    # tiny.yaml: 16 past -> 4 future slots; 2 days = 96 slots -> 96 - 16 - 4 + 1 = 77 windows per zone
    assert report["fleet_windows"] == 3 * 77
    (train,) = report["train"]
    assert train["steps_timed"] == 3 and train["windows_per_s"] > 0 and train["precision"] == "32-true"
    # the step loss is logged unsynchronised and the epoch loss once per epoch; the lr per step
    assert {"train/loss_step", "train/loss_epoch", "train/lr"} <= set(train["logged"])
    assert report["profile"]["train_flops_per_window"] > 0 and train["achieved_flops"] > 0
    (infer,) = report["infer"]
    assert infer["windows"] == 6 and infer["windows_per_s"] > 0 and infer["forecast_flops_per_window"] > 0
    assert "Self CPU" in (tmp_path / "profile.txt").read_text()
    assert (tmp_path / "trace.json.gz").stat().st_size > 0
    assert "windows/s" in (tmp_path / "gpu_bench.txt").read_text()


def test_peak_table_matches_device_names_by_the_longest_key():
    bench = load_bench()
    assert bench.peak_flops("NVIDIA H200") == 989e12
    assert bench.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert bench.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert bench.peak_flops("NVIDIA L40S") == 366e12
    assert bench.peak_flops("Tesla T4") is None


def test_synthetic_fleet_csv_loads_as_a_long_format_source(tmp_path):
    bench = load_bench()
    path = tmp_path / "zones.csv"
    bench.write_csv(str(path), zones=2, start="2024-01-01", end="2024-01-02")
    lines = path.read_text().splitlines()
    assert lines[0] == "timestamp,value,series_id" and len(lines) == 1 + 2 * 48
    assert lines[1].startswith("2024-01-01 00:00:00,") and lines[-1].endswith(",z00001")


def test_compile_flag_defaults_off_and_compiles_members_in_place():
    assert cfg.load(CONFIGS / "local.yaml").train.compile is False
    config = cfg.load(CONFIGS / "tiny.yaml", ["train.compile=true", "model.members=2"])
    assert config.train.compile is True
    plain = cfg.to_dict(config)
    window = WindowSpec(16, 4, "30min", 1, 1).to_dict()
    module = module_from_hyperparameters({"model": plain["model"], "window": window, "train": plain["train"],
                                          "series": {"0": {"mean": 0.0, "std": 1.0}}})
    keys = list(module.state_dict())
    ray_train.compile_members(module)
    # compiled in place: the same parameter names, so checkpoints load either way
    assert all(net._compiled_call_impl is not None for net in module.model.nets)
    assert list(module.state_dict()) == keys


def test_fused_adamw_only_on_gpu_parameters():
    config = cfg.load(CONFIGS / "tiny.yaml")
    plain = cfg.to_dict(config)
    window = WindowSpec(16, 4, "30min", 1, 1).to_dict()
    module = module_from_hyperparameters({"model": plain["model"], "window": window, "train": plain["train"],
                                          "series": {"0": {"mean": 0.0, "std": 1.0}}})

    class Trainer:  # configure_optimizers reads only the step count for its schedule
        estimated_stepping_batches = 10

    module._trainer = Trainer()
    optimizer = module.configure_optimizers()["optimizer"]
    assert isinstance(optimizer, torch.optim.AdamW) and not optimizer.defaults["fused"]
