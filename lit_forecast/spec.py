"""The contract between data, model and inference: what a window is, and how a series is scaled.

Small frozen dataclasses with names and types. They become plain dicts at exactly two
boundaries: Lightning's hyperparameters (so a checkpoint loads with ``weights_only=True``) and
JSON (the dataset manifest). ``from_dict`` accepts what ``to_dict`` wrote, and ignores keys it
does not know, so records written with extra keys by older versions still load.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from lit_forecast.errors import ConfigError


def slots_per_day(freq: str) -> int:
    """Slots in one day at ``freq`` (48 for 30 min); calendar embeddings are sized by it."""
    day, step = pd.Timedelta("1D"), pd.Timedelta(freq)
    if step <= pd.Timedelta(0) or day % step:
        raise ConfigError(f"data.freq={freq!r} does not divide a day")
    return int(day / step)


def gap_slots(max_gap: str, freq: str) -> int:
    """The longest gap, in slots of ``freq``, that is filled by interpolation (``data.max_gap``)."""
    return int(pd.Timedelta(max_gap) / pd.Timedelta(freq))


def series_label(series_id: str) -> str:
    """`` (series 'z1')`` for messages, or nothing for the single series of a one-series file."""
    return "" if series_id == SINGLE_SERIES else f" (series {series_id!r})"


def central_intervals(levels: list[float]) -> list[tuple[int, int, str]]:
    """Symmetric pairs of quantile levels as (lower index, upper index, name): 0.1 and 0.9 -> 'coverage_80'.

    The name of each central interval's coverage, in training metrics and backtest tables alike.
    """
    return [
        (i, j, f"coverage_{round(100 * (high - low))}")
        for i, low in enumerate(levels)
        for j, high in enumerate(levels)
        if low < 0.5 < high and abs(low + high - 1) < 1e-9
    ]


SINGLE_SERIES = "0"  # the id of the one series of a file without a series column


def _from(cls, raw: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names})


@dataclass(frozen=True)
class WindowSpec:
    """``input_window`` past slots of ``freq`` -> ``horizon`` future slots.

    Training windows step by ``stride``, validation windows by ``eval_stride``.
    """

    input_window: int
    horizon: int
    freq: str
    stride: int = 1
    eval_stride: int = 1

    @property
    def slots_per_day(self) -> int:
        return slots_per_day(self.freq)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "slots_per_day": self.slots_per_day}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> WindowSpec:
        return _from(cls, raw)


@dataclass(frozen=True)
class SeriesStats:
    """One series' scaling, fitted on its training slots only: passengers = scaled * std + mean."""

    mean: float
    std: float

    MIN_STD = 1e-8  # a flat series is scaled by 1 instead

    @classmethod
    def fit(cls, values: np.ndarray) -> SeriesStats:
        """Mean and std of the known (finite) ``values``, passengers: the one scaler of every series.

        Training fits it on a series' slots before ``data.train_end``; inference fits a series the
        checkpoint never saw on its slots before each cutoff. At least one value must be known.
        """
        known = values[np.isfinite(values)]
        std = float(known.std())
        return cls(mean=float(known.mean()), std=std if std > cls.MIN_STD else 1.0)

    def to_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> SeriesStats:
        return cls(mean=float(raw["mean"]), std=float(raw["std"]))


def stats_to_dict(stats: dict[str, SeriesStats]) -> dict[str, dict[str, float]]:
    """{series_id: SeriesStats} -> plain nested dict."""
    return {sid: s.to_dict() for sid, s in stats.items()}


def stats_from_dict(raw: dict[str, dict]) -> dict[str, SeriesStats]:
    """Plain nested dict -> {series_id: SeriesStats}."""
    return {sid: SeriesStats.from_dict(s) for sid, s in raw.items()}
