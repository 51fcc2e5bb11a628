"""Starting or joining Ray, quietly: shared by training and inference (no Ray Train here)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import ray

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


def _gpu_count() -> int:
    """GPUs of this machine. Torch is imported here only: Ray Data workers import this module
    (through the data layer) and should not pay torch's 2-3 s start for it."""
    import torch

    return torch.cuda.device_count()


def check_resources(cpus_needed: float, gpus_needed: float, hint: str) -> None:
    """Without RAY_ADDRESS (a local Ray sized to this machine), refuse what the machine cannot hold.

    ``hint`` names what the user can lower. Starts nothing: the driver calls it before it
    writes anything. On a cluster (RAY_ADDRESS set) nodes may join later, so nothing is checked.
    """
    if os.environ.get("RAY_ADDRESS"):
        return
    cpus, gpus = os.cpu_count() or 1, _gpu_count()
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
    _leave_sigterm_to_the_driver()
    with _keep_sigterm_handler():
        _init_ray(cpus_needed, gpus_needed, hint)


@contextlib.contextmanager
def _keep_sigterm_handler() -> Iterator[None]:
    """A SIGTERM during ``ray.init`` ends it through the script's own handler, even mid-fork.

    ``ray.init`` installs a SIGTERM handler of its own (``sys.exit``). Worse, a SIGTERM that lands
    while it forks Ray's processes raises inside a fork hook, where Python prints the exception
    and drops it: the driver would carry on. So for the length of the call Ray's handler is the
    script's (or Ray's ``sys.exit`` where the script has none), and an exception a fork hook
    dropped is raised again, quietly, once ``ray.init`` returns. Afterwards the script's handler is
    put back. If a later Ray moves the hook, its own handler simply stays in place.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    handler = before if callable(before) else lambda signum, frame: sys.exit(signum)
    raised: list[BaseException] = []

    def handle(signum, frame) -> None:
        try:
            handler(signum, frame)
        except BaseException as err:
            raised.append(err)
            raise

    hooks, unraisable = ray._private.utils, sys.unraisablehook
    ray_installs = getattr(hooks, "set_sigterm_handler", None)
    if ray_installs is not None:
        hooks.set_sigterm_handler = lambda _ray_handler: signal.signal(signal.SIGTERM, handle)
    sys.unraisablehook = lambda hook: None if hook.exc_value in raised else unraisable(hook)
    try:
        yield
    finally:
        sys.unraisablehook = unraisable
        if ray_installs is not None:
            hooks.set_sigterm_handler = ray_installs
        if before is not None:
            signal.signal(signal.SIGTERM, before)
    if raised:  # ray.init returned: a fork hook swallowed it
        raise raised[0]


def _init_ray(cpus_needed: float, gpus_needed: float, hint: str) -> None:
    # Without ray[default] a cleaner polls the missing State API every second and logs each
    # failure as a warning: Ray's own log is kept to errors.
    quiet = {"logging_level": logging.WARNING, "logging_config": ray.LoggingConfig(log_level="ERROR")}
    if os.environ.get("RAY_ADDRESS"):
        log.info("joining the Ray cluster at %s", os.environ["RAY_ADDRESS"])
        ray.init(**quiet)
        _say_if_short(cpus_needed, gpus_needed, hint)
        return
    check_resources(cpus_needed, gpus_needed, hint)
    cpus, gpus = os.cpu_count() or 1, _gpu_count()
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)
    started = time.perf_counter()
    # address="local": always a cluster of our own, never one that happens to run here. Ray's own
    # clients inside it (Ray Train's PlacementGroupCleaner asks the State API for its controller)
    # look for "the" cluster with no address, and with another Ray on the machine fail with a
    # traceback ("Found multiple active Ray instances"). So the cluster's address is fixed before
    # it starts (its GCS port, RAY_GCS_SERVER_PORT, read by the head node in this process) and
    # given to every Ray worker of the job as RAY_ADDRESS; this process's environment is left alone.
    port = _free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"
    saved = os.environ.get(GCS_PORT_ENV)
    os.environ[GCS_PORT_ENV] = str(port)
    try:
        ray.init(
            address="local",
            num_cpus=cpus,
            num_gpus=gpus,
            include_dashboard=False,
            runtime_env={"env_vars": {"RAY_ADDRESS": address}},
            **quiet,
        )
    finally:
        if saved is None:
            os.environ.pop(GCS_PORT_ENV, None)
        else:
            os.environ[GCS_PORT_ENV] = saved
    if ray.get_runtime_context().gcs_address != address:  # the port was taken meanwhile: Ray's clients may complain
        log.debug("local Ray started at %s, not %s", ray.get_runtime_context().gcs_address, address)
    log.info("started a local Ray (%d CPUs, %d GPUs) in %.1f s", cpus, gpus, time.perf_counter() - started)


def _leave_sigterm_to_the_driver() -> None:
    """Keep Ray's C++ failure-signal handler out of this process.

    It catches SIGTERM too: it prints a stack dump and then aborts the driver (status 134), where
    the scripts end with one line and status 143 (cli.interrupts). Ray reads this switch (env
    RAY_DISABLE_FAILURE_SIGNAL_HANDLER) when it imports, and its core worker looks at it in
    ``ray.init``: set here, for this driver only, so Ray's workers keep their crash dumps. If a
    later Ray moves it, the dump simply comes back.
    """
    try:
        from ray._private import ray_constants
    except ImportError:
        return
    if hasattr(ray_constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"):
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True


def _say_if_short(cpus_needed: float, gpus_needed: float, hint: str) -> None:
    """On a cluster, one warning if the request exceeds every resource it has now: Ray waits for more.

    Not an error: an autoscaler or nodes joining later can supply it. But a run that only waits
    should say why.
    """
    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0.0), total.get("GPU", 0.0)
    if cpus_needed > cpus or gpus_needed > gpus:
        log.warning(
            "the Ray cluster at %s has %g CPU(s) and %g GPU(s) in all, but %g CPU(s) and %g GPU(s) are asked for: "
            "this waits until nodes join (or an autoscaler adds them); Ctrl-C stops it, or lower %s",
            os.environ["RAY_ADDRESS"],
            cpus,
            gpus,
            cpus_needed,
            gpus_needed,
            hint,
        )


GCS_PORT_ENV = "RAY_GCS_SERVER_PORT"  # ray._private.ray_constants.GCS_PORT_ENVIRONMENT_VARIABLE


def _free_port() -> int:
    """A TCP port nobody listens on now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _local_raylet() -> Path | None:
    """/proc/<pid>/stat of the raylet this process started (Linux); None elsewhere or when joined."""
    if os.environ.get("RAY_ADDRESS"):
        return None
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name, rest = text[text.find("(") + 1 : text.rfind(")")], text[text.rfind(")") + 2 :].split()
        if name == "raylet" and len(rest) > 1 and int(rest[1]) == os.getpid():
            return stat
    return None


def _gone(stat: Path) -> bool:
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie is dead, not yet reaped
    except (OSError, IndexError):
        return True


@contextlib.contextmanager
def exit_if_local_ray_dies(message: str, interval: float = 0.2) -> Iterator[None]:
    """While the block runs, exit with status 2 and ``error: <message>`` as soon as the raylet
    of the local Ray this process started is gone (killed, out of memory).

    Ray's own core worker ends the driver with status 1 some seconds after its raylet dies,
    from C++, where no exception reaches Python; this watcher speaks first. A no-op on a
    joined cluster (RAY_ADDRESS) and where /proc does not exist.
    """
    stat = _local_raylet()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(interval):
            if _gone(stat):
                print(f"error: {message}", file=sys.stderr, flush=True)
                os._exit(2)  # from a thread: sys.exit would end only the thread

    if stat is not None:
        threading.Thread(target=watch, name="raylet-watch", daemon=True).start()
    try:
        yield
    finally:
        done.set()  # before any shutdown ends the raylet on purpose
