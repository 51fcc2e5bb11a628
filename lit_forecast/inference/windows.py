"""Windows at chosen cutoffs, for forecasting past the end of the data as well as inside it.

A cutoff t is the first slot to forecast. The window at t holds the ``input_window`` slots
strictly before t (scaled with the checkpoint's training statistics, never those of the data
at hand), the calendar of the ``horizon`` slots from t on (known in advance), and the actual
values of those slots where the data has them (NaN beyond its end).

No look-ahead: the series are read without interpolation (missing slots stay NaN) and short
gaps are filled here. A filled gap inside the window ends before the cutoff, so its linear
interpolation uses only earlier slots; a gap that reaches the cutoff would need a later value
to fill, so such a cutoff is refused instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lit_forecast.config import DataConfig
from lit_forecast.data.dataset import calendar_features
from lit_forecast.data.source import DataError, Series, fetch, fill_short_gaps, load_series

log = logging.getLogger(__name__)


class CutoffError(ValueError):
    """A cutoff cannot be forecast from the data; the message names the cutoff and the series."""


@dataclass
class ForecastWindows:
    """N windows: model inputs, longer history for the baselines, and actuals where known.

    W = input_window, H = horizon, P >= W slots of history (the baselines may need more than W).
    """

    series_ids: list[str]  # (N,)
    cutoffs: pd.DatetimeIndex  # (N,) first forecast slot of each window
    history: np.ndarray  # (N, P) float64 passengers in the P slots before the cutoff
    past_time: np.ndarray  # (N, W, 3) int64 [slot of day, day of week, holiday] of the last W of them
    future_time: np.ndarray  # (N, H, 3) int64 the same for the H forecast slots
    actual: np.ndarray  # (N, H) float64 passengers, NaN where the data does not have them
    loc: np.ndarray  # (N,) float64 the checkpoint's training mean of each window's series
    scale: np.ndarray  # (N,) float64 ... and its standard deviation
    freq: str

    def __len__(self) -> int:
        return len(self.cutoffs)

    @property
    def input_window(self) -> int:
        return self.past_time.shape[1]

    @property
    def horizon(self) -> int:
        return self.future_time.shape[1]

    def model_inputs(self, lo: int = 0, hi: int | None = None) -> dict[str, np.ndarray]:
        """Windows lo..hi-1 as the model's batch, in numpy (cheap to ship to Ray tasks).

        past_target (n, W) float32 scaled, past_time (n, W, 3), future_time (n, H, 3), loc and scale (n,) float32.
        """
        part = slice(lo, hi)
        loc, scale = self.loc[part], self.scale[part]
        past = (self.history[part, -self.input_window :] - loc[:, None]) / scale[:, None]
        return {
            "past_target": past.astype(np.float32),
            "past_time": self.past_time[part],
            "future_time": self.future_time[part],
            "loc": loc.astype(np.float32),
            "scale": scale.astype(np.float32),
        }

    def timestamps(self) -> np.ndarray:
        """(N, H) datetime64 of every forecast slot."""
        steps = np.arange(self.horizon) * pd.Timedelta(self.freq).to_timedelta64()
        return self.cutoffs.to_numpy()[:, None] + steps[None, :]


def read_series(data: DataConfig) -> list[Series]:
    """The CSV's series on the ``data.freq`` grid, every missing slot left as NaN (none filled)."""
    series, _ = load_series(fetch(data), data, fill_gaps=False)
    return series


def build_windows(
    series: list[Series],
    stats: dict[str, dict],
    input_window: int,
    horizon: int,
    freq: str,
    cutoffs: list[pd.Timestamp] | None = None,
    max_gap: str = "2h",
    history: int | None = None,
) -> ForecastWindows:
    """Windows for every series at every cutoff (series by series, cutoffs in the given order).

    ``cutoffs`` None: one window per series right after its last slot (the next ``horizon``
    slots, unknown). ``stats``: the checkpoint's {series_id: {"mean", "std"}}. ``history``:
    slots kept before each cutoff (default ``input_window``; the baselines need their lag).
    """
    history = max(history or input_window, input_window)
    step = pd.Timedelta(freq)
    max_slots = int(pd.Timedelta(max_gap) / step)
    parts: dict[str, list] = {k: [] for k in ("series_ids", "cutoffs", "history", "past_time", "future_time", "actual", "loc", "scale")}
    for s in series:
        if s.series_id not in stats:
            raise DataError(
                f"series {s.series_id!r} is not one the checkpoint was trained on (it has statistics for {sorted(stats)})"
            )
        T = len(s.values)
        filled = fill_short_gaps(s.values, max_slots)
        calendar = calendar_features(pd.date_range(s.start, periods=T + horizon, freq=freq), freq)  # (T + H, 3)
        end = s.start + T * step  # the slot after the last one: the latest possible cutoff
        for cutoff in cutoffs if cutoffs is not None else [end]:
            c = _slot(s, pd.Timestamp(cutoff), step, history, input_window, end)
            if np.isnan(s.values[c - 1]):
                raise CutoffError(
                    f"cutoff {cutoff}{_of(s)}: slot {cutoff - step} just before it is missing in the data; "
                    f"filling it would use values after the cutoff"
                )
            past = filled[c - history : c]
            if np.isnan(past).any():
                first = s.start + (c - history + int(np.flatnonzero(np.isnan(past))[0])) * step
                raise CutoffError(
                    f"cutoff {cutoff}{_of(s)}: its {history} slots of history touch a gap longer than "
                    f"data.max_gap={max_gap} (missing from {first})"
                )
            actual = np.full(horizon, np.nan)
            known = filled[c : c + horizon]
            actual[: len(known)] = known
            parts["series_ids"].append(s.series_id)
            parts["cutoffs"].append(pd.Timestamp(cutoff))
            parts["history"].append(past)
            parts["past_time"].append(calendar[c - input_window : c])
            parts["future_time"].append(calendar[c : c + horizon])  # c <= T, so always inside
            parts["actual"].append(actual)
            parts["loc"].append(stats[s.series_id]["mean"])
            parts["scale"].append(stats[s.series_id]["std"])
    if not parts["cutoffs"]:
        raise CutoffError("no windows to forecast: no series or no cutoffs")
    return ForecastWindows(
        series_ids=parts["series_ids"],
        cutoffs=pd.DatetimeIndex(parts["cutoffs"]),
        history=np.stack(parts["history"]).astype(np.float64),
        past_time=np.stack(parts["past_time"]),
        future_time=np.stack(parts["future_time"]),
        actual=np.stack(parts["actual"]),
        loc=np.asarray(parts["loc"], dtype=np.float64),
        scale=np.asarray(parts["scale"], dtype=np.float64),
        freq=freq,
    )


def _of(s: Series) -> str:
    return "" if s.series_id == "0" else f" (series {s.series_id!r})"


def _slot(s: Series, cutoff: pd.Timestamp, step: pd.Timedelta, history: int, input_window: int, end: pd.Timestamp) -> int:
    """Index of ``cutoff`` in the series' slots, after checking it can be forecast."""
    first_ok = s.start + history * step
    if cutoff < s.start or cutoff > end:
        raise CutoffError(
            f"cutoff {cutoff} is outside the data{_of(s)}: its slots run from {s.start} to {end - step}, "
            f"so cutoffs can be {first_ok} .. {end}"
        )
    offset = (cutoff - s.start) / step
    if offset != int(offset):
        raise CutoffError(f"cutoff {cutoff} is not on the {step} grid of the data{_of(s)} (which starts at {s.start})")
    c = int(offset)
    if c < history:
        why = f"input_window {input_window}" + (f", and the seasonal-naive baselines {history}" if history > input_window else "")
        raise CutoffError(
            f"too little history before cutoff {cutoff}{_of(s)}: {c} slots from {s.start}, needs {history} ({why}); "
            f"the earliest possible cutoff is {first_ok}"
        )
    return c


def parse_cutoffs(items: list[str]) -> list[pd.Timestamp]:
    """Cutoffs from command-line items, sorted and without repeats.

    Each item is a timestamp (``2015-01-05`` or ``2015-01-05T12:00``), a comma-separated list of
    them, or a range ``START..END/STEP`` with END included and STEP a pandas duration
    (``30min``, ``6h``, ``1D``; default ``1D``), e.g. ``2015-01-01..2015-01-31/1D``.
    """
    out: list[pd.Timestamp] = []
    for item in items:
        for part in filter(None, (p.strip() for p in item.split(","))):
            try:
                if ".." in part:
                    span, _, step = part.partition("/")
                    first, _, last = span.partition("..")
                    stamps = pd.date_range(pd.Timestamp(first), pd.Timestamp(last), freq=pd.Timedelta(step or "1D"))
                    if len(stamps) == 0:
                        raise ValueError("the range is empty (END before START?)")
                    out.extend(stamps)
                else:
                    out.append(pd.Timestamp(part))
            except ValueError as err:
                raise CutoffError(
                    f"--cutoffs: cannot read {part!r} ({err}); use timestamps like 2015-01-05T12:00, "
                    f"comma-separated, or a range START..END/STEP such as 2015-01-01..2015-01-31/1D"
                ) from None
    if not out:
        raise CutoffError("--cutoffs: no cutoff given")
    if any(t.tz is not None for t in out):
        raise CutoffError("--cutoffs: give local times without a UTC offset, like the data")
    return sorted(set(out))
