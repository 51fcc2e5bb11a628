"""Whole nodes lost and found, on a Ray cluster of several nodes on this machine (bench/node_loss.py).

An elastic run (``cluster.num_workers: [1, 2]``, one CPU per worker, worker nodes of one CPU)
places one worker per node. Losing a worker node restarts it from the last checkpoint with the
worker left; a node that joins is taken up at the next resize check; losing the head node, which
holds the driver's own raylet and the cluster's control store, ends the driver with the error
that says how to resume. train.py joins the cluster through RAY_ADDRESS, as on a real one, with
its storage in a local folder (every simulated node reads it), and infer.py forecasts from the
finished run on the same cluster.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.node_loss import simulated_cluster, train_arguments
from tests.faults.test_faults import RESUMED, Training, no_driver_traceback, record
from tests.integration.test_ray_train import (
    ROOT,
    checkpoints,
    environment,
    epoch_lines,
    read_scalars,
    wait_for_checkpoint,
)

pytestmark = [pytest.mark.ray, pytest.mark.slow]
RESIZED = re.compile(r"workers: (\d+) \(was (\d+)\), resuming at epoch (\d+)")


def command(csv: Path, storage: Path, name: str, epochs: int, *extra: str) -> list[str]:
    return [sys.executable, "train.py", *train_arguments(csv, storage, name, epochs, "[1, 2]", *extra)]


def final_checkpoint(run_dir: Path) -> dict:
    return torch.load(checkpoints(run_dir)[-1], map_location="cpu", weights_only=True)


def world_sizes(run_dir: Path) -> list[float]:
    """``cluster/world_size`` as written, one value per epoch started (each worker-group start
    writes a new event file: a restart repeats the step of the epoch it resumes)."""
    return [value for _, value in read_scalars(run_dir / "tensorboard")["cluster/world_size"]]


@pytest.mark.timeout(600)
def test_a_lost_worker_node_shrinks_the_run_which_finishes_and_forecasts_on_the_same_cluster(
    taxi_like_csv, tmp_path, monkeypatch
):
    epochs, run_dir = 6, tmp_path / "shrink"
    with simulated_cluster(nodes=2) as cluster:
        address = cluster.address
        for key, value in cluster.environment().items():
            monkeypatch.setenv(key, value)
        training = Training(command(taxi_like_csv, tmp_path, "shrink", epochs))
        try:
            wait_for_checkpoint(run_dir, training.proc, timeout=300)
            done_at_loss = max([e for e, _ in epoch_lines(training.output)], default=0)
            lost = len(training.lines)
            cluster.remove()
            code = training.finish(400)
        finally:
            training.kill()
        # infer.py against the same cluster (the node left runs its Ray tasks), reading the run's folder.
        inferred = subprocess.run(
            [sys.executable, "infer.py", "--run", str(run_dir), "--cutoffs", "2024-02-20..2024-02-22/1D"],
            cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    output = training.output
    assert code == 0, output[-5000:]
    assert f"joining the Ray cluster at {address}" in output
    assert inferred.returncode == 0, inferred.stdout[-3000:] + inferred.stderr[-3000:]
    forecasts = run_dir / "forecasts" / "forecast_20240220T0000-20240222T0000.csv"
    rows = forecasts.read_text().splitlines()
    assert rows[0] == "cutoff,timestamp,forecast,q0.1,q0.9,actual" and len(rows) == 1 + 3 * 4  # 3 cutoffs x 4 steps
    assert f"joining the Ray cluster at {address}" in inferred.stdout + inferred.stderr
    assert "workers: 2, starting at epoch 1" in output, output[-5000:]
    resized = RESIZED.search("".join(training.lines[lost:]))
    assert resized, output[-5000:]
    now, was, resumed_at = map(int, resized.groups())
    assert (now, was) == (1, 2)
    # At most the epoch in progress is lost: the run resumes right after an epoch done before the loss.
    assert done_at_loss <= resumed_at <= done_at_loss + 1, (done_at_loss, resumed_at)
    after = [e for e, _ in epoch_lines("".join(training.lines[lost:]))]
    assert after[-len(range(resumed_at, epochs + 1)) :] == list(range(resumed_at, epochs + 1)), output[-5000:]
    final = final_checkpoint(run_dir)
    assert final["epoch"] == epochs - 1 and final["lit_forecast_world_size"] == 1
    assert (run_dir / "summary.json").is_file()
    sizes = world_sizes(run_dir)
    assert sizes[0] == 2.0 and sizes[-1] == 1.0 and sizes == sorted(sizes, reverse=True), sizes
    assert no_driver_traceback(output), output[-5000:]
    record(
        "a worker node lost mid-run (elastic [1, 2] on 2 nodes)",
        1,
        1,
        max(0, done_at_loss - (resumed_at - 1)),
        0,
        f"went on with 1 worker from epoch {resumed_at}; finished all {epochs} epochs, exit 0",
    )


@pytest.mark.timeout(600)
def test_a_node_that_joins_grows_the_run_at_the_next_check(taxi_like_csv, tmp_path, monkeypatch):
    epochs, run_dir = 20, tmp_path / "grow"
    with simulated_cluster(nodes=1) as cluster:
        for key, value in cluster.environment().items():
            monkeypatch.setenv(key, value)
        training = Training(command(taxi_like_csv, tmp_path, "grow", epochs, "--set", "cluster.resize_check_s=2"))
        try:
            wait_for_checkpoint(run_dir, training.proc, timeout=300)
            joined = len(training.lines)
            cluster.add()
            grown = training.wait_for(r"workers: 2 \(was 1\), resuming at epoch \d+", 300, after=joined)
            code = training.finish(400)
        finally:
            training.kill()
    output = training.output
    assert code == 0, output[-5000:]
    assert "workers: 1, starting at epoch 1" in output
    resumed_at = int(RESIZED.search(training.lines[grown]).group(3))
    assert [e for e, _ in epoch_lines("".join(training.lines[grown:]))] == list(range(resumed_at, epochs + 1))
    final = final_checkpoint(run_dir)
    assert final["epoch"] == epochs - 1 and final["lit_forecast_world_size"] == 2
    sizes = world_sizes(run_dir)
    assert sizes[0] == 1.0 and sizes[-1] == 2.0 and sizes == sorted(sizes), sizes
    record(
        "a worker node joins mid-run (elastic [1, 2], 1 node, then 2)",
        1,
        1,
        0,
        0,
        f"grew to 2 workers from epoch {resumed_at}; finished all {epochs} epochs, exit 0",
    )


@pytest.mark.timeout(600)
def test_a_run_the_cluster_cannot_hold_yet_says_so_and_starts_when_a_node_joins(taxi_like_csv, tmp_path, monkeypatch):
    run_dir = tmp_path / "wait"
    with simulated_cluster(nodes=1) as cluster:  # worker nodes of 1 CPU, a head without CPUs
        for key, value in cluster.environment().items():
            monkeypatch.setenv(key, value)
        cmd = [sys.executable, "train.py", *train_arguments(taxi_like_csv, tmp_path, "wait", 2, "2")]
        training = Training(cmd)
        try:
            said = training.wait_for("are asked for: this waits until nodes join", 120)
            cluster.add()
            code = training.finish(400)
        finally:
            training.kill()
    output = training.output
    assert code == 0 and (run_dir / "summary.json").is_file(), output[-5000:]
    line = training.lines[said]
    assert "has 1 CPU(s) and 0 GPU(s) in all, but 2 CPU(s) and 0 GPU(s) are asked for" in line, line
    assert "cluster.num_workers" in line and no_driver_traceback(output)


@pytest.mark.timeout(600)
def test_losing_the_head_node_ends_the_driver_with_how_to_resume(taxi_like_csv, tmp_path, monkeypatch):
    epochs, run_dir = 8, tmp_path / "head"
    with simulated_cluster(nodes=2) as cluster:
        address = cluster.address
        for key, value in cluster.environment().items():
            monkeypatch.setenv(key, value)
        training = Training(command(taxi_like_csv, tmp_path, "head", epochs))
        try:
            wait_for_checkpoint(run_dir, training.proc, timeout=300)
            cluster.kill_head()
            killed_at = time.monotonic()
            code = training.finish(300)
            took = time.monotonic() - killed_at
        finally:
            training.kill()
    output = training.output
    assert code == 2, output[-5000:]
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert errors and errors[0].startswith(f"error: the Ray cluster at {address} lost the node"), output[-5000:]
    assert f"run the same command again to resume {run_dir}" in errors[0], output[-5000:]
    assert no_driver_traceback(output), output[-5000:]
    finished = max([e for e, _ in epoch_lines(output)], default=0)

    # As the error says: the same command, on a cluster that is back (a new head, new nodes), resumes.
    with simulated_cluster(nodes=2) as cluster:
        for key, value in cluster.environment().items():
            monkeypatch.setenv(key, value)
        again = Training(command(taxi_like_csv, tmp_path, "head", epochs))
        code = again.finish(400)
    assert code == 0, again.output[-5000:]
    resumed = RESUMED.search(again.output)
    assert resumed, again.output[-5000:]
    final = final_checkpoint(run_dir)
    assert final["epoch"] == epochs - 1 and (run_dir / "summary.json").is_file()
    record(
        "the head node lost mid-run (driver's raylet and the GCS)",
        1,
        1,
        max(0, finished - int(resumed.group(2))),
        0,
        f"refused: exit 2 {took:.0f} s after the loss; the same command on a new cluster resumed and finished",
    )
