"""Fetch the data (URL with a checksum-verified cache, local path, ``file://`` or any pyarrow.fs
URI; one CSV or Parquet file, or a folder of them), validate every reading, and turn it into
regular series: one value per ``freq`` slot, short gaps interpolated.

A folder source reads every ``.csv``, ``.csv.gz``, ``.parquet`` and ``.pq`` file below it
(recursively; names starting with '.' or '_' are skipped). Hive-style folders
(``zone=z001/part.parquet``) add their ``key=value`` parts as columns, so ``data.series_column:
zone`` works. Every check names the file (the member file of a folder), the series and the row;
problems are gathered over all files and series and reported together, a count and a few
examples each.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from lit_forecast import storage
from lit_forecast.config import DataConfig
from lit_forecast.data import readers
from lit_forecast.data.readers import FLOAT32_MAX, MAX_SHOWN, Rows, UnreadableFile
from lit_forecast.errors import DataError
from lit_forecast.spec import gap_slots, series_label

log = logging.getLogger(__name__)

# Outliers, relative to the 99th percentile of a series' readings (or, for a series that is
# almost all zeros, the median of its non-zero readings): above OUTLIER_FACTOR x that level a
# reading is an outlier (data.outliers: error or clip); above SCALER_LIMIT x it would make the
# scaler meaningless (its std would be the outlier alone) and is always an error.
OUTLIER_FACTOR = 20.0
SCALER_LIMIT = 1e6
# Wrong frequency: a series is refused when its readings are typically further apart than one
# slot (more than half of the spacings between consecutive readings exceed data.freq), or when
# more than this share of its slots would be interpolated.
MAX_INTERPOLATED_SHARE = 0.25


@dataclass
class Source:
    """The data resolved to something readable, with its checksum.

    ``sha256``: of the file's bytes; for a folder, of its member list: sha256 over one line
    ``<path below the folder>\\0<size in bytes>\\0<sha256 of the file>\\n`` per data file, in
    path order (see :func:`folder_sha256`).
    """

    location: str  # local path or pyarrow.fs URI (a file or a folder)
    sha256: str
    origin: str  # what the user asked for (URL, path or URI)


@dataclass
class Series:
    """One regular series: ``values[i]`` is the value of slot ``start + i * freq``."""

    series_id: str
    start: pd.Timestamp
    values: np.ndarray  # (T,) float64, NaN only inside gaps kept by long_gaps='drop'


@dataclass
class LoadReport:
    """What loading did to the raw rows, for the prepare summary."""

    rows: int = 0
    interpolated_slots: int = 0
    interpolated_gaps: int = 0
    long_gaps: list[str] = field(default_factory=list)
    clipped: int = 0  # readings clipped by data.outliers=clip
    files: int = 1  # data files read


def cache_dir(config: DataConfig) -> Path:
    """Where downloads are kept: $LIT_FORECAST_CACHE, else data.cache_dir."""
    return Path(os.environ.get("LIT_FORECAST_CACHE") or config.cache_dir).expanduser()


def sha256_of(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# Fetching


def fetch(config: DataConfig) -> Source:
    """Resolve ``config.source`` to a readable file or folder, downloading URLs into the cache once.

    With ``data.sha256`` set, the bytes must match it, wherever they come from.
    """
    origin = config.source
    if origin.startswith(("http://", "https://")):
        return _fetch_url(origin, config)
    location = local_or_uri(origin)
    fs, path = storage.resolve(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"data file not found: {location}")
    if info.type == pafs.FileType.Directory:
        members, others = readers.list_data_files(fs, path)
        if not members:
            found = f"; it holds {others[:MAX_SHOWN]}" if others else " (it is empty)"
            raise DataError(f"{location}: no CSV or Parquet files (.csv, .csv.gz, .parquet, .pq) in this folder{found}")
        digest = folder_sha256(fs, path, members)
    else:
        digest = _file_sha256(fs, path)
    _check_sha256(origin, digest, config)
    return Source(location, digest, origin)


def local_or_uri(origin: str) -> str:
    """A ``file://`` URI as a local path, a local path made absolute, other URIs unchanged."""
    if origin.startswith("file:"):
        parsed = urllib.parse.urlparse(origin)
        return os.path.abspath(urllib.request.url2pathname(parsed.path))
    if storage.is_uri(origin):
        return origin
    return str(Path(origin).expanduser().resolve())


def _file_sha256(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path, compression=None) as stream:
        while chunk := stream.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def folder_sha256(fs: pafs.FileSystem, root: str, members: list[pafs.FileInfo]) -> str:
    """sha256 over ``<relative path>\\0<size>\\0<sha256 of contents>\\n`` for each member, in path order.

    Renaming, resizing or editing any data file changes it; files the loader skips do not.
    """
    digest = hashlib.sha256()
    for info in members:
        line = f"{readers.relative(root, info.path)}\0{info.size}\0{_file_sha256(fs, info.path)}\n"
        digest.update(line.encode())
    return digest.hexdigest()


def _check_sha256(origin: str, digest: str, config: DataConfig) -> None:
    if config.sha256 is not None and digest != config.sha256:
        raise DataError(
            f"{origin}: sha256 is {digest}, expected data.sha256={config.sha256}; refusing to use it "
            f"(set data.sha256 to the new value, or to null to accept any bytes)"
        )


def url_cache_path(url: str, config: DataConfig) -> Path:
    """Where ``url`` is cached: a folder named by a short hash of the whole URL, then its file name.

    Two URLs with the same file name (``.../a/nyc.csv``, ``.../b/nyc.csv``) never share a file.
    """
    name = urllib.parse.unquote(urllib.parse.urlparse(url).path.rsplit("/", 1)[-1]) or "download"
    return cache_dir(config) / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def _fetch_url(url: str, config: DataConfig) -> Source:
    target = url_cache_path(url, config)
    # Older versions cached by file name alone ($LIT_FORECAST_CACHE/nyc_taxi.csv; CI still seeds
    # it there). Such a file is trusted only when its bytes match a configured sha256.
    legacy = cache_dir(config) / target.name
    candidates = [target] + ([legacy] if config.sha256 is not None else [])
    for cached in candidates:
        if cached.is_file():
            digest = _file_sha256(pafs.LocalFileSystem(), str(cached))
            if config.sha256 is None or digest == config.sha256:
                log.info("using cached %s", cached)
                return Source(str(cached), digest, url)
            log.warning("cached %s has sha256 %s, expected %s: not using it", cached, digest, config.sha256)
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        legacy_hint = f" or {legacy}" if config.sha256 is not None else ""
        raise DataError(
            f"could not download {url} ({err}). Without network, put the file at {target}{legacy_hint} "
            f"(or set LIT_FORECAST_CACHE to a folder holding it), or pass a local copy with --data PATH"
        ) from None
    digest = sha256_of(data)
    if config.sha256 is not None and digest != config.sha256:
        raise DataError(f"{url}: sha256 is {digest}, expected {config.sha256}; refusing to use it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    tmp.replace(target)
    return Source(str(target), digest, url)


# ---------------------------------------------------------------------------------------------
# Reading and validating


class _Problems:
    """Everything wrong with the input, gathered before one DataError reports it all."""

    def __init__(self) -> None:
        self.files: list[str] = []  # whole files that cannot be used
        self.rows: dict[str, list] = {}  # what -> [(count, example lines, file)]
        self.series: dict[str, list[str]] = {}  # kind -> one message per series

    def add_rows(self, what: str, count: int, lines: list[str], file: str) -> None:
        self.rows.setdefault(what, []).append((count, lines, file))

    def raise_if_any(self, name: str, series_total: int | None = None) -> None:
        parts = []
        if self.files:
            head = f"{len(self.files)} file(s) cannot be used:\n  " if len(self.files) > 1 else ""
            shown = self.files[:MAX_SHOWN] + ([f"... and {len(self.files) - MAX_SHOWN} more file(s)"] if len(self.files) > MAX_SHOWN else [])
            parts.append(head + "\n  ".join(shown))
        for what, found in self.rows.items():
            count = sum(c for c, _, _ in found)
            files = {f for _, _, f in found}
            lines = [line for _, ls, _ in found for line in ls][:MAX_SHOWN]
            more = f" (and {count - len(lines)} more)" if count > len(lines) else ""
            of_files = f" of {len(files)} file(s)" if len(files) > 1 else ""
            parts.append(f"{name}: {what} in {count} row(s){of_files}{more}:\n  " + "\n  ".join(lines))
        bad_series = sum(len(m) for m in self.series.values())
        for kind, messages in self.series.items():
            shown = messages[:MAX_SHOWN]
            if len(messages) > MAX_SHOWN:
                shown.append(f"... and {len(messages) - MAX_SHOWN} more series with {kind}")
            parts.extend(shown)
        if not parts:
            return
        if bad_series > 1 and series_total and not self.files and not self.rows:
            parts.insert(0, f"{name}: {bad_series} problem(s) in {series_total} series:")
        raise DataError("\n".join(parts))


def load_series(source: Source, config: DataConfig, fill_gaps: bool = True) -> tuple[list[Series], LoadReport]:
    """Read and validate the file(s), then resample every series to ``config.freq``.

    ``fill_gaps`` (training): interpolate short gaps, apply ``data.long_gaps`` and require one
    window's length. Without it (inference) every missing slot stays NaN and there is no length
    check: a forecast fills and checks the history before its own cutoff.
    """
    name = source.origin.rstrip("/").rsplit("/", 1)[-1]
    fs, path = storage.resolve(source.location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        members, _ = readers.list_data_files(fs, path)
        jobs = [(m.path, f"{name}/{readers.relative(path, m.path)}", readers.hive_partitions(readers.relative(path, m.path)))
                for m in members]
        if not jobs:
            raise DataError(f"{source.location}: no CSV or Parquet files (.csv, .csv.gz, .parquet, .pq) in this folder")
    else:
        jobs = [(path, name, {})]

    def read(job) -> Rows | str:
        try:
            return readers.read_file(fs, job[0], job[1], config, job[2])
        except UnreadableFile as err:
            return str(err)
        except OSError as err:
            return f"{job[1]}: cannot be read: {err}"

    if len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            results = list(pool.map(read, jobs))
    else:
        results = [read(jobs[0])]

    problems = _Problems()
    parts: list[Rows] = []
    for result in results:
        if isinstance(result, str):
            problems.files.append(result)
            continue
        parts.append(result)
        for p in result.problems:
            lines = [_row_line(result, row, text, sid, config, len(jobs) > 1) for row, text, sid in p.examples]
            problems.add_rows(p.what, p.count, lines, result.file)
    problems.raise_if_any(name)

    table = _combine(parts)
    report = LoadReport(rows=len(table["values"]), files=len(parts))
    order = np.lexsort((table["timestamps"], table["codes"]))  # by series, then time
    table = {k: (v[order] if isinstance(v, np.ndarray) else v) for k, v in table.items()}
    _check_duplicates(name, table, config, problems, len(jobs) > 1)
    problems.raise_if_any(name)
    bounds = _series_bounds(table["codes"])
    _check_outliers(name, table, bounds, config, problems, report, len(jobs) > 1)
    problems.raise_if_any(name)
    series = _regularise(name, table, bounds, config, report if fill_gaps else None, problems)
    problems.raise_if_any(name, len(bounds))
    return series, report


def _loc(part_or_file: str, row_word: str, row: int, many_files: bool) -> str:
    return f"{part_or_file} {row_word} {row}" if many_files else f"{row_word} {row}"


def _row_line(rows: Rows, row: int, text: str, series_id: str, config: DataConfig, many_files: bool) -> str:
    return f"{_loc(rows.file, rows.row_word, row, many_files)}: {text}{series_label(series_id)}"


def _combine(parts: list[Rows]) -> dict:
    """One table over all files: series codes numbered in sorted id order, each row's file and row label."""
    names = sorted({n for p in parts for n in p.series_names})
    index = {n: i for i, n in enumerate(names)}
    codes = [np.asarray([index[n] for n in p.series_names], dtype=np.int64)[p.series_codes] for p in parts]
    cat = lambda key: np.concatenate([getattr(p, key) for p in parts])  # noqa: E731
    return {
        "codes": np.concatenate(codes),
        "timestamps": cat("timestamps"),
        "values": cat("values").astype("float64", copy=True),
        "rows": cat("rows"),
        "file": np.concatenate([np.full(len(p.rows), i, dtype=np.int32) for i, p in enumerate(parts)]),
        "names": names,
        "parts": parts,
    }


def _table_line(table: dict, i: int, config: DataConfig, many_files: bool) -> str:
    part = table["parts"][table["file"][i]]
    return _loc(part.file, part.row_word, int(table["rows"][i]), many_files)


def _series_bounds(codes: np.ndarray) -> list[tuple[int, int, int]]:
    """(code, start, end) of each series' run in the sorted table."""
    starts = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1])
    ends = np.concatenate([starts[1:], [len(codes)]])
    return [(int(codes[s]), int(s), int(e)) for s, e in zip(starts, ends)]


def _check_duplicates(name: str, table: dict, config: DataConfig, problems: _Problems, many_files: bool) -> None:
    codes, ts = table["codes"], table["timestamps"]
    same = (codes[1:] == codes[:-1]) & (ts[1:] == ts[:-1])
    if not same.any():
        return
    dup = np.zeros(len(codes), dtype=bool)
    dup[1:] |= same
    dup[:-1] |= same
    where = np.flatnonzero(dup)
    # Sorted by series and time; within a timestamp, by file and row (lexsort is stable).
    where = where[np.lexsort((table["rows"][where], table["file"][where], ts[where], codes[where]))]
    shown = where[: 2 * MAX_SHOWN]
    lines = [
        f"{_table_line(table, i, config, many_files)}: duplicate timestamp {pd.Timestamp(int(ts[i]))}"
        + series_label(table["names"][codes[i]])
        for i in shown
    ]
    more = f"\n  ... and {len(where) - len(shown)} more" if len(where) > len(shown) else ""
    hint = ""
    if many_files and not config.series_column and len(set(table["file"][where].tolist())) > 1:
        hint = "\nSeveral files hold the same timestamps: if they are different series, set data.series_column."
    problems.series.setdefault("duplicate timestamps", []).append(
        f"{name}: {len(where)} rows share a timestamp:\n  " + "\n  ".join(lines) + more + hint
    )


def _check_outliers(name, table, bounds, config, problems: _Problems, report: LoadReport, many_files: bool) -> None:
    """Readings far above their series' usual level: always an error beyond SCALER_LIMIT, else per data.outliers."""
    values = table["values"]
    level = np.zeros(len(values))
    for code, s, e in bounds:
        v = values[s:e]
        k = int(0.99 * (len(v) - 1))
        ref = float(np.partition(v, k)[k])
        if ref == 0.0:
            nonzero = v[v > 0]
            ref = float(np.median(nonzero)) if len(nonzero) else 0.0
        level[s:e] = ref
    active = level > 0
    huge = active & (values > SCALER_LIMIT * level)
    outlier = active & (values > OUTLIER_FACTOR * level) & ~huge

    def lines(mask: np.ndarray) -> tuple[int, list[str]]:
        where = np.flatnonzero(mask)
        return len(where), [
            f"{_table_line(table, i, config, many_files)}: {values[i]:.6g}{series_label(table['names'][table['codes'][i]])}"
            f" (series level {level[i]:.6g})"
            for i in where[:MAX_SHOWN]
        ]

    if huge.any():
        count, shown = lines(huge)
        problems.add_rows(
            f"value so large it would make the scaler meaningless (over {SCALER_LIMIT:g} x its series' level, "
            "the 99th percentile of its readings)", count, shown, "")
    if outlier.any():
        if config.outliers == "clip":
            values[outlier] = OUTLIER_FACTOR * level[outlier]
            report.clipped = int(outlier.sum())
            log.warning("%s: clipped %d reading(s) to %g x their series' level (data.outliers=clip)", name, report.clipped, OUTLIER_FACTOR)
        else:
            count, shown = lines(outlier)
            problems.add_rows(
                f"outlier (over {OUTLIER_FACTOR:g} x its series' level, the 99th percentile of its readings; "
                f"set data.outliers=clip to clip such readings to that bound)", count, shown, "")


def _duration(ns: float) -> str:
    """A readable duration for messages: '1h', '90min', '45s'."""
    td = pd.Timedelta(int(ns), unit="ns")
    if td % pd.Timedelta("1h") == pd.Timedelta(0):
        return f"{td // pd.Timedelta('1h')}h"
    if td % pd.Timedelta("1min") == pd.Timedelta(0):
        return f"{td // pd.Timedelta('1min')}min"
    return str(td)


def _regularise(name: str, table: dict, bounds, config: DataConfig, report: LoadReport | None, problems: _Problems) -> list[Series]:
    """Resample every series to the grid; with a ``report``, also fill or reject its gaps.

    Slot k of the grid holds the readings in [k * freq, (k + 1) * freq) (freq divides a day, so
    slots start at midnight), summed or averaged; a slot without readings is NaN.
    """
    step = pd.Timedelta(config.freq).value
    max_slots = gap_slots(config.max_gap, config.freq)
    codes, ts, values = table["codes"], table["timestamps"], table["values"]
    slot = ts // step
    wide = np.diff(ts) > step  # spacing to the next reading, within a series where codes agree
    series = []
    for code, s, e in bounds:
        series_id = table["names"][code]
        where = f"{name}{series_label(series_id)}"
        first = int(slot[s])
        n = int(slot[e - 1]) - first + 1
        idx = slot[s:e] - first
        sums = np.bincount(idx, weights=values[s:e], minlength=n)
        counts = np.bincount(idx, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):
            grid = np.where(counts > 0, sums if config.aggregation == "sum" else sums / counts, np.nan)
        start = pd.Timestamp(first * step, unit="ns")
        if np.nanmax(grid) > FLOAT32_MAX:
            k = int(np.nanargmax(grid))
            problems.series.setdefault("slot sums beyond float32", []).append(
                f"{where}: slot {start + k * pd.Timedelta(step, unit='ns')} sums to {grid[k]:.4g}, beyond the float32 range")
            continue
        runs = nan_runs(grid)
        short = [(a, b) for a, b in runs if b - a <= max_slots]
        long_runs = [(a, b) for a, b in runs if b - a > max_slots]
        interpolated = sum(b - a for a, b in short)
        spacings = e - s - 1
        n_wide = int(wide[s : e - 1].sum())
        if spacings >= 2 and (2 * n_wide > spacings or interpolated > MAX_INTERPOLATED_SHARE * n):
            median = float(np.median(np.diff(ts[s:e])))
            problems.series.setdefault("readings sparser than data.freq", []).append(
                f"{where}: readings are {_duration(median)} apart (median) but data.freq={config.freq}: "
                f"{interpolated} of {n} slots ({interpolated / n:.0%}) would be interpolated "
                f"(at most {MAX_INTERPOLATED_SHARE:.0%} allowed, and readings must typically be at most one slot apart). "
                f"Set data.freq to the data's spacing (e.g. data.freq={_duration(max(median, step))}), "
                f"or write the missing slots (e.g. 0 for no demand)."
            )
            continue
        if report is None:  # the grid as it is, every missing slot NaN
            series.append(Series(series_id, start, grid))
            continue
        report.interpolated_gaps += len(short)
        report.interpolated_slots += interpolated
        if long_runs:
            times = pd.date_range(start, periods=n, freq=config.freq)
            gaps = [f"{times[a]} .. {times[b - 1]} ({b - a} slots)" for a, b in long_runs]
            if config.long_gaps == "error":
                shown = "\n  ".join(gaps[:MAX_SHOWN])
                more = f"\n  ... and {len(gaps) - MAX_SHOWN} more" if len(gaps) > MAX_SHOWN else ""
                problems.series.setdefault("long gaps", []).append(
                    f"{where}: {len(gaps)} gap(s) longer than data.max_gap={config.max_gap}:\n  {shown}{more}\n"
                    "Raise data.max_gap to interpolate them, or set data.long_gaps=drop to skip the windows that touch them."
                )
                continue
            report.long_gaps.extend(f"{series_id}: {g}" for g in gaps)
        grid = fill_short_gaps(grid, max_slots)  # long gaps stay NaN: windows touching them are dropped later
        needed = config.input_window + config.horizon
        if n < needed:
            problems.series.setdefault("too short series", []).append(
                f"{where}: {n} slots of {config.freq} after resampling; "
                f"one window needs at least {needed} (data.input_window {config.input_window} + data.horizon {config.horizon})"
            )
            continue
        series.append(Series(series_id, start, grid))
    return series


def nan_runs(values: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ``(start, end)`` index ranges of the runs of NaN in ``values`` (T,)."""
    edges = np.diff(np.concatenate([[0], np.isnan(values).astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def fill_short_gaps(values: np.ndarray, max_slots: int) -> np.ndarray:
    """(T,) -> a copy with interior NaN runs of at most ``max_slots`` interpolated linearly.

    Longer runs, and runs at either end (nothing to interpolate from), stay NaN. Training
    (here) and inference (per cutoff, on data before it) fill gaps with this one function.
    """
    filled = values.copy()
    for s, e in nan_runs(values):
        if e - s <= max_slots and s > 0 and e < len(values):
            filled[s:e] = np.interp(np.arange(s, e), [s - 1, e], [values[s - 1], values[e]])
    return filled


