"""Windows cut on the fly from stored segments: the tensors the model sees.

A batch is a dict of named tensors (B = batch, W = input_window, H = horizon)::

    past_target    (B, W)    float32  scaled values before the cutoff
    future_target  (B, H)    float32  scaled values from the cutoff on (the target)
    past_time      (B, W, 3) int64    [slot of day, day of week, holiday] of each past slot
    future_time    (B, H, 3) int64    the same for each future slot (known in advance)
    loc, scale     (B,)      float32  the series' training mean and std: passengers = x * scale + loc
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from pandas.tseries.holiday import USFederalHolidayCalendar
from torch.utils.data import Dataset


@dataclass
class Segment:
    """Consecutive slots of one series and the target starts of the windows cut from them."""

    series_id: str
    start: pd.Timestamp  # timestamp of values[0]
    values: np.ndarray  # (T,) raw passengers
    window_starts: np.ndarray  # (N,) target-start offsets into values


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
    slot = (times - times.normalize()) // pd.Timedelta(freq)
    days = times.normalize()
    holidays = USFederalHolidayCalendar().holidays(days.min(), days.max()) if len(times) else []
    return np.stack(
        [np.asarray(slot, dtype=np.int64), np.asarray(times.day_of_week, dtype=np.int64), np.asarray(days.isin(holidays), dtype=np.int64)],
        axis=1,
    )


class WindowDataset(Dataset):
    """Map-style dataset of (past, future) windows over a list of segments.

    Values are scaled once with each series' training statistics (``stats[series_id]`` holds
    ``mean`` and ``std``) and concatenated into one flat tensor; a window is a slice of it.
    """

    def __init__(self, segments: list[Segment], stats: dict[str, dict], input_window: int, horizon: int, freq: str):
        self.input_window, self.horizon, self.freq = input_window, horizon, freq
        values, times, offsets, locs, scales, cutoffs, series_ids = [], [], [], [], [], [], []
        base = 0
        for seg in segments:
            if seg.series_id not in stats:
                raise KeyError(f"no scaler statistics for series {seg.series_id!r}")
            loc, scale = stats[seg.series_id]["mean"], stats[seg.series_id]["std"]
            slots = pd.date_range(seg.start, periods=len(seg.values), freq=freq)
            values.append((seg.values - loc) / scale)
            times.append(calendar_features(slots, freq))
            offsets.append(base + seg.window_starts)
            locs.append(np.full(len(seg.window_starts), loc))
            scales.append(np.full(len(seg.window_starts), scale))
            cutoffs.extend(slots[seg.window_starts])
            series_ids.extend([seg.series_id] * len(seg.window_starts))
            base += len(seg.values)
        self.values = torch.as_tensor(np.concatenate(values) if values else np.zeros(0), dtype=torch.float32)
        self.times = torch.as_tensor(np.concatenate(times) if times else np.zeros((0, 3)), dtype=torch.int64)
        self.targets = torch.as_tensor(np.concatenate(offsets) if offsets else np.zeros(0), dtype=torch.int64)
        self.loc = torch.as_tensor(np.concatenate(locs) if locs else np.zeros(0), dtype=torch.float32)
        self.scale = torch.as_tensor(np.concatenate(scales) if scales else np.zeros(0), dtype=torch.float32)
        self.cutoffs = pd.DatetimeIndex(cutoffs)  # first target timestamp of each window
        self.series_ids = series_ids

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s, W, H = int(self.targets[i]), self.input_window, self.horizon
        return {
            "past_target": self.values[s - W : s],
            "future_target": self.values[s : s + H],
            "past_time": self.times[s - W : s],
            "future_time": self.times[s : s + H],
            "loc": self.loc[i],
            "scale": self.scale[i],
        }

    def subset(self, rank: int, world_size: int) -> "WindowDataset":
        """Every ``world_size``-th window from ``rank``: disjoint parts that cover the whole set."""
        part = object.__new__(WindowDataset)
        part.__dict__.update(self.__dict__)
        pick = torch.arange(rank, len(self), world_size)
        part.targets, part.loc, part.scale = self.targets[pick], self.loc[pick], self.scale[pick]
        part.cutoffs = self.cutoffs[pick.numpy()]
        part.series_ids = [self.series_ids[i] for i in pick.tolist()]
        return part
