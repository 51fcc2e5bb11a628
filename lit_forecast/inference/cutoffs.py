"""Windows at chosen cutoffs, for forecasting past the end of the data as well as inside it.

A cutoff t is the first slot to forecast. The window at t holds the ``input_window`` slots
strictly before t (scaled with the checkpoint's training statistics, never those of the data
at hand), the calendar of the ``horizon`` slots from t on (known in advance), and the actual
values of those slots where the data has them (NaN beyond its end). The windows are cut by the
same :class:`~lit_forecast.data.windows.WindowSet` as training windows.

No look-ahead: the series are read without interpolation (missing slots stay NaN) and short
gaps are filled once per series. A filled gap before a cutoff ends before it, so its linear
interpolation uses only earlier slots; a gap that reaches the cutoff would need a later value
to fill, so such a cutoff is refused instead.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from lit_forecast.config import DataConfig
from lit_forecast.data.source import Series, fetch, fill_short_gaps, load_series
from lit_forecast.data.windows import Segment, WindowSet
from lit_forecast.errors import CutoffError, DataError
from lit_forecast.spec import SeriesStats, WindowSpec, gap_slots, series_label

log = logging.getLogger(__name__)


def read_series(data: DataConfig) -> list[Series]:
    """The data's series on the ``data.freq`` grid, every missing slot left as NaN (none filled)."""
    series, _ = load_series(fetch(data), data, fill_gaps=False)
    return series


def build_windows(
    series: list[Series],
    stats: dict[str, SeriesStats],
    spec: WindowSpec,
    cutoffs: list[pd.Timestamp] | None = None,
    max_gap: str = "2h",
    history: int | None = None,
) -> tuple[WindowSet, list[Series]]:
    """Windows for every series at every cutoff (series by series, cutoffs in the given order).

    ``cutoffs`` None: one window per series right after its last slot (the next ``horizon``
    slots, unknown). ``stats``: the checkpoint's training statistics. ``history``: slots each
    cutoff needs before it (default ``input_window``; the baselines need their lag). Returns
    the windows and the series with their short gaps filled (what the windows were cut from).
    """
    W, H = spec.input_window, spec.horizon
    history = max(history or W, W)
    step = pd.Timedelta(spec.freq)
    max_slots = gap_slots(max_gap, spec.freq)
    segments, filled_series = [], []
    for s in series:
        if s.series_id not in stats:
            raise DataError(
                f"series {s.series_id!r} is not one the checkpoint was trained on (it has statistics for {_few(stats)})"
            )
        T = len(s.values)
        filled = fill_short_gaps(s.values, max_slots)
        end = s.start + T * step  # the slot after the last one: the latest possible cutoff
        starts = []
        for cutoff in cutoffs if cutoffs is not None else [end]:
            c = _slot(s, pd.Timestamp(cutoff), step, history, W, end)
            if np.isnan(s.values[c - 1]):
                raise CutoffError(
                    f"cutoff {cutoff}{series_label(s.series_id)}: slot {cutoff - step} just before it is missing in the data; "
                    f"filling it would use values after the cutoff"
                )
            if np.isnan(filled[c - history : c]).any():
                first = s.start + (c - history + int(np.flatnonzero(np.isnan(filled[c - history : c]))[0])) * step
                raise CutoffError(
                    f"cutoff {cutoff}{series_label(s.series_id)}: its {history} slots of history touch a gap longer than "
                    f"data.max_gap={max_gap} (missing from {first})"
                )
            starts.append(c)
        # H unknown slots after the data: windows near its end have a calendar but no actuals.
        segments.append(Segment(s.series_id, s.start, np.concatenate([filled, np.full(H, np.nan)]), np.asarray(starts, dtype=np.int64)))
        filled_series.append(dataclasses.replace(s, values=filled))
    windows = WindowSet(segments, stats, spec)
    if len(windows) == 0:
        raise CutoffError("no windows to forecast: no series or no cutoffs")
    return windows, filled_series


def _few(ids, shown: int = 5) -> str:
    ids = sorted(ids)
    return ", ".join(map(repr, ids[:shown])) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def _slot(s: Series, cutoff: pd.Timestamp, step: pd.Timedelta, history: int, input_window: int, end: pd.Timestamp) -> int:
    """Index of ``cutoff`` in the series' slots, after checking it can be forecast."""
    first_ok = s.start + history * step
    if cutoff < s.start or cutoff > end:
        raise CutoffError(
            f"cutoff {cutoff} is outside the data{series_label(s.series_id)}: its slots run from {s.start} to {end - step}, "
            f"so cutoffs can be {first_ok} .. {end}"
        )
    offset = (cutoff - s.start) / step
    if offset != int(offset):
        raise CutoffError(f"cutoff {cutoff} is not on the {step} grid of the data{series_label(s.series_id)} (which starts at {s.start})")
    c = int(offset)
    if c < history:
        why = f"input_window {input_window}" + (f", and the seasonal-naive baselines {history}" if history > input_window else "")
        raise CutoffError(
            f"too little history before cutoff {cutoff}{series_label(s.series_id)}: {c} slots from {s.start}, needs {history} ({why}); "
            f"the earliest possible cutoff is {first_ok}"
        )
    return c


MAX_CUTOFFS = 100_000  # per call: each cutoff is one window per series, held in memory at once


def parse_cutoffs(items: list[str]) -> list[pd.Timestamp]:
    """Cutoffs from command-line items, sorted and without repeats.

    Each item is a timestamp (``2015-01-05`` or ``2015-01-05T12:00``), a comma-separated list of
    them, or a range ``START..END/STEP`` with END included and STEP a positive pandas duration
    (``30min``, ``6h``, ``1D``; default ``1D``), e.g. ``2015-01-01..2015-01-31/1D``. At most
    ``MAX_CUTOFFS`` in all.
    """
    out: list[pd.Timestamp] = []
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            try:
                if ".." in part:
                    span, _, step = part.partition("/")
                    first, _, last = span.partition("..")
                    start, end, every = pd.Timestamp(first), pd.Timestamp(last), pd.Timedelta(step or "1D")
                    if pd.isna(start) or pd.isna(end) or pd.isna(every):
                        raise ValueError("START, END and STEP must all be given")
                    if every <= pd.Timedelta(0):
                        raise ValueError(f"the step {step!r} must be a positive duration")
                    if end < start:
                        raise ValueError("the range is empty (END before START)")
                    count = (end - start) // every + 1
                    if count + len(out) > MAX_CUTOFFS:
                        raise CutoffError(
                            f"--cutoffs {part!r} makes {count:,} cutoffs, more than the {MAX_CUTOFFS:,} one call may forecast: "
                            f"use a longer step or a shorter range, or split it over several calls"
                        )
                    out.extend(pd.date_range(start, end, freq=every))
                else:
                    stamp = pd.Timestamp(part)
                    if pd.isna(stamp):
                        raise ValueError("not a timestamp")
                    out.append(stamp)
            except CutoffError:
                raise
            except (ValueError, OverflowError, TypeError) as err:
                raise CutoffError(
                    f"--cutoffs: cannot read {part!r} ({err}); use timestamps like 2015-01-05T12:00, "
                    f"comma-separated, or a range START..END/STEP such as 2015-01-01..2015-01-31/1D"
                ) from None
    if not out:
        raise CutoffError("--cutoffs: no cutoff given")
    if len(out) > MAX_CUTOFFS:
        raise CutoffError(f"--cutoffs: {len(out):,} cutoffs, more than the {MAX_CUTOFFS:,} one call may forecast; split them over several calls")
    if any(t.tz is not None for t in out):
        raise CutoffError("--cutoffs: give local times without a UTC offset, like the data")
    return sorted(set(out))
