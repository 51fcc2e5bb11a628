"""bench.gpu in its CPU smoke mode, and its table of device peaks."""

from __future__ import annotations

import json
import sys

from bench import gpu
from lit_forecast import config as cfg

CONFIGS = cfg.DEFAULT_CONFIG.parent


def test_cpu_smoke_run_writes_every_report(tmp_path, monkeypatch):
    output = tmp_path / "gpu_bench.json"
    args = ["--config", str(CONFIGS / "tiny.yaml"), "--device", "cpu", "--zones", "3", "--days", "2",
            "--batch-sizes", "4", "--steps", "3", "--warmup", "1", "--profile-steps", "1",
            "--infer-windows", "6", "--infer-batch", "4", "--output", str(output)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["gpu.py", *args])
    gpu.main()

    report = json.loads(output.read_text())
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
    assert gpu.peak_flops("NVIDIA H200") == 989e12
    assert gpu.peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert gpu.peak_flops("NVIDIA H100 PCIe") == 756e12
    assert gpu.peak_flops("NVIDIA L40S") == 366e12
    assert gpu.peak_flops("Tesla T4") is None
