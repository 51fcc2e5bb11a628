"""The layout of a prepared dataset, shared by both executors (:mod:`lit_forecast.data.prepare`
on one process, :mod:`lit_forecast.data.ray_prepare` on Ray Data): which training windows go
to which shard, how a series is cut into segments, how a shard is written and checked, and
the manifest that records it all.

Each Parquet file holds *segments*, not windows: rows of ``series_id``, ``start`` (first slot),
``values`` (raw passengers, list<float32>) and ``window_starts`` (target-start offsets inside
the segment). Windows are cut on the fly, so storage is O(series length), not O(windows x window).
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lit_forecast import storage
from lit_forecast.config import DataConfig
from lit_forecast.data.manifest import Manifest, SeriesInfo, ShardCheck, SplitInfo
from lit_forecast.data.source import LoadReport, Series
from lit_forecast.data.splits import SPLITS, split_bounds, thin_evenly, window_starts
from lit_forecast.errors import DataError
from lit_forecast.spec import WindowSpec

VAL_FILE = "val.parquet"
SEGMENT_SCHEMA = pa.schema(
    [
        ("series_id", pa.string()),
        ("start", pa.timestamp("ns")),
        ("values", pa.list_(pa.float32())),
        ("window_starts", pa.list_(pa.int32())),
    ]
)
MAX_NAMED = 5  # damaged files named in one message


def train_shard_name(shard: int, num_shards: int) -> str:
    """File name of one training shard."""
    return f"train-{shard:05d}-of-{num_shards:05d}.parquet"


def check_counts(counts: dict[str, int], num_shards: int, data: DataConfig) -> None:
    """Every shard needs a training window, and every rank of the largest world a validation window."""
    if counts["train"] < num_shards:
        raise DataError(
            f"only {counts['train']} training windows for {num_shards} workers: move data.train_end "
            f"later, lower data.stride, or use fewer workers"
        )
    if counts["val"] < num_shards:
        lo, hi = split_bounds(data)["val"]
        raise DataError(
            f"only {counts['val']} validation windows (targets in [{lo}, {hi})) for {num_shards} workers; "
            f"every rank needs at least one: check data.train_end and data.val_end"
        )


# ---------------------------------------------------------------------------------------------
# The cut


def series_windows(series: Series, data: DataConfig) -> dict[str, np.ndarray]:
    """{split: target starts of the series' windows}; validation thinned to data.val_windows_per_series."""
    starts = {split: window_starts(series, split, data) for split in SPLITS}
    starts["val"] = thin_evenly(starts["val"], data.val_windows_per_series, series.series_id)
    return starts


def plan_train_shards(
    windows: list[tuple[str, int]], num_shards: int
) -> tuple[dict[str, list[tuple[int, int, int]]], int, int]:
    """Assign training windows to ``num_shards`` equal shards from per-series counts alone.

    ``windows``: (series_id, training windows) in series-id order. The series are laid end to
    end and cut into ``num_shards`` runs of ``total // num_shards`` windows: a shard holds whole
    series, and only the series that straddle a cut are split into two segments (at most
    ``num_shards - 1`` of them, each costing one extra window's overlap of storage). The last
    ``total % num_shards`` windows (< num_shards) are dropped so every shard holds the same
    number. Greedy largest-first packing would split nothing but must drop windows
    until every shard is as light as the lightest one (up to a whole series for few series).

    Returns ``({series_id: [(shard, first, end)]}, windows per shard, windows dropped)`` where
    ``[first, end)`` indexes that series' training window starts.
    """
    total = sum(n for _, n in windows)
    per_shard = total // num_shards
    plan: dict[str, list[tuple[int, int, int]]] = {}
    offset = 0
    for series_id, n in windows:
        lo, hi = offset, min(offset + n, per_shard * num_shards)
        while per_shard and lo < hi:
            shard = lo // per_shard
            end = min(hi, (shard + 1) * per_shard)
            plan.setdefault(series_id, []).append((shard, lo - offset, end - offset))
            lo = end
        offset += n
    return plan, per_shard, total - per_shard * num_shards


def rank_windows(shard_windows: list[int], rank: int, world: int) -> tuple[list[int], int, int]:
    """The training windows of ``rank`` of ``world`` workers: ``(shards, first, end)``.

    ``shard_windows``: windows in each of the K shards. The shards' windows are laid end to end
    and cut into ``world`` equal runs of ``total // world``; rank r takes run r: the shards
    ``shards`` it overlaps, and windows ``[first, end)`` of their windows read in that order.
    When ``world`` divides K (a dataset prepared for 8 workers, run on 8, 4, 2 or 1), a rank
    takes whole shards and every window is seen once per epoch; otherwise (6 of 8) ranks
    share the shards at their edges, and the last ``total % world`` (< world) windows are left
    out so that every rank takes the same number of steps. A world larger than K is refused.
    """
    if world > len(shard_windows):
        raise DataError(
            f"the dataset holds {len(shard_windows)} training shard(s), too few for {world} worker(s); "
            f"prepare it for {world} or more (python train.py --prepare-only --set cluster.num_workers={world})"
        )
    per_rank = sum(shard_windows) // world
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    bounds = np.concatenate([[0], np.cumsum(shard_windows)])
    shards = [k for k in range(len(shard_windows)) if bounds[k] < hi and bounds[k + 1] > lo]
    if not shards:
        raise DataError(f"{sum(shard_windows)} training windows cannot give each of {world} worker(s) one")
    first = lo - int(bounds[shards[0]])
    return shards, first, first + per_rank


def series_segments(
    series_id: str,
    start_ns: int,
    values: np.ndarray,
    train_starts: np.ndarray,
    val_starts: np.ndarray,
    plan: list[tuple[int, int, int]],
    train_files: list[str],
    data: DataConfig,
) -> list[tuple]:
    """One series cut into the segments of the files it lands in.

    Each segment is ``(file, series_id, start_ns, values, window_starts)``.

    ``values`` (T,): the series on its grid from ``start_ns``; ``train_starts``/``val_starts``:
    its windows' target starts; ``plan``: its ``(shard, first, end)`` runs of training windows
    (:func:`plan_train_shards`). A segment holds the slots its windows cover, as float32, and
    their target starts counted from its own first slot.
    """
    W, H, step = data.input_window, data.horizon, pd.Timedelta(data.freq).value

    def segment(file: str, targets: np.ndarray) -> tuple:
        lo, hi = int(targets[0]) - W, int(targets[-1]) + H
        return (
            file,
            series_id,
            start_ns + lo * step,
            values[lo:hi].astype(np.float32, copy=False),
            np.asarray(targets, dtype=np.int32) - lo,
        )

    out = [segment(train_files[shard], train_starts[first:end]) for shard, first, end in plan]
    if len(val_starts):
        out.append(segment(VAL_FILE, val_starts))
    return out


def segment_table(segments: list[tuple]) -> pa.Table:
    """Segments of :func:`series_segments` (one file's, in series order) as a shard's table."""
    columns = list(zip(*segments)) if segments else [[]] * 5
    return pa.Table.from_arrays(
        [pa.array(list(c), type=f.type) for c, f in zip(columns[1:], SEGMENT_SCHEMA)], schema=SEGMENT_SCHEMA
    )


def target_range(start: pd.Timestamp, starts: np.ndarray, data: DataConfig) -> tuple[str, str] | None:
    """First and last target slot of windows with target starts ``starts`` in a series from ``start``; None if none."""
    if not len(starts):
        return None
    step = pd.Timedelta(data.freq)
    return str(start + int(starts[0]) * step), str(start + (int(starts[-1]) + data.horizon - 1) * step)


# ---------------------------------------------------------------------------------------------
# Writing and checking a shard


def write_shard(location: str, table: pa.Table) -> ShardCheck:
    """Write one shard atomically (as storage.write_parquet) and return what its check will expect."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    storage.write_bytes(location, data)
    return ShardCheck(len(data), _footer_sha256(lambda n, at: data[at : at + n], len(data)))


def _footer_sha256(read_at, size: int) -> str:
    """sha256 of a Parquet file's footer: ``read_at(n, offset)`` reads bytes; raises ValueError if it has none."""
    if size < 12:
        raise ValueError("too short for a Parquet file")
    tail = read_at(8, size - 8)
    (length,) = struct.unpack("<I", tail[:4])
    if tail[4:] != b"PAR1" or length > size - 12:
        raise ValueError("no Parquet footer")
    return hashlib.sha256(read_at(length, size - 8 - length) + tail).hexdigest()


def check_shards(data_dir: str, manifest: Manifest) -> None:
    """Check every file of a prepared dataset against its manifest; a DataError names each that fails.

    Cheap: a size and a footer per file, no full read. A manifest of an older version records
    no sizes or footers: its files are checked to be readable shards (Parquet, segment schema).
    """
    fs, _ = storage.resolve(data_dir)
    damaged = []
    for name in manifest.files:
        _, path = storage.resolve(storage.join(data_dir, name))
        problem = _shard_problem(fs, path, manifest.shard_checks.get(name))
        if problem:
            damaged.append(f"{name}: {problem}")
    if not damaged:
        return
    shown = damaged[:MAX_NAMED] + (
        [f"... and {len(damaged) - MAX_NAMED} more file(s)"] if len(damaged) > MAX_NAMED else []
    )
    raise DataError(
        f"the prepared dataset in {data_dir} was changed after it was written:\n  "
        + "\n  ".join(shown)
        + f"\nIts files are derived from the source data: delete the folder {data_dir} and run the same command "
        "again to prepare it anew."
    )


def _shard_problem(fs, path: str, expected: ShardCheck | None) -> str | None:
    """What is wrong with one shard file, or None."""
    info = fs.get_file_info(path)
    size = info.size or 0
    if expected is not None and size != expected.bytes:
        return f"{size:,} bytes, not the {expected.bytes:,} written (truncated or replaced)"
    try:
        with fs.open_input_file(path) as f:
            footer = _footer_sha256(f.read_at, size)
            schema = pq.ParquetFile(f).schema_arrow
    except (ValueError, OSError, pa.ArrowException):
        return "not a readable Parquet file (truncated or replaced)"
    if not schema.equals(SEGMENT_SCHEMA, check_metadata=False):
        return f"holds columns {', '.join(schema.names)}, not a shard's ({', '.join(SEGMENT_SCHEMA.names)})"
    if expected is not None and footer != expected.footer_sha256:
        return "its contents differ from what was written (edited or replaced)"
    return None


# ---------------------------------------------------------------------------------------------
# The manifest


def span(ranges: list[tuple[str, str] | None]) -> tuple[str | None, str | None]:
    """(first, last) target over per-series ``target_range`` results; (None, None) if none."""
    ranges = [r for r in ranges if r is not None]
    return (min(a for a, _ in ranges), max(b for _, b in ranges)) if ranges else (None, None)


def build_manifest(
    data: DataConfig,
    *,
    counts: dict[str, int],
    targets: dict[str, tuple[str | None, str | None]],
    series: dict[str, SeriesInfo],
    num_shards: int,
    per_shard: int,
    dropped: int,
    report: LoadReport,
    points: int,
    checks: dict[str, ShardCheck],
) -> Manifest:
    """The manifest of a freshly written dataset (without fingerprint, creation time and source, which prepare adds).

    ``counts``/``targets``: each split's windows and (first, last) target; ``report``: what
    loading did; ``points``: slots of every series; ``dropped``: training windows left out
    so that every shard holds ``per_shard``; ``checks``: each written file's check.
    """
    bounds = split_bounds(data)
    train_files = [train_shard_name(r, num_shards) for r in range(num_shards)]
    return Manifest(
        window=WindowSpec(data.input_window, data.horizon, data.freq, data.stride, data.eval_stride),
        splits={
            split: SplitInfo([str(b) if b is not None else None for b in bounds[split]], counts[split], *targets[split])
            for split in SPLITS
        },
        series=series,
        num_shards=num_shards,
        shard_windows=[per_shard] * num_shards,
        train_files=train_files,
        val_file=VAL_FILE,
        data_config=dataclasses.asdict(data),
        load_report={
            "rows": report.rows,
            "points": points,
            "interpolated_gaps": report.interpolated_gaps,
            "interpolated_slots": report.interpolated_slots,
            "long_gaps": report.long_gaps,
            "dropped_for_balance": dropped,
        },
        shard_checks={name: checks[name] for name in [*train_files, VAL_FILE]},
    )
