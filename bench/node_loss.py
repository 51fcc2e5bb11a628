"""A Ray cluster of several nodes on one machine, and an elastic run that loses one of them.

    python -m bench.node_loss                  # 2 worker nodes, workers [1, 2]; one node killed after epoch 2
    python -m bench.node_loss --compare        # and the same run without a loss: best val/mae of both
    python -m bench.node_loss --output nodes.json

Prints the seconds from the node's loss to the first training step with the workers left
(``first training step done`` on the driver's console, as read by this process), the whole
run's time and the machine's load. ``SimulatedCluster`` is also what tests/faults/test_nodes.py
runs its node faults on.

The cluster (``ray.cluster_utils.Cluster``): a head with no CPU, where the driver and Ray
Train's controller live and no training worker can, and worker nodes of one CPU each, so a
run with ``cluster.cpus_per_worker=1`` places one worker per node. Two settings are tuned for
a cluster whose nodes die on purpose:

- Ray's node health check (``HEALTH_CHECK``, the head's ``_system_config``): a node that stops
  answering is declared dead after 3 missed checks 1 s apart instead of 5 missed 3 s apart.
- ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S`` (``START_TIMEOUT_S``; Ray's default 60 s): Ray
  Train's view of free resources is refreshed every 20 s, so its first restart after a loss
  may still ask for the old number of workers, and waits this long for them before it asks
  again with the number that can be placed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import TrainRun, add_output_argument, load_average

HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3, "health_check_timeout_ms": 1000}
START_TIMEOUT_S = 10
FIRST_STEP = r"first training step done"


class SimulatedCluster:
    """A head node without CPUs and ``nodes`` worker nodes of 1 CPU each, on this machine.

    ``address`` is what RAY_ADDRESS takes; ``environment()`` is what a driver joining it needs.
    ``remove(i)`` kills worker node i (its raylet and every process on it, without a goodbye);
    ``add()`` starts one more; ``kill_head()`` kills the head node (GCS and raylet).
    """

    def __init__(self, nodes: int):
        from ray.cluster_utils import Cluster

        self.cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": 0, "include_dashboard": False, "_system_config": dict(HEALTH_CHECK)},
        )
        self.nodes = []
        for _ in range(nodes):
            self.add()

    @property
    def address(self) -> str:
        return self.cluster.address

    def environment(self) -> dict[str, str]:
        """Environment variables for a driver on this cluster."""
        return {"RAY_ADDRESS": self.address, "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": str(START_TIMEOUT_S)}

    def add(self) -> None:
        self.nodes.append(self.cluster.add_node(num_cpus=1))
        self.cluster.wait_for_nodes()

    def remove(self, index: int = -1) -> None:
        self.cluster.remove_node(self.nodes.pop(index), allow_graceful=False)

    def kill_head(self) -> None:
        self.cluster.remove_node(self.cluster.head_node, allow_graceful=False)

    def shutdown(self) -> None:
        with contextlib.suppress(Exception):  # the head may be gone already
            self.cluster.shutdown()


@contextlib.contextmanager
def simulated_cluster(nodes: int) -> Iterator[SimulatedCluster]:
    """A :class:`SimulatedCluster`, shut down (every node's processes) on leaving."""
    cluster = SimulatedCluster(nodes)
    try:
        yield cluster
    finally:
        cluster.shutdown()


def write_series(path: Path) -> Path:
    """Eight weeks of half-hourly counts with a daily cycle and noise (the tests' taxi-like series)."""
    slots = pd.date_range("2024-01-01", periods=8 * 7 * 48, freq="30min")
    hour = slots.hour + slots.minute / 60
    values = 10_000 + 6_000 * np.sin((hour - 6) / 24 * 2 * np.pi) + np.random.default_rng(0).normal(0, 300, len(slots))
    pd.DataFrame({"timestamp": slots, "value": values.round()}).to_csv(path, index=False)
    return path


def train_arguments(csv: Path, storage: Path, name: str, epochs: int, workers: str, *extra: str) -> list[str]:
    """train.py's arguments: the tiny config, one CPU per worker, ``workers`` as cluster.num_workers."""
    return [
        "--config", "configs/tiny.yaml", "--data", str(csv), "--storage", str(storage), "--name", name,
        "--set", "data.train_end=2024-02-12", "--set", "data.val_end=2024-02-19",
        "--set", f"train.max_epochs={epochs}", "--set", f"cluster.num_workers={workers}",
        "--set", "cluster.cpus_per_worker=1", "--set", "cluster.max_failures=3", *extra,
    ]  # fmt: skip


@contextlib.contextmanager
def joined(cluster: SimulatedCluster) -> Iterator[None]:
    """This process's environment set for a driver joining ``cluster`` (restored on leaving)."""
    saved = {key: os.environ.get(key) for key in cluster.environment()}
    os.environ.update(cluster.environment())
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(cluster: SimulatedCluster, csv: Path, storage: Path, name: str, epochs: int, kill_after: int | None) -> dict:
    """An elastic run ([1, 2] workers) on ``cluster``, a node killed once epoch ``kill_after`` is done (None: never)."""
    with joined(cluster):
        run = TrainRun(train_arguments(csv, storage, name, epochs, "[1, 2]"))
    lost_at, load = None, load_average()
    try:
        if kill_after is not None:
            done = rf"epoch {kill_after}/{epochs}  train/"
            while run.first(done) is None:
                if run.proc.poll() is not None or run.elapsed() > 600:
                    raise SystemExit(f"no epoch {kill_after} line:\n" + run.output()[-3000:])
                time.sleep(0.1)
            load = load_average()
            lost_at = run.elapsed()
            cluster.remove()
        wall = run.wait(timeout=600)
    finally:
        run.stop()
    summary = json.loads((storage / name / "summary.json").read_text())
    figures = {"run_wall_s": round(wall, 1), "best_val_mae": round(summary["best_metrics"]["val/mae"], 1)}
    if lost_at is None:
        return figures
    step = run.first(FIRST_STEP, after=lost_at)
    resized = run.first(r"workers: (\d+) \(was (\d+)\), resuming at epoch (\d+)", after=lost_at)
    return {
        "node_loss_to_first_step_s": None if step is None else round(step[0] - lost_at, 1),
        "node_loss_to_workers_line_s": None if resized is None else round(resized[0] - lost_at, 1),
        "resize": None if resized is None else resized[1].group(0),
        **figures,
        "load_average_at_loss": load,
    }


def measure(epochs: int, kill_after: int, scratch: Path, compare: bool) -> dict:
    """An elastic run on 2 worker nodes that loses one after epoch ``kill_after``; with ``compare``,
    the same run on the same cluster (the node added back) without a loss."""
    csv = write_series(scratch / "series.csv")
    with simulated_cluster(nodes=2) as cluster:
        lost = _run(cluster, csv, scratch / "runs", "lost", epochs, kill_after)
        whole = None
        if compare:
            cluster.add()
            whole = _run(cluster, csv, scratch / "runs", "whole", epochs, None)
    result = {
        "how": "python -m bench.node_loss: tiny config, workers [1, 2] on 2 simulated nodes of 1 CPU, one node killed",
        "epochs": epochs,
        "node_lost_after_epoch": kill_after,
        **lost,
        "health_check": HEALTH_CHECK,
        "worker_group_start_timeout_s": START_TIMEOUT_S,
        "cpus": os.cpu_count(),
    }
    if whole is not None:
        result["without_loss"] = whole
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6, help="epochs of the run (default 6)")
    parser.add_argument("--kill-after", type=int, default=2, help="kill a node once this epoch is done (default 2)")
    parser.add_argument(
        "--compare", action="store_true", help="also train the same run without a loss (best val/mae of both)"
    )
    add_output_argument(parser, "also write the figures as JSON")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="node_loss_"))
    try:
        result = measure(args.epochs, args.kill_after, scratch, args.compare)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for key, value in result.items():
        print(f"{key:<30} {value}")
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
