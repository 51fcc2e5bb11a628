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
    """Read the segment rows written by :mod:`lit_forecast.data.prepare`.

    The list columns are read as one flat numpy array each and sliced per segment: no Python
    object per value (a 5,000-zone shard holds 18 M slots).
    """
    values, value_offsets = _flat(table.column("values"), np.float64)
    starts, start_offsets = _flat(table.column("window_starts"), np.int64)
    return [
        Segment(sid, pd.Timestamp(start), values[value_offsets[i] : value_offsets[i + 1]],
                starts[start_offsets[i] : start_offsets[i + 1]])
        for i, (sid, start) in enumerate(zip(table.column("series_id").to_pylist(), table.column("start").to_pylist()))
    ]


def _flat(column: pa.ChunkedArray, dtype) -> tuple[np.ndarray, np.ndarray]:
    """A list column as (all its items in one array, offsets: row i holds items[offsets[i]:offsets[i + 1]])."""
    lists = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if len(lists) == 0:
        return np.zeros(0, dtype=dtype), np.zeros(1, dtype=np.int64)
    offsets = lists.offsets.to_numpy().astype(np.int64)
    items = lists.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    return items, offsets


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


CALENDAR_CHUNK = 1 << 20  # slots per calendar_features call: its temporaries stay in cache-sized pieces


def _calendar_in_chunks(slot_ns: np.ndarray, freq: str) -> np.ndarray:
    """calendar_features of every slot (nanoseconds since 1970), a million slots at a time: one call
    over a 5,000-zone fleet's 52 M slots made gigabytes of temporaries and ran slower than per segment."""
    times = np.empty((len(slot_ns), 3), dtype=np.int64)
    for lo in range(0, len(slot_ns), CALENDAR_CHUNK):
        part = slot_ns[lo : lo + CALENDAR_CHUNK]
        times[lo : lo + len(part)] = calendar_features(pd.DatetimeIndex(part.view("datetime64[ns]")), freq)
    return times


class WindowSet(Dataset):
    """Windows over segments laid end to end in flat tensors; a window is a slice of them.

    Values are scaled once with each series' training statistics and kept in passengers too
    (for baselines and actuals). Memory is O(slots), not O(windows x window length). A batch
    is cut with one vectorised gather (:meth:`batch`), which the DataLoader uses through
    ``__getitems__``: no per-window Python in the hot path.
    """

    def __init__(self, segments: list[Segment], stats: dict[str, SeriesStats], spec: WindowSpec):
        self.spec = spec
        scaling = []  # the statistics of each segment: its own, or its series' training ones
        for seg in segments:
            if seg.stats is None and seg.series_id not in stats:
                raise DataError(f"no scaler statistics for series {seg.series_id!r}")
            scaling.append(seg.stats or stats[seg.series_id])
        # Segments laid end to end, in whole-array operations: a fleet's shard holds thousands.
        lengths = np.asarray([len(seg.values) for seg in segments], dtype=np.int64)
        counts = np.asarray([len(seg.window_starts) for seg in segments], dtype=np.int64)  # windows per segment
        bases = np.cumsum(lengths) - lengths  # first flat slot of each segment
        loc = np.asarray([own.mean for own in scaling], dtype=np.float64)
        scale = np.asarray([own.std for own in scaling], dtype=np.float64)
        flat = np.concatenate([seg.values for seg in segments]).astype(np.float64) if segments else np.zeros(0)
        starts = np.concatenate([seg.window_starts for seg in segments]).astype(np.int64) if segments else np.zeros(0, np.int64)
        # The timestamp of every slot: its segment's start plus its offset in the segment.
        first = np.asarray([pd.Timestamp(seg.start).value for seg in segments], dtype=np.int64)
        offset = np.arange(len(flat), dtype=np.int64) - np.repeat(bases, lengths)
        slot_ns = np.repeat(first, lengths) + offset * pd.Timedelta(spec.freq).value
        targets = np.repeat(bases, counts) + starts
        self.raw = flat  # (T,) float64 passengers
        self.values = torch.as_tensor((flat - np.repeat(loc, lengths)) / np.repeat(scale, lengths), dtype=torch.float32)  # (T,) scaled
        self.times = torch.as_tensor(_calendar_in_chunks(slot_ns, spec.freq), dtype=torch.int64)
        self.targets = torch.as_tensor(targets, dtype=torch.int64)
        self.first_slot = np.repeat(bases, counts)  # (N,) start of each window's segment
        self.loc = torch.as_tensor(np.repeat(loc, counts), dtype=torch.float32)
        self.scale = torch.as_tensor(np.repeat(scale, counts), dtype=torch.float32)
        self.cutoffs = pd.DatetimeIndex(slot_ns[targets].view("datetime64[ns]"))  # (N,) first target timestamp of each window
        self.series_ids = np.repeat(np.asarray([seg.series_id for seg in segments], dtype=object), counts).tolist()  # (N,)
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
