"""bench/node_loss.py: the run it trains on the simulated cluster is a valid elastic config."""

from __future__ import annotations

from pathlib import Path

from bench.node_loss import train_arguments
from lit_forecast import config as cfg


def test_the_simulated_cluster_run_is_an_elastic_tiny_config_with_one_cpu_per_worker(tmp_path):
    args = train_arguments(tmp_path / "s.csv", tmp_path / "runs", "r", 5, "[1, 2]", "--set", "cluster.resize_check_s=2")
    overrides = [args[i + 1] for i, arg in enumerate(args) if arg == "--set"]
    config = cfg.load(Path(args[args.index("--config") + 1]), overrides)
    c = config.cluster
    assert (c.min_workers, c.max_workers, c.elastic, c.cpus_per_worker, c.resize_check_s) == (1, 2, True, 1.0, 2.0)
    assert config.train.max_epochs == 5
