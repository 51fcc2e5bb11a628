"""Real sweeps of ``python train.py --tune`` on a tiny synthetic series: ASHA, a kill, a resume,
the table, best.yaml, and trials that fail while the sweep goes on.

Each sweep runs as its own process (its own local Ray) with a timeout: a resource deadlock
between trial drivers and their workers hangs instead of failing.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_ray_train import ROOT, environment, read_scalars, run

from lit_forecast import config as cfg

pytestmark = [pytest.mark.ray]


def tune_command(sweep: str, csv_path: Path, storage: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable, "train.py", "--tune", sweep, "--storage", str(storage), "--name", name,
        "--set", f"data.source={csv_path}", "--set", "data.sha256=null",
        "--set", "data.train_end=2024-02-12", "--set", "data.val_end=2024-02-19", *extra,
    ]  # fmt: skip


def read_trials(folder: Path) -> list[dict]:
    with open(folder / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def trial_folders(folder: Path) -> list[Path]:
    return sorted(p.parent for p in folder.glob("*/config.yaml"))


def interrupt_once_trials_have_started(cmd: list[str], sweep: Path, started: int, sent: int) -> tuple[int, str]:
    """Run the sweep; once ``started`` trials have begun send ``sent`` to its process group. (status, output)"""
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while len(trial_folders(sweep)) < started:
            assert proc.poll() is None, proc.communicate()[0][-4000:]
            assert time.monotonic() < deadline, f"trial {started} never started"
            time.sleep(0.5)
        os.killpg(proc.pid, sent)  # SIGINT as a terminal's Ctrl-C sends it; SIGKILL: the driver and its Ray
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=60)
    return proc.returncode, output


@pytest.mark.timeout(1500)  # configs/tune-tiny.yaml, which CI runs: a few minutes on 2 cores
def test_tiny_sweep_stops_weak_trials_survives_ctrl_c_and_a_kill_and_writes_its_table(taxi_like_csv, tmp_path):
    sweep = tmp_path / "tiny"
    cmd = tune_command("configs/tune-tiny.yaml", taxi_like_csv, tmp_path, "tiny")
    code, output = interrupt_once_trials_have_started(cmd, sweep, 2, signal.SIGINT)
    said = [line for line in output.splitlines() if line.startswith("error: ")]
    assert code == 130 and len(said) == 1, output[-4000:]
    assert re.fullmatch(
        rf"error: sweep {re.escape(str(sweep))} was interrupted \(Ctrl-C\) after [1-4] of 4 trials had started; .*"
        rf"The same command resumes it: python train\.py {re.escape(' '.join(cmd[2:]))}",
        said[0],
    ), said[0]
    assert "Traceback" not in output and not (sweep / "trials.csv").exists()  # no table of a sweep half done

    code, output = interrupt_once_trials_have_started(cmd, sweep, 3, signal.SIGKILL)
    assert "RESUMING sweep" in output and not (sweep / "trials.csv").exists()

    done = run(cmd, timeout=1200)
    assert "RESUMING sweep" in done.stdout + done.stderr

    trials = read_trials(sweep)
    assert len(trials) == 4
    columns = ["trial", "status", "best_val_mae", "epochs", "stopped_early", "train.lr", "model.d_model"]
    assert list(trials[0]) == columns
    assert {t["status"] for t in trials} <= {"finished", "stopped"}
    stopped = [t for t in trials if t["stopped_early"] == "true"]
    assert stopped and all(t["status"] == "stopped" and int(t["epochs"]) < 3 for t in stopped)
    assert all(int(t["epochs"]) == 3 for t in trials if t["status"] == "finished")
    assert all(t["model.d_model"] in ("8", "16") and 1e-4 <= float(t["train.lr"]) <= 1e-2 for t in trials)

    # ASHA's rungs outlived both interruptions: every trial's results are in them.
    rungs = yaml.safe_load((sweep / "asha.yaml").read_text())
    assert {trial for rung in rungs[0] for trial in rung} == {t["trial"] for t in trials}

    # Every trial is a normal run folder named after its trial id, with its TensorBoard events,
    # whose val/mae per epoch is what the table holds.
    assert [p.name for p in trial_folders(sweep)] == [t["trial"] for t in trials]
    for t in trials:
        scalars = read_scalars(sweep / t["trial"] / "tensorboard")
        maes = [v for _, v in scalars["val/mae"]]
        assert len(maes) >= int(t["epochs"])  # a resumed trial may have logged an epoch twice
        assert float(t["best_val_mae"]) == pytest.approx(min(maes), rel=1e-5)

    best = min(trials, key=lambda t: float(t["best_val_mae"]))
    config = cfg.load(sweep / "best.yaml")
    assert config.train.lr == pytest.approx(float(best["train.lr"]))
    assert config.model.d_model == int(best["model.d_model"])
    assert (config.run.name, config.train.max_epochs, config.cluster.num_workers) == ("tiny-best", 3, 1)
    assert f"python train.py --config {sweep}/best.yaml" in done.stdout

    again = run(cmd, timeout=300)  # a finished sweep: nothing trains again, the same table
    assert read_trials(sweep) == trials and "epoch 1/3" not in again.stdout + again.stderr


@pytest.mark.slow  # a minute or two on 2 cores: run with -m "slow or not slow"
@pytest.mark.timeout(600)
def test_failing_trials_are_recorded_and_the_sweep_goes_on(taxi_like_csv, tmp_path):
    # Each value fits the base config alone (tiny: d_model 16, nhead 2); together they do not
    # (12 is not divisible by 8), so every trial fails inside its driver, one after the other.
    sweep_file = tmp_path / "broken.yaml"
    sweep_file.write_text(
        f"base: {ROOT / 'configs' / 'tiny.yaml'}\n"
        "overrides: {cluster.num_workers: 1, cluster.cpus_per_worker: 1}\n"
        "space: {model.d_model: [12], model.nhead: [8]}\n"
        "budget: {trials: 2, max_epochs: 2}\n"
    )
    cmd = tune_command(str(sweep_file), taxi_like_csv, tmp_path, "broken")
    done = subprocess.run(cmd, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=560)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert "error: every trial of the sweep failed" in done.stderr
    trials = read_trials(tmp_path / "broken")
    assert [t["status"] for t in trials] == ["failed", "failed"]
    assert all(t["best_val_mae"] == "" and t["epochs"] == "0" for t in trials)
    assert "must be divisible" in done.stdout
    assert not (tmp_path / "broken" / "best.yaml").exists()
