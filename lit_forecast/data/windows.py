"""The one window cutter: the tensors the model sees, for training and for forecasts alike.

A window with target start ``s`` in a segment is the ``input_window`` slots before ``s`` (the
past) and the ``horizon`` slots from ``s`` on (the future). Training cuts windows from the
segments stored in the Parquet shards; inference cuts them at cutoffs from the series it
reads (:mod:`lit_forecast.inference.cutoffs`). Both build a :class:`WindowSet`, so a forecast at
cutoff t and a training window whose target starts at t get the same tensors.

A batch is a dict of named tensors (B = batch, W = input_window, H = horizon)::

    past_target    (B, W)    float32  scaled values before the cutoff
    future_target  (B, H)    float32  scaled values from the cutoff on (NaN where unknown)
    past_time      (B, W, 3) int64    [slot of day, day of week, holiday] of each past slot
    future_time    (B, H, 3) int64    the same for each future slot (known in advance)
    loc, scale     (B,)      float32  the series' training mean and std: passengers = x * scale + loc
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from pandas.tseries.holiday import USFederalHolidayCalendar
from torch.utils.data import Dataset

from lit_forecast.errors import DataError
from lit_forecast.spec import SeriesStats, WindowSpec


@dataclass
class Segment:
    """Consecutive slots of one series and the target starts of the windows cut from them."""

    series_id: str
    start: pd.Timestamp  # timestamp of values[0]
    values: np.ndarray  # (T,) passengers; NaN only where unknown (after the end of the data)
    window_starts: np.ndarray  # (N,) target-start offsets into values
    stats: SeriesStats | None = None  # its own scaling (a series the model never saw); None: stats[series_id]


def segments_from_table(table: pa.Table) -> list[Segment]:
    """Read the segment rows written by :mod:`lit_forecast.data.prepare`."""
    columns = table.to_pydict()
    return [
        Segment(sid, pd.Timestamp(start), np.asarray(values, dtype=np.float64), np.asarray(starts, dtype=np.int64))
        for sid, start, values, starts in zip(columns["series_id"], columns["start"], columns["values"], columns["window_starts"])
    ]


def calendar_features(times: pd.DatetimeIndex, freq: str) -> np.ndarray:
    """(T, 3) int64: slot of the day (0 .. slots_per_day-1), day of the week (Monday 0), and
    1 on US federal holidays (New Year, Thanksgiving, Christmas, ...), else 0."""
    # Integer arithmetic on nanoseconds since 1970-01-01 (a Thursday): a fleet cuts thousands
    # of segments, and pandas' calendar accessors cost about a millisecond per call.
    ns = np.asarray(times, dtype="datetime64[ns]").view(np.int64)
    day_ns = 86_400 * 10**9
    days = ns // day_ns
    slot = (ns - days * day_ns) // pd.Timedelta(freq).value
    weekday = (days + 3) % 7  # Monday 0
    if len(times):
        holidays = _holidays(int(pd.Timestamp(times.min()).year), int(pd.Timestamp(times.max()).year))
        holiday = np.isin(days, holidays.values.astype("datetime64[D]").astype(np.int64))
    else:
        holiday = np.zeros(0, dtype=bool)
    return np.stack([slot, weekday, holiday.astype(np.int64)], axis=1).astype(np.int64)


@functools.lru_cache(maxsize=64)
def _holidays(first_year: int, last_year: int) -> pd.DatetimeIndex:
    """US federal holidays of whole years: computed once, not once per segment (a fleet has thousands)."""
    return USFederalHolidayCalendar().holidays(f"{first_year}-01-01", f"{last_year}-12-31")


class WindowSet(Dataset):
    """Windows over segments laid end to end in flat tensors; a window is a slice of them.

    Values are scaled once with each series' training statistics and kept in passengers too
    (for baselines and actuals). Memory is O(slots), not O(windows x window length). A batch
    is cut with one vectorised gather (:meth:`batch`), which the DataLoader uses through
    ``__getitems__``: no per-window Python in the hot path.
    """

    def __init__(self, segments: list[Segment], stats: dict[str, SeriesStats], spec: WindowSpec):
        self.spec = spec
        raw, times, targets, first, locs, scales, cutoffs, series_ids = [], [], [], [], [], [], [], []
        base = 0
        scaling = []  # (loc, scale) of each segment
        for seg in segments:
            if seg.stats is None and seg.series_id not in stats:
                raise DataError(f"no scaler statistics for series {seg.series_id!r}")
            own = seg.stats or stats[seg.series_id]
            loc, scale = own.mean, own.std
            scaling.append((loc, scale))
            slots = pd.date_range(seg.start, periods=len(seg.values), freq=spec.freq)
            raw.append(seg.values)
            times.append(calendar_features(slots, spec.freq))
            targets.append(base + seg.window_starts)
            first.append(np.full(len(seg.window_starts), base))
            locs.append(np.full(len(seg.window_starts), loc))
            scales.append(np.full(len(seg.window_starts), scale))
            cutoffs.append(slots.values[seg.window_starts])  # datetime64: no Timestamp object per window
            series_ids.extend([seg.series_id] * len(seg.window_starts))
            base += len(seg.values)
        flat = np.concatenate(raw).astype(np.float64) if raw else np.zeros(0)
        slot_loc = np.concatenate([np.full(len(s.values), sc[0]) for s, sc in zip(segments, scaling)]) if segments else np.zeros(0)
        slot_scale = np.concatenate([np.full(len(s.values), sc[1]) for s, sc in zip(segments, scaling)]) if segments else np.zeros(0)
        self.raw = flat  # (T,) float64 passengers
        self.values = torch.as_tensor((flat - slot_loc) / slot_scale, dtype=torch.float32)  # (T,) scaled
        self.times = torch.as_tensor(np.concatenate(times) if times else np.zeros((0, 3)), dtype=torch.int64)
        self.targets = torch.as_tensor(np.concatenate(targets) if targets else np.zeros(0), dtype=torch.int64)
        self.first_slot = np.concatenate(first) if first else np.zeros(0, dtype=np.int64)  # (N,) start of each window's segment
        self.loc = torch.as_tensor(np.concatenate(locs) if locs else np.zeros(0), dtype=torch.float32)
        self.scale = torch.as_tensor(np.concatenate(scales) if scales else np.zeros(0), dtype=torch.float32)
        self.cutoffs = pd.DatetimeIndex(np.concatenate(cutoffs) if cutoffs else np.zeros(0, dtype="datetime64[ns]"))  # (N,) first target timestamp of each window
        self.series_ids = series_ids  # (N,)
        W, H = spec.input_window, spec.horizon
        self._past = torch.arange(-W, 0)
        self._future = torch.arange(H)

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, index: torch.Tensor | np.ndarray | list[int] | slice) -> dict[str, torch.Tensor]:
        """Windows ``index`` as one batch, cut by a single gather per tensor."""
        starts = self.targets[index]
        past, future = starts[:, None] + self._past, starts[:, None] + self._future
        return {
            "past_target": self.values[past],
            "future_target": self.values[future],
            "past_time": self.times[past],
            "future_time": self.times[future],
            "loc": self.loc[index],
            "scale": self.scale[index],
        }

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return self.batch(torch.as_tensor(indices, dtype=torch.int64))

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {name: tensor[0] for name, tensor in self.batch(torch.tensor([i])).items()}

    def history(self, index: np.ndarray | slice, slots: int) -> np.ndarray:
        """(n, slots) float64 passengers of the ``slots`` slots before each window's target start."""
        starts = self.targets[index].numpy()
        return self.raw[starts[:, None] + np.arange(-slots, 0)]

    def actual(self, index: np.ndarray | slice = slice(None)) -> np.ndarray:
        """(n, H) float64 passengers of the target slots; NaN where the data does not have them."""
        starts = self.targets[index].numpy()
        return self.raw[starts[:, None] + np.arange(self.spec.horizon)]

    def history_available(self) -> np.ndarray:
        """(N,) slots of the segment before each window's target start."""
        return self.targets.numpy() - self.first_slot

    def subset(self, rank: int, world_size: int) -> "WindowSet":
        """Every ``world_size``-th window from ``rank``: disjoint parts that cover the whole set."""
        return self.select(np.arange(rank, len(self), world_size))

    def select(self, pick: np.ndarray) -> "WindowSet":
        """The windows ``pick`` (indices), sharing the flat tensors."""
        part = object.__new__(WindowSet)
        part.__dict__.update(self.__dict__)
        index = torch.as_tensor(pick, dtype=torch.int64)
        part.targets, part.loc, part.scale = self.targets[index], self.loc[index], self.scale[index]
        part.first_slot = self.first_slot[pick]
        part.cutoffs = self.cutoffs[pick]
        part.series_ids = [self.series_ids[i] for i in pick.tolist()]
        return part


def collate_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The DataLoader's ``collate_fn`` for a :class:`WindowSet`: its batches come already stacked."""
    return batch
