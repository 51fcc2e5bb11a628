"""A train.py run whose worker is SIGKILLed after the first checkpoint: does it resume and finish?

    python -m bench.fleet_fault --output $OUT/fleet_fault.log -- --config configs/8gpu.yaml \\
        --data zones.csv --set data.series_column=zone --set cluster.gpus_per_worker=0.125 \\
        --set cluster.backend=gloo --set cluster.cpus_per_worker=1 --storage /tmp/runs --name fleet8

Everything after ``--`` goes to ``train.py`` (``--storage`` and ``--name`` are required there).
Once the run's first checkpoint is registered, one ``ray::RayTrainWorker`` is killed
(``bench.common.TrainRun``, as bench/training.py's recovery step); the run must then say
``RESUMED from checkpoint`` and end with its last epoch line. While the first attempt trains,
``nvidia-smi`` is asked which processes hold the GPU (8 workers sharing one GPU should show 8).
Prints a summary and writes train.py's whole output, timestamped, to ``--output``; exit
status 1 when a check fails. bench/device_run.sh runs it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from bench.common import TrainRun, add_output_argument


def gpu_processes() -> list[str]:
    """'pid, used memory' of each process holding a GPU, by nvidia-smi (empty without it)."""
    if not shutil.which("nvidia-smi"):
        return []
    query = ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"]
    return [
        line
        for line in subprocess.run(query, capture_output=True, text=True, timeout=20).stdout.splitlines()
        if line.strip()
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_argument(parser, "write train.py's whole output here", required=True)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    if "--storage" not in train_args or "--name" not in train_args:
        parser.error("train.py's arguments after -- must give --storage and --name")

    # A time box (timeout's SIGTERM) still writes the log and ends the run's processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = TrainRun(train_args)
    checks: dict[str, bool] = {}
    try:
        first_checkpoint = run.wait_for_first_checkpoint(timeout=args.timeout / 2)
        on_gpu = gpu_processes()
        workers, killed_at = run.kill_a_worker()
        run.wait(timeout=args.timeout, check=False)
    finally:
        run.stop()
        Path(args.output).write_text("\n".join(f"{t:8.1f} {line}" for t, line in run.lines) + "\n")

    output = run.output()
    epochs = [(int(a), int(b)) for a, b in re.findall(r"\bepoch (\d+)/(\d+)  ", output)]
    resumed = run.first(
        r"RESUMED from checkpoint \S+ \(epoch (\d+)/(\d+) done\); continuing with epoch (\d+)", after=killed_at
    )
    again = run.first(r"first training step done", after=killed_at)
    rates = re.findall(r"train/windows_per_s (\d+)", output)
    checks["exit status 0"] = run.proc.returncode == 0
    checks[f"{workers} training workers found and one killed"] = workers > 0
    checks["RESUMED after the kill"] = resumed is not None
    checks["last epoch line reached"] = bool(epochs) and epochs[-1][0] == epochs[-1][1]
    print(f"train.py {' '.join(train_args)}")
    print(f"  first checkpoint after        {first_checkpoint:.1f} s")
    print(f"  processes on the GPU then     {len(on_gpu)}: {'; '.join(on_gpu)}")
    print(
        f"  killed worker -> first step   {again[0] - killed_at:.1f} s"
        if again
        else "  killed worker -> first step   never"
    )
    print(f"  epoch lines                   {epochs}")
    print(f"  train/windows_per_s per epoch {', '.join(rates)} (all workers together)")
    print(f"  wall                          {run.elapsed():.1f} s; log {args.output}")
    for check, ok in checks.items():
        print(f"  {'PASS' if ok else 'FAIL'}  {check}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
