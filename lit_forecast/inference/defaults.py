"""Every default of a forecast request, in one place: infer.py's flags, the request and the Ray fan-out read them."""

from __future__ import annotations

from lit_forecast.config import RunConfig

STORAGE = RunConfig().storage  # where the latest run is looked for: where training writes runs
BATCH_SIZE = 256  # windows per forward pass
WINDOWS_PER_TASK = 256  # windows each Ray task forecasts
CPUS_PER_TASK = 1.0
GPUS_PER_TASK = 0.0  # > 0: a share of a GPU per task, where the cluster has GPUs
MAX_RETRIES = 3  # a Ray task whose worker dies, or which fails reading the checkpoint, is retried this often
RECALIBRATE_DAYS = 14.0  # the bands refitted at each cutoff on its series' forecasts of the days before it; 0: off
