"""A train.py run whose worker is SIGKILLed after the first checkpoint: does it resume and finish?

    python bench/fleet_fault.py --log $OUT/fleet_fault.log -- --config configs/8gpu.yaml \\
        --data zones.csv --set data.series_column=series_id --set cluster.gpus_per_worker=0.125 \\
        --set cluster.backend=gloo --set cluster.cpus_per_worker=1 --storage /tmp/runs --name fleet8

Everything after ``--`` goes to ``train.py``. Once the run's first checkpoint is registered,
one ``ray::RayTrainWorker`` is killed; the run must then say ``RESUMED from checkpoint`` and
end with its last epoch line. While the first attempt trains, ``nvidia-smi`` is asked which
processes hold the GPU (8 workers sharing one GPU should show 8). Prints a summary; exit
status 1 when a check fails. bench/device_run.sh runs it for issue 12.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from training import Watched, _cmdline, _tree  # bench/training.py: the same watcher as the CPU benchmark

from lit_forecast import layout


def gpu_processes() -> list[str]:
    """'pid, used memory' of each process holding a GPU, by nvidia-smi (empty without it)."""
    if not shutil.which("nvidia-smi"):
        return []
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"]
    return [line for line in subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log", required=True, help="write train.py's whole output here")
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    storage = train_args[train_args.index("--storage") + 1]
    name = train_args[train_args.index("--name") + 1]
    snapshot = Path(storage, name, layout.RAY_SNAPSHOT_FILE)

    # A time box (timeout's SIGTERM) still writes the log and ends the run's processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = Watched(train_args)
    checks: dict[str, bool] = {}
    try:
        while not (snapshot.is_file() and layout.CHECKPOINT_PREFIX in snapshot.read_text()):
            if run.proc.poll() is not None or time.monotonic() - run.started > args.timeout / 2:
                raise SystemExit("no checkpoint: the run ended or stalled before its first one")
            time.sleep(0.2)
        first_checkpoint = time.monotonic() - run.started
        on_gpu = gpu_processes()
        workers = [p.pid for p in _tree(run.proc.pid)[1:] if _cmdline(p).startswith("ray::RayTrainWorker")]
        killed_at = time.monotonic() - run.started
        if workers:
            os.kill(workers[-1], signal.SIGKILL)
        run.proc.wait(timeout=args.timeout)
        time.sleep(0.5)  # let the reader drain
    finally:
        if run.proc.poll() is None:  # the driver and the local Ray it started
            for proc in reversed(_tree(run.proc.pid)):
                with contextlib.suppress(psutil.Error, OSError):
                    proc.kill()
        Path(args.log).write_text("\n".join(f"{t:8.1f} {line}" for t, line in run.lines) + "\n")

    output = "\n".join(line for _, line in run.lines)
    epochs = [(int(a), int(b)) for a, b in re.findall(r"\bepoch (\d+)/(\d+)  ", output)]
    resumed = run.first(r"RESUMED from checkpoint \S+ \(epoch (\d+)/(\d+) done\); continuing with epoch (\d+)", after=killed_at)
    again = run.first(r"first training step done", after=killed_at)
    rates = re.findall(r"train/windows_per_s (\d+)", output)
    checks["exit status 0"] = run.proc.returncode == 0
    checks[f"{len(workers)} training workers found and one killed"] = len(workers) > 0
    checks["RESUMED after the kill"] = resumed is not None
    checks["last epoch line reached"] = bool(epochs) and epochs[-1][0] == epochs[-1][1]
    print(f"train.py {' '.join(train_args)}")
    print(f"  first checkpoint after        {first_checkpoint:.1f} s")
    print(f"  processes on the GPU then     {len(on_gpu)}: {'; '.join(on_gpu)}")
    print(f"  killed worker -> first step   {again[0] - killed_at:.1f} s" if again else "  killed worker -> first step   never")
    print(f"  epoch lines                   {epochs}")
    print(f"  train/windows_per_s per epoch {', '.join(rates)} (all workers together)")
    print(f"  wall                          {time.monotonic() - run.started:.1f} s; log {args.log}")
    for check, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {check}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
