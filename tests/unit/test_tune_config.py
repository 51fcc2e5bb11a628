"""The sweep file of ``train.py --tune`` (lit_forecast/training/sweep.py): defaults, checks, the table.

No Ray: every mistake is refused before a cluster starts, through the real script where it
reaches the user (``refused``), and the table and best.yaml are built from hand-made trials.
"""

from __future__ import annotations

import csv
import io
import pickle
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from test_user_mistakes import refused

from lit_forecast import config as cfg
from lit_forecast.errors import ConfigError
from lit_forecast.training import sweep as sweeps
from lit_forecast.training.sweep import Trial

ROOT = cfg.DEFAULT_CONFIG.parent.parent
TRAIN = runpy.run_path(str(ROOT / "train.py"))["main"]


def write(folder: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


TINY_SWEEP = f"""
base: {ROOT / "configs" / "tiny.yaml"}
space:
  train.lr: {{loguniform: [1.0e-4, 1.0e-2]}}
"""


def test_shipped_sweep_files_load_with_their_defaults():
    tiny = sweeps.load(ROOT / "configs" / "tune-tiny.yaml")
    assert Path(tiny.base) == ROOT / "configs" / "tiny.yaml"  # relative to the sweep file, not the cwd
    assert (tiny.budget.trials, tiny.budget.max_epochs, tiny.budget.concurrent) == (4, 3, 1)
    assert [d.key for d in sweeps.dimensions(tiny)] == ["train.lr", "model.d_model"]
    base = sweeps.base_config(tiny)
    assert base["train"]["max_epochs"] == 3 and base["cluster"]["num_workers"] == 1
    local = sweeps.load(ROOT / "configs" / "tune.yaml")
    assert (local.budget.trials, local.budget.grace_epochs, local.run.name) == (16, 1, "tune")


def test_a_minimal_sweep_takes_every_default(tmp_path):
    sweep = sweeps.load(write(tmp_path, TINY_SWEEP))
    assert sweep.budget == sweeps.Budget()
    assert (sweep.run.storage, sweep.run.name) == ("runs", "tune")
    assert sweeps.base_config(sweep)["train"]["max_epochs"] == 2  # tiny.yaml's: budget.max_epochs unset


def test_set_changes_the_sweep_or_the_trials_config(tmp_path):
    path = write(tmp_path, TINY_SWEEP)
    sweep = sweeps.load(path, ["budget.trials=3", "train.seed=9", "space.model.d_model=[8, 16]", "run.name=other"])
    assert sweep.budget.trials == 3 and sweep.run.name == "other"
    assert sweep.overrides == {"train.seed": 9}
    assert sweeps.base_config(sweep)["train"]["seed"] == 9
    assert {d.key: d.values for d in sweeps.dimensions(sweep)} == {"train.lr": (1e-4, 1e-2), "model.d_model": (8, 16)}
    # Values that only fit together (each date alone is out of order with tiny.yaml's other one)
    moved = sweeps.load(path, ["data.train_end=2024-02-12", "data.val_end=2024-02-19"])
    assert sweeps.base_config(moved)["data"]["train_end"] == "2024-02-12"


def test_each_distribution_is_read(tmp_path):
    sweep = sweeps.load(
        write(
            tmp_path,
            TINY_SWEEP
            + """\
  model.dropout: {uniform: [0.0, 0.3]}
  model.encoder_layers: {int: [1, 3]}
  model.d_model: [8, 16]
""",
        )
    )
    found = {d.key: (d.kind, d.values) for d in sweeps.dimensions(sweep)}
    assert found == {
        "train.lr": ("loguniform", (1e-4, 1e-2)),
        "model.dropout": ("uniform", (0.0, 0.3)),
        "model.encoder_layers": ("int", (1, 3)),
        "model.d_model": ("choice", (8, 16)),
    }


@pytest.mark.parametrize(
    ("space", "named"),
    [
        ("model.d_modle: {choice: [8, 16]}", ["space.model.d_modle", "did you mean 'model.d_model'"]),
        ("train.lr: {logunifrom: [1.0e-4, 1.0e-2]}", ["space.train.lr", "did you mean 'loguniform'"]),
        ("train.lr: {loguniform: [1.0e-2, 1.0e-4]}", ["space.train.lr", "reversed"]),
        ("train.lr: {loguniform: [0.001, 0.001]}", ["space.train.lr", "empty"]),
        ("model.d_model: {choice: []}", ["space.model.d_model", "non-empty"]),
        ("model.dropout: {uniform: [0.0, 1.5]}", ["space.model.dropout", "model.dropout", "[0, 1)"]),
        ("model.d_model: {uniform: [8, 32]}", ["space.model.d_model", "must be int"]),
        ("model.encoder_layers: {int: [0, 2]}", ["space.model.encoder_layers", ">= 1"]),
        ("train.max_epochs: {int: [1, 5]}", ["space.train.max_epochs", "budget.max_epochs"]),
        ("train.lr: {loguniform: [0.0, 1.0e-2]}", ["space.train.lr", "positive"]),
        ("model: {choice: [1, 2]}", ["space.model", "section"]),
    ],
)
def test_a_bad_search_space_is_one_error_naming_the_key(tmp_path, capsys, space, named):
    path = write(tmp_path, f"base: {ROOT / 'configs' / 'tiny.yaml'}\nspace:\n  {space}\n")
    refused(TRAIN, ["--tune", str(path), "--storage", str(tmp_path / "runs")], capsys, str(path), *named)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--set", "budget.trials=0"], ["budget.trials", ">= 1"]),
        (["--set", "budget.max_epochs=0"], ["budget.max_epochs"]),
        (["--set", "budget.concurrent=0"], ["budget.concurrent"]),
        (["--set", "budget.grace_epochs=5"], ["budget.grace_epochs", "must not exceed"]),
        (["--set", "budget.reduction_factor=1"], ["budget.reduction_factor"]),
        (["--set", "budget.trails=4"], ["budget.trails", "did you mean 'budget.trials'"]),
        (["--set", "bugdet.trials=4"], ["bugdet", "did you mean 'budget'"]),
        (["--set", "train.lrr=0.1"], ["overrides.train.lrr", "did you mean 'train.lr'"]),
        (["--set", "space={}"], ["'space' is empty"]),
        (["--set", "budget.concurrent=2"], ["budget.concurrent", "CPU"]),
        (["--name", "../up"], ["run name"]),
        (["--config", "configs/tiny.yaml"], ["--config", "--tune"]),
    ],
)
def test_a_bad_budget_or_flag_is_one_error(tmp_path, capsys, monkeypatch, extra, named):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)  # the resource check: two concurrent tiny trials need 6 CPUs
    path = write(tmp_path, TINY_SWEEP)
    refused(TRAIN, ["--tune", str(path), "--storage", str(tmp_path / "runs"), *extra], capsys, *named)
    assert not (tmp_path / "runs").exists()


def test_a_missing_sweep_file_or_base_is_refused(tmp_path, capsys):
    refused(TRAIN, ["--tune", str(tmp_path / "nope.yaml")], capsys, "sweep file not found", "nope.yaml")
    path = write(tmp_path, "base: missing.yaml\nspace: {train.lr: [0.001, 0.002]}\n")
    refused(TRAIN, ["--tune", str(path)], capsys, "'base'", "missing.yaml")


def test_trial_config_sets_the_values_and_names_the_run(tmp_path):
    sweep = sweeps.load(write(tmp_path, TINY_SWEEP))
    values = {"train.lr": 0.004, "model.d_model": 8}
    config = sweeps.trial_config(sweeps.base_config(sweep), values, "/sweeps/s", "abc_00001")
    assert (config.train.lr, config.model.d_model) == (0.004, 8)
    assert (config.run.storage, config.run.name) == ("/sweeps/s", "abc_00001")
    with pytest.raises(ConfigError, match="model.d_model.*must be divisible"):  # a combination no single bound shows
        sweeps.trial_config(sweeps.base_config(sweep), {"model.d_model": 7}, "/sweeps/s", "abc_00002")


def test_status_and_the_best_trial():
    assert sweeps.trial_status(False, 3, 3) == "finished"
    assert sweeps.trial_status(False, 1, 3) == "stopped"
    assert sweeps.trial_status(True, 2, 3) == "failed"
    trials = [
        Trial("a_00000", "finished", 900.0, 3, {"train.lr": 0.001}),
        Trial("a_00001", "stopped", 1200.0, 1, {"train.lr": 0.0001}),
        Trial("a_00002", "failed", 800.0, 1, {"train.lr": 0.01}, "RunError: training diverged"),
        Trial("a_00003", "failed", None, 0, {"train.lr": 0.02}),
    ]
    assert sweeps.best(trials).trial == "a_00000"  # a failed trial never wins, however low its last score
    assert sweeps.best(trials[2:]) is None
    assert [t.stopped_early for t in trials] == [False, True, False, False]


def test_trials_csv_and_the_printed_table():
    trials = [
        Trial("a_00000", "finished", 900.25, 3, {"train.lr": 0.001, "model.d_model": 16}),
        Trial("a_00001", "stopped", 1200.5, 1, {"train.lr": 0.0001, "model.d_model": 8}),
        Trial("a_00002", "failed", None, 0, {"train.lr": 0.01, "model.d_model": 8}, "RunError: training diverged"),
    ]
    keys = ["train.lr", "model.d_model"]
    rows = list(csv.DictReader(io.StringIO(sweeps.trials_csv(trials, keys))))
    assert list(rows[0]) == ["trial", "status", "best_val_mae", "epochs", "stopped_early", "train.lr", "model.d_model"]
    assert [(r["trial"], r["status"], r["best_val_mae"], r["epochs"], r["stopped_early"]) for r in rows] == [
        ("a_00000", "finished", "900.25", "3", "false"),
        ("a_00001", "stopped", "1200.5", "1", "true"),
        ("a_00002", "failed", "", "0", "false"),
    ]
    assert [(r["train.lr"], r["model.d_model"]) for r in rows] == [("0.001", "16"), ("0.0001", "8"), ("0.01", "8")]
    lines = sweeps.format_trials(trials, keys).splitlines()
    assert lines[1].startswith("*") and "a_00000" in lines[1] and "900.2" in lines[1]
    assert not lines[2].startswith("*") and "stopped" in lines[2]
    assert lines[-1] == "a_00002 failed: RunError: training diverged"


def test_best_yaml_is_a_config_that_training_loads(tmp_path):
    sweep = sweeps.load(write(tmp_path, TINY_SWEEP))
    base = sweeps.base_config(sweep)
    text = sweeps.best_config(base, Trial("a_00001", "finished", 812.5, 2, {"train.lr": 0.0042}), "tune-best")
    assert text.startswith("# the best trial (a_00001) of a sweep, val/mae 812.5\n")
    path = write(tmp_path, text, "best.yaml")
    config = cfg.load(path)
    assert config.train.lr == 0.0042 and config.run.name == "tune-best" and config.run.storage == base["run"]["storage"]
    assert cfg.to_dict(config)["model"] == base["model"] and config.train.max_epochs == base["train"]["max_epochs"]


def test_a_rerun_must_be_the_same_sweep(tmp_path):
    path = write(tmp_path, TINY_SWEEP)
    sweep = sweeps.load(path)
    first = sweeps.record(sweep, sweeps.base_config(sweep))
    assert sweeps.changes_since(yaml.safe_load(yaml.safe_dump(first)), first) == []  # survives the file
    moved = sweeps.load(path, ["run.storage=elsewhere"])
    assert sweeps.changes_since(first, sweeps.record(moved, sweeps.base_config(moved))) == []  # the sweep can move
    other = sweeps.load(path, ["budget.trials=5", "train.seed=1"])
    assert sweeps.changes_since(first, sweeps.record(other, sweeps.base_config(other))) == [
        "base.train.seed: 42 -> 1",
        "sweep.budget.trials: 16 -> 5",
        "sweep.overrides.train.seed: None -> 1",
    ]


def test_a_sweep_recorded_before_a_config_key_existed_resumes_while_the_key_keeps_its_default(tmp_path):
    path = write(tmp_path, TINY_SWEEP)
    sweep = sweeps.load(path)
    now = sweeps.record(sweep, sweeps.base_config(sweep))
    older = yaml.safe_load(yaml.safe_dump(now))
    del older["base"]["train"]["ema_decay"], older["sweep"]["budget"]["grace_epochs"]  # keys added since
    assert sweeps.changes_since(older, now) == []
    changed = sweeps.load(path, ["train.ema_decay=0.99"])
    assert sweeps.changes_since(older, sweeps.record(changed, sweeps.base_config(changed))) == [
        "base.train.ema_decay: 0.0 -> 0.99",
        "sweep.overrides.train.ema_decay: None -> 0.99",
    ]


def test_each_dimension_becomes_its_tune_sampler():
    from lit_forecast.training.tune import distribution

    choice = distribution(sweeps.Dimension("model.d_model", "choice", (8, 16)))
    assert choice.categories == [8, 16]
    ints = distribution(sweeps.Dimension("model.encoder_layers", "int", (1, 3)))
    assert (ints.lower, ints.upper) == (1, 4)  # Tune's upper bound is exclusive; ours is included
    logs = distribution(sweeps.Dimension("train.lr", "loguniform", (1e-4, 1e-2)))
    assert (logs.lower, logs.upper) == (1e-4, 1e-2) and type(logs.get_sampler()).__name__ == "_LogUniform"
    flat = distribution(sweeps.Dimension("model.dropout", "uniform", (0.0, 0.3)))
    assert (flat.lower, flat.upper) == (0.0, 0.3) and type(flat.get_sampler()).__name__ == "_Uniform"


def test_asha_keeps_its_rungs_across_a_resumed_sweep(tmp_path):
    """Tune restores the scheduler from its pickle, with the rungs it had when the sweep began: none."""
    from lit_forecast.training.tune import ResumableASHA

    def asha():
        scheduler = ResumableASHA(
            str(tmp_path / "asha.yaml"), time_attr="epochs", max_t=3, grace_period=1, stop_last_trials=False
        )
        scheduler.set_search_properties("val/mae", "min")
        return scheduler

    pickled = pickle.dumps(asha())  # as Tune keeps it for a resume
    first, strong, weak = asha(), SimpleNamespace(trial_id="a"), SimpleNamespace(trial_id="b")
    first.on_trial_add(None, strong)
    assert [first.on_trial_result(None, strong, {"epochs": e, "val/mae": v}) for e, v in [(1, 800.0), (2, 477.0)]] == [
        "CONTINUE",
        "CONTINUE",
    ]
    resumed = pickle.loads(pickled)
    resumed.on_trial_add(None, weak)
    assert resumed.on_trial_result(None, weak, {"epochs": 1, "val/mae": 3000.0}) == "STOP"  # against a's 800
