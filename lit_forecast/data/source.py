"""Read the fetched data (one CSV or Parquet file, or a folder of them), validate every reading,
and turn it into regular series: one value per ``freq`` slot, short gaps interpolated.

A folder source reads every ``.csv``, ``.csv.gz``, ``.parquet`` and ``.pq`` file below it
(recursively; names starting with '.' or '_' are skipped). Hive-style folders
(``zone=z001/part.parquet``) add their ``key=value`` parts as columns, so ``data.series_column:
zone`` works. Every check (:mod:`lit_forecast.data.checks`) names the file (the member file of
a folder), the series and the row; problems are gathered over all files and series and
reported together, a count and a few examples each. Where the bytes come from, and their
checksum, is :mod:`lit_forecast.data.fetch`.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from lit_forecast import storage
from lit_forecast.config import DataConfig
from lit_forecast.data import checks, readers
from lit_forecast.data.checks import Problems
from lit_forecast.data.fetch import Source
from lit_forecast.data.readers import Rows, UnreadableFile
from lit_forecast.errors import DataError
from lit_forecast.spec import gap_slots, series_label

log = logging.getLogger(__name__)


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

    problems = Problems()
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
    checks.check_duplicates(name, table, config, problems, len(jobs) > 1)
    problems.raise_if_any(name)
    bounds = checks.series_bounds(table["codes"])
    report.clipped = checks.check_outliers(name, table, bounds, config, problems, len(jobs) > 1)
    problems.raise_if_any(name)
    series = regularise(name, table, bounds, config, report if fill_gaps else None, problems)
    problems.raise_if_any(name, len(bounds))
    return series, report


def _row_line(rows: Rows, row: int, text: str, series_id: str, config: DataConfig, many_files: bool) -> str:
    return f"{checks.row_location(rows.file, rows.row_word, row, many_files)}: {text}{series_label(series_id)}"


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


def regularise(name: str, table: dict, bounds: list[tuple[int, int, int]], config: DataConfig,
               report: LoadReport | None, problems: Problems) -> list[Series]:
    """Resample every series to the grid; with a ``report``, also fill or reject its gaps.

    ``table``: readings sorted by series, then time (``codes``, ``timestamps`` in ns, ``values``,
    ``names``); ``bounds``: each series' (code, first row, end row) in it. Slot k of the grid
    holds the readings in [k * freq, (k + 1) * freq) (freq divides a day, so slots start at
    midnight), summed or averaged; a slot without readings is NaN. A series that fails a check
    is left out and its problem added to ``problems``.
    """
    step = pd.Timedelta(config.freq).value
    max_slots = gap_slots(config.max_gap, config.freq)
    ts, values = table["timestamps"], table["values"]
    slot = ts // step
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
        if not checks.check_slot_sums(where, grid, start, step, problems):
            continue
        runs = nan_runs(grid)
        short = [(a, b) for a, b in runs if b - a <= max_slots]
        long_runs = [(a, b) for a, b in runs if b - a > max_slots]
        interpolated = sum(b - a for a, b in short)
        if not checks.check_density(where, ts[s:e], step, interpolated, n, config, problems):
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
                checks.report_long_gaps(where, gaps, config, problems)
                continue
            report.long_gaps.extend(f"{series_id}: {g}" for g in gaps)
        grid = fill_short_gaps(grid, max_slots)  # long gaps stay NaN: windows touching them are dropped later
        if not checks.check_length(where, n, config, problems):
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


