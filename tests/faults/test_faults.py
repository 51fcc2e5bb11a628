"""Fault injection into real local Ray runs of train.py on the tiny config.

Each test injects one class of fault and checks the outcome: survived (the run finishes with
every epoch, resuming from its last checkpoint), or refused cleanly (exit status 2, a message
that says what happened and how to resume, no traceback). Each writes one row of results to
``$LIT_FORECAST_FAULTS`` (JSON lines) when that is set: ``bench/faults.py`` runs this file and
prints the table in the README.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from tests.integration.test_ray_train import ROOT, checkpoints, command, environment, epoch_lines, training_workers

pytestmark = [pytest.mark.ray]
RESUMED = re.compile(r"RESUMED from checkpoint (\S+) \(epoch (\d+)/(\d+) done\)")


def record(fault: str, injected: int, survived: int, epochs_lost: int, wrong: int, note: str = "") -> None:
    """One row of the fault table, for bench/faults.py."""
    target = os.environ.get("LIT_FORECAST_FAULTS")
    if target:
        with open(target, "a") as out:
            out.write(
                json.dumps(
                    {
                        "fault": fault,
                        "injected": injected,
                        "survived": survived,
                        "epochs_lost": epochs_lost,
                        "wrong_results": wrong,
                        "note": note,
                    }
                )
                + "\n"
            )


class Training:
    """train.py in the background, its output read line by line as it comes."""

    def __init__(self, cmd: list[str]):
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> int:
        """Index of the first output line at or after ``after`` matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in range(after, len(self.lines)):
                if re.search(pattern, self.lines[i]):
                    return i
            assert self.proc.poll() is None or len(self.lines) > after, f"train.py ended early:\n{self.output[-4000:]}"
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.output[-4000:]}")

    def finish(self, timeout: float) -> int:
        try:
            self.proc.wait(timeout=timeout)
        finally:
            self.kill()
        self.reader.join(timeout=10)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the driver and everything below it (Ray's processes may leave its process group)."""
        if self.proc.poll() is not None:
            return
        try:
            below = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            below = []
        os.killpg(self.proc.pid, signal.SIGKILL)
        for child in below:
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(below, timeout=30)
        self.proc.wait(timeout=30)


def kill_a_worker(training: Training) -> None:
    deadline = time.monotonic() + 60
    while not (workers := training_workers(training.proc.pid)):
        assert time.monotonic() < deadline, "no Ray Train worker to kill"
        time.sleep(0.1)
    random.choice(workers).send_signal(signal.SIGKILL)


def no_driver_traceback(output: str) -> bool:
    """True if no traceback went through train.py (Ray's own threads and workers may still print theirs)."""
    return f'File "{ROOT / "train.py"}"' not in output


@pytest.fixture
def small_storage(tmp_path):
    """A 20 MB tmpfs on a fresh folder (to fill, or remount read-only); skips where mounting is not allowed."""
    folder = tmp_path / "small_storage"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command on this machine")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)  # busy: detach it anyway


def lost_epochs(output: str) -> list[int]:
    """For each resume: epochs finished before it that the resumed attempt had to train again."""
    lost, done_before = [], 0
    for chunk in re.split(r"(?=RESUMED from checkpoint)", output):
        resumed = RESUMED.search(chunk)
        if resumed:
            lost.append(max(0, done_before - int(resumed.group(2))))
        finished = [e for e, _ in epoch_lines(chunk)]
        done_before = max([done_before, *finished]) if finished else done_before
    return lost


@pytest.mark.slow  # about 3-4 minutes: bench/faults.py runs it
@pytest.mark.timeout(600)
def test_three_worker_kills_one_during_a_checkpoint_are_survived(taxi_like_csv, tmp_path):
    epochs = 8
    rng = random.Random(0)
    training = Training(command(taxi_like_csv, tmp_path, "kills", epochs, "--set", "cluster.max_failures=3"))
    try:
        run_dir = tmp_path / "kills"
        # 1: the moment the second checkpoint folder appears, while it is being written (the
        # first is registered by then, so the restart has something to resume from).
        deadline = time.monotonic() + 240
        while len([p for p in run_dir.glob("checkpoint_*") if p.is_dir()]) < 2:
            assert time.monotonic() < deadline and training.proc.poll() is None, training.output[-4000:]
            time.sleep(0.02)
        kill_a_worker(training)
        # 2 and 3: at random moments of the resumed attempts.
        after = 0
        for _ in range(2):
            after = training.wait_for("RESUMED from checkpoint", 240, after) + 1
            time.sleep(rng.uniform(0.5, 4.0))
            kill_a_worker(training)
        code = training.finish(480)
    finally:
        training.kill()
    output = training.output
    assert code == 0, output[-5000:]
    resumes = RESUMED.findall(output)
    assert len(resumes) == 3, output[-5000:]
    final = torch.load(checkpoints(run_dir)[-1], map_location="cpu", weights_only=True)
    lost = lost_epochs(output)
    wrong = int(final["epoch"] != epochs - 1 or not (run_dir / "summary.json").is_file())
    record(
        "worker SIGKILL (one while a checkpoint is written)",
        3,
        3 if code == 0 else 0,
        sum(lost),
        wrong,
        "each restart lost at most the epoch in progress (or whose checkpoint was being written)",
    )
    assert final["epoch"] == epochs - 1 and (run_dir / "summary.json").is_file()
    assert all(n <= 1 for n in lost), lost  # never more than the epoch in progress


@pytest.mark.timeout(300)
def test_one_failure_more_than_allowed_stops_with_how_to_resume(taxi_like_csv, tmp_path):
    training = Training(command(taxi_like_csv, tmp_path, "too_many", 8, "--set", "cluster.max_failures=1"))
    try:
        training.wait_for(r"epoch 2/8", 180)  # epoch 1's checkpoint is registered by now
        kill_a_worker(training)
        after = training.wait_for("RESUMED from checkpoint", 180) + 1
        training.wait_for(r"epoch \d/8", 120, after)
        kill_a_worker(training)
        code = training.finish(180)
    finally:
        training.kill()
    output = training.output
    assert code == 2, output[-5000:]
    assert (
        "Ray Train gave up after cluster.max_failures=1" in output and "run the same command again to resume" in output
    )
    assert any(line.startswith("error: training failed") for line in output.splitlines())  # our message, exit status 2
    record("one worker SIGKILL more than max_failures", 2, 1, 0, 0, "refused: exit 2 with how to resume")


@pytest.mark.timeout(300)
def test_a_nan_loss_stops_the_run_within_its_epoch_and_checkpoints_no_nans(taxi_like_csv, tmp_path):
    done = subprocess.run(
        command(taxi_like_csv, tmp_path, "nan", 3, "--set", "train.lr=1e6"),
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(
        r"error: training diverged: the loss became NaN or infinite in epoch 1 \(first at step \d+\)", done.stderr
    )
    assert any(line.startswith("error: training diverged") for line in done.stderr.splitlines())
    saved = checkpoints(tmp_path / "nan")
    assert saved == []  # the diverged epoch was not checkpointed
    record("loss becomes NaN (lr 1e6)", 1, 1, 0, 0, "refused in epoch 1, no checkpoint of NaN weights")


@pytest.mark.slow  # 1-2 minutes; a killed driver is in the default suite (test_ray_train): bench/faults.py runs it
@pytest.mark.timeout(420)
def test_driver_killed_while_a_checkpoint_is_written_then_a_corrupt_latest_is_skipped(taxi_like_csv, tmp_path):
    cmd = command(taxi_like_csv, tmp_path, "driver", 6)
    run_dir = tmp_path / "driver"
    training = Training(cmd)
    try:
        training.wait_for(r"epoch 2/6", 180)
        deadline = time.monotonic() + 120
        while (
            len([p for p in run_dir.glob("checkpoint_*") if p.is_dir()]) < 3
        ):  # the third checkpoint folder has just appeared
            assert time.monotonic() < deadline and training.proc.poll() is None, training.output[-4000:]
            time.sleep(0.01)
    finally:
        training.kill()  # the driver and the local Ray it started
    folders = sorted(run_dir.glob("checkpoint_*"))
    finished = max(e for e, _ in epoch_lines(training.output))
    # Corrupt what the run registered last, so the resume must fall back to the one before it.
    snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    registered = sorted({Path(p).name for p in re.findall(r"checkpoint_[0-9_.-]+", json.dumps(snapshot))})
    latest = registered[-1]
    blob = (run_dir / latest / "checkpoint.ckpt").read_bytes()
    (run_dir / latest / "checkpoint.ckpt").write_bytes(blob[: len(blob) // 3])

    again = Training(cmd)
    code = again.finish(300)
    output = again.output
    assert code == 0, output[-5000:]
    said = [line for line in output.splitlines() if "RESUM" in line or "cannot be read" in line or "lock" in line]
    assert f"{latest}/checkpoint.ckpt cannot be read" in output, (latest, registered, [f.name for f in folders], said)
    resumed = RESUMED.search(output)
    assert resumed and Path(resumed.group(1)).name == registered[-2], (
        resumed and resumed.group(1),
        registered,
        [f.name for f in folders],
    )
    assert (run_dir / "summary.json").is_file()
    final = torch.load(checkpoints(run_dir)[-1], map_location="cpu", weights_only=True)
    assert final["epoch"] == 5
    # The corrupted checkpoint costs its own epoch; nothing beyond the last readable checkpoint is lost.
    lost = finished - int(resumed.group(2))
    record(
        "driver SIGKILL while a checkpoint is written; latest checkpoint then truncated",
        2,
        2,
        lost - 1,
        0,
        "resumed from the last readable checkpoint, never the partial folder",
    )


@pytest.mark.slow  # 1.5-3.5 minutes each: bench/faults.py runs them
@pytest.mark.timeout(300)
@pytest.mark.parametrize("fault", ["full", "read-only"])
def test_storage_full_or_read_only_mid_run_stops_cleanly_and_the_same_command_resumes(
    taxi_like_csv, small_storage, fault
):
    epochs, run_dir = 6, small_storage / "store"
    cmd = command(taxi_like_csv, small_storage, "store", epochs)
    training = Training(cmd)
    try:
        training.wait_for(rf"epoch 2/{epochs}", 180)  # epoch 1's checkpoint is registered by now
        if fault == "full":  # dd writes until the folder is full (ENOSPC)
            subprocess.run(
                ["dd", "if=/dev/zero", f"of={small_storage / 'filler'}", "bs=1M"], capture_output=True, timeout=60
            )
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(small_storage)], check=True, timeout=30)
        code = training.finish(180)
    finally:
        training.kill()
    output = training.output
    finished = max(e for e, _ in epoch_lines(output))
    state, words = (
        ("is full", "No space left on device") if fault == "full" else ("has become read-only", "Read-only file system")
    )
    said = re.compile(
        rf"error: cannot write to the storage of {re.escape(str(run_dir))}: it {state} \({words}[^)]*\)\. "
        r"Free space there \(or restore write access\), then run the same command again: training resumes "
        r"from the last complete checkpoint"
    )
    assert code == 2, output[-5000:]
    assert [line for line in output.splitlines() if line.startswith("error: ")] and said.search(output), output[-5000:]
    assert no_driver_traceback(output), output[-5000:]

    # The same command while the folder still takes no bytes: refused at once, the same way.
    again = subprocess.run(cmd, cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and said.search(again.stderr) and no_driver_traceback(again.stderr), again.stderr[
        -3000:
    ]

    if fault == "full":
        (small_storage / "filler").unlink()
    else:
        subprocess.run(["mount", "-o", "remount,rw", str(small_storage)], check=True, timeout=30)
    resumed_run = Training(cmd)
    code = resumed_run.finish(240)
    output = resumed_run.output
    assert code == 0, output[-5000:]
    resumed = RESUMED.search(output)
    assert resumed and int(resumed.group(2)) >= 1, output[-5000:]
    final = torch.load(checkpoints(run_dir)[-1], map_location="cpu", weights_only=True)
    wrong = int(final["epoch"] != epochs - 1 or not (run_dir / "summary.json").is_file())
    record(
        f"storage folder {'full (tmpfs filled by dd)' if fault == 'full' else 'remounted read-only'} "
        "mid-run, then back",
        1,
        1,
        max(0, finished - int(resumed.group(2))),
        wrong,
        "refused: exit 2 naming the folder; the same command resumed once it took writes again",
    )
    assert not wrong, (final["epoch"], sorted(p.name for p in run_dir.iterdir()))


@pytest.mark.timeout(360)
def test_a_killed_raylet_stops_the_driver_with_how_to_resume(taxi_like_csv, tmp_path):
    epochs, run_dir = 20, tmp_path / "raylet"
    cmd = command(taxi_like_csv, tmp_path, "raylet", epochs)
    training = Training(cmd)
    cluster: list[psutil.Process] = []
    try:
        training.wait_for(rf"epoch 2/{epochs}", 180)
        cluster = psutil.Process(training.proc.pid).children(recursive=True)
        raylets = [p for p in cluster if p.name() == "raylet"]
        assert len(raylets) == 1, [p.name() for p in cluster]
        raylets[0].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        code = training.finish(150)  # the driver must not hang: Ray marks the node dead within seconds
        took = time.monotonic() - killed_at
        # The cluster's other processes (workers, controller) must not outlive it, training into the run folder.
        _, left = psutil.wait_procs([p for p in cluster if p.is_running()], timeout=30)
        left = [p for p in left if p.status() != psutil.STATUS_ZOMBIE]
    finally:
        training.kill()
        for p in cluster:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    output = training.output
    finished = max(e for e, _ in epoch_lines(output))
    assert code == 2, output[-5000:]
    assert took < 90, took
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    # The driver's own watcher speaks first (Ray's core worker would end it with status 1 some
    # seconds later, from C++, with no exception to catch).
    assert errors and errors[0].startswith(
        "error: the local Ray cluster this driver started died during training (its raylet process is gone)"
    ), output[-5000:]
    assert f"run the same command again to resume {run_dir}" in output and no_driver_traceback(output), output[-5000:]
    assert not left, [(p.pid, p.name()) for p in left]

    again = Training(cmd)
    code = again.finish(240)
    output = again.output
    assert code == 0, output[-5000:]
    resumed = RESUMED.search(output)
    assert resumed, output[-5000:]
    final = torch.load(checkpoints(run_dir)[-1], map_location="cpu", weights_only=True)
    wrong = int(final["epoch"] != epochs - 1 or not (run_dir / "summary.json").is_file())
    record(
        "raylet SIGKILL mid-run (the local Ray cluster dies)",
        1,
        1,
        max(0, finished - int(resumed.group(2))),
        wrong,
        f"refused: exit 2 {took:.0f} s after the kill; the same command resumed and finished",
    )
    assert not wrong, final["epoch"]
