"""``--storage s3://...`` against a real S3 protocol: a moto server on 127.0.0.1.

The package is pointed at the server only through the environment variables a user sets for
MinIO or any S3-compatible store (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_REGION): pyarrow (shards, Ray Train checkpoints), botocore/s3fs (TensorBoard) and infer.py
must all find it. Each Ray test runs ``train.py`` as its own process and carries a timeout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUN = "taxi"
pytestmark = [pytest.mark.ray]


def command(csv: Path, bucket: str, epochs: int, *extra: str) -> list[str]:
    return [
        sys.executable, "train.py", "--config", "configs/tiny.yaml", "--data", str(csv),
        "--storage", f"s3://{bucket}/runs", "--name", RUN,
        "--set", "data.train_end=2024-02-12", "--set", "data.val_end=2024-02-19",
        "--set", f"train.max_epochs={epochs}", *extra,
    ]  # fmt: skip


def environment(server) -> dict[str, str]:
    return {**os.environ, **server.environment(), "PYTHONUNBUFFERED": "1"}


def run(cmd: list[str], server, timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=ROOT, env=environment(server), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done


def epoch_lines(output: str) -> list[tuple[int, int]]:
    """(epoch, max_epochs) of every per-epoch console line, in order."""
    return [(int(a), int(b)) for a, b in re.findall(r"\bepoch (\d+)/(\d+)  train/", output)]


def read_object(server, bucket: str, key: str) -> bytes:
    return server.client().get_object(Bucket=bucket, Key=key)["Body"].read()


def wait_for_checkpoint(server, bucket: str, proc: subprocess.Popen, timeout: float) -> None:
    """Until Ray has registered a checkpoint in the bucket (its snapshot object lists one)."""
    deadline = time.monotonic() + timeout
    snapshot = f"runs/{RUN}/checkpoint_manager_snapshot.json"
    while True:
        if snapshot in server.keys(bucket, f"runs/{RUN}/") and b"checkpoint_" in read_object(server, bucket, snapshot):
            return
        assert proc.poll() is None, f"training ended before its first checkpoint:\n{output_of(proc)}"
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no checkpoint appeared in the bucket within {timeout} s:\n{output_of(proc)}")
        time.sleep(0.5)


def output_of(proc: subprocess.Popen) -> str:
    """The end of what an ended process printed."""
    stdout, stderr = proc.communicate(timeout=30)
    return (stdout or "")[-3000:] + (stderr or "")[-5000:]


def descendants(pid: int) -> list[int]:
    """PIDs of every process below ``pid``, read from /proc (as in tests/integration)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def scalars_in_bucket(server, bucket: str, prefix: str, folder: Path) -> dict[str, list[tuple[int, float]]]:
    """TensorBoard scalars of every event file under ``prefix``, downloaded into ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list] = {}
    events = [key for key in server.keys(bucket, prefix) if "events.out.tfevents." in key]
    assert events, f"no TensorBoard event file under s3://{bucket}/{prefix}: {server.keys(bucket)}"
    for i, key in enumerate(events):
        local = folder / f"{i}.events.out.tfevents.x"
        local.write_bytes(read_object(server, bucket, key))
        acc = EventAccumulator(str(local))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return scalars


@pytest.mark.timeout(60)
def test_prepare_writes_the_shards_into_the_bucket(s3_server, bucket, taxi_like_csv):
    cmd = command(taxi_like_csv, bucket, 2, "--prepare-only")
    done = run(cmd, s3_server, timeout=50)
    assert f"dataset  s3://{bucket}/runs/{RUN}/data (prepared" in done.stdout
    keys = [k for k in s3_server.keys(bucket) if not k.endswith("/")]  # folder markers aside
    data = f"runs/{RUN}/data/"
    assert sorted(keys) == [
        f"{data}config.yaml",
        f"{data}manifest.json",
        f"{data}train-00000-of-00002.parquet",
        f"{data}train-00001-of-00002.parquet",
        f"{data}val.parquet",
    ]  # fmt: skip  (written in place: no temporary names left behind, nothing copied and deleted)
    manifest = json.loads(read_object(s3_server, bucket, f"{data}manifest.json"))
    assert manifest["shard_windows"] == [998, 998]

    again = run(cmd, s3_server, timeout=50)
    assert f"dataset  s3://{bucket}/runs/{RUN}/data (reused" in again.stdout


@pytest.mark.timeout(480)
def test_training_in_the_bucket_survives_a_killed_worker_and_infer_reads_it(s3_server, bucket, taxi_like_csv, tmp_path):
    epochs = 5
    proc = subprocess.Popen(
        command(taxi_like_csv, bucket, epochs, "--set", "cluster.max_failures=2"),
        cwd=ROOT, env=environment(s3_server), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for_checkpoint(s3_server, bucket, proc, timeout=240)
        workers = [pid for pid in descendants(proc.pid) if cmdline(pid).startswith("ray::RayTrainWorker")]
        assert len(workers) == 2, [cmdline(p) for p in descendants(proc.pid)]
        os.kill(workers[-1], signal.SIGKILL)
        output, _ = proc.communicate(timeout=200)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-5000:]
    # (Ray may print its own threads' tracebacks under load; the run itself must succeed and resume.)

    resumed = re.search(r"RESUMED from checkpoint \S+ \(epoch (\d+)/(\d+) done\); continuing with epoch (\d+)", output)
    assert resumed, output[-5000:]
    assert f"{bucket}/runs/{RUN}/checkpoint_" in resumed.group(0)  # read back from the bucket
    after = epoch_lines(output[resumed.end() :])
    assert after[0] == (int(resumed.group(3)), epochs) and after[-1] == (epochs, epochs)

    keys = s3_server.keys(bucket, f"runs/{RUN}/")
    checkpoints = [k for k in keys if re.fullmatch(rf"runs/{RUN}/checkpoint_[^/]+/checkpoint\.ckpt", k)]
    assert 2 <= len(checkpoints) <= 3, keys  # num_to_keep=2, plus the latest
    summary = json.loads(read_object(s3_server, bucket, f"runs/{RUN}/summary.json"))
    assert summary["best_checkpoint"].startswith("checkpoint_")  # relative to the run folder
    assert f"runs/{RUN}/{summary['best_checkpoint']}" in checkpoints

    # TensorBoard wrote through botocore/s3fs to the same endpoint: every epoch of both attempts
    # is there (an epoch run twice, before and after the kill, logs the same global step).
    scalars = scalars_in_bucket(s3_server, bucket, f"runs/{RUN}/tensorboard/", tmp_path)
    assert len({step for step, _ in scalars["val/mae"]}) == epochs, scalars["val/mae"]
    assert summary["best_metrics"]["val/mae"] == pytest.approx(min(v for _, v in scalars["val/mae"]), rel=1e-5)

    done = run(
        [sys.executable, "infer.py", "--run", f"s3://{bucket}/runs/{RUN}", "--cutoffs", "2024-02-20..2024-02-22/1D"],
        s3_server, timeout=90,
    )  # fmt: skip
    assert f"checkpoint  s3://{bucket}/runs/{RUN}/{summary['best_checkpoint']}" in done.stdout
    forecasts = f"runs/{RUN}/forecasts/forecast_20240220T0000-20240222T0000.csv"
    assert f"forecasts   s3://{bucket}/{forecasts}" in done.stdout
    rows = read_object(s3_server, bucket, forecasts).decode().splitlines()
    assert rows[0] == "cutoff,timestamp,forecast,q0.1,q0.9,actual" and len(rows) == 1 + 3 * 4  # 3 cutoffs x 4 steps
    assert f"runs/{RUN}/forecasts/forecast_20240220T0000-20240222T0000.backtest.json" in s3_server.keys(bucket)


@pytest.mark.slow  # about 3 minutes on an idle 2-core machine; three times that under heavy load
@pytest.mark.timeout(900)
def test_storage_outage_fails_clearly_and_the_same_command_resumes(s3_server, bucket, taxi_like_csv):
    epochs = 12  # long enough that the outage lands mid-run (about 2 s an epoch)
    cmd = command(taxi_like_csv, bucket, epochs)
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=environment(s3_server), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for_checkpoint(s3_server, bucket, proc, timeout=240)
        s3_server.stop()
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        if s3_server.server is None:
            s3_server.start()  # same port, same objects: the store is back
    assert proc.returncode == 2, stdout[-3000:] + stderr[-5000:]
    error = stderr[stderr.rindex("error: ") :]
    assert error.startswith(f"error: cannot reach the storage of s3://{bucket}/runs/{RUN}"), stderr[-5000:]
    assert s3_server.endpoint in error and "Run the same command again" in error
    assert "Traceback" not in error, "the driver printed a traceback"
    # Workers print one short traceback each (Ray's "Error in training function"), but none of
    # the S3 clients' own stacks: those are cut to StorageError's one line.
    assert "site-packages/botocore" not in stderr and "pyarrow/_fs.pyx" not in stderr, stderr[-5000:]
    assert not any(key.endswith("summary.json") for key in s3_server.keys(bucket))

    done = run(cmd, s3_server, timeout=360)
    output = done.stderr + done.stdout
    resumed = re.search(r"RESUMED from checkpoint \S+ \(epoch (\d+)/(\d+) done\)", output)
    assert "RESUMING run" in output and resumed, output[-5000:]
    assert epoch_lines(output)[0] == (int(resumed.group(1)) + 1, epochs) and epoch_lines(output)[-1] == (epochs, epochs)
    assert f"runs/{RUN}/summary.json" in s3_server.keys(bucket)
