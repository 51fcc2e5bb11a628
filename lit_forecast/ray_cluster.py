"""Starting or joining Ray, quietly: shared by training and inference (no Ray Train here)."""

from __future__ import annotations

import logging
import os
import time

import ray
import torch

from lit_forecast.errors import UserError

log = logging.getLogger(__name__)

# Ray's known-noisy lines, silenced where a setting exists (read by the driver, forwarded).
QUIET_ENV = {
    # Train reports queue one deep and are drained at this interval: the 2 s default costs up
    # to 2 s per epoch on small data.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_DEDUP_LOGS": "1",
}
# Only for a local Ray that we start: the preemption watcher is a cluster concern. (Ray's
# one-line token-authentication notice stays: it is worth knowing.)
LOCAL_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}


class ResourceError(UserError):
    """Asked for more CPUs or GPUs than this machine has: Ray would wait forever."""


def check_resources(cpus_needed: float, gpus_needed: float, hint: str) -> None:
    """Without RAY_ADDRESS (a local Ray sized to this machine), refuse what the machine cannot hold.

    ``hint`` names what the user can lower. Starts nothing: the driver calls it before it
    writes anything. On a cluster (RAY_ADDRESS set) nodes may join later, so nothing is checked.
    """
    if os.environ.get("RAY_ADDRESS"):
        return
    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    if cpus_needed > cpus or gpus_needed > gpus:
        raise ResourceError(
            f"this machine has {cpus} CPU(s) and {gpus} GPU(s) but {cpus_needed:g} CPU(s) and {gpus_needed:g} GPU(s) "
            f"are asked for; lower {hint}, or set RAY_ADDRESS to use a cluster"
        )


def init_ray(cpus_needed: float = 0, gpus_needed: float = 0, hint: str = "the request") -> None:
    """Join the cluster in RAY_ADDRESS, or start a local Ray sized to this machine.

    Locally, a request the machine cannot satisfy fails here, at once, instead of leaving
    Ray waiting for resources that never come.
    """
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return
    # Without ray[default] a cleaner polls the missing State API every second and logs each
    # failure as a warning: Ray's own log is kept to errors.
    quiet = {"logging_level": logging.WARNING, "logging_config": ray.LoggingConfig(log_level="ERROR")}
    if os.environ.get("RAY_ADDRESS"):
        log.info("joining the Ray cluster at %s", os.environ["RAY_ADDRESS"])
        ray.init(**quiet)
        return
    check_resources(cpus_needed, gpus_needed, hint)
    cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    started = time.perf_counter()
    # address="local": always a cluster of our own, never one that happens to run here.
    ray.init(address="local", num_cpus=cpus, num_gpus=gpus, include_dashboard=False, **quiet)
    log.info("started a local Ray (%d CPUs, %d GPUs) in %.1f s", cpus, gpus, time.perf_counter() - started)
