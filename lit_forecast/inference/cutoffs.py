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
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lit_forecast.config import DataConfig
from lit_forecast.data.fetch import fetch
from lit_forecast.data.source import Series, fill_short_gaps, load_series
from lit_forecast.data.windows import Segment, WindowSet
from lit_forecast.errors import CutoffError
from lit_forecast.progress import Progress
from lit_forecast.spec import SeriesStats, WindowSpec, gap_slots, series_label

log = logging.getLogger(__name__)


def read_series(data: DataConfig) -> list[Series]:
    """The data's series on the ``data.freq`` grid, every missing slot left as NaN (none filled)."""
    series, _ = load_series(fetch(data), data, fill_gaps=False)
    return series


SKIP_REASONS = {  # reason -> how the summary names it
    "gap_before_cutoff": "gap before cutoff",
    "gap_in_history": "gap in history",
    "too_little_history": "too little history",
    "data_ends_before_cutoff": "data ends before cutoff",
}


@dataclass(frozen=True)
class SkippedWindow:
    """A (series, cutoff) that could not be forecast without look-ahead or holes, and why."""

    series_id: str
    cutoff: pd.Timestamp
    reason: str  # a key of SKIP_REASONS
    message: str  # the full sentence, what ``strict`` raises


@dataclass
class CutWindows:
    """What :func:`cut_windows` made: the windows, the filled series, the skipped windows, the unseen series."""

    windows: WindowSet
    filled: list[Series]  # the series with their short gaps filled (what the windows were cut from)
    skipped: list[SkippedWindow]
    unseen: list[str]  # series not in the checkpoint: scaled on their own history before each cutoff
    asked: int  # windows asked for: series x cutoffs

    def skip_summary(self, examples: int = 1) -> str:
        """``skipped 3 of 31,000 windows: 2 gap before cutoff (e.g. 'z0038' at 2015-01-22), ...``; '' if none."""
        return summarize_skips(self.skipped, self.asked, examples)


def summarize_skips(skipped: list[SkippedWindow], asked: int, examples: int = 1) -> str:
    """A count per reason with ``examples`` examples each: one line however many windows were skipped."""
    if not skipped:
        return ""
    parts = []
    for reason, name in SKIP_REASONS.items():
        these = [k for k in skipped if k.reason == reason]
        if these:
            shown = ", ".join(f"{k.series_id!r} at {k.cutoff}" for k in these[:examples])
            parts.append(f"{len(these):,} {name} (e.g. {shown})")
    return f"skipped {len(skipped):,} of {asked:,} windows: " + ", ".join(parts)


def build_windows(
    series: list[Series],
    stats: dict[str, SeriesStats],
    spec: WindowSpec,
    cutoffs: list[pd.Timestamp] | None = None,
    max_gap: str = "2h",
    history: int | None = None,
) -> tuple[WindowSet, list[Series]]:
    """:func:`cut_windows` with ``strict``: any window that cannot be cut is a CutoffError.

    Returns the windows and the series with their short gaps filled.
    """
    cut = cut_windows(series, stats, spec, cutoffs, max_gap, history, strict=True)
    return cut.windows, cut.filled


def cut_windows(
    series: list[Series],
    stats: dict[str, SeriesStats],
    spec: WindowSpec,
    cutoffs: list[pd.Timestamp] | None = None,
    max_gap: str = "2h",
    history: int | None = None,
    strict: bool = False,
    quiet: bool = False,
) -> CutWindows:
    """Windows for every series at every cutoff (series by series, cutoffs in the given order).

    ``cutoffs`` None: one window per series right after its last slot (the next ``horizon``
    slots, unknown). ``stats``: the checkpoint's training statistics; a series the checkpoint
    does not know is scaled with the mean and std of its own slots strictly before each cutoff.
    ``history``: slots each cutoff needs before it (default ``input_window``; the baselines need
    their lag). A window whose history has a hole (the slot before the cutoff missing, or a gap
    longer than ``max_gap``), too little history, or no data up to the cutoff is skipped and
    listed, or with ``strict`` raises a CutoffError. A cutoff off the data's grid always raises.
    ``quiet``: no warning about skipped windows and series (windows cut again for another purpose).
    """
    W, H = spec.input_window, spec.horizon
    history = max(history or W, W)
    step = pd.Timedelta(spec.freq)
    max_slots = gap_slots(max_gap, spec.freq)
    segments, filled_series, skipped, unseen, unlike = [], [], [], [], []
    progress = Progress("cutting windows", total=len(series), unit="series")
    for s in series:
        T = len(s.values)
        filled = fill_short_gaps(s.values, max_slots)
        padded = np.concatenate([filled, np.full(H, np.nan)])  # H unknown slots after the data: a calendar, no actuals
        end = s.start + T * step  # the slot after the last one: the latest possible cutoff
        starts = []
        for cutoff in cutoffs if cutoffs is not None else [end]:
            c, skip = _check(s, filled, pd.Timestamp(cutoff), step, history, W, end, max_gap)
            if skip is None:
                starts.append(c)
            elif strict:
                raise CutoffError(skip.message)
            else:
                skipped.append(skip)
        if s.series_id in stats:
            segments.append(Segment(s.series_id, s.start, padded, np.asarray(starts, dtype=np.int64)))
            if starts and _unlike(filled[: min(starts)], stats[s.series_id]):
                unlike.append(s.series_id)
        else:
            unseen.append(s.series_id)
            segments.extend(_own_scaled_segments(s, filled, padded, starts, history, H, step))
        filled_series.append(dataclasses.replace(s, values=filled))
        progress.advance()
    progress.done()
    windows = WindowSet(segments, stats, spec)
    asked = len(series) * (len(cutoffs) if cutoffs is not None else 1)
    cut = CutWindows(windows, filled_series, skipped, unseen, asked)
    if not quiet:
        _log_cut(cut, unlike)
    if len(windows) == 0:
        raise CutoffError("no windows to forecast: " + (cut.skip_summary() if skipped else "no series or no cutoffs"))
    return cut


def _log_cut(cut: CutWindows, unlike: list[str]) -> None:
    """One line each for the unseen series, the known ones unlike their statistics, and the skipped windows."""
    if cut.unseen:
        log.info(
            "%d series not in the checkpoint (%s): scaled with the mean and std of their own history "
            "before each cutoff",
            len(cut.unseen),
            _few(cut.unseen),
        )
    if unlike:
        log.warning(
            "%d series (%s) have a mean before their first cutoff more than %g training standard deviations from "
            "the checkpoint's: the same name for other data? They are scaled with the checkpoint's statistics",
            len(unlike),
            _few(unlike),
            UNLIKE_STDS,
        )
    if cut.skipped:
        log.warning("%s", cut.skip_summary())


UNLIKE_STDS = 3.0  # a known series whose past mean is further than this from its training mean is flagged


def _unlike(past: np.ndarray, trained: SeriesStats) -> bool:
    """True if the mean of ``past`` (passengers, NaN ignored) is over UNLIKE_STDS stds from the training mean."""
    known = past[np.isfinite(past)]
    return len(known) > 0 and abs(float(known.mean()) - trained.mean) > UNLIKE_STDS * trained.std


def _own_scaled_segments(
    s: Series, filled: np.ndarray, padded: np.ndarray, starts: list[int], history: int, horizon: int, step: pd.Timedelta
) -> list[Segment]:
    """One segment per cutoff for a series the model never saw, scaled on its slots strictly before that cutoff."""
    segments = []
    for c in starts:
        lo = c - history
        segments.append(
            Segment(
                s.series_id,
                s.start + lo * step,
                padded[lo : c + horizon],
                np.asarray([history]),
                stats=SeriesStats.fit(filled[:c]),
            )
        )  # the scaler training fits, on the past only
    return segments


def _few(ids, shown: int = 5) -> str:
    ids = sorted(ids)
    return ", ".join(map(repr, ids[:shown])) + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def _check(
    s: Series,
    filled: np.ndarray,
    cutoff: pd.Timestamp,
    step: pd.Timedelta,
    history: int,
    input_window: int,
    end: pd.Timestamp,
    max_gap: str,
) -> tuple[int, SkippedWindow | None]:
    """Index of ``cutoff`` in the series' slots, or why its window cannot be forecast."""
    first_ok = s.start + history * step
    label = series_label(s.series_id)

    def skip(reason: str, message: str) -> tuple[int, SkippedWindow]:
        return -1, SkippedWindow(s.series_id, cutoff, reason, message)

    if cutoff < s.start or cutoff > end:
        return skip(
            "too_little_history" if cutoff < s.start else "data_ends_before_cutoff",
            f"cutoff {cutoff} is outside the data{label}: its slots run from {s.start} to {end - step}, "
            f"so cutoffs can be {first_ok} .. {end}",
        )
    offset = (cutoff - s.start) / step
    if offset != int(offset):
        raise CutoffError(f"cutoff {cutoff} is not on the {step} grid of the data{label} (which starts at {s.start})")
    c = int(offset)
    if c < history:
        why = f"input_window {input_window}" + (
            f", and the seasonal-naive baselines {history}" if history > input_window else ""
        )
        return skip(
            "too_little_history",
            f"too little history before cutoff {cutoff}{label}: {c} slots from {s.start}, needs {history} ({why}); "
            f"the earliest possible cutoff is {first_ok}",
        )
    if np.isnan(s.values[c - 1]):
        return skip(
            "gap_before_cutoff",
            f"cutoff {cutoff}{label}: slot {cutoff - step} just before it is missing in the data; "
            f"filling it would use values after the cutoff",
        )
    holes = np.isnan(filled[c - history : c])
    if holes.any():
        first = s.start + (c - history + int(np.flatnonzero(holes)[0])) * step
        return skip(
            "gap_in_history",
            f"cutoff {cutoff}{label}: its {history} slots of history touch a gap longer than "
            f"data.max_gap={max_gap} (missing from {first})",
        )
    return c, None


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
                            f"--cutoffs {part!r} makes {count:,} cutoffs, more than the {MAX_CUTOFFS:,} one call "
                            f"may forecast: "
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
        raise CutoffError(
            f"--cutoffs: {len(out):,} cutoffs, more than the {MAX_CUTOFFS:,} one call may forecast; "
            "split them over several calls"
        )
    if any(t.tz is not None for t in out):
        raise CutoffError("--cutoffs: give local times without a UTC offset, like the data")
    return sorted(set(out))
