"""Fetch a CSV (URL with a checksum-verified cache, local path or pyarrow.fs URI), validate it,
and turn it into regular series: one value per ``freq`` slot, short gaps interpolated.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lit_forecast import storage
from lit_forecast.config import DataConfig
from lit_forecast.errors import DataError
from lit_forecast.spec import SINGLE_SERIES, gap_slots, series_label

log = logging.getLogger(__name__)

# Shown in error messages; more rows than this only make the message harder to read.
_MAX_ROWS_SHOWN = 5


@dataclass
class Source:
    """A CSV resolved to something readable, with its checksum."""

    location: str  # local path or pyarrow.fs URI
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


def cache_dir(config: DataConfig) -> Path:
    """Where downloads are kept: $LIT_FORECAST_CACHE, else data.cache_dir."""
    return Path(os.environ.get("LIT_FORECAST_CACHE") or config.cache_dir).expanduser()


def sha256_of(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def fetch(config: DataConfig) -> Source:
    """Resolve ``config.source`` to a readable file, downloading URLs into the cache once."""
    origin = config.source
    if origin.startswith(("http://", "https://")):
        return _fetch_url(origin, config)
    if storage.is_uri(origin):
        if not storage.exists(origin):
            raise DataError(f"data file not found: {origin}")
        return Source(origin, sha256_of(storage.read_bytes(origin)), origin)
    path = Path(origin).expanduser()
    if not path.is_file():
        raise DataError(f"data file not found: {path.resolve()}")
    return Source(str(path.resolve()), sha256_of(path.read_bytes()), origin)


def _fetch_url(url: str, config: DataConfig) -> Source:
    target = cache_dir(config) / url.rsplit("/", 1)[-1]
    if target.is_file():
        digest = sha256_of(target.read_bytes())
        if config.sha256 is None or digest == config.sha256:
            log.info("using cached %s", target)
            return Source(str(target), digest, url)
        log.warning("cached %s has sha256 %s, expected %s: downloading again", target, digest, config.sha256)
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            data = response.read()
    except (urllib.error.URLError, TimeoutError, OSError) as err:
        raise DataError(
            f"could not download {url} ({err}). Without network, put the file at {target} "
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


def load_series(source: Source, config: DataConfig, fill_gaps: bool = True) -> tuple[list[Series], LoadReport]:
    """Read and validate the CSV, then resample every series to ``config.freq``.

    ``fill_gaps`` (training): interpolate short gaps, apply ``data.long_gaps`` and require one
    window's length. Without it (inference) every missing slot stays NaN and there is no length
    check: a forecast fills and checks the history before its own cutoff.
    """
    name = source.origin.rsplit("/", 1)[-1]
    try:
        frame = pd.read_csv(io.BytesIO(storage.read_bytes(source.location)), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{name}: not a readable CSV file: {err}") from None
    report = LoadReport(rows=len(frame))
    columns = [config.timestamp_column, config.value_column]
    if config.series_column:
        columns.append(config.series_column)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"{name}: missing column(s) {missing}; the file has {list(frame.columns)} "
            f"(set data.timestamp_column / data.value_column / data.series_column)"
        )
    row = pd.Series(np.arange(len(frame)) + 2, index=frame.index)  # file line: header is line 1

    stamps = frame[config.timestamp_column].str.strip()
    try:
        timestamps = pd.to_datetime(stamps, errors="coerce")
        # pandas infers one format from the first row; rows written with another ISO 8601
        # precision (midnight as a bare date, a 'T' separator) are valid, not unparseable.
        retry = timestamps.isna() & (stamps != "")
        if retry.any():
            again = pd.to_datetime(stamps.where(retry), errors="coerce", format="ISO8601")
            if again.dt.tz == timestamps.dt.tz:
                timestamps = timestamps.fillna(again)
    except ValueError as err:  # e.g. rows with different UTC offsets
        raise DataError(f"{name}: column '{config.timestamp_column}': {err}") from None
    if timestamps.dt.tz is not None:  # split boundaries and calendar features are naive local times
        raise DataError(
            f"{name}: timestamps carry a UTC offset (row 2: {stamps.iloc[0]!r}); write local times without one"
        )
    _fail_rows(name, row, timestamps.isna(), frame[config.timestamp_column], "unparseable timestamp")

    text = frame[config.value_column].str.strip()
    values = pd.to_numeric(text.where(text != "", None), errors="coerce")
    empty = text.str.lower().isin(["", "nan", "na", "null", "none"])
    _fail_rows(name, row, empty, text, "missing (NaN) value")
    _fail_rows(name, row, values.isna() & ~empty, text, "non-numeric value")
    _fail_rows(name, row, values < 0, text, "negative value")
    _fail_rows(name, row, ~np.isfinite(values), text, "infinite value")

    ids = frame[config.series_column].str.strip() if config.series_column else pd.Series(SINGLE_SERIES, index=frame.index)
    table = pd.DataFrame({"series_id": ids, "timestamp": timestamps, "value": values.astype("float64"), "row": row})
    dup = table.duplicated(["series_id", "timestamp"], keep=False)
    if dup.any():
        shown = table[dup].sort_values(["series_id", "timestamp", "row"]).head(2 * _MAX_ROWS_SHOWN)
        lines = [f"row {r.row}: duplicate timestamp {r.timestamp}" + series_label(r.series_id) for r in shown.itertuples()]
        raise DataError(f"{name}: {int(dup.sum())} rows share a timestamp:\n  " + "\n  ".join(lines))

    series = []
    for series_id, group in table.groupby("series_id", sort=True):
        series.append(_regularise(name, str(series_id), group, config, report if fill_gaps else None))
    return series, report


def _fail_rows(name: str, row: pd.Series, bad: pd.Series, text: pd.Series, what: str) -> None:
    if not bad.any():
        return
    shown = [f"row {row[i]}: {text[i]!r}" for i in bad[bad].index[:_MAX_ROWS_SHOWN]]
    more = f" (and {int(bad.sum()) - len(shown)} more)" if bad.sum() > len(shown) else ""
    raise DataError(f"{name}: {what} in {int(bad.sum())} row(s){more}:\n  " + "\n  ".join(shown))


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


def _regularise(name: str, series_id: str, group: pd.DataFrame, config: DataConfig, report: LoadReport | None) -> Series:
    """Resample one series to the grid; with a ``report``, also fill or reject its gaps."""
    raw = group.set_index("timestamp")["value"].sort_index()
    resampler = raw.resample(config.freq)
    regular = resampler.sum(min_count=1) if config.aggregation == "sum" else resampler.mean()
    values = regular.to_numpy(dtype="float64", copy=True)
    if report is None:  # the grid as it is, every missing slot NaN
        return Series(series_id, regular.index[0], values)
    max_slots = gap_slots(config.max_gap, config.freq)
    runs = nan_runs(values)
    long_runs = [(s, e) for s, e in runs if e - s > max_slots]
    for s, e in runs:
        if e - s <= max_slots:
            report.interpolated_gaps += 1
            report.interpolated_slots += int(e - s)
    if long_runs:
        gaps = [f"{regular.index[s]} .. {regular.index[e - 1]} ({e - s} slots)" for s, e in long_runs]
        if config.long_gaps == "error":
            shown = "\n  ".join(gaps[:_MAX_ROWS_SHOWN])
            raise DataError(
                f"{name}{series_label(series_id)}: {len(gaps)} gap(s) longer than data.max_gap={config.max_gap}:\n  {shown}\n"
                "Raise data.max_gap to interpolate them, or set data.long_gaps=drop to skip the windows that touch them."
            )
        report.long_gaps.extend(f"{series_id}: {g}" for g in gaps)
    values = fill_short_gaps(values, max_slots)  # long gaps stay NaN: windows touching them are dropped later
    needed = config.input_window + config.horizon
    if len(values) < needed:
        raise DataError(
            f"{name}{series_label(series_id)}: {len(values)} slots of {config.freq} after resampling; "
            f"one window needs at least {needed} (data.input_window {config.input_window} + data.horizon {config.horizon})"
        )
    return Series(series_id, regular.index[0], values)
