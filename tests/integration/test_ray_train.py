"""Real Ray Train runs of train.py on a tiny synthetic series: end to end, and real faults.

Each test starts ``python train.py`` as its own process (its own local Ray), so a hang or a
crash stays inside the test, and each carries a timeout: a Ray resource deadlock waits
forever instead of failing.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.ray]


def command(csv: Path, storage: Path, name: str, epochs: int, *extra: str) -> list[str]:
    return [
        sys.executable, "train.py", "--config", "configs/tiny.yaml", "--data", str(csv),
        "--storage", str(storage), "--name", name,
        "--set", "data.train_end=2024-02-12", "--set", "data.val_end=2024-02-19",
        "--set", f"train.max_epochs={epochs}", *extra,
    ]  # fmt: skip


def environment() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def epoch_lines(output: str) -> list[tuple[int, int]]:
    """(epoch, max_epochs) of every per-epoch console line, in order."""
    return [(int(a), int(b)) for a, b in re.findall(r"\bepoch (\d+)/(\d+)  train/", output)]


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("checkpoint_*/checkpoint.ckpt"))


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout: float) -> None:
    """Until Ray has registered a checkpoint (its snapshot file lists one)."""
    deadline = time.monotonic() + timeout
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    while not (checkpoints(run_dir) and snapshot.is_file() and "checkpoint_" in snapshot.read_text()):
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.1)


def training_workers(pid: int) -> list[psutil.Process]:
    """Ray Train worker processes below ``pid``."""
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if " ".join(child.cmdline()).startswith("ray::RayTrainWorker"):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list] = {}
    for events in sorted(folder.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return scalars


@pytest.mark.timeout(240)
def test_two_worker_training_end_to_end(taxi_like_csv, tmp_path):
    # Two ensemble members, as the local default: DDP and checkpoints carry both networks.
    done = run(command(taxi_like_csv, tmp_path, "e2e", 3, "--set", "model.members=2"), timeout=220)
    run_dir = tmp_path / "e2e"
    assert epoch_lines(done.stderr + done.stdout) == [(1, 3), (2, 3), (3, 3)]
    assert "Failed to query Ray Train Controller" not in done.stderr + done.stdout

    assert (run_dir / "config.yaml").is_file() and (run_dir / "data" / "manifest.json").is_file()
    # num_to_keep=2 best by val/mae, and Ray keeps the latest too when it is not among them
    assert 2 <= len(checkpoints(run_dir)) <= 3
    latest = torch.load(checkpoints(run_dir)[-1], map_location="cpu", weights_only=True)
    assert latest["epoch"] == 2 and latest["hyper_parameters"]["window"]["horizon"] == 4
    # Every rank walked its whole shard once per epoch, no more, no less (no second split
    # by a DistributedSampler): steps = epochs x ceil(windows per shard / batch size).
    manifest = json.loads((run_dir / "data" / "manifest.json").read_text())
    assert latest["global_step"] == 3 * math.ceil(manifest["shard_windows"][0] / 16)
    assert latest["lit_forecast_config"]["run"]["name"] == "e2e"
    assert set(latest["hyper_parameters"]["series"]) == {"0"}
    assert {key.split(".")[2] for key in latest["state_dict"] if key.startswith("model.nets.")} == {"0", "1"}

    summary = json.loads((run_dir / "summary.json").read_text())
    scalars = read_scalars(run_dir / "tensorboard")
    assert summary["best_metrics"]["val/mae"] == pytest.approx(min(v for _, v in scalars["val/mae"]), rel=1e-5)
    # Paths inside the run folder are relative to it: a copied run reads its own checkpoints.
    assert summary["tensorboard"] == "tensorboard" and "run_dir" not in summary
    assert re.fullmatch(r"checkpoint_[^/]+/checkpoint.ckpt", summary["best_checkpoint"])
    assert re.fullmatch(r"checkpoint_[^/]+/checkpoint.ckpt", summary["latest_checkpoint"])
    best = torch.load(run_dir / summary["best_checkpoint"], map_location="cpu", weights_only=True)
    # The summary counts epochs from 1, as the console's epoch lines do; Lightning's checkpoint from 0.
    assert summary["best_epoch"] == best["epoch"] + 1 and "epoch" not in summary["best_metrics"]

    for tag in (
        "train/loss_epoch",
        "val/loss",
        "val/mae",
        "val/rmse",
        "val/mape",
        "val/smape",
        "train/lr",
        "train/windows_per_s",
        "train/epoch_time_s",
    ):
        assert tag in scalars, f"{tag} missing from TensorBoard: {sorted(scalars)}"
    assert len(scalars["val/mae"]) == 3 and all(v > 0 for _, v in scalars["val/mae"])

    assert not (run_dir / "run.lock").exists()  # released at exit
    again = run(
        command(taxi_like_csv, tmp_path, "e2e", 3, "--set", "model.members=2"), timeout=60
    )  # finished: nothing to do
    assert "already finished" in again.stderr and not epoch_lines(again.stderr + again.stdout)
    assert f"best         {run_dir}/checkpoint_" in again.stdout  # resolved against the run folder for the user


@pytest.mark.timeout(300)
def test_killed_worker_is_restarted_and_resumes_from_the_last_checkpoint(taxi_like_csv, tmp_path):
    epochs = 8
    run_dir = tmp_path / "kill_worker"
    proc = subprocess.Popen(
        command(taxi_like_csv, tmp_path, "kill_worker", epochs, "--set", "cluster.max_failures=2"),
        cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for_checkpoint(run_dir, proc, timeout=180)
        workers = training_workers(proc.pid)
        assert len(workers) == 2, workers
        workers[-1].send_signal(signal.SIGKILL)
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-5000:]

    resumed = re.search(r"RESUMED from checkpoint \S+ \(epoch (\d+)/(\d+) done\); continuing with epoch (\d+)", output)
    assert resumed, output[-5000:]
    done_epochs, continuing = int(resumed.group(1)), int(resumed.group(3))
    assert done_epochs >= 1 and continuing == done_epochs + 1
    after = epoch_lines(output[resumed.end() :])
    assert after[0] == (continuing, epochs), "the resumed attempt did not start after the checkpointed epoch"
    assert after[-1] == (epochs, epochs)
    final = torch.load(checkpoints(run_dir)[-1], map_location="cpu", weights_only=True)
    assert final["epoch"] == epochs - 1
    assert (run_dir / "summary.json").is_file()


@pytest.mark.timeout(360)
def test_killed_driver_reruns_from_the_last_checkpoint(taxi_like_csv, tmp_path):
    epochs = 6
    run_dir = tmp_path / "kill_driver"
    cmd = command(taxi_like_csv, tmp_path, "kill_driver", epochs)
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
        wait_for_checkpoint(run_dir, proc, timeout=180)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.communicate(timeout=30)
    assert not (run_dir / "summary.json").exists()

    assert (run_dir / "run.lock").exists()  # SIGKILL left the lock; its pid is gone, so it is stale
    refused = subprocess.run(
        cmd[:-1] + ["train.max_epochs=7"], cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=60
    )
    assert refused.returncode == 2 and "exists with a different config" in refused.stderr
    assert "train.max_epochs: 6 -> 7" in refused.stderr
    assert "taking over a stale lock" in refused.stderr and not (run_dir / "run.lock").exists()

    done = run(cmd, timeout=240)
    output = done.stderr + done.stdout
    assert "RESUMING run" in output
    resumed = re.search(r"RESUMED from checkpoint \S+ \(epoch (\d+)/(\d+) done\)", output)
    assert resumed and int(resumed.group(1)) >= 1
    lines = epoch_lines(output)
    assert lines[0] == (int(resumed.group(1)) + 1, epochs) and lines[-1] == (epochs, epochs)
    assert (run_dir / "summary.json").is_file()
