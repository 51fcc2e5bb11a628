"""CSV -> validated regular series -> splits and scaler -> per-worker Parquet shards + manifest.

Layout of a prepared dataset folder (local or any pyarrow.fs URI)::

    manifest.json                  written last: its presence means every file below is complete
    config.yaml                    the resolved config that produced it
    train-00000-of-00002.parquet   one per training worker, equal window counts
    val.parquet                    read by every rank, each rank taking every N-th window

The test period (after ``data.val_end``) is counted in the manifest but not written: nothing
trains or selects on it; ``infer.py`` backtests it from the source data.

Each Parquet file holds *segments*, not windows: rows of ``series_id``, ``start`` (first slot),
``values`` (raw passengers, list<float32>) and ``window_starts`` (target-start offsets inside
the segment). Windows are cut on the fly, so storage is O(series length), not O(windows x window).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs

from lit_forecast import storage
from lit_forecast.config import Config, DataConfig, dump
from lit_forecast.data.manifest import FORMAT_VERSION, MANIFEST_FILE, Manifest, SeriesInfo, SplitInfo, read_manifest
from lit_forecast.data.source import LoadReport, Series, Source, fetch, load_series
from lit_forecast.data.splits import SPLITS, fit_stats, split_bounds, thin_evenly, window_starts
from lit_forecast.errors import DataError
from lit_forecast.spec import WindowSpec

log = logging.getLogger(__name__)

VAL_FILE = "val.parquet"
RAY_ABOVE_BYTES = 64 << 20  # data.prepare_with=auto: inputs larger than this are prepared on Ray Data
SEGMENT_SCHEMA = pa.schema(
    [
        ("series_id", pa.string()),
        ("start", pa.timestamp("ns")),
        ("values", pa.list_(pa.float32())),
        ("window_starts", pa.list_(pa.int32())),
    ]
)


def prepare_with(data: DataConfig, source: Source) -> str:
    """'local' or 'ray': ``data.prepare_with``, and for 'auto' Ray above RAY_ABOVE_BYTES of input.

    Bytes stand in for rows (a long-format CSV row is ~28 bytes, so 64 MiB is ~2.4 M rows):
    they are known before reading. Below that, starting Ray costs more than it saves.
    """
    if data.prepare_with != "auto":
        return data.prepare_with
    fs, path = storage.resolve(source.location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        size = sum(f.size or 0 for f in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if f.type == pafs.FileType.File)
    else:
        size = info.size or 0
    return "ray" if size > RAY_ABOVE_BYTES else "local"


def train_shard_name(rank: int, num_shards: int) -> str:
    """File name of one rank's training shard."""
    return f"train-{rank:05d}-of-{num_shards:05d}.parquet"


def fingerprint(data: DataConfig, source_sha256: str, num_shards: int) -> str:
    """Identity of a prepared dataset: same source bytes, data config and shard count."""
    settings = dataclasses.asdict(data)
    settings.pop("cache_dir")  # where a download is cached does not change the data
    settings.pop("source")  # the bytes (sha256) matter, not where they came from
    settings.pop("prepare_with")  # both paths write the same shards
    if settings["val_windows_per_series"] is None:  # the default: datasets prepared before the key existed stay valid
        settings.pop("val_windows_per_series")
    blob = json.dumps({"format": FORMAT_VERSION, "sha256": source_sha256, "data": settings, "shards": num_shards}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare(config: Config, data_dir: str, num_shards: int | None = None) -> Manifest:
    """Prepare (or reuse) the dataset for ``num_shards`` training workers in ``data_dir``.

    Returns the manifest. Idempotent: a complete dataset with the same fingerprint is reused.
    Atomic: every file is written under a temporary name and moved into place, and the manifest
    comes last, so an interrupted prepare leaves no manifest pointing at partial files.
    """
    num_shards = num_shards or config.cluster.num_workers
    source = fetch(config.data)
    key = fingerprint(config.data, source.sha256, num_shards)
    manifest_path = storage.join(data_dir, MANIFEST_FILE)
    if storage.exists(manifest_path):
        try:
            old = storage.read_json(manifest_path)
        except ValueError:  # truncated or damaged: the dataset is derived, so prepare it again
            old = None
        old = old if isinstance(old, dict) else {}
        if old.get("fingerprint") == key and old.get("format") == FORMAT_VERSION:
            ready = read_manifest(data_dir, reused=True)
            if all(storage.exists(storage.join(data_dir, f)) for f in ready.files):
                log.info("reusing prepared dataset in %s (same source and config)", data_dir)
                return ready
        log.info("dataset in %s was prepared from another source or config: preparing again", data_dir)

    if prepare_with(config.data, source) == "ray":
        from lit_forecast.data.ray_prepare import prepare_on_ray  # imports Ray: only when it is used

        written = prepare_on_ray(
            config, data_dir, num_shards, source, before_write=lambda: storage.delete(manifest_path),
            check_counts=lambda counts: _check_counts(counts, num_shards, config.data),
            train_files=[train_shard_name(r, num_shards) for r in range(num_shards)], val_file=VAL_FILE, segment_schema=SEGMENT_SCHEMA,
        )
    else:
        series, report = load_series(source, config.data)  # validates everything before any write
        storage.delete(manifest_path)  # before any file is replaced: no manifest points at partial files
        written = _write(config, data_dir, num_shards, series, report)
    manifest = dataclasses.replace(
        written,
        fingerprint=key,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        source={"origin": source.origin, "location": source.location, "sha256": source.sha256},
    )
    storage.write_text(storage.join(data_dir, "config.yaml"), dump(config))
    storage.write_json(manifest_path, manifest.to_json())
    return manifest


def _write(config: Config, data_dir: str, num_shards: int, series: list[Series], report: LoadReport) -> Manifest:
    data = config.data
    stats = {s.series_id: fit_stats(s, data) for s in series}
    starts = {split: [(s, window_starts(s, split, data)) for s in series] for split in SPLITS}
    if data.val_windows_per_series is not None:  # a bounded validation set for a fleet (val.parquet holds only these)
        before = sum(len(w) for _, w in starts["val"])
        starts["val"] = [(s, thin_evenly(w, data.val_windows_per_series, s.series_id)) for s, w in starts["val"]]
        log.info("validation: kept %d of %d windows (at most %d per series, data.val_windows_per_series)",
                 sum(len(w) for _, w in starts["val"]), before, data.val_windows_per_series)
    counts = {split: sum(len(w) for _, w in starts[split]) for split in SPLITS}
    _check_counts(counts, num_shards, data)

    # Training: split the time-ordered windows into equal contiguous chunks, one per worker,
    # dropping the remainder so every DDP rank runs the same number of steps.
    flat = [(s, int(t)) for s, ws in starts["train"] for t in ws]
    per_shard = len(flat) // num_shards
    dropped = len(flat) - per_shard * num_shards
    train_files = []
    for rank in range(num_shards):
        chunk = flat[rank * per_shard : (rank + 1) * per_shard]
        name = train_shard_name(rank, num_shards)
        storage.write_parquet(storage.join(data_dir, name), _segments(chunk, data))
        train_files.append(name)
    chunk = [(s, int(t)) for s, ws in starts["val"] for t in ws]
    storage.write_parquet(storage.join(data_dir, VAL_FILE), _segments(chunk, data))

    times = {split: [_target_range(s, ws, data) for s, ws in starts[split] if len(ws)] for split in SPLITS}
    return Manifest(
        window=WindowSpec(data.input_window, data.horizon, data.freq, data.stride, data.eval_stride),
        splits={
            split: SplitInfo(
                bounds=[str(b) if b is not None else None for b in split_bounds(data)[split]],
                windows=counts[split],
                first_target=min(t[0] for t in times[split]) if times[split] else None,
                last_target=max(t[1] for t in times[split]) if times[split] else None,
            )
            for split in SPLITS
        },
        series={s.series_id: SeriesInfo(**stats[s.series_id].to_dict(), start=str(s.start), slots=len(s.values)) for s in series},
        num_shards=num_shards,
        shard_windows=[per_shard] * num_shards,
        train_files=train_files,
        val_file=VAL_FILE,
        data_config=dataclasses.asdict(data),
        load_report={
            "rows": report.rows,
            "points": int(sum(len(s.values) for s in series)),
            "interpolated_gaps": report.interpolated_gaps,
            "interpolated_slots": report.interpolated_slots,
            "long_gaps": report.long_gaps,
            "dropped_for_balance": dropped,
        },
    )


def _check_counts(counts: dict[str, int], num_shards: int, data: DataConfig) -> None:
    """Every rank needs at least one training and one validation window."""
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


def _target_range(series: Series, starts: np.ndarray, data: DataConfig) -> tuple[str, str]:
    step = pd.Timedelta(data.freq)
    first = series.start + int(starts[0]) * step
    last = series.start + (int(starts[-1]) + data.horizon - 1) * step
    return str(first), str(last)


def _segments(windows: list[tuple[Series, int]], data: DataConfig) -> pa.Table:
    """One row per series: the slots its windows cover, and their target starts in it."""
    W, H, step = data.input_window, data.horizon, pd.Timedelta(data.freq)
    rows: dict[str, list] = {name: [] for name in SEGMENT_SCHEMA.names}
    by_series: dict[str, tuple[Series, list[int]]] = {}
    for series, s in windows:
        by_series.setdefault(series.series_id, (series, []))[1].append(s)
    for series, targets in by_series.values():
        lo, hi = min(targets) - W, max(targets) + H
        rows["series_id"].append(series.series_id)
        rows["start"].append(series.start + lo * step)
        rows["values"].append(series.values[lo:hi].astype(np.float32))
        rows["window_starts"].append(np.asarray(targets, dtype=np.int32) - lo)
    return pa.Table.from_pydict(rows, schema=SEGMENT_SCHEMA)
