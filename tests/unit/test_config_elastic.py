"""Elastic runs: ``cluster.num_workers: [min, max]``, checked before any worker starts, and what
the driver and each worker derive from it (Ray's scaling config, the resource check, the
shards the dataset must hold, the per-worker batch, the console's workers line)."""

from __future__ import annotations

import runpy

import pandas as pd
import pytest
import ray

from lit_forecast import config as cfg
from lit_forecast.data import prepare as prep
from lit_forecast.errors import ConfigError, RunError
from lit_forecast.layout import data_dir
from lit_forecast.training import ray_train
from lit_forecast.training.callbacks import workers_line

ROOT = cfg.DEFAULT_CONFIG.parent.parent
CONFIGS = ROOT / "configs"
TRAIN = runpy.run_path(str(ROOT / "train.py"))["main"]


def test_a_range_reads_as_min_and_max_and_a_number_as_both():
    elastic = cfg.from_dict({"cluster": {"num_workers": [2, 6]}}).cluster
    fixed = cfg.from_dict({"cluster": {"num_workers": 3}}).cluster
    assert (elastic.min_workers, elastic.max_workers, elastic.elastic) == (2, 6, True)
    assert (fixed.min_workers, fixed.max_workers, fixed.elastic) == (3, 3, False)
    assert cfg.load(CONFIGS / "local.yaml", ["cluster.num_workers=[1, 2]"]).cluster.num_workers == [1, 2]
    assert cfg.from_dict(cfg.to_dict(cfg.from_dict({"cluster": {"num_workers": [1, 1]}}))).cluster.num_workers == [1, 1]


@pytest.mark.parametrize(
    "value, message",
    [
        ("[8, 4]", "'cluster.num_workers' [min, max] needs min <= max, got [8, 4] (did you mean [4, 8]?)"),
        ("[0, 4]", "'cluster.num_workers' [min, max] needs min >= 1, got [0, 4]"),
        ("[2, 4, 8]", "'cluster.num_workers' must be a number such as 8, or [min, max] such as [4, 8] for an "
                      "elastic run; got a list of 3: [2, 4, 8]"),
        ("[]", "got a list of 0: []"),
        ("[2, four]", "'cluster.num_workers' must be int or a list of int, got [2, 'four']"),
        ("[2, 4.5]", "'cluster.num_workers' must be int or a list of int, got [2, 4.5]"),
        ("2.5", "'cluster.num_workers' must be int or a list of int, got 2.5"),
        ("0", "'cluster.num_workers' must be >= 1, got 0"),
    ],
)  # fmt: skip
def test_a_bad_range_is_one_error_paragraph_and_status_2(tmp_path, capsys, value, message):
    with pytest.raises(ConfigError) as err:
        cfg.load(CONFIGS / "tiny.yaml", [f"cluster.num_workers={value}"])
    assert message in str(err.value)
    argv = ["--config", str(CONFIGS / "tiny.yaml"), "--storage", str(tmp_path / "runs"), "--name", "r"]
    with pytest.raises(SystemExit) as exit_:
        TRAIN([*argv, "--set", f"cluster.num_workers={value}"])
    err_text = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err_text
    paragraph = err_text[err_text.index("error: ") :]
    assert message in paragraph and "\n\n" not in paragraph.strip()
    assert not (tmp_path / "runs").exists()


def test_a_negative_resize_check_is_refused():
    with pytest.raises(ConfigError, match=r"'cluster.resize_check_s' must be >= 0 seconds, got -1.0"):
        cfg.from_dict({"cluster": {"resize_check_s": -1}})


@pytest.mark.parametrize("name", ["8gpu-elastic.yaml", "8gpu-fleet-elastic.yaml"])
def test_the_elastic_8gpu_configs_build_ray_and_lightning_arguments_without_gpus(name):
    config = cfg.load(CONFIGS / name)
    fixed = cfg.load(CONFIGS / name.replace("-elastic", ""))
    scaling = ray_train.scaling_config(config)
    assert scaling.num_workers == (4, 8) and scaling.elasticity_enabled
    assert (scaling.min_workers, scaling.max_workers) == (4, 8)
    assert scaling.elastic_resize_monitor_interval_s == 60
    assert scaling.use_gpu and scaling.resources_per_worker == {"CPU": 4, "GPU": 1}
    assert ray_train.torch_config(config).backend == "nccl"
    assert ray_train.trainer_arguments(config) == ray_train.trainer_arguments(fixed)
    # Everything but the workers (and the run's name) is the fixed config's.
    differs = {
        f"{section}.{key}"
        for section, values in cfg.to_dict(config).items()
        for key, value in values.items()
        if cfg.to_dict(fixed)[section][key] != value
    }
    assert differs == {"cluster.num_workers", "run.name"}
    fixed_scaling = ray_train.scaling_config(fixed)
    assert fixed_scaling.num_workers == 8 and not fixed_scaling.elasticity_enabled


def test_the_resource_check_asks_for_the_minimum_only(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    ray_train.check_resources(cfg.load(CONFIGS / "local.yaml", ["cluster.num_workers=[2, 6]"]))  # 2 x 1 CPU fits
    with pytest.raises(RunError) as err:
        ray_train.check_resources(cfg.load(CONFIGS / "local.yaml", ["cluster.num_workers=[3, 6]"]))
    assert "this machine has 2 CPU(s) and 0 GPU(s) but 3 CPU(s) and 0 GPU(s) are asked for" in str(err.value)
    assert "(config: at least 3 of [3, 6] workers (the elastic minimum) x 1 CPU each)" in str(err.value)
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    with pytest.raises(RunError, match=r"0 GPU\(s\) but 16 CPU\(s\) and 4 GPU\(s\).*at least 4 of \[4, 8\] workers"):
        ray_train.check_resources(cfg.load(CONFIGS / "8gpu-elastic.yaml"))


def test_an_elastic_gpu_config_is_refused_by_the_script_naming_the_missing_gpus(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    csv = tmp_path / "s.csv"
    times = pd.date_range("2024-01-01", periods=400, freq="30min")
    csv.write_text("timestamp,value\n" + "".join(f"{t:%Y-%m-%d %H:%M:%S},{i % 48}\n" for i, t in enumerate(times)))
    with pytest.raises(SystemExit) as exit_:
        TRAIN(["--config", str(CONFIGS / "8gpu-elastic.yaml"), "--data", str(csv), "--storage", str(tmp_path / "st")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "4 GPU(s)" in err and "at least 4 of [4, 8] workers" in err
    assert not [p for p in (tmp_path / "st").rglob("*")]  # the storage folder may exist, nothing in it


def test_a_dataset_with_fewer_shards_than_the_most_workers_is_refused_before_ray_starts(tmp_path, monkeypatch):
    csv = tmp_path / "s.csv"
    times = pd.date_range("2024-01-01", periods=300, freq="30min")
    csv.write_text("timestamp,value\n" + "".join(f"{t:%Y-%m-%d %H:%M:%S},{i % 48}\n" for i, t in enumerate(times)))
    overrides = [f"data.source={csv}", "data.sha256=null", "data.train_end=2024-01-05", "data.val_end=2024-01-06",
                 f"run.storage={tmp_path}", "run.name=r"]  # fmt: skip
    prepared = cfg.load(CONFIGS / "tiny.yaml", overrides)
    run = str(tmp_path / "r")
    assert prep.prepare(prepared, data_dir(run)).num_shards == 2  # tiny.yaml: 2 workers
    elastic = cfg.load(CONFIGS / "tiny.yaml", [*overrides, "cluster.num_workers=[1, 3]"])
    monkeypatch.setattr(ray_train, "init_ray", lambda config: pytest.fail("Ray started"))
    with pytest.raises(RunError) as err:
        ray_train.fit(elastic, run)
    assert str(err.value).startswith(
        f"{data_dir(run)} holds 2 training shard(s), too few for up to 3 worker(s) (cluster.num_workers: [1, 3])"
    )
    assert not ray.is_initialized()
    ray_train.check_shards(elastic, 3, data_dir(run))  # as many shards as the most workers: fine


@pytest.mark.parametrize(
    "num_workers, world, batch",
    [(8, 8, 32), (8, 3, 32), ([4, 8], 8, 32), ([4, 8], 6, 42), ([4, 8], 4, 64), ([4, 8], 1, 256), ([1, 3], 2, 48)],
)
def test_an_elastic_run_keeps_the_global_batch_whatever_the_world_size(num_workers, world, batch):
    config = cfg.from_dict({"train": {"batch_size": 32}, "cluster": {"num_workers": num_workers}})
    assert ray_train.worker_batch_size(config, world) == batch


def test_the_workers_line_says_how_many_were_there_before():
    assert workers_line(3, 4, 5) == "workers: 3 (was 4), resuming at epoch 5"
    assert workers_line(2, None, 2) == "workers: 2, resuming at epoch 2"  # a checkpoint that does not say
    assert workers_line(4, None, None) == "workers: 4, starting at epoch 1"


def test_the_world_size_goes_into_every_checkpoint_and_tensorboard_from_rank_0():
    from types import SimpleNamespace

    from lit_forecast.training.callbacks import WorldSize

    logged = []
    logger = SimpleNamespace(log_metrics=lambda metrics, step: logged.append((metrics, step)))
    checkpoint = {}
    for rank in (0, 1):
        trainer = SimpleNamespace(world_size=3, global_rank=rank, global_step=40, logger=logger)
        WorldSize().on_save_checkpoint(trainer, None, checkpoint)
        WorldSize().on_train_epoch_start(trainer, None)
    assert checkpoint == {"lit_forecast_world_size": 3}
    assert logged == [({"cluster/world_size": 3.0}, 40)]


def test_a_sweep_of_elastic_trials_needs_room_for_each_trials_minimum(tmp_path, monkeypatch):
    from lit_forecast.training import sweep as sweeps
    from lit_forecast.training import tune

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    path = tmp_path / "sweep.yaml"
    path.write_text(f"base: {CONFIGS / 'tiny.yaml'}\nspace:\n  train.lr: {{loguniform: [1.0e-4, 1.0e-2]}}\n")
    sweep = sweeps.load(path)
    base = sweeps.base_config(sweep)
    base["cluster"].update(num_workers=[1, 4], cpus_per_worker=1.0)
    tune.check_resources(sweep, base)  # its driver and 1 worker fit 2 CPUs; it may grow into more
    base["cluster"]["num_workers"] = [2, 4]
    with pytest.raises(RunError, match=r"2 worker\(s\) x 1\)"):
        tune.check_resources(sweep, base)
