"""The checks on readings and series: every problem is gathered, then reported together.

A :class:`Problems` collects what is wrong (whole files, bad rows, bad series) across every
file and series of the input, and reports it as one DataError: a count and a few examples
each, naming the file, row and series. Both preparation paths (:mod:`lit_forecast.data.source`
on one process, :mod:`lit_forecast.data.ray_prepare` per group of series) run these checks,
so their messages are the same.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from lit_forecast.config import DataConfig
from lit_forecast.data.readers import FLOAT32_MAX, MAX_SHOWN
from lit_forecast.errors import DataError
from lit_forecast.spec import series_label

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


class Problems:
    """Everything wrong with the input, gathered before one DataError reports it all."""

    def __init__(self) -> None:
        self.files: list[str] = []  # whole files that cannot be used
        self.rows: dict[str, list] = {}  # what -> [(count, example lines, file)]
        self.series: dict[str, list[str]] = {}  # kind -> one message per series

    def add_rows(self, what: str, count: int, lines: list[str], file: str) -> None:
        """``count`` rows of ``file`` with problem ``what``; ``lines`` show a few of them."""
        self.rows.setdefault(what, []).append((count, lines, file))

    def add_series(self, kind: str, message: str) -> None:
        """One series refused for ``kind`` of problem."""
        self.series.setdefault(kind, []).append(message)

    def any(self) -> bool:
        """Whether anything was found."""
        return bool(self.files or self.rows or self.series)

    def raise_if_any(self, name: str, series_total: int | None = None) -> None:
        """One DataError listing everything found (a count and a few examples each), if anything was."""
        parts = []
        if self.files:
            head = f"{len(self.files)} file(s) cannot be used:\n  " if len(self.files) > 1 else ""
            shown = self.files[:MAX_SHOWN] + (
                [f"... and {len(self.files) - MAX_SHOWN} more file(s)"] if len(self.files) > MAX_SHOWN else []
            )
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


def row_location(part_or_file: str, row_word: str, row: int, many_files: bool) -> str:
    """Where a row is, as messages name it: 'row 12', or '<file> row 12' when there are several files."""
    return f"{part_or_file} {row_word} {row}" if many_files else f"{row_word} {row}"


def _table_location(table: dict, i: int, config: DataConfig, many_files: bool) -> str:
    part = table["parts"][table["file"][i]]
    return row_location(part.file, part.row_word, int(table["rows"][i]), many_files)


def series_bounds(codes: np.ndarray) -> list[tuple[int, int, int]]:
    """(code, start, end) of each series' run in the sorted table."""
    starts = np.concatenate([[0], np.flatnonzero(np.diff(codes)) + 1])
    ends = np.concatenate([starts[1:], [len(codes)]])
    return [(int(codes[s]), int(s), int(e)) for s, e in zip(starts, ends)]


def check_duplicates(name: str, table: dict, config: DataConfig, problems: Problems, many_files: bool) -> None:
    """Rows of one series with the same timestamp (``table`` sorted by series, then time)."""
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
        f"{_table_location(table, i, config, many_files)}: duplicate timestamp {pd.Timestamp(int(ts[i]))}"
        + series_label(table["names"][codes[i]])
        for i in shown
    ]
    more = f"\n  ... and {len(where) - len(shown)} more" if len(where) > len(shown) else ""
    hint = ""
    if many_files and not config.series_column and len(set(table["file"][where].tolist())) > 1:
        hint = "\nSeveral files hold the same timestamps: if they are different series, set data.series_column."
    problems.add_series(
        "duplicate timestamps", f"{name}: {len(where)} rows share a timestamp:\n  " + "\n  ".join(lines) + more + hint
    )


def check_outliers(
    name: str, table: dict, bounds: list[tuple[int, int, int]], config: DataConfig, problems: Problems, many_files: bool
) -> int:
    """Readings far above their series' usual level: always an error beyond SCALER_LIMIT, else per data.outliers.

    With data.outliers=clip, outliers are clipped in ``table["values"]``; returns how many.
    """
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
            f"{_table_location(table, i, config, many_files)}: {values[i]:.6g}{series_label(table['names'][table['codes'][i]])}"
            f" (series level {level[i]:.6g})"
            for i in where[:MAX_SHOWN]
        ]

    if huge.any():
        count, shown = lines(huge)
        problems.add_rows(
            f"value so large it would make the scaler meaningless (over {SCALER_LIMIT:g} x its series' level, "
            "the 99th percentile of its readings)",
            count,
            shown,
            "",
        )
    if outlier.any():
        if config.outliers == "clip":
            values[outlier] = OUTLIER_FACTOR * level[outlier]
            clipped = int(outlier.sum())
            log.warning(
                "%s: clipped %d reading(s) to %g x their series' level (data.outliers=clip)",
                name,
                clipped,
                OUTLIER_FACTOR,
            )
            return clipped
        else:
            count, shown = lines(outlier)
            problems.add_rows(
                f"outlier (over {OUTLIER_FACTOR:g} x its series' level, the 99th percentile of its readings; "
                f"set data.outliers=clip to clip such readings to that bound)",
                count,
                shown,
                "",
            )
    return 0


def _duration(ns: float) -> str:
    """A readable duration for messages: '1h', '90min', '45s'."""
    td = pd.Timedelta(int(ns), unit="ns")
    if td % pd.Timedelta("1h") == pd.Timedelta(0):
        return f"{td // pd.Timedelta('1h')}h"
    if td % pd.Timedelta("1min") == pd.Timedelta(0):
        return f"{td // pd.Timedelta('1min')}min"
    return str(td)


# ---------------------------------------------------------------------------------------------
# One series on its grid (see source.regularise)


def check_slot_sums(where: str, grid: np.ndarray, start: pd.Timestamp, step_ns: int, problems: Problems) -> bool:
    """Whether every slot of ``grid`` (T,) fits float32, the shards' type; if not, a problem."""
    if not np.nanmax(grid) > FLOAT32_MAX:
        return True
    k = int(np.nanargmax(grid))
    problems.add_series(
        "slot sums beyond float32",
        f"{where}: slot {start + k * pd.Timedelta(step_ns, unit='ns')} sums to {grid[k]:.4g}, beyond the float32 range",
    )
    return False


def check_density(
    where: str,
    timestamps: np.ndarray,
    step_ns: int,
    interpolated: int,
    slots: int,
    config: DataConfig,
    problems: Problems,
) -> bool:
    """Whether a series' readings are dense enough for ``data.freq``; if not, a problem.

    Refused when its readings are typically further apart than one slot (more than half of the
    spacings between consecutive readings exceed it), or when more than MAX_INTERPOLATED_SHARE
    of its ``slots`` would be ``interpolated``. ``timestamps``: its readings' (ns), sorted.
    """
    spacings = np.diff(timestamps)
    wide = int((spacings > step_ns).sum())
    if len(spacings) < 2 or not (2 * wide > len(spacings) or interpolated > MAX_INTERPOLATED_SHARE * slots):
        return True
    median = float(np.median(spacings))
    problems.add_series(
        "readings sparser than data.freq",
        f"{where}: readings are {_duration(median)} apart (median) but data.freq={config.freq}: "
        f"{interpolated} of {slots} slots ({interpolated / slots:.0%}) would be interpolated "
        f"(at most {MAX_INTERPOLATED_SHARE:.0%} allowed, and readings must typically be at most one slot apart). "
        f"Set data.freq to the data's spacing (e.g. data.freq={_duration(max(median, step_ns))}), "
        f"or write the missing slots (e.g. 0 for no demand).",
    )
    return False


def report_long_gaps(where: str, gaps: list[str], config: DataConfig, problems: Problems) -> None:
    """A series refused for ``gaps`` longer than data.max_gap (data.long_gaps=error)."""
    shown = "\n  ".join(gaps[:MAX_SHOWN])
    more = f"\n  ... and {len(gaps) - MAX_SHOWN} more" if len(gaps) > MAX_SHOWN else ""
    problems.add_series(
        "long gaps",
        f"{where}: {len(gaps)} gap(s) longer than data.max_gap={config.max_gap}:\n  {shown}{more}\n"
        "Raise data.max_gap to interpolate them, or set data.long_gaps=drop to skip the windows that touch them.",
    )


def check_length(where: str, slots: int, config: DataConfig, problems: Problems) -> bool:
    """Whether a series of ``slots`` holds one window; if not, a problem."""
    needed = config.input_window + config.horizon
    if slots >= needed:
        return True
    problems.add_series(
        "too short series",
        f"{where}: {slots} slots of {config.freq} after resampling; "
        f"one window needs at least {needed} (data.input_window {config.input_window} + data.horizon {config.horizon})",
    )
    return False
