"""The one inference module that imports Ray: stateless tasks that forecast chunks of windows.

Each task gets the checkpoint's bytes (or a URI every node can read) and a chunk of windows
as numpy arrays, loads the model once, and forecasts the chunk in batches with the same plain
call as :func:`lit_forecast.inference.forecaster.forecast`. Results come back in window order.
"""

from __future__ import annotations

import logging

import numpy as np
import ray
import torch

from lit_forecast import ray_cluster, storage
from lit_forecast.data.windows import WindowSet
from lit_forecast.errors import CheckpointError
from lit_forecast.inference import defaults
from lit_forecast.inference.checkpoint import load_checkpoint
from lit_forecast.inference.forecaster import forecast, model_inputs
from lit_forecast.layout import checkpoint_file
from lit_forecast.progress import Progress

log = logging.getLogger(__name__)


@ray.remote
def forecast_chunk(
    checkpoint: str | bytes, name: str, inputs: dict[str, np.ndarray], batch_size: int, use_gpu: bool, threads: int
) -> np.ndarray:
    """One task: load the checkpoint, forecast the chunk's windows -> (n, H, Q) float64 passengers."""
    torch.set_num_threads(max(1, threads))
    device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
    model = load_checkpoint(checkpoint, device, name=name).model
    return forecast(model, inputs, batch_size)


def start_ray(num_cpus: float, num_gpus: float) -> None:
    """Join the cluster in RAY_ADDRESS, or start a local Ray that can hold a task of ``num_cpus`` and ``num_gpus``.

    A local Ray is sized to this machine: a task asking for more would wait forever, so it is
    refused here (a ResourceError), once, before anything is written. Without GPUs here, tasks
    run on CPU and ask for none. Does nothing when Ray is already running.
    """
    ray_cluster.init_ray(num_cpus, num_gpus if torch.cuda.device_count() else 0, "--num-cpus or --num-gpus (per task)")


def forecast_remote(
    checkpoint: str,
    windows: WindowSet,
    windows_per_task: int = defaults.WINDOWS_PER_TASK,
    num_cpus: float = defaults.CPUS_PER_TASK,
    num_gpus: float = defaults.GPUS_PER_TASK,
    batch_size: int = defaults.BATCH_SIZE,
    max_retries: int = defaults.MAX_RETRIES,
) -> np.ndarray:
    """Forecasts (N, H, Q) float64 in passengers (see forecaster.forecast) from ceil(N / windows_per_task) Ray tasks.

    ``num_gpus`` > 0 asks each task for that share of a GPU when the cluster has GPUs; without
    any, tasks run on CPU. A task whose worker dies, or which fails reading the checkpoint
    (an OSError, e.g. from remote storage), is retried up to ``max_retries`` times; a checkpoint
    that reads but cannot be used fails at once with a CheckpointError naming it.
    """
    if windows_per_task < 1:
        raise ValueError(f"windows per task must be >= 1, got {windows_per_task}")
    start_ray(num_cpus, num_gpus)
    if num_gpus and not ray.cluster_resources().get("GPU"):
        log.warning("--num-gpus %s asked, but the Ray cluster has no GPU: forecasting on CPU", num_gpus)
        num_gpus = 0
    path = checkpoint_file(checkpoint)
    # Workers on other nodes cannot read a local path: ship local checkpoints as bytes, once.
    payload = path if storage.is_uri(path) else ray.put(storage.read_bytes(path))
    task = forecast_chunk.options(
        num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries, retry_exceptions=[OSError]
    )
    refs = [
        task.remote(
            payload, path, model_inputs(windows, lo, lo + windows_per_task), batch_size, num_gpus > 0, int(num_cpus)
        )
        for lo in range(0, len(windows), windows_per_task)
    ]
    log.info(
        "forecasting %s window%s in %s Ray task%s (%g CPU%s each)",
        f"{len(windows):,}",
        "" if len(windows) == 1 else "s",
        f"{len(refs):,}",
        "" if len(refs) == 1 else "s",
        num_cpus,
        f", {num_gpus:g} GPU" if num_gpus else "",
    )
    sizes = {ref: min(windows_per_task, len(windows) - i * windows_per_task) for i, ref in enumerate(refs)}
    progress = Progress("forecast", total=len(windows))
    try:
        pending = list(refs)
        while pending:  # a line every few seconds while tasks finish, then the results in window order
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=progress.every_s)
            progress.advance(sum(sizes[ref] for ref in ready))
        progress.done()
        return np.concatenate(ray.get(refs))
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, CheckpointError):  # a user error, not a crash: no Ray traceback
            raise err.cause from None
        raise
