"""Interrupts and a shared machine, in real local Ray runs of train.py on the tiny config.

Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM (to the driver,
as ``kill`` or a scheduler sends it) ends train.py with one line: what was interrupted, the last
checkpoint kept with its epoch, and the command that resumes; status 130 or 143; no traceback;
the run lock released. A second Ctrl-C stops at once. Another Ray instance on the machine (a
colleague's, or a second run) does not make our runs print Ray's internal tracebacks. Each test
writes a row for ``bench/faults.py`` (see tests/faults/test_faults.py).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.faults.test_faults import RESUMED, Training, lost_epochs, no_driver_traceback, record
from tests.integration.test_ray_train import ROOT, command, environment, epoch_lines

pytestmark = [pytest.mark.ray]
INTERRUPTED = re.compile(
    r"^error: (?:stopped at once by a second signal: )?training of run (\S+) was interrupted \((Ctrl-C|SIGTERM)\); "
    r"(?:its last checkpoint is kept: (\S+) "
    r"\(epoch (\d+)/(\d+) done\)|it had no checkpoint yet[^.]*)\. The same command resumes it: python train\.py (.+)$",
    re.MULTILINE,
)
RAY_NOISE = ("PlacementGroupCleanerMonitor", "Found multiple active Ray instances")


def interrupt(training: Training, sent: int, group: bool) -> None:
    if group:  # a terminal's Ctrl-C reaches every process of the foreground group
        os.killpg(training.proc.pid, sent)
    else:
        training.proc.send_signal(sent)


def check_one_line(output: str, cmd: list[str], word: str) -> re.Match:
    said = INTERRUPTED.search(output)
    assert said and said.group(2) == word, output[-5000:]
    assert said.group(6) == " ".join(cmd[2:]), said.group(6)  # the very command that was run
    assert [line for line in output.splitlines() if line.startswith("error: ")] == [said.group(0)]
    assert no_driver_traceback(output) and "KeyboardInterrupt" not in output, output[-5000:]
    return said


@pytest.mark.slow  # 1-3 minutes: bench/faults.py runs it
@pytest.mark.timeout(600)
def test_ctrl_c_in_training_keeps_the_last_checkpoint_and_the_same_command_resumes(taxi_like_csv, tmp_path):
    epochs, run_dir = 5, tmp_path / "ctrl_c"
    cmd = command(taxi_like_csv, tmp_path, "ctrl_c", epochs)
    training = Training(cmd)
    try:
        training.wait_for(rf"epoch 2/{epochs}", 240)
        interrupt(training, signal.SIGINT, group=True)
        code = training.finish(120)
    finally:
        training.kill()
    output = training.output
    assert code == 130, output[-5000:]
    said = check_one_line(output, cmd, "Ctrl-C")
    assert said.group(3) and int(said.group(4)) >= 1 and (run_dir / os.path.basename(said.group(3))).is_dir()
    assert not (run_dir / "run.lock").exists()

    again = Training(cmd)
    code = again.finish(300)
    assert code == 0, again.output[-5000:]
    resumed = RESUMED.search(again.output)
    assert resumed and resumed.group(1) == said.group(3), again.output[-3000:]  # from the checkpoint the line named
    assert (run_dir / "summary.json").is_file()
    lost = lost_epochs(output + again.output)
    record(
        "Ctrl-C (SIGINT to the process group) during training, then the same command",
        1,
        1,
        sum(lost),
        0,
        "exit 130, one line naming the checkpoint kept and its epoch; the command it gave resumed",
    )


@pytest.mark.timeout(300)
def test_sigterm_while_ray_starts_says_nothing_was_trained_and_how_to_resume(taxi_like_csv, tmp_path):
    cmd = command(taxi_like_csv, tmp_path, "term", 3)
    training = Training(cmd)
    try:
        training.wait_for("resume after an interruption with the same command", 240)
        interrupt(training, signal.SIGTERM, group=False)
        code = training.finish(120)
    finally:
        training.kill()
    output = training.output
    assert code == 143, output[-5000:]
    said = check_one_line(output, cmd, "SIGTERM")
    assert said.group(3) is None and "no checkpoint yet" in said.group(0)
    assert not (tmp_path / "term" / "run.lock").exists() and (tmp_path / "term" / "data" / "manifest.json").is_file()
    record("SIGTERM to the driver while Ray starts", 1, 1, 0, 0, "exit 143, one line: no checkpoint yet, the command")


@pytest.mark.slow  # 1-2 minutes: bench/faults.py runs it
@pytest.mark.timeout(420)
def test_a_second_ctrl_c_stops_at_once_and_releases_the_run(taxi_like_csv, tmp_path):
    epochs, run_dir = 6, tmp_path / "twice"
    cmd = command(taxi_like_csv, tmp_path, "twice", epochs)
    training = Training(cmd)
    try:
        training.wait_for(rf"epoch 1/{epochs}", 240)
        interrupt(training, signal.SIGINT, group=True)
        time.sleep(0.3)
        interrupt(training, signal.SIGINT, group=True)
        code = training.finish(60)
    finally:
        training.kill()
    output = training.output
    assert code == 130, output[-5000:]
    said = check_one_line(output, cmd, "Ctrl-C")
    assert said.group(0).startswith("error: stopped at once by a second signal: "), said.group(0)
    assert not (run_dir / "run.lock").exists()
    again = Training(cmd)
    code = again.finish(300)
    assert code == 0 and (run_dir / "summary.json").is_file(), again.output[-5000:]
    record(
        "Ctrl-C twice during training, then the same command",
        2,
        2,
        sum(lost_epochs(output + again.output)),
        0,
        "exit 130 at once, lock released; the command resumed",
    )


# -- a shared machine ----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


@pytest.fixture
def another_ray():
    """A second Ray instance on this machine (`ray start --head` on ports of its own), stopped afterwards.

    Only its own processes are stopped (found by its temp folder): ``ray stop`` would stop every
    Ray of the machine.
    """
    ray_bin = shutil.which("ray", path=os.path.dirname(sys.executable))
    if ray_bin is None:
        pytest.skip("no ray command next to this Python")
    temp = Path(tempfile.mkdtemp(prefix="ray_", dir="/tmp"))  # short: Ray's socket paths stay under 108 characters
    done = subprocess.run(
        [
            ray_bin,
            "start",
            "--head",
            f"--port={_free_port()}",
            "--num-cpus=1",
            "--include-dashboard=false",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    try:
        yield
    finally:
        ours = [p for p in psutil.process_iter(["cmdline"]) if str(temp) in " ".join(p.info["cmdline"] or [])]
        for p in ours:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(ours, timeout=30)
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow  # about a minute
@pytest.mark.timeout(420)
def test_another_ray_on_the_machine_prints_no_ray_traceback_in_our_run(taxi_like_csv, tmp_path, another_ray):
    done = subprocess.run(
        command(taxi_like_csv, tmp_path, "shared", 2),
        cwd=ROOT,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=360,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    assert [e for e, _ in epoch_lines(output)] == [1, 2]
    assert not [noise for noise in RAY_NOISE if noise in output], output[-5000:]
    record("another Ray instance running on the machine", 1, 1, 0, 0, "no Ray traceback in our run's output")


@pytest.mark.slow  # 2-4 minutes on 2 cores
@pytest.mark.timeout(600)
def test_two_runs_of_different_names_at_once_both_finish_cleanly(taxi_like_csv, tmp_path):
    runs = [
        Training(
            command(
                taxi_like_csv,
                tmp_path,
                name,
                2,
                "--set",
                "cluster.num_workers=1",
                "--set",
                "cluster.cpus_per_worker=0.5",
            )
        )
        for name in ("first", "second")
    ]
    try:
        codes = [run.finish(540) for run in runs]
    finally:
        for run in runs:
            run.kill()
    for code, run, name in zip(codes, runs, ("first", "second")):
        assert code == 0, run.output[-5000:]
        assert (tmp_path / name / "summary.json").is_file()
        assert not [noise for noise in RAY_NOISE if noise in run.output], run.output[-5000:]
    record("two runs of different names at once on one machine", 2, 2, 0, 0, "both finished, no Ray traceback")
