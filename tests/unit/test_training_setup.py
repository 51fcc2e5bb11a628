"""What the driver builds before Ray starts: Ray Train configs from YAML, run-folder rules."""

from __future__ import annotations

import pytest

from lit_forecast import config as cfg
from lit_forecast.training import ray_train, runs

CONFIGS = cfg.DEFAULT_CONFIG.parent


def test_8gpu_config_builds_ray_and_lightning_arguments_without_gpus():
    config = cfg.load(CONFIGS / "8gpu.yaml")
    scaling = ray_train.scaling_config(config)
    assert scaling.num_workers == 8 and scaling.use_gpu
    assert scaling.resources_per_worker == {"CPU": 4, "GPU": 1}
    torch_config = ray_train.torch_config(config)
    assert torch_config.backend == "nccl" and torch_config.timeout_s == 900
    run = ray_train.run_config(config, "s3://bucket/runs/nyc_taxi_8gpu")
    assert (run.storage_path, run.name) == ("s3://bucket/runs", "nyc_taxi_8gpu")
    assert run.checkpoint_config.checkpoint_score_attribute == "val/mae"
    assert run.checkpoint_config.checkpoint_score_order == "min"
    assert run.checkpoint_config.num_to_keep == 3
    assert run.failure_config.max_failures == 5
    arguments = ray_train.trainer_arguments(config)
    assert arguments["accelerator"] == "gpu" and arguments["devices"] == "auto"
    assert arguments["precision"] == "bf16-mixed"
    assert arguments["max_epochs"] == config.train.max_epochs


def test_local_config_fits_a_two_core_machine_in_fp32():
    config = cfg.load(CONFIGS / "local.yaml")
    scaling = ray_train.scaling_config(config)
    assert not scaling.use_gpu
    assert scaling.num_workers * scaling.resources_per_worker["CPU"] <= 2
    assert ray_train.torch_config(config).backend == "gloo"
    arguments = ray_train.trainer_arguments(config)
    assert arguments["accelerator"] == "cpu" and arguments["precision"] == "32-true"


def test_auto_precision_follows_the_accelerator():
    cpu = cfg.load(CONFIGS / "local.yaml", ["train.precision=auto"])
    gpu = cfg.load(CONFIGS / "8gpu.yaml", ["train.precision=auto"])
    assert ray_train.trainer_arguments(cpu)["precision"] == "32-true"
    assert ray_train.trainer_arguments(gpu)["precision"] == "bf16-mixed"


def test_more_workers_than_cores_fail_at_once_instead_of_waiting(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    config = cfg.load(CONFIGS / "local.yaml", ["cluster.num_workers=3"])
    with pytest.raises(runs.RunError, match="2 CPU.*3 CPU"):
        ray_train.init_ray(config)
    gpu = cfg.load(CONFIGS / "8gpu.yaml")
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    with pytest.raises(runs.RunError, match="0 GPU.*8 GPU"):
        ray_train.init_ray(gpu)


def test_run_folder_rules(tmp_path):
    config = cfg.load(CONFIGS / "tiny.yaml", [f"run.storage={tmp_path}", "run.name=r1"])
    used, resumed = runs.open_run(config, resume=False)
    assert not resumed and (tmp_path / "r1" / "config.yaml").is_file()

    used, resumed = runs.open_run(config, resume=False)  # same config: resume
    assert resumed and cfg.to_dict(used) == cfg.to_dict(config)

    changed = cfg.load(CONFIGS / "tiny.yaml", [f"run.storage={tmp_path}", "run.name=r1", "train.max_epochs=9"])
    with pytest.raises(runs.RunError, match=r"train.max_epochs: 2 -> 9"):
        runs.open_run(changed, resume=False)
    used, resumed = runs.open_run(changed, resume=True)  # --resume keeps the saved config
    assert resumed and used.train.max_epochs == 2

    fresh = cfg.load(CONFIGS / "tiny.yaml", [f"run.storage={tmp_path}", "run.name=r2"])
    with pytest.raises(runs.RunError, match="nothing to resume"):
        runs.open_run(fresh, resume=True)
