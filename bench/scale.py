"""Fleet-scale figures: prepare N zones on Ray Data or in one process (more parts to come).

    python bench/make_zones.py --zones 1000 --output /tmp/zones-1000.csv   # the input, once
    python bench/scale.py --zones 1000 --input /tmp/zones-1000.csv --path ray --cpus 2

Prints wall time, rows/s and the peak resident memory of the largest process (the driver, a
Ray worker, the raylet, ...), sampled every 0.1 s with psutil over the whole process tree,
and the shards' window counts. Ray is started here with ``--cpus`` CPUs, so Ray Data uses no
more. Each run prepares into a fresh folder (no reuse). The machine's load matters: report it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil  # requirements-dev.txt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_forecast import config as cfg  # noqa: E402
from lit_forecast.data.prepare import prepare  # noqa: E402


class PeakMemory:
    """Largest resident set of any one process in this process's tree, sampled in a thread."""

    def __init__(self, interval: float = 0.1):
        self.peak, self.where, self._stop = 0, "", threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            for proc in [me, *me.children(recursive=True)]:
                try:
                    rss = proc.memory_info().rss
                    if rss > self.peak:
                        self.peak, self.where = rss, proc.name()
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            time.sleep(interval)

    def stop(self) -> tuple[int, str]:
        self._stop.set()
        self._thread.join()
        return self.peak, self.where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zones", type=int, default=1000, help="zones in the input (for the label; default 1000)")
    parser.add_argument("--input", help="long-format timestamp,zone,value file (default /tmp/zones-<zones>.csv)")
    parser.add_argument("--path", choices=["local", "ray"], default="ray", help="data.prepare_with")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs given to Ray (ray path)")
    parser.add_argument("--shards", type=int, default=2, help="training shards (workers)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    source = args.input or f"/tmp/zones-{args.zones}.csv"
    config = cfg.validate(cfg.from_dict({"data": {
        "source": source, "sha256": None, "series_column": "zone", "prepare_with": args.path, "long_gaps": "drop"}}))
    memory = PeakMemory()
    started = time.perf_counter()
    if args.path == "ray":
        import ray

        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR")
    with tempfile.TemporaryDirectory(prefix="scale-") as folder:
        manifest = prepare(config, folder, num_shards=args.shards)
        wall = time.perf_counter() - started
    peak, where = memory.stop()
    rows = manifest.load_report["rows"]
    load = os.getloadavg()[0]
    print(f"prepare  zones {len(manifest.series):,}  rows {rows:,}  path {args.path}"
          + (f"  cpus {args.cpus}" if args.path == "ray" else "") + f"  shards {args.shards}")
    print(f"  wall {wall:.1f} s (incl. Ray start)  {rows / wall:,.0f} rows/s  "
          f"peak RSS of one process {peak / 2**30:.2f} GiB ({where})  load average {load:.1f} on {os.cpu_count()} cores")
    print(f"  windows: train {manifest.splits['train'].windows:,} -> shards {manifest.shard_windows} "
          f"(dropped {manifest.load_report['dropped_for_balance']}), val {manifest.splits['val'].windows:,}")


if __name__ == "__main__":
    main()
