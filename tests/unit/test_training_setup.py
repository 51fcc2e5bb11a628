"""What the driver builds before Ray starts: Ray Train configs from YAML, run-folder rules."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest
import torch

from lit_forecast import cli
from lit_forecast import config as cfg
from lit_forecast.errors import DataError, RunError
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
    assert arguments["use_distributed_sampler"] is False  # ranks read their own shards


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
    with pytest.raises(RunError, match="2 CPU.*3 CPU"):
        ray_train.init_ray(config)
    gpu = cfg.load(CONFIGS / "8gpu.yaml")
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    with pytest.raises(RunError, match="0 GPU.*8 GPU"):
        ray_train.init_ray(gpu)


def test_run_folder_rules(tmp_path):
    config = cfg.load(CONFIGS / "tiny.yaml", [f"run.storage={tmp_path}", "run.name=r1"])
    used, resumed = runs.check_run(config, resume=False)
    assert not resumed and not (tmp_path / "r1").exists()  # checking writes nothing
    (tmp_path / "r1").mkdir()
    (tmp_path / "r1" / "config.yaml").write_text(cfg.dump(config))  # as train() does once data is valid

    used, resumed = runs.check_run(config, resume=False)  # same config: resume
    assert resumed and cfg.to_dict(used) == cfg.to_dict(config)

    changed = cfg.load(CONFIGS / "tiny.yaml", [f"run.storage={tmp_path}", "run.name=r1", "train.max_epochs=9"])
    # No checkpoint yet (a start that failed): the name is not held, the new config replaces the old
    used, resumed = runs.check_run(changed, resume=False)
    assert not resumed and used.train.max_epochs == 9

    (tmp_path / "r1" / "checkpoint_000000").mkdir()  # training has begun: now the config is the run's
    with pytest.raises(RunError, match=r"train.max_epochs: 2 -> 9"):
        runs.check_run(changed, resume=False)
    with pytest.raises(RunError, match=r"train.max_epochs: 2 -> 9"):
        runs.prepare_only(changed)  # nor may --prepare-only rewrite that run's data
    used, resumed = runs.check_run(changed, resume=True)  # --resume keeps the saved config
    assert resumed and used.train.max_epochs == 2

    fresh = cfg.load(CONFIGS / "tiny.yaml", [f"run.storage={tmp_path}", "run.name=r2"])
    with pytest.raises(RunError, match="nothing to resume"):
        runs.check_run(fresh, resume=True)


def test_bad_data_leaves_no_run_behind(tmp_path):
    config = cfg.load(
        CONFIGS / "tiny.yaml", [f"run.storage={tmp_path}", "run.name=bad", f"data.source={tmp_path / 'missing.csv'}"]
    )
    with pytest.raises(DataError, match="missing.csv"):
        runs.train(config)
    assert not (tmp_path / "bad").exists()  # a corrected rerun under the same name starts clean


def test_command_line_flags_are_plain_strings():
    parser = argparse.ArgumentParser()
    cli.add_config_arguments(parser)
    args = parser.parse_args(["--name", "2024", "--storage", "yes", "--data", "https://example.org/x.csv"])
    config = cli.load_config(args)
    assert (config.run.name, config.run.storage) == ("2024", "yes")
    assert config.data.source == "https://example.org/x.csv" and config.data.sha256 is None


def test_prepare_only_prints_the_summary(synthetic_csv, tmp_path, capsys):
    import train

    csv = synthetic_csv(np.arange(480) % 48 + 100.0)  # ten days of half-hours from 2024-01-01
    train.main([
        "--config", str(CONFIGS / "tiny.yaml"), "--prepare-only", "--data", str(csv), "--storage", str(tmp_path),
        "--name", "p", "--set", "data.train_end=2024-01-07", "--set", "data.val_end=2024-01-09",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert f"dataset  {tmp_path}/p/data (prepared" in out
    assert "series   1, 480 rows -> 480 slots of 30min; 0 slots interpolated in 0 gaps" in out
    assert "windows  16 past -> 4 future, stride 1 (eval 1)" in out
    for split in ("train", "val", "test"):
        assert re.search(rf"^  {split:<5}\s+\d+ windows, targets 2024-", out, re.M)
    assert re.search(r"^shards   2 training shards x \d+ windows", out, re.M)
    assert not (tmp_path / "p" / "config.yaml").exists()  # preparing is not starting a run


def test_resume_skips_an_unreadable_latest_checkpoint_and_never_a_newer_partial_one(tmp_path, caplog):
    run = tmp_path / "run"
    names = [
        "checkpoint_2026-01-01_00-00-01.000000",
        "checkpoint_2026-01-01_00-00-02.000000",
        "checkpoint_2026-01-01_00-00-03.000000",
        "checkpoint_2026-01-01_00-00-04.000000",
    ]
    for epoch, name in enumerate(names):
        (run / name).mkdir(parents=True)
        # The workers that wrote each checkpoint (callbacks.WorldSize); the first is from before it was recorded.
        world = {"lit_forecast_world_size": epoch + 3} if epoch else {}
        torch.save({"epoch": epoch, "state_dict": {}, **world}, run / name / "checkpoint.ckpt")
    latest = names[2]  # what Ray registered last; names[3] is a newer folder whose upload never finished
    (run / latest / "checkpoint.ckpt").write_bytes((run / latest / "checkpoint.ckpt").read_bytes()[:50])  # truncated
    path, name, epoch, workers = ray_train._readable_checkpoint(str(run), latest, str(tmp_path), rank=0)
    assert (name, epoch, workers) == (names[1], 1, 4) and torch.load(path, weights_only=True)["epoch"] == 1
    assert f"{run / latest / 'checkpoint.ckpt'} cannot be read" in caplog.text

    for name in names[:3]:
        (run / name / "checkpoint.ckpt").write_bytes(b"garbage")
    with pytest.raises(RunError, match="no readable checkpoint to resume from") as err:
        ray_train._readable_checkpoint(str(run), latest, str(tmp_path), rank=0)
    assert all(str(run / n / "checkpoint.ckpt") in str(err.value) for n in names[:3]) and names[3] not in str(err.value)
