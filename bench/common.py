"""What the bench scripts share: argument conventions, data loading, the process-tree memory
sampler, a ``train.py`` run watched from outside, and the synthetic fleet.

Bench scripts run from the repository root as modules (``python -m bench.training``); tests
import them as ``bench.<name>`` (pytest puts the root on the path, pyproject.toml).

Argument conventions: ``--data`` is always a source (a CSV or Parquet file or folder, as
``data.source``), ``--output`` always the results file a script writes; a script without
``--output`` prints its figures only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil  # requirements-dev.txt
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from lit_forecast import layout
from lit_forecast.config import DataConfig

ROOT = Path(__file__).resolve().parents[1]

# -- arguments and data ---------------------------------------------------------------------------


def add_data_argument(parser: argparse.ArgumentParser, help: str, **kwargs) -> None:
    """``--data SOURCE``: a CSV or Parquet source, as ``data.source``."""
    parser.add_argument("--data", metavar="SOURCE", help=help, **kwargs)


def add_output_argument(parser: argparse.ArgumentParser, help: str, **kwargs) -> None:
    """``--output FILE``: the results file the script writes."""
    parser.add_argument("--output", metavar="FILE", help=help, **kwargs)


def data_config(source: str | None = None, series_column: str | None = None) -> DataConfig:
    """The data settings for ``source`` (default the NAB file): its checksum is checked for the NAB file only."""
    default = DataConfig()
    source = source or default.source
    return DataConfig(
        source=source, sha256=default.sha256 if source == default.source else None, series_column=series_column
    )


def load_average() -> list[float]:
    """1-, 5- and 15-minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


# -- memory of a process tree ---------------------------------------------------------------------


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants (those still alive)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


class TreeMemory:
    """Resident memory of a process and its descendants, sampled every ``interval`` s in a thread.

    ``peak_total``: the largest sum over the tree (bytes); ``peak_process``: the largest single
    process (bytes), named by ``peak_name``. Use as a context manager or call ``stop()``.
    """

    def __init__(self, pid: int | None = None, interval: float = 0.1):
        self.pid = pid or os.getpid()
        self.peak_total = self.peak_process = 0
        self.peak_name = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(interval)

    def sample(self) -> None:
        """Read the tree's memory once and keep the peaks."""
        total = 0
        for proc in process_tree(self.pid):
            try:
                rss = proc.memory_info().rss
                if rss > self.peak_process:
                    self.peak_process, self.peak_name = rss, proc.name()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # ended between listing and reading
            total += rss
        self.peak_total = max(self.peak_total, total)

    def stop(self) -> TreeMemory:
        """End the sampling thread (one last sample first); returns self."""
        if not self._stop.is_set():
            self.sample()
            self._stop.set()
            self._thread.join()
        return self

    def __enter__(self) -> TreeMemory:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# -- a train.py run, watched ----------------------------------------------------------------------


class TrainRun:
    """A ``train.py`` subprocess: output lines timestamped on arrival, the tree's memory sampled.

    ``kill_a_worker()`` SIGKILLs one Ray Train worker once the run's first checkpoint is
    registered: the one kill-a-worker harness of the bench.
    """

    def __init__(self, args: list[str]):
        self.args = args
        self.started = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "train.py", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self.memory = TreeMemory(self.proc.pid, interval=0.5)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic() - self.started, line.rstrip()))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def wait(self, timeout: float, check: bool = True) -> float:
        """Wait for the end (raises SystemExit with the last lines on failure when ``check``); returns the wall time."""
        self.proc.wait(timeout=timeout)
        time.sleep(0.5)  # let the reader drain
        self.memory.stop()
        if check and self.proc.returncode:
            print("\n".join(line for _, line in self.lines[-40:]))
            raise SystemExit(f"train.py failed with exit code {self.proc.returncode}")
        return self.elapsed()

    def first(self, pattern: str, after: float = 0.0) -> tuple[float, re.Match] | None:
        """(seconds since launch, match) of the first output line from ``after`` on matching ``pattern``."""
        for t, line in list(self.lines):
            if t >= after and (m := re.search(pattern, line)):
                return t, m
        return None

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def workers(self) -> list[int]:
        """Process ids of the ``ray::RayTrainWorker`` processes under the driver."""
        return [p.pid for p in process_tree(self.proc.pid)[1:] if _cmdline(p).startswith("ray::RayTrainWorker")]

    def wait_for_first_checkpoint(self, timeout: float) -> float:
        """Seconds since launch when the first checkpoint is registered (the run's Ray snapshot names one)."""
        storage, name = self.args[self.args.index("--storage") + 1], self.args[self.args.index("--name") + 1]
        snapshot = Path(storage, name, layout.RAY_SNAPSHOT_FILE)
        while not (snapshot.is_file() and layout.CHECKPOINT_PREFIX in snapshot.read_text()):
            if self.proc.poll() is not None or self.elapsed() > timeout:
                raise SystemExit("no checkpoint: the run ended or stalled before its first one")
            time.sleep(0.1)
        return self.elapsed()

    def kill_a_worker(self) -> tuple[int, float]:
        """SIGKILL the last Ray Train worker found; returns (workers found, seconds since launch of the kill)."""
        workers = self.workers()
        killed_at = self.elapsed()
        if workers:
            os.kill(workers[-1], signal.SIGKILL)
        return len(workers), killed_at

    def stop(self) -> None:
        """Kill the driver and the local Ray it started, if still running."""
        if self.proc.poll() is None:
            for proc in reversed(process_tree(self.proc.pid)):
                with contextlib.suppress(psutil.Error, OSError):
                    proc.kill()
        self.memory.stop()


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


# -- the synthetic fleet --------------------------------------------------------------------------
# A city series split into N taxi zones (bench/make_zones.py writes it; bench/gpu.py trains on it).

SHARE_RANGE = (1 / 5000, 1 / 10)  # zone level as a share of the city total: 500x between the extremes
MAX_SHIFT = 3  # slots of daily-timing shift, either way
DISPERSION_RANGE = (20.0, 200.0)  # negative-binomial size r: variance mu + mu^2 / r
MAX_GAPS = 4  # missing runs per zone
MAX_GAP_SLOTS = 4  # 2 h of 30 min slots: data.max_gap interpolates it
ZONES_PER_CHUNK = 50  # ~0.5 M rows per written batch


def synthetic_city(slots: int, slots_per_day: int = 48, seed: int = 0) -> np.ndarray:
    """(slots,) a city-like demand series without any data file: daily and weekly cycles around 15,000, noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(slots)
    daily = 1 + 0.6 * np.sin(2 * np.pi * t / slots_per_day)
    weekly = 1 + 0.2 * np.sin(2 * np.pi * t / (7 * slots_per_day))
    return np.maximum(15_000 * daily * weekly * rng.normal(1.0, 0.05, size=slots), 0.0)


@dataclass
class Zone:
    """How one zone is derived from the city series."""

    name: str
    share: float  # expected value = share x city value
    shift: int  # slots; positive: the zone's day runs later than the city's
    dispersion: float  # negative-binomial size
    gaps: list[tuple[int, int]]  # half-open slot ranges left out


def zone_names(zones: int) -> list[str]:
    """'z000', 'z001', ... wide enough that they sort in index order."""
    width = max(3, len(str(zones - 1)))
    return [f"z{i:0{width}d}" for i in range(zones)]


def draw_zones(zones: int, slots: int, slots_per_day: int, seed: int) -> list[Zone]:
    """Parameters of every zone: levels stratified over SHARE_RANGE, the rest from each zone's own stream."""
    rng = np.random.default_rng([seed, zones])
    strata = rng.permutation(zones)  # zone i gets level stratum strata[i]
    lo, hi = np.log(SHARE_RANGE[0]), np.log(SHARE_RANGE[1])
    out = []
    for i, name in enumerate(zone_names(zones)):
        z = np.random.default_rng([seed, zones, i])
        u = (strata[i] + z.uniform()) / zones
        share = float(np.exp(lo + u * (hi - lo)))
        dispersion = float(np.exp(z.uniform(np.log(DISPERSION_RANGE[0]), np.log(DISPERSION_RANGE[1]))))
        shift = int(z.integers(-MAX_SHIFT, MAX_SHIFT + 1))
        out.append(Zone(name, share, shift, dispersion, _gaps(z, slots, slots_per_day)))
    return out


def _gaps(rng: np.random.Generator, slots: int, slots_per_day: int) -> list[tuple[int, int]]:
    """0..MAX_GAPS runs of 1..MAX_GAP_SLOTS slots, each inside one day (not on its last slot), on distinct days."""
    days = slots // slots_per_day
    count = int(rng.integers(0, MAX_GAPS + 1))
    # Days 1 .. days-2: never the first or last day, so every gap has known values on both sides.
    chosen = np.sort(rng.choice(np.arange(1, days - 1), size=min(count, max(days - 2, 0)), replace=False))
    gaps = []
    for day in chosen:
        length = int(rng.integers(1, MAX_GAP_SLOTS + 1))
        start = int(rng.integers(0, slots_per_day - length))  # ends before the day's last slot
        gaps.append((day * slots_per_day + start, day * slots_per_day + start + length))
    return gaps


def zone_counts(city: np.ndarray, zone: Zone, seed: int, zones: int, index: int) -> np.ndarray:
    """(T,) integer counts of one zone from the city series (T,), on every slot (gaps not applied)."""
    T = len(city)
    rng = np.random.default_rng([seed, zones, index, 1])  # the counts' own stream
    expected = zone.share * city[np.clip(np.arange(T) - zone.shift, 0, T - 1)]
    rate = rng.gamma(zone.dispersion, expected / zone.dispersion)  # mean expected, variance expected^2 / r
    return rng.poisson(rate)


def zone_values(city: np.ndarray, zone: Zone, seed: int, zones: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept slot indices (T',), integer counts (T',)) of one zone: its counts without its gaps."""
    counts = zone_counts(city, zone, seed, zones, index)
    keep = np.ones(len(city), dtype=bool)
    for s, e in zone.gaps:
        keep[s:e] = False
    idx = np.flatnonzero(keep)
    return idx, counts[idx]


def fleet_matrix(city: np.ndarray, zones: int, slots_per_day: int, seed: int = 0) -> np.ndarray:
    """(zones, T) float counts of every zone on every slot (no gaps): the fleet as one array."""
    params = draw_zones(zones, len(city), slots_per_day, seed)
    return np.stack([zone_counts(city, z, seed, zones, i) for i, z in enumerate(params)]).astype(np.float64)


def generate(
    city: np.ndarray,
    times: np.ndarray,
    zones: int,
    seed: int,
    slots_per_day: int,
    zones_per_chunk: int = ZONES_PER_CHUNK,
) -> Iterator[pa.Table]:
    """Tables of ``timestamp`` (timestamp[s]), ``zone`` (string), ``value`` (int64), a chunk of zones each.

    city (T,) the source values on a regular grid, times (T,) datetime64 of its slots.
    """
    params = draw_zones(zones, len(city), slots_per_day, seed)
    times = times.astype("datetime64[s]")
    for lo in range(0, zones, zones_per_chunk):
        chunk = params[lo : lo + zones_per_chunk]
        parts = [zone_values(city, z, seed, zones, lo + j) for j, z in enumerate(chunk)]
        idx = np.concatenate([p[0] for p in parts])
        codes = np.repeat(np.arange(len(chunk), dtype=np.int32), [len(p[0]) for p in parts])
        names = pa.DictionaryArray.from_arrays(pa.array(codes), pa.array([z.name for z in chunk])).cast(pa.string())
        yield pa.table(
            {
                "timestamp": pa.array(times[idx]),
                "zone": names,
                "value": pa.array(np.concatenate([p[1] for p in parts]).astype(np.int64)),
            }
        )


def write_fleet(tables: Iterator[pa.Table], output: str) -> int:
    """Write the chunks to ``output`` (.csv or .parquet) as they come; returns the row count."""
    rows = 0
    if output.endswith(".parquet"):
        writer = None
        for table in tables:
            writer = writer or pq.ParquetWriter(output, table.schema, compression="zstd")
            writer.write_table(table)
            rows += table.num_rows
        if writer:
            writer.close()
    elif output.endswith(".csv"):
        with open(output, "wb") as sink:
            sink.write(b"timestamp,zone,value\n")  # the CSV writer would quote the header
            writer = None
            for table in tables:
                writer = writer or pa_csv.CSVWriter(
                    sink,
                    table.schema,
                    write_options=pa_csv.WriteOptions(include_header=False, quoting_style="none", batch_size=1 << 16),
                )
                writer.write_table(table)
                rows += table.num_rows
            if writer:
                writer.close()
    else:
        raise ValueError(f"{output}: the file name must end in .csv or .parquet")
    return rows
