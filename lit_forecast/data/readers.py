"""Read the raw readings of one CSV or Parquet file through pyarrow, and list a folder's files.

A reader returns typed columns (nanosecond timestamps, float64 values, series codes) with the
row each reading came from, plus the row-level problems it found (unparseable timestamps,
missing, non-numeric, negative, infinite or float32-overflowing values). It never raises for
bad rows: :mod:`lit_forecast.data.source` gathers the problems of every file and series into
one error. A file that cannot be read at all raises :class:`UnreadableFile` with a message
that names it.

Rows are named the way a user finds them: in a CSV, ``row N`` is the line number (the header
is line 1, blank lines counted); in a Parquet file, ``row index N`` counts data rows from 0.

CSV takes a fast path first: pyarrow parses ISO 8601 timestamps and numbers directly, in
parallel. Only a file that fails there (another timestamp format, bad cells) is read again as
text and checked cell by cell with pandas, which also gives error messages the original text.
"""

from __future__ import annotations

import csv
import errno
import os
from collections.abc import Callable
import urllib.parse
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lit_forecast.config import DataConfig
from lit_forecast.errors import DataError
from lit_forecast.spec import SINGLE_SERIES

# Examples shown per problem; more only make the message harder to read.
MAX_SHOWN = 5
# Largest finite float32: shards store values as float32.
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Files a folder source reads; anything else (README, _SUCCESS, .crc) is skipped.
DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
_PARQUET_MAGIC = b"PAR1"
_NULL_TEXT = ["", "nan", "na", "null", "none"]  # value cells that mean "missing" (lower-cased)


class UnreadableFile(Exception):
    """A whole file cannot be used (empty, binary, missing columns); the message names it."""


@dataclass
class RowProblem:
    """Rows of one file that fail one check: how many, and the first few."""

    what: str  # e.g. "negative value"
    count: int
    examples: list[tuple[int, str, str]]  # (row label, text as written, series id)


@dataclass
class Rows:
    """The readings of one file, typed, each with the row it came from."""

    file: str  # display name used in messages
    row_word: str  # "row" (CSV line number) or "row index" (Parquet, from 0)
    rows: np.ndarray  # (N,) int64 row labels
    timestamps: np.ndarray  # (N,) int64 nanoseconds since the epoch, naive local time
    values: np.ndarray  # (N,) float64
    series_codes: np.ndarray  # (N,) int64 index into series_names
    series_names: list[str]
    problems: list[RowProblem] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Folders


def list_data_files(fs: pafs.FileSystem, root: str) -> tuple[list[pafs.FileInfo], list[str]]:
    """Data files under folder ``root`` (recursive, sorted by path), and the names of the others.

    Hidden and bookkeeping entries (a path part starting with '.' or '_') are skipped. On a local
    disk, links are followed once: a link back into what the folder already reads (a loop, or a
    second way to the same files) and a link to nothing are refused by name (DataError).
    """
    if fs.type_name == "local":
        infos = fs.get_file_info(_local_files(root))
    else:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    members, others = [], []
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = relative(root, info.path)
        if any(part.startswith((".", "_")) for part in rel.split("/")):
            continue
        (members if rel.lower().endswith(DATA_SUFFIXES) else others).append((rel, info))
    return [info for _, info in sorted(members, key=lambda m: m[0])], sorted(rel for rel, _ in others)


def _local_files(root: str) -> list[str]:
    """Paths of the files under local folder ``root`` (paths as listed, through links), each folder read once."""
    files: list[str] = []
    real_root = os.path.realpath(root)
    seen = {real_root: root}  # real folder -> the path it was first reached by
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            listed = sorted(entries, key=lambda e: e.name)
        for entry in listed:
            path = f"{folder.rstrip('/')}/{entry.name}"
            if entry.name.startswith((".", "_")):
                continue
            if entry.is_symlink() and not os.path.exists(path):
                try:
                    os.stat(path)
                    why = "which cannot be reached"
                except OSError as err:
                    why = "which leads back to itself (a loop)" if err.errno == errno.ELOOP else "which does not exist"
                raise DataError(f"{path} is a link to {os.readlink(path)}, {why}: remove the link or restore what it "
                                "points to")
            if entry.is_dir():  # follows a link once
                real = os.path.realpath(path)
                if entry.is_symlink() and (real in seen or real.startswith(real_root + "/")
                                           or any(r.startswith(real.rstrip("/") + "/") for r in seen)):
                    raise DataError(f"{path} is a link to {real}, which the data folder {root} already reads or "
                                    "holds: a loop, or a second way to the same files; remove the link")
                seen[real] = path
                stack.append(path)
            elif entry.is_file():
                files.append(path)
    return files


def relative(root: str, path: str) -> str:
    """``path`` below folder ``root``, with '/' separators."""
    return path[len(root.rstrip("/")) :].lstrip("/")


def hive_partitions(rel: str) -> dict[str, str]:
    """Partition columns of a hive-style path: ``zone=z001/part.parquet`` -> {'zone': 'z001'}."""
    parts = {}
    for part in rel.split("/")[:-1]:
        key, sep, value = part.partition("=")
        if sep and key:
            parts[urllib.parse.unquote(key)] = urllib.parse.unquote(value)
    return parts


# ---------------------------------------------------------------------------------------------
# One file


def read_file(fs: pafs.FileSystem, path: str, display: str, config: DataConfig, partitions: dict[str, str]) -> Rows:
    """Read one CSV or Parquet file (chosen by its first bytes, not its name)."""
    with fs.open_input_stream(path) as stream:  # decompresses .gz by extension
        data = stream.read()
    if not data:
        raise UnreadableFile(f"{display}: empty file (0 bytes)")
    if data[:4] == _PARQUET_MAGIC:
        return _read_parquet(data, display, config, partitions)
    return read_csv(data, display, config, partitions)


def _needed(config: DataConfig) -> list[str]:
    return [c for c in (config.timestamp_column, config.value_column, config.series_column) if c]


def folder_columns(display: str, have: list[str], partitions: dict[str, str], config: DataConfig) -> list[str]:
    """The hive-style folder keys (``zone=z001/``) that stand in for a column the file lacks.

    Only the series column can come from the folder: a key naming the timestamp or value column
    of a file without it is refused by name (one folder value cannot be every row's reading).
    """
    added = []
    for key, value in partitions.items():
        if key in have:
            continue
        if key in (config.timestamp_column, config.value_column):
            raise UnreadableFile(
                f"{display}: the folder part '{key}={value}' names column '{key}', which this file lacks; a folder "
                f"key can stand in for the series column only (data.series_column)"
            )
        added.append(key)
    return added


def _missing_columns(display: str, have: list[str], config: DataConfig) -> UnreadableFile:
    missing = [c for c in _needed(config) if c not in have]
    return UnreadableFile(
        f"{display}: missing column(s) {missing}; the file has {have} "
        f"(set data.timestamp_column / data.value_column / data.series_column)"
    )


def read_csv(data: bytes, display: str, config: DataConfig, partitions: dict[str, str]) -> Rows:
    """The readings of a CSV file's bytes (or of a line-aligned range of them, after its header)."""
    head = data[:65536]
    if b"\x00" in head:
        raise UnreadableFile(f"{display}: not a text CSV file (it holds binary data)")
    if not data.strip():
        raise UnreadableFile(f"{display}: empty file (no header, no rows)")
    header_line = data.lstrip(b"\r\n").split(b"\n", 1)[0]
    try:
        header = next(csv.reader([header_line.decode("utf-8-sig").rstrip("\r")]))
    except UnicodeDecodeError:
        raise UnreadableFile(f"{display}: not a text CSV file (its first line is not UTF-8 text)") from None
    have = header + folder_columns(display, header, partitions, config)
    if any(c not in have for c in _needed(config)):
        raise _missing_columns(display, have, config)
    in_file = [c for c in _needed(config) if c in header]

    typed = {config.timestamp_column: pa.timestamp("ns"), config.value_column: pa.float64()}
    if config.series_column:
        typed[config.series_column] = pa.dictionary(pa.int32(), pa.string())
    fast = None
    try:
        fast = _csv_table(data, {c: typed[c] for c in in_file})
    except pa.ArrowInvalid:
        pass  # another timestamp format or a bad cell: the text path says which
    if fast is not None:
        if fast.num_rows == 0:
            raise UnreadableFile(f"{display}: no data rows (only a header)")
        ts, values = fast.column(config.timestamp_column), fast.column(config.value_column)
        v = values.to_numpy(zero_copy_only=False) if values.null_count == 0 else None
        if ts.null_count == 0 and v is not None and not _any_bad_value(v):
            codes, names = _series_codes(fast, config, partitions, display)
            return Rows(display, "row", _line_numbers(data, fast.num_rows), ts.to_numpy().view("int64"),
                        v.astype("float64", copy=False), codes, names)

    try:
        text = _csv_table(data, {c: pa.string() for c in in_file})
    except pa.ArrowInvalid as err:
        raise UnreadableFile(f"{display}: not a readable CSV file: {short_error(err)}") from None
    if text.num_rows == 0:
        raise UnreadableFile(f"{display}: no data rows (only a header)")
    rows = _line_numbers(data, text.num_rows)
    codes, names = _series_codes(text, config, partitions, display)
    ts_text = text.column(config.timestamp_column).to_pandas().astype(object).str.strip()
    value_text = text.column(config.value_column).to_pandas().astype(object).str.strip()
    return _from_text(display, rows, ts_text, value_text, codes, names, config)


def _csv_table(data: bytes, column_types: dict[str, pa.DataType]) -> pa.Table:
    return pa_csv.read_csv(
        pa.BufferReader(data),
        read_options=pa_csv.ReadOptions(block_size=1 << 24),
        convert_options=pa_csv.ConvertOptions(
            column_types=column_types, include_columns=list(column_types), strings_can_be_null=False
        ),
    )


def short_error(err: Exception) -> str:
    """The first line of a library error, at most 300 characters, for a message."""
    return str(err).strip().splitlines()[0][:300]


def _line_numbers(data: bytes, n: int) -> np.ndarray:
    """(n,) line number of each data row: header is line 1, blank lines (skipped by the parser) counted.

    Assumes one line per record (no line breaks inside quoted cells).
    """
    if b"\n\n" not in data and b"\n\r\n" not in data and not data.startswith((b"\n", b"\r\n")):
        return np.arange(2, n + 2, dtype=np.int64)
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw == 10)
    starts = np.concatenate([[0], ends + 1])
    stops = np.concatenate([ends, [len(raw)]])
    lengths = stops - starts
    cr = (lengths == 1) & (raw[np.minimum(starts, len(raw) - 1)] == 13)
    filled = np.flatnonzero((lengths > 0) & ~cr) + 1  # 1-based numbers of non-blank lines
    return filled[1 : n + 1].astype(np.int64)  # the first non-blank line is the header


def _any_bad_value(v: np.ndarray) -> bool:
    with np.errstate(invalid="ignore"):
        return bool((~np.isfinite(v) | (v < 0) | (v > FLOAT32_MAX)).any())


def _series_codes(table: pa.Table, config: DataConfig, partitions: dict[str, str],
                  display: str = "") -> tuple[np.ndarray, list[str]]:
    """(N,) codes into the stripped, distinct series ids of ``table``."""
    n = table.num_rows
    column = config.series_column
    if not column:
        return np.zeros(n, dtype=np.int64), [SINGLE_SERIES]
    if column not in table.column_names:  # a hive partition: one id for the whole file
        return np.zeros(n, dtype=np.int64), [partitions[column].strip()]
    array = table.column(column)
    _check_folder_agrees(table, column, partitions, display)
    if not pa.types.is_dictionary(array.type):
        array = pc.cast(array, pa.string()) if not pa.types.is_string(array.type) else array
        array = array.dictionary_encode()
    cat = array.to_pandas()  # Categorical; pandas unifies the chunks' dictionaries
    if not isinstance(cat.dtype, pd.CategoricalDtype):
        cat = cat.astype("category")
    local = np.asarray(cat.cat.codes, dtype=np.int64)
    stripped, uniques = pd.factorize(pd.Index(cat.cat.categories.astype(str)).str.strip())
    names = [str(u) for u in uniques]
    if (local < 0).any():  # nulls (Parquet only: CSV cells are never null here)
        names.append("")
        stripped = np.append(stripped, len(names) - 1)
    return stripped[local], names


def _check_folder_agrees(table: pa.Table, column: str, partitions: dict[str, str], display: str) -> None:
    """A series column inside the file must hold the value its hive-style folder names, if it names one."""
    if column not in partitions:
        return
    want = partitions[column].strip()
    found = pc.unique(pc.utf8_trim_whitespace(pc.cast(table.column(column), pa.string())).combine_chunks())
    others = [v for v in found.to_pylist() if v != want]
    if others:
        shown = ", ".join(repr(v) for v in others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        raise UnreadableFile(
            f"{display}: the folder part '{column}={partitions[column]}' and the file's '{column}' column disagree "
            f"(the column holds {shown}): rename the folder, fix the column, or leave the column out of the files"
        )


def _from_text(display, rows, ts_text: pd.Series, value_text: pd.Series, codes, names, config) -> Rows:
    """Parse and check text cells; every bad row is reported, none raises."""
    problems: list[RowProblem] = []
    ids = np.asarray(names, dtype=object)[codes] if config.series_column else None

    def flag(bad: np.ndarray, what: str, text: pd.Series) -> None:
        bad = np.asarray(bad, dtype=bool)
        if bad.any():
            where = np.flatnonzero(bad)
            examples = [(int(rows[i]), repr(text.iloc[i]), ids[i] if ids is not None else "") for i in where[:MAX_SHOWN]]
            problems.append(RowProblem(what, len(where), examples))

    try:
        timestamps = pd.to_datetime(ts_text, errors="coerce")
        # pandas infers one format from the first row; rows written with another ISO 8601
        # precision (midnight as a bare date, a 'T' separator) are valid, not unparseable.
        retry = timestamps.isna() & (ts_text != "")
        if retry.any():
            again = pd.to_datetime(ts_text.where(retry), errors="coerce", format="ISO8601")
            if again.dt.tz == timestamps.dt.tz:
                timestamps = timestamps.fillna(again)
    except ValueError as err:  # e.g. rows with different UTC offsets
        raise UnreadableFile(f"{display}: column '{config.timestamp_column}': {err}") from None
    if timestamps.dt.tz is not None:  # split boundaries and calendar features are naive local times
        raise UnreadableFile(
            f"{display}: timestamps carry a UTC offset (row {rows[0]}: {ts_text.iloc[0]!r}); write local times without one"
        )
    flag(timestamps.isna().to_numpy(), "unparseable timestamp", ts_text)
    # pandas parses dates it cannot hold in nanoseconds (after 2262) at a coarser unit: refused, with the limits.
    outside = (timestamps.notna() & ((timestamps < pd.Timestamp.min) | (timestamps > pd.Timestamp.max))).to_numpy()
    flag(outside, f"timestamp outside {pd.Timestamp.min:%Y-%m-%d}..{pd.Timestamp.max:%Y-%m-%d} (the dates pandas can "
         "hold)", ts_text)

    values = pd.to_numeric(value_text.where(value_text != "", None), errors="coerce").to_numpy(dtype="float64")
    empty = value_text.str.lower().isin(_NULL_TEXT).to_numpy()
    with np.errstate(invalid="ignore"):
        flag(empty, "missing (NaN) value", value_text)
        flag(np.isnan(values) & ~empty, "non-numeric value", value_text)
        flag(values < 0, "negative value", value_text)
        flag(np.isinf(values), "infinite value", value_text)
        flag(np.isfinite(values) & (values > FLOAT32_MAX), f"value beyond the float32 range (max {FLOAT32_MAX:.4g})", value_text)
    ns = timestamps.astype("datetime64[ns]").to_numpy().view("int64") if not problems else np.zeros(len(rows), np.int64)
    return Rows(display, "row", rows, ns, values, codes, names, problems)


def parquet_columns(names: list[str], display: str, config: DataConfig, partitions: dict[str, str]) -> list[str]:
    """The columns of a Parquet file (its schema's ``names``) to read; an UnreadableFile if one is missing."""
    have = names + folder_columns(display, names, partitions, config)
    if any(c not in have for c in _needed(config)):
        raise _missing_columns(display, have, config)
    return [c for c in _needed(config) if c in names]


def _read_parquet(data: bytes, display: str, config: DataConfig, partitions: dict[str, str]) -> Rows:
    try:
        columns = parquet_columns(pq.read_schema(pa.BufferReader(data)).names, display, config, partitions)
        table = pq.read_table(pa.BufferReader(data), columns=columns)
    except (pa.ArrowInvalid, OSError) as err:
        raise UnreadableFile(f"{display}: not a readable Parquet file: {short_error(err)}") from None
    return parquet_rows(table, display, config, partitions)


def parquet_rows(table: pa.Table, display: str, config: DataConfig, partitions: dict[str, str]) -> Rows:
    """Check and convert the columns (``parquet_columns``) of a Parquet file, or of some of its row groups.

    Row indices count from the table's first row.
    """
    if table.num_rows == 0:
        raise UnreadableFile(f"{display}: no data rows")
    rows = np.arange(table.num_rows, dtype=np.int64)
    codes, names = _series_codes(table, config, partitions, display)
    ts, value = table.column(config.timestamp_column), table.column(config.value_column)
    text_types = (pa.types.is_string, pa.types.is_large_string)
    if any(is_text(ts.type) or is_text(value.type) for is_text in text_types):
        ts_text = ts.to_pandas().astype(object).astype(str).str.strip()
        value_text = value.to_pandas().astype(object).astype(str).str.strip()
        result = _from_text(display, rows, ts_text, value_text, codes, names, config)
        result.row_word = "row index"
        return result

    if pa.types.is_timestamp(ts.type):
        if ts.type.tz is not None:
            raise UnreadableFile(
                f"{display}: column '{config.timestamp_column}' has time zone {ts.type.tz!r}; write local times without one"
            )
    elif not pa.types.is_date(ts.type):
        raise UnreadableFile(f"{display}: column '{config.timestamp_column}' holds {ts.type}, not timestamps")
    if not (pa.types.is_integer(value.type) or pa.types.is_floating(value.type) or pa.types.is_decimal(value.type)):
        raise UnreadableFile(f"{display}: column '{config.value_column}' holds {value.type}, not numbers")
    try:
        ns = pc.cast(ts, pa.timestamp("ns"))
    except pa.ArrowInvalid as err:
        raise UnreadableFile(f"{display}: column '{config.timestamp_column}': {short_error(err)}") from None
    values = pc.cast(value, pa.float64(), safe=False).to_numpy(zero_copy_only=False)  # nulls -> NaN
    problems: list[RowProblem] = []
    ids = np.asarray(names, dtype=object)[codes] if config.series_column else None

    def flag(bad: np.ndarray, what: str, show: Callable[[int], str]) -> None:
        if bad.any():  # the examples' text is made for the few rows shown, not for every row
            where = np.flatnonzero(bad)
            examples = [(int(i), show(i), ids[i] if ids is not None else "") for i in where[:MAX_SHOWN]]
            problems.append(RowProblem(what, len(where), examples))

    def null(i: int) -> str:
        return "null"

    value_null = value.is_null().to_numpy(zero_copy_only=False)

    def shown(i: int) -> str:
        return "null" if value_null[i] else str(values[i])

    ts_null = ns.is_null().to_numpy(zero_copy_only=False)
    flag(ts_null, "missing timestamp", null)
    with np.errstate(invalid="ignore"):
        flag(np.isnan(values), "missing (NaN) value", shown)
        flag(values < 0, "negative value", shown)
        flag(np.isinf(values), "infinite value", shown)
        flag(np.isfinite(values) & (values > FLOAT32_MAX), f"value beyond the float32 range (max {FLOAT32_MAX:.4g})", shown)
    if config.series_column in table.column_names and table.column(config.series_column).null_count:
        flag(table.column(config.series_column).is_null().to_numpy(zero_copy_only=False), "missing series id", null)
    ns_values = pc.fill_null(ns, pa.scalar(0, pa.timestamp("ns"))).to_numpy().view("int64")
    return Rows(display, "row index", rows, ns_values, values, codes, names, problems)
