"""Source -> validated regular series -> splits and scaler -> per-worker Parquet shards + manifest.

Layout of a prepared dataset folder (local or any pyarrow.fs URI)::

    manifest.json                  written last: its presence means every file below is complete
    config.yaml                    the resolved config that produced it
    train-00000-of-00002.parquet   K training shards of equal window counts (K: the largest worker count)
    val.parquet                    read by every rank, each rank taking every N-th window

The test period (after ``data.val_end``) is counted in the manifest but not written: nothing
trains or selects on it; ``infer.py`` backtests it from the source data.

This module decides whether a dataset can be reused (same fingerprint, every file as the
manifest recorded it) and which executor writes it: this process, or Ray Data for large
inputs (:mod:`lit_forecast.data.ray_prepare`). Both cut and record the shards with
:mod:`lit_forecast.data.shards`, so they write the same files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from datetime import UTC, datetime

import pyarrow.fs as pafs

from lit_forecast import storage
from lit_forecast.config import Config, DataConfig, dump
from lit_forecast.data.fetch import Source, fetch
from lit_forecast.data.manifest import FORMAT_VERSION, MANIFEST_FILE, Manifest, SeriesInfo, read_manifest
from lit_forecast.data.shards import (
    VAL_FILE,
    build_manifest,
    check_counts,
    check_shards,
    plan_train_shards,
    segment_table,
    series_segments,
    series_windows,
    span,
    target_range,
    train_shard_name,
    write_shard,
)
from lit_forecast.data.source import LoadReport, Series, load_series
from lit_forecast.data.splits import SPLITS, fit_stats, window_starts

log = logging.getLogger(__name__)

RAY_ABOVE_BYTES = 64 << 20  # data.prepare_with=auto: inputs larger than this are prepared on Ray Data


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
        size = sum(
            f.size or 0
            for f in fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if f.type == pafs.FileType.File
        )
    else:
        size = info.size or 0
    return "ray" if size > RAY_ABOVE_BYTES else "local"


def fingerprint(data: DataConfig, source_sha256: str, num_shards: int) -> str:
    """Identity of a prepared dataset: same source bytes, data config and shard count."""
    settings = dataclasses.asdict(data)
    settings.pop("cache_dir")  # where a download is cached does not change the data
    settings.pop("source")  # the bytes (sha256) matter, not where they came from
    settings.pop("prepare_with")  # both paths write the same shards
    if settings["val_windows_per_series"] is None:  # the default: datasets prepared before the key existed stay valid
        settings.pop("val_windows_per_series")
    blob = json.dumps(
        {"format": FORMAT_VERSION, "sha256": source_sha256, "data": settings, "shards": num_shards}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def prepare(config: Config, data_dir: str, num_shards: int | None = None) -> Manifest:
    """Prepare (or reuse) the dataset of ``num_shards`` training shards in ``data_dir``.

    ``num_shards`` (default: the most workers ``cluster.num_workers`` allows) is the largest worker count the dataset
    serves: any world size up to it takes its part at run time (:func:`lit_forecast.data.shards.rank_windows`),
    every window once per epoch when the world size divides it.

    Returns the manifest. Idempotent: a complete dataset with the same fingerprint is reused,
    once every file passes the manifest's check (:func:`lit_forecast.data.shards.check_shards`): a file changed
    since it was written is a DataError that names it, never trained on.
    Atomic: every file is written under a temporary name and moved into place, and the manifest
    comes last, so an interrupted prepare leaves no manifest pointing at partial files.
    """
    num_shards = num_shards or config.cluster.max_workers
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
            missing = [f for f in ready.files if not storage.exists(storage.join(data_dir, f))]
            if not missing:
                check_shards(data_dir, ready)  # a changed file is refused by name, never trained on
                if not ready.shard_checks:
                    log.info(
                        "%s records no shard sizes (an older version wrote it): checked the shards' schemas only",
                        manifest_path,
                    )
                log.info("reusing prepared dataset in %s (same source and config)", data_dir)
                return ready
            log.info("dataset in %s lacks %s: preparing again", data_dir, ", ".join(missing))
        else:
            log.info("dataset in %s was prepared from another source or config: preparing again", data_dir)

    if prepare_with(config.data, source) == "ray":
        from lit_forecast.data.ray_prepare import prepare_on_ray  # imports Ray: only when it is used

        written = prepare_on_ray(
            config, data_dir, num_shards, source, before_write=lambda: storage.delete(manifest_path)
        )
    else:
        series, report = load_series(source, config.data)  # validates everything before any write
        storage.delete(manifest_path)  # before any file is replaced: no manifest points at partial files
        written = _write(config, data_dir, num_shards, series, report)
    manifest = dataclasses.replace(
        written,
        fingerprint=key,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        source={"origin": source.origin, "location": source.location, "sha256": source.sha256},
    )
    storage.write_text(storage.join(data_dir, "config.yaml"), dump(config))
    storage.write_json(manifest_path, manifest.to_json())
    return manifest


def _write(config: Config, data_dir: str, num_shards: int, series: list[Series], report: LoadReport) -> Manifest:
    """The local executor: window, cut and write ``series`` (in series-id order) in this process."""
    data = config.data
    windows = [series_windows(s, data) for s in series]
    if data.val_windows_per_series is not None:  # a bounded validation set for a fleet (val.parquet holds only these)
        before = sum(len(window_starts(s, "val", data)) for s in series)
        log.info(
            "validation: kept %d of %d windows (at most %d per series, data.val_windows_per_series)",
            sum(len(w["val"]) for w in windows),
            before,
            data.val_windows_per_series,
        )
    counts = {split: sum(len(w[split]) for w in windows) for split in SPLITS}
    check_counts(counts, num_shards, data)

    plan, per_shard, dropped = plan_train_shards(
        [(s.series_id, len(w["train"])) for s, w in zip(series, windows)], num_shards
    )
    train_files = [train_shard_name(rank, num_shards) for rank in range(num_shards)]
    segments: dict[str, list[tuple]] = {name: [] for name in [*train_files, VAL_FILE]}
    for s, w in zip(series, windows):
        for segment in series_segments(
            s.series_id, s.start.value, s.values, w["train"], w["val"], plan.get(s.series_id, []), train_files, data
        ):
            segments[segment[0]].append(segment)
    checks = {name: write_shard(storage.join(data_dir, name), segment_table(rows)) for name, rows in segments.items()}

    stats = {s.series_id: fit_stats(s, data) for s in series}
    return build_manifest(
        data,
        counts=counts,
        targets={
            split: span([target_range(s.start, w[split], data) for s, w in zip(series, windows)]) for split in SPLITS
        },
        series={
            s.series_id: SeriesInfo(**stats[s.series_id].to_dict(), start=str(s.start), slots=len(s.values))
            for s in series
        },
        num_shards=num_shards,
        per_shard=per_shard,
        dropped=dropped,
        report=report,
        points=int(sum(len(s.values) for s in series)),
        checks=checks,
    )
