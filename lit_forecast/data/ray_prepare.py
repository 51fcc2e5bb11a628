"""Preparation on Ray Data, for fleets: the same shards as :mod:`lit_forecast.data.prepare`,
computed in parallel over groups of series; the driver holds only per-series summaries. The
checks, the shard plan, the segment cut and the manifest are the local path's own
(:mod:`lit_forecast.data.checks`, :mod:`lit_forecast.data.shards`); this module holds only
the Ray Data stages around them.

Three Ray Data stages (``R`` rows, ``S`` series, ``G`` series groups)::

    read      one task per chunk: a .csv.gz file, a run of row groups of a Parquet file, or a
              byte range of a CSV (cut at line ends; line numbers are counted on the driver in
              one streaming pass, so messages name the true line). Inputs are cut into at
              least 2 chunks per CPU where they allow it, so every CPU reads. Row checks as in
              readers.py. Out: one row per reading (series, group = crc32(series) % G,
              timestamp, value, row, file).
    series    groupby(group).map_groups: a group holds whole series. Duplicates, outliers,
              resampling, gap filling (checks.py and source.regularise, on the group's rows), the
              training-only scaler, and each split's window starts (splits.py). Out: one row per
              series: its regular values, window starts, statistics and counters.
    write     the driver plans shards from the per-series window counts alone (O(S)), then
              map_batches cuts each series into the segments of the files it lands in and
              groupby(file).map_groups writes each file atomically (shards.write_shard).

Problems are carried as data, not raised in workers: the driver gathers every chunk's and
group's problems and reports them as the single-process path does (a count and a few
examples each, with file, series and row), before any file is written.

Every stage may use every CPU Ray gives (see :func:`_every_cpu_per_stage`).

Ray is imported here only (tests/unit/test_layering.py): this is the data layer's one
framework-bound module, as ray_train.py is training's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from lit_forecast import storage
from lit_forecast.config import Config, DataConfig
from lit_forecast.data import checks, readers, shards
from lit_forecast.data.checks import Problems
from lit_forecast.data.fetch import Source
from lit_forecast.data.manifest import Manifest, SeriesInfo, ShardCheck
from lit_forecast.data.readers import Rows, UnreadableFile
from lit_forecast.data.source import LoadReport, regularise
from lit_forecast.data.splits import SPLITS, fit_stats
from lit_forecast.errors import DataError
from lit_forecast.ray_cluster import init_ray
from lit_forecast.spec import series_label

log = logging.getLogger(__name__)

# A plain CSV is read in byte ranges of at most this size, one task each; smaller ones when
# that gives every CPU two ranges, but none below MIN_CHUNK_BYTES (a task costs ~10 ms).
CHUNK_BYTES = 32 << 20
MIN_CHUNK_BYTES = 1 << 20
# A Parquet file is read in runs of whole row groups of at most about this many rows (a CSV
# range of CHUNK_BYTES holds ~1 M rows of long format), fewer when that gives every CPU two.
CHUNK_ROWS = 1 << 20
# Series are hashed into groups of about this many readings, and at least 2 groups per CPU,
# so every CPU has work and no group is large: a group of 1 M readings peaks near 0.6 GiB in
# its worker. Counted from Parquet metadata, estimated from a CSV's bytes.
GROUP_ROWS = 1 << 20
CSV_ROW_BYTES = 28  # a long-format CSV row (timestamp,zone,value)
GZIP_RATIO = 4  # a .csv.gz is about a quarter of its CSV


@dataclass(frozen=True)
class Chunk:
    """One read task: a whole file, or lines [start, end) bytes of a CSV below its header."""

    path: str
    display: str  # the file as messages name it
    file: int  # index into the list of files (one per data file, not per chunk)
    partitions: dict
    start: int = 0
    end: int = -1  # -1: the whole file
    header: bytes = b""  # prepended to a range that does not start the file
    line_shift: int = 0  # added to the line numbers (CSV) or row indices (Parquet) the reader gives the range
    row_groups: tuple[int, ...] = ()  # a Parquet file's row groups to read; () with end == -1: the whole file
    rows: int = 0  # readings it holds: exact for Parquet, estimated from bytes for CSV


# ---------------------------------------------------------------------------------------------
# Planning the reads (driver)


def plan_chunks(source: Source, config: DataConfig, tasks: int = 1) -> tuple[str, list[str], list[Chunk], int]:
    """(name for messages, display name per file, read chunks, total bytes) of ``source``.

    ``tasks``: read tasks wanted at least (2 per CPU); large inputs get more, small ones fewer.
    """
    name = source.origin.rstrip("/").rsplit("/", 1)[-1]
    fs, path = storage.resolve(source.location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        members, _ = readers.list_data_files(fs, path)
        files = [(m, f"{name}/{readers.relative(path, m.path)}", readers.hive_partitions(readers.relative(path, m.path))) for m in members]
    else:
        files = [(info, name, {})]
    total = sum(m.size or 0 for m, _, _ in files)
    # Bytes of CSV per range: CHUNK_BYTES, or less so that the input makes ``tasks`` ranges.
    chunk_bytes = min(CHUNK_BYTES, max(MIN_CHUNK_BYTES, math.ceil(total / max(tasks, 1))))
    chunks: list[Chunk] = []
    for index, (member, display, parts) in enumerate(files):
        # A file's share of the tasks, by size: a folder of many small files needs no cutting.
        share = max(1, round(tasks * (member.size or 0) / total)) if total else 1
        chunks += _file_chunks(fs, member, display, index, parts, chunk_bytes, share)
    return name, [display for _, display, _ in files], chunks, total


def _file_chunks(fs: pafs.FileSystem, info: pafs.FileInfo, display: str, index: int, parts: dict,
                 chunk_bytes: int = CHUNK_BYTES, tasks: int = 1) -> list[Chunk]:
    """A plain CSV over ``chunk_bytes`` in line-aligned byte ranges, a Parquet file in runs of
    row groups (``tasks`` of them, or more of at most CHUNK_ROWS rows); anything else whole."""
    size = info.size or 0
    if info.path.lower().endswith(".gz"):
        return [Chunk(info.path, display, index, parts, rows=size * GZIP_RATIO // CSV_ROW_BYTES)]
    with fs.open_input_stream(info.path, compression=None) as stream:
        head = stream.read(4)
    if head == b"PAR1":
        return _parquet_chunks(fs, info, display, index, parts, tasks)
    whole = [Chunk(info.path, display, index, parts, rows=size // CSV_ROW_BYTES)]
    if (info.size or 0) <= chunk_bytes:
        return whole
    # One streaming pass: cut after the first line end past every CHUNK_BYTES, and count the
    # line ends before each cut, so each range knows the line number it starts at.
    cuts, newlines_before, header = [0], [0], None
    seen_lines, offset, carry = 0, 0, b""
    with fs.open_input_stream(info.path, compression=None) as stream:
        while block := stream.read(8 << 20):
            if header is None:
                carry += block
                stripped = carry.lstrip(b"\r\n")
                if b"\n" in stripped:
                    header = stripped.split(b"\n", 1)[0]
            raw = np.frombuffer(block, dtype=np.uint8)
            ends = np.flatnonzero(raw == 10)
            target = cuts[-1] + chunk_bytes
            while len(ends) and offset + ends[-1] + 1 >= target:
                k = int(np.searchsorted(ends + offset + 1, target))
                cut = int(offset + ends[k] + 1)
                cuts.append(cut)
                newlines_before.append(seen_lines + k + 1)
                target = cut + chunk_bytes
            seen_lines += len(ends)
            offset += len(block)
    if header is None or len(cuts) == 1:
        return whole
    if cuts[-1] >= offset:
        cuts.pop(), newlines_before.pop()
    ranges = list(zip(cuts, cuts[1:] + [offset]))
    return [
        Chunk(info.path, display, index, parts, a, b, b"" if k == 0 else header + b"\n", 0 if k == 0 else newlines_before[k] - 1,
              rows=(b - a) // CSV_ROW_BYTES)
        for k, (a, b) in enumerate(ranges)
    ]


def _parquet_chunks(fs: pafs.FileSystem, info: pafs.FileInfo, display: str, index: int, parts: dict, tasks: int) -> list[Chunk]:
    """A Parquet file in runs of consecutive non-empty row groups, each knowing its first row index."""
    try:
        with fs.open_input_file(info.path) as f:
            meta = pq.ParquetFile(f).metadata
    except (pa.ArrowInvalid, OSError):
        return [Chunk(info.path, display, index, parts)]  # the reader names what is wrong with it
    rows = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    if sum(rows) == 0 or len([n for n in rows if n]) < 2:
        return [Chunk(info.path, display, index, parts, rows=sum(rows))]
    target = min(CHUNK_ROWS, math.ceil(sum(rows) / max(tasks, 1)))
    runs: list[list[int]] = [[]]
    firsts, seen, in_run = [0], 0, 0
    for group, n in enumerate(rows):
        if n == 0:
            continue
        if in_run and in_run + n > target:  # close the run before it overshoots
            runs.append([])
            firsts.append(seen)
            in_run = 0
        runs[-1].append(group)
        in_run += n
        seen += n
    if len(runs) == 1:
        return [Chunk(info.path, display, index, parts, rows=sum(rows))]
    return [Chunk(info.path, display, index, parts, line_shift=first, row_groups=tuple(run), rows=sum(rows[g] for g in run))
            for run, first in zip(runs, firsts)]


# ---------------------------------------------------------------------------------------------
# Stage 1: read, one task per chunk

READ_SCHEMA = pa.schema([("series", pa.string()), ("group", pa.int32()), ("timestamp", pa.int64()), ("value", pa.float64()),
                         ("row", pa.int64()), ("file", pa.int32()), ("parquet", pa.bool_()), ("note", pa.string())])
NOTE_GROUP = -1  # readings of this group are placeholders carrying a problem note


def read_chunk(batch: dict, chunks: list[Chunk], location: str, config: dict, groups: int, many_files: bool) -> pa.Table:
    """Map_batches UDF for one chunk: its readings, or only its problems if it has any."""
    chunk = chunks[int(batch["chunk"][0])]
    try:
        rows = _read_rows(chunk, location, DataConfig(**config))
    except UnreadableFile as err:
        return _notes([{"stage": 0, "files": [str(err)]}])
    except OSError as err:
        return _notes([{"stage": 0, "files": [f"{chunk.display}: cannot be read: {err}"]}])
    if rows is None:
        return READ_SCHEMA.empty_table()
    if rows.problems:
        return _notes([
            {"stage": 0, "rows": {p.what: [[p.count, [
                checks.row_location(rows.file, rows.row_word, r, many_files) + f": {t}{series_label(s)}"
                for r, t, s in p.examples], rows.file]]}}
            for p in rows.problems
        ])
    group_of = np.asarray([zlib.crc32(n.encode()) % groups for n in rows.series_names], dtype=np.int32)
    n = len(rows.rows)
    return pa.Table.from_arrays(
        [pa.DictionaryArray.from_arrays(pa.array(rows.series_codes.astype(np.int32)), pa.array(rows.series_names, pa.string())).cast(pa.string()),
         pa.array(group_of[rows.series_codes]), pa.array(rows.timestamps), pa.array(rows.values), pa.array(rows.rows),
         pa.array(np.full(n, chunk.file, dtype=np.int32)), pa.array(np.full(n, rows.row_word != "row")), pa.nulls(n, pa.string())],
        schema=READ_SCHEMA,
    )


def _notes(notes: list[dict]) -> pa.Table:
    n = len(notes)
    return pa.table({"series": [""] * n, "group": pa.array([NOTE_GROUP] * n, pa.int32()), "timestamp": pa.array([0] * n, pa.int64()),
                     "value": pa.array([0.0] * n), "row": pa.array([0] * n, pa.int64()), "file": pa.array([0] * n, pa.int32()),
                     "parquet": [False] * n, "note": [json.dumps(x) for x in notes]}, schema=READ_SCHEMA)


def _read_rows(chunk: Chunk, location: str, data: DataConfig) -> Rows | None:
    fs, _ = storage.resolve(location)
    if chunk.row_groups:
        return _read_row_groups(fs, chunk, data)
    if chunk.end < 0:
        return readers.read_file(fs, chunk.path, chunk.display, data, chunk.partitions)
    with fs.open_input_file(chunk.path) as f:
        body = f.read_at(chunk.end - chunk.start, chunk.start)
    if chunk.start > 0 and not body.strip():
        return None  # blank lines at the end of the file
    rows = readers.read_csv(chunk.header + body, chunk.display, data, chunk.partitions)
    _shift_rows(rows, chunk.line_shift)  # line numbers in the whole file
    return rows


def _read_row_groups(fs: pafs.FileSystem, chunk: Chunk, data: DataConfig) -> Rows:
    """Row groups ``chunk.row_groups`` of a Parquet file (the needed columns only), checked as
    readers.py checks a whole file; row indices are shifted to count from the file's start."""
    try:
        with fs.open_input_file(chunk.path) as f:
            parquet = pq.ParquetFile(f)
            columns = readers.parquet_columns(parquet.schema_arrow.names, chunk.display, data, chunk.partitions)
            table = parquet.read_row_groups(list(chunk.row_groups), columns=columns)
    except (pa.ArrowInvalid, OSError) as err:
        raise UnreadableFile(f"{chunk.display}: not a readable Parquet file: {readers.short_error(err)}") from None
    rows = readers.parquet_rows(table, chunk.display, data, chunk.partitions)
    _shift_rows(rows, chunk.line_shift)
    return rows


def _shift_rows(rows: Rows, shift: int) -> None:
    """Count a chunk's row labels (and its problems' examples) from the start of its file."""
    rows.rows = rows.rows + shift
    for p in rows.problems:
        p.examples = [(r + shift, t, s) for r, t, s in p.examples]


@contextlib.contextmanager
def _every_cpu_per_stage():
    """Let every Ray Data stage of the preparation run as many tasks as there are CPUs.

    Ray Data's resource allocator (Ray 2.60, ``ReservationOpResourceAllocator``) gives each of
    the k stages of a running dataset its reservation plus 1/k of the shared CPUs: on 2 CPUs
    and 3 stages (read, shuffle map, shuffle reduce) that is under one CPU each, so each stage
    ran one task at a time and the second CPU idled. Preparation is a batch job whose every
    dataset is consumed at once (``materialize``, ``take_all``) and whose blocks are bounded
    by GROUP_ROWS, so it needs no per-stage reservation: ``op_resource_reservation_enabled``
    off leaves the CPUs and object store limits of the whole dataset. Set on this driver's
    DataContext for the preparation only, and restored afterwards.
    """
    context = ray.data.DataContext.get_current()
    saved = context.op_resource_reservation_enabled
    context.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        context.op_resource_reservation_enabled = saved


# ---------------------------------------------------------------------------------------------
# Stage 2: whole series, one group of series per call

SERIES_SCHEMA = pa.schema([
    ("series_id", pa.string()), ("start", pa.int64()), ("slots", pa.int64()), ("rows", pa.int64()),
    ("mean", pa.float64()), ("std", pa.float64()),
    ("values", pa.list_(pa.float32())), ("train_starts", pa.list_(pa.int32())), ("val_starts", pa.list_(pa.int32())),
    ("windows", pa.list_(pa.int64())),  # per split, in SPLITS order
    ("targets", pa.list_(pa.string())),  # first and last target timestamp per split ("" if none)
    ("interpolated_gaps", pa.int64()), ("interpolated_slots", pa.int64()), ("clipped", pa.int64()),
    ("long_gaps", pa.list_(pa.string())), ("note", pa.string()),
])
SUMMARY_COLUMNS = [c for c in SERIES_SCHEMA.names if c not in ("values", "train_starts", "val_starts")]


class Part:
    """What the checks' row messages need of a file: its display name and how rows are named."""

    def __init__(self, file: str, row_word: str):
        self.file, self.row_word = file, row_word


def group_rows(table: pa.Table, displays: list[str]) -> dict:
    """One group's readings (``READ_SCHEMA``) as the checks' row table, sorted by series, then time.

    Keys: codes, timestamps, values, rows, file (numpy, one per reading), names (series ids by
    code), parts (how each file names its rows). Readings already in that order are not sorted again.
    """
    files, parquet = table["file"].to_numpy(), table["parquet"].to_numpy(zero_copy_only=False)
    parquet_files = set(np.unique(files[parquet]).tolist())
    codes, names = factorize_sorted(table["series"])
    rows = {
        "codes": codes.astype(np.int64), "timestamps": table["timestamp"].to_numpy(),
        "values": table["value"].to_numpy().copy(), "rows": table["row"].to_numpy(), "file": files,
        "names": [str(n) for n in names],
        "parts": [Part(d, "row index" if i in parquet_files else "row") for i, d in enumerate(displays)],
    }
    codes, times = rows["codes"], rows["timestamps"]
    in_order = bool(np.all((codes[1:] > codes[:-1]) | ((codes[1:] == codes[:-1]) & (times[1:] >= times[:-1]))))
    if not in_order:  # a fleet written series by series is read in order already: no sort of a million rows
        order = np.lexsort((times, codes))
        rows = {k: (v[order] if isinstance(v, np.ndarray) else v) for k, v in rows.items()}
    return rows


def _series_of_group(table: pa.Table, name: str, displays: list[str], config: dict, many_files: bool) -> pa.Table:
    """Map_groups UDF: the series of one group, validated, resampled, scaled and windowed.

    Runs the single-process path's checks on the group's rows, so its messages are the same.
    Like that path, it stops at the first stage with problems and returns them as notes.
    """
    if table["group"][0].as_py() == NOTE_GROUP:
        return _series_notes([json.loads(x) for x in table["note"].to_pylist()])
    data = DataConfig(**config)
    rows = group_rows(table, displays)
    names = rows["names"]
    problems = Problems()
    checks.check_duplicates(name, rows, data, problems, many_files)
    if problems.any():
        return _series_notes([_problem_note(2, problems, len(names))])
    bounds = checks.series_bounds(rows["codes"])
    clipped = checks.check_outliers(name, rows, bounds, data, problems, many_files)
    if problems.any():
        return _series_notes([_problem_note(3, problems, len(names))])
    out = {c: [] for c in SERIES_SCHEMA.names}
    for bound in bounds:
        series_report = LoadReport()
        code, lo, hi = bound  # one series' rows alone: regularise's whole-table steps then cost O(its rows)
        one = {k: (v[lo:hi] if isinstance(v, np.ndarray) else v) for k, v in rows.items()}
        (series,) = regularise(name, one, [(code, 0, hi - lo)], data, series_report, problems) or (None,)
        if series is None:
            continue
        try:
            stats = fit_stats(series, data)
        except DataError as err:
            problems.add_series("no training data", f"{name}: {err}")
            continue
        starts = shards.series_windows(series, data)
        out["series_id"].append(series.series_id)
        out["start"].append(series.start.value)
        out["slots"].append(len(series.values))
        out["rows"].append(bound[2] - bound[1])
        out["mean"].append(stats.mean)
        out["std"].append(stats.std)
        out["values"].append(series.values.astype(np.float32))
        out["train_starts"].append(starts["train"].astype(np.int32))
        out["val_starts"].append(starts["val"].astype(np.int32))
        out["windows"].append([len(starts[s]) for s in SPLITS])
        ranges = [shards.target_range(series.start, starts[s], data) or ("", "") for s in SPLITS]
        out["targets"].append([t for r in ranges for t in r])
        out["interpolated_gaps"].append(series_report.interpolated_gaps)
        out["interpolated_slots"].append(series_report.interpolated_slots)
        out["clipped"].append(clipped if not out["clipped"] else 0)  # clipping is counted per group
        out["long_gaps"].append(series_report.long_gaps)
        out["note"].append(None)
    if problems.any():
        return _series_notes([_problem_note(4, problems, len(names))])
    return pa.Table.from_pydict(out, schema=SERIES_SCHEMA)


def factorize_sorted(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str]]:
    """(code per row, names) with names sorted and codes numbering them: a hash pass, not a sort of every row's text."""
    encoded = column.combine_chunks().dictionary_encode()
    names = encoded.dictionary.to_pylist()
    order = np.argsort(np.asarray(names, dtype=object), kind="stable")
    rank = np.empty(len(names), dtype=np.int64)
    rank[order] = np.arange(len(names))
    return rank[encoded.indices.to_numpy(zero_copy_only=False)], [names[i] for i in order]


def _problem_note(stage: int, problems: Problems, series: int) -> dict:
    return {"stage": stage, "series_in_group": series, "files": problems.files, "rows": problems.rows, "series": problems.series}


def _series_notes(notes: list[dict]) -> pa.Table:
    n = len(notes)
    empty = {c: [None] * n for c in SERIES_SCHEMA.names}
    return pa.Table.from_pydict({**empty, "series_id": [""] * n, "note": [json.dumps(x) for x in notes]}, schema=SERIES_SCHEMA)


def raise_problems(name: str, notes: list[dict], series_total: int) -> None:
    """Report the problems of the earliest stage that has any, as the single-process path would."""
    if not notes:
        return
    stage = min(n["stage"] for n in notes)
    problems = Problems()
    for note in sorted((n for n in notes if n["stage"] == stage), key=json.dumps):
        problems.files += [f for f in note.get("files", []) if f not in problems.files]  # every chunk of a file says it
        for what, found in note.get("rows", {}).items():
            problems.rows.setdefault(what, []).extend(tuple(f) for f in found)
        for kind, messages in note.get("series", {}).items():
            problems.series.setdefault(kind, []).extend(messages)
    for messages in problems.series.values():
        messages.sort()  # by file and series, as the single-process path lists them
    problems.raise_if_any(name, series_total if stage == 4 else None)


# ---------------------------------------------------------------------------------------------
# Stage 3: plan the shards (driver, O(series)), cut segments and write each file


def _cut_segments(table: pa.Table, plan: dict, train_files: list[str], config: dict) -> pa.Table:
    """Map_batches UDF: each series' segments, one per file it lands in, labelled with that file."""
    data = DataConfig(**config)
    segments = []
    for row in range(table.num_rows):
        series_id = table["series_id"][row].as_py()
        segments += shards.series_segments(
            series_id, table["start"][row].as_py(), table["values"][row].values.to_numpy(zero_copy_only=False),
            table["train_starts"][row].values.to_numpy(zero_copy_only=False),
            table["val_starts"][row].values.to_numpy(zero_copy_only=False), plan.get(series_id, []), train_files, data,
        )
    files = pa.array([s[0] for s in segments], pa.string())
    return shards.segment_table(segments).add_column(0, "file", files)


def _write_file(table: pa.Table, data_dir: str) -> pa.Table:
    """Map_groups UDF: write one shard (its segments in series order) atomically; its window count and check."""
    file = table["file"][0].as_py()
    table = table.sort_by("series_id").select(shards.SEGMENT_SCHEMA.names).cast(shards.SEGMENT_SCHEMA)
    check = shards.write_shard(storage.join(data_dir, file), table)
    windows = int(pa.compute.sum(pa.compute.list_value_length(table["window_starts"])).as_py() or 0)
    return pa.table({"file": [file], "windows": pa.array([windows], pa.int64()),
                     "bytes": pa.array([check.bytes], pa.int64()), "footer_sha256": [check.footer_sha256]})


# ---------------------------------------------------------------------------------------------
# The whole preparation


def prepare_on_ray(config: Config, data_dir: str, num_shards: int, source: Source, *,
                   before_write: Callable[[], None]) -> Manifest:
    """Read, validate, resample, scale and window ``source`` on Ray Data; write the shards.

    Returns the manifest (without fingerprint, creation time and source, which the caller
    adds). Every check runs before ``before_write()`` and before any file is written. Uses the
    Ray cluster this process has joined, or starts a local one sized to the machine.
    """
    init_ray()
    with _every_cpu_per_stage():
        return _prepare(config, data_dir, num_shards, source, before_write=before_write)


def _prepare(config: Config, data_dir: str, num_shards: int, source: Source, *,
             before_write: Callable[[], None]) -> Manifest:
    """The body of :func:`prepare_on_ray`, on a joined Ray."""
    data = config.data
    settings = dataclasses.asdict(data)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    name, displays, chunks, _ = plan_chunks(source, data, tasks=2 * cpus)
    if not chunks:
        raise DataError(f"{source.location}: no CSV or Parquet files (.csv, .csv.gz, .parquet, .pq) in this folder")
    groups = max(2 * cpus, math.ceil(sum(c.rows for c in chunks) / GROUP_ROWS))
    many_files = len(displays) > 1
    log.info("preparing %s on Ray Data: %d read task(s), %d series group(s), %d CPU(s)", name, len(chunks), groups, cpus)

    readings = ray.data.from_items([{"chunk": i} for i in range(len(chunks))], override_num_blocks=len(chunks)).map_batches(
        read_chunk, batch_size=1, batch_format="numpy",
        fn_kwargs={"chunks": chunks, "location": source.location, "config": settings, "groups": groups, "many_files": many_files},
    )
    series = readings.groupby("group", num_partitions=groups).map_groups(
        _series_of_group, batch_format="pyarrow",
        fn_kwargs={"name": name, "displays": displays, "config": settings, "many_files": many_files},
    ).materialize()
    rows = sorted(series.select_columns(SUMMARY_COLUMNS).take_all(), key=lambda r: r["series_id"])
    notes = [json.loads(r["note"]) for r in rows if r["note"] is not None]
    summary = [r for r in rows if r["note"] is None]
    raise_problems(name, notes, len(summary) + sum(n.get("series_in_group", 0) for n in notes))
    clipped = sum(r["clipped"] for r in summary)
    if clipped:
        log.warning("%s: clipped %d reading(s) to %g x their series' level (data.outliers=clip)", name, clipped,
                    checks.OUTLIER_FACTOR)
    counts = {split: sum(r["windows"][k] for r in summary) for k, split in enumerate(SPLITS)}
    shards.check_counts(counts, num_shards, data)

    train_windows = [(r["series_id"], r["windows"][0]) for r in summary]
    plan, per_shard, dropped = shards.plan_train_shards(train_windows, num_shards)
    train_files = [shards.train_shard_name(rank, num_shards) for rank in range(num_shards)]
    before_write()
    written = series.map_batches(
        _cut_segments, batch_format="pyarrow", fn_kwargs={"plan": plan, "train_files": train_files, "config": settings},
    ).groupby("file", num_partitions=min(num_shards + 1, 2 * cpus)).map_groups(
        _write_file, batch_format="pyarrow", fn_kwargs={"data_dir": data_dir},
    ).take_all()
    windows = {r["file"]: r["windows"] for r in written}
    expected = {**{f: per_shard for f in train_files}, shards.VAL_FILE: counts["val"]}
    if windows != expected:  # a bug, not bad input: never write a manifest over it
        raise RuntimeError(f"shards written with {windows} windows, planned {expected}")

    def targets(k: int) -> tuple[str | None, str | None]:
        return shards.span([(r["targets"][2 * k], r["targets"][2 * k + 1]) for r in summary if r["windows"][k]])

    report = LoadReport(
        rows=sum(r["rows"] for r in summary),
        interpolated_gaps=sum(r["interpolated_gaps"] for r in summary),
        interpolated_slots=sum(r["interpolated_slots"] for r in summary),
        long_gaps=[g for r in summary for g in r["long_gaps"]],  # "<series>: <gap>" already
        clipped=clipped,
        files=len(displays),
    )
    return shards.build_manifest(
        data,
        counts=counts,
        targets={split: targets(k) for k, split in enumerate(SPLITS)},
        series={r["series_id"]: SeriesInfo(r["mean"], r["std"], str(pd.Timestamp(r["start"])), r["slots"]) for r in summary},
        num_shards=num_shards, per_shard=per_shard, dropped=dropped, report=report,
        points=sum(r["slots"] for r in summary),
        checks={r["file"]: ShardCheck(r["bytes"], r["footer_sha256"]) for r in written},
    )
