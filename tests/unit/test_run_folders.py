"""Run folders: names that stay inside storage, one driver per run, paths relative to the run.

The copy test builds a run folder the way training leaves it (a saved checkpoint, config.yaml,
summary.json), copies it, and checks that infer.py on the copy reads and writes only the copy.
"""

from __future__ import annotations

import json
import logging
import os
import runpy
import shutil
import socket
import subprocess
import sys
import time

import pytest
from test_inference import csv, save_checkpoint  # noqa: F401 - csv is a fixture

from lit_forecast import config as cfg
from lit_forecast import layout
from lit_forecast.errors import ConfigError, RunError
from lit_forecast.training import run_lock
from lit_forecast.training.run_lock import RunLock

ROOT = cfg.DEFAULT_CONFIG.parent.parent


# -- names --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../x", ".", "..", "/abs", "s3://b/x", "a/b", "", " x", "x ", "x\t", "x\n", "-x", "~x", "a" * 101]
)
def test_run_dir_refuses_a_name_that_is_not_one_folder(name):
    config = cfg.load(ROOT / "configs" / "tiny.yaml")
    config.run.name = name
    with pytest.raises(ConfigError, match="letters, digits, '.', '_' or '-'"):
        layout.run_dir(config)


def test_run_dir_is_always_directly_inside_storage(tmp_path):
    config = cfg.load(ROOT / "configs" / "tiny.yaml", [f"run.storage={tmp_path}", "run.name=a..b"])
    assert layout.run_dir(config) == f"{tmp_path}/a..b"


# -- the lock -----------------------------------------------------------------------------------------


def write_lock(run, host: str, pid: int, age_s: float = 0.0) -> None:
    run.mkdir(parents=True, exist_ok=True)
    lock = run / layout.LOCK_FILE
    lock.write_text(json.dumps({"host": host, "pid": pid, "started": "2024-01-01T00:00:00+00:00", "token": "theirs"}))
    os.utime(lock, (time.time() - age_s, time.time() - age_s))


def dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_a_live_holder_refuses_a_second_driver_and_is_named(tmp_path):
    run = tmp_path / "r"
    write_lock(run, socket.gethostname(), os.getppid())  # a live process on this host
    with pytest.raises(
        RunError,
        match=rf"in use by another driver \(pid {os.getppid()} on host {socket.gethostname()}, started 2024-01-01",
    ):
        RunLock(str(run)).__enter__()
    assert (run / layout.LOCK_FILE).exists()  # not ours to remove
    write_lock(run, "another-host", 1)  # fresh lock from another host: cannot tell, so refused
    with pytest.raises(RunError, match=f"host another-host.*delete {run / layout.LOCK_FILE}"):
        RunLock(str(run)).__enter__()


@pytest.mark.parametrize("holder", ["dead_pid_here", "old_other_host", "unreadable_old"])
def test_a_stale_lock_is_taken_over_with_a_warning(tmp_path, caplog, holder):
    run = tmp_path / "r"
    if holder == "dead_pid_here":
        write_lock(run, socket.gethostname(), dead_pid())
    elif holder == "old_other_host":
        write_lock(run, "another-host", 1, age_s=run_lock.STALE_AFTER_S + 60)
    else:
        write_lock(run, "x", 1, age_s=60)
        (run / layout.LOCK_FILE).write_text("{trunc")
        os.utime(run / layout.LOCK_FILE, (time.time() - 60, time.time() - 60))
    with caplog.at_level(logging.WARNING, logger="lit_forecast"), RunLock(str(run)) as lock:
        held = json.loads((run / layout.LOCK_FILE).read_text())
        assert (held["pid"], held["token"]) == (os.getpid(), lock.holder["token"])
    assert "taking over a stale lock" in caplog.text
    assert not (run / layout.LOCK_FILE).exists() and run.is_dir()  # released; the folder was there before
    assert sorted(p.name for p in run.iterdir()) == []  # no stale-* leftovers


def test_the_lock_is_released_and_a_folder_made_for_nothing_removed(tmp_path):
    run = tmp_path / "new"
    with pytest.raises(RunError):
        with RunLock(str(run)):
            assert (run / layout.LOCK_FILE).is_file()
            raise RunError("validation failed")
    assert not run.exists()
    with RunLock(str(run)) as lock:
        (run / "config.yaml").write_text("x")
        lock.keep()
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml"]


def test_two_processes_one_run(tmp_path):
    """A real second process holds the lock: this one is refused at once, naming it."""
    run = tmp_path / "r"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from lit_forecast.training.run_lock import RunLock\nwith RunLock({str(run)!r}):\n"
                               "    print('held', flush=True)\n    import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(RunError, match=f"pid {holder.pid} on host {socket.gethostname()}"):
            RunLock(str(run)).__enter__()
        assert time.monotonic() - started < 5
    finally:
        holder.communicate("", timeout=60)
    assert holder.returncode == 0 and not (run / layout.LOCK_FILE).exists()
    with RunLock(str(run)):  # free again
        pass


def test_object_store_locks_are_advisory_by_age(tmp_path, monkeypatch):
    """The s3:// / gs:// rule, run on a local folder: a fresh lock refuses, an old one is taken over."""
    monkeypatch.setattr(run_lock, "SETTLE_S", 0.0)
    run = tmp_path / "r"

    def remote() -> RunLock:
        lock = RunLock(str(run))
        lock.local = False
        return lock

    write_lock(run, "another-host", 1, age_s=60)
    with pytest.raises(
        RunError, match=f"host another-host.*wait until the lock is {run_lock.STALE_AFTER_S / 60:.0f} minutes old"
    ):
        remote().__enter__()
    write_lock(run, "another-host", 1, age_s=run_lock.STALE_AFTER_S + 1)
    with remote() as lock:
        assert json.loads((run / layout.LOCK_FILE).read_text())["token"] == lock.holder["token"]
    assert not (run / layout.LOCK_FILE).exists()


# -- paths relative to the run folder -----------------------------------------------------------------


def make_run(folder, summary: str) -> None:
    """A finished-looking run: a checkpoint, config.yaml and a summary in the old or new style."""
    save_checkpoint(folder / "checkpoint_000001")
    (folder / "config.yaml").write_text(cfg.dump(cfg.load(ROOT / "configs" / "tiny.yaml")))
    if summary == "relative":
        data = {
            "best_checkpoint": "checkpoint_000001/checkpoint.ckpt",
            "latest_checkpoint": "checkpoint_000001/checkpoint.ckpt",
            "tensorboard": "tensorboard",
        }
    else:  # written by earlier versions: absolute paths inside the original folder
        data = {
            "run_dir": str(folder),
            "best_checkpoint": str(folder / "checkpoint_000001" / "checkpoint.ckpt"),
            "latest_checkpoint": str(folder / "checkpoint_000001" / "checkpoint.ckpt"),
            "tensorboard": str(folder / "tensorboard"),
        }
    (folder / "summary.json").write_text(json.dumps(data))


def snapshot(folder) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize("summary", ["relative", "absolute"])
def test_infer_on_a_copied_run_reads_and_writes_only_the_copy(tmp_path, csv, capsys, summary):  # noqa: F811
    original, copy = tmp_path / "runs" / "orig", tmp_path / "runs" / "copy"
    make_run(original, summary)
    shutil.copytree(original, copy)
    before = snapshot(original)

    resolved = layout.read_summary(str(copy))
    assert resolved["best_checkpoint"] == f"{copy}/checkpoint_000001/checkpoint.ckpt"
    assert resolved["tensorboard"] == f"{copy}/tensorboard" and resolved["run_dir"] == str(copy)

    logger = logging.getLogger("lit_forecast")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    try:
        runpy.run_path(str(ROOT / "infer.py"))["main"](["--run", str(copy), "--data", csv(), "--no-ray"])
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    out = capsys.readouterr().out
    assert f"checkpoint  {copy}/checkpoint_000001/checkpoint.ckpt" in out
    assert f"forecasts   {copy}/forecasts/forecast_" in out
    assert len(list((copy / "forecasts").glob("forecast_*.csv"))) == 1
    assert snapshot(original) == before  # the original was neither read for its checkpoint nor written


def test_relative_to_run(tmp_path):
    assert layout.relative_to_run(str(tmp_path), f"{tmp_path}/tensorboard") == "tensorboard"
    assert (
        layout.relative_to_run("s3://b/runs/x", "s3://b/runs/x/checkpoint_000001/checkpoint.ckpt")
        == "checkpoint_000001/checkpoint.ckpt"
    )
    with pytest.raises(ValueError):
        layout.relative_to_run(str(tmp_path / "a"), str(tmp_path / "ab" / "c"))
