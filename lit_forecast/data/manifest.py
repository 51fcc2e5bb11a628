"""The manifest of a prepared dataset: what it holds, named and typed.

Written last by :mod:`lit_forecast.data.prepare` (its presence means every file it lists is
complete) and read by the data module on every rank. It is JSON on disk and a frozen
dataclass in memory; nothing else reads it as a dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from lit_forecast import storage
from lit_forecast.errors import DataError
from lit_forecast.spec import SeriesStats, WindowSpec

FORMAT_VERSION = 2  # 2: no test shard (nothing trains or selects on the test period)
MANIFEST_FILE = "manifest.json"


@dataclass(frozen=True)
class SeriesInfo:
    """One series of the dataset: its training statistics and extent."""

    mean: float
    std: float
    start: str  # first slot
    slots: int

    @property
    def stats(self) -> SeriesStats:
        return SeriesStats(self.mean, self.std)


@dataclass(frozen=True)
class SplitInfo:
    """One chronological split: its target-time bounds and what landed in it."""

    bounds: list[str | None]  # [start, end) of its target slots; None = open
    windows: int
    first_target: str | None
    last_target: str | None


@dataclass(frozen=True)
class ShardCheck:
    """What a shard file was when it was written, checked before every reuse (cheaply: no full read).

    ``footer_sha256`` is over the Parquet footer (schema, row groups, column offsets, sizes and
    statistics): replacing the file by another Parquet file, or editing its values, changes it.
    """

    bytes: int
    footer_sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a prepared dataset folder holds."""

    window: WindowSpec
    splits: dict[str, SplitInfo]
    series: dict[str, SeriesInfo]
    num_shards: int
    shard_windows: list[int]  # windows in each training shard
    train_files: list[str]  # num_shards of them; ranks take theirs at run time (shards.rank_windows)
    val_file: str
    data_config: dict[str, Any]  # the resolved data section that produced it
    load_report: dict[str, Any]  # rows, points, interpolated gaps and slots, long gaps, dropped windows
    fingerprint: str = ""
    created: str = ""
    source: dict[str, str] = field(default_factory=dict)  # origin, location, sha256
    # per file; empty in a manifest of an older version
    shard_checks: dict[str, ShardCheck] = field(default_factory=dict)
    format: int = FORMAT_VERSION
    reused: bool = field(default=False, compare=False)  # this process found it ready (not stored)

    @property
    def files(self) -> list[str]:
        return [*self.train_files, self.val_file]

    def series_stats(self) -> dict[str, SeriesStats]:
        """{series_id: training statistics}."""
        return {sid: info.stats for sid, info in self.series.items()}

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("reused")
        out["window"] = self.window.to_dict()
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any], reused: bool = False) -> "Manifest":
        if raw.get("format") != FORMAT_VERSION:
            raise DataError(f"dataset format {raw.get('format')} is not {FORMAT_VERSION}")
        return cls(
            **{k: v for k, v in raw.items() if k not in ("window", "splits", "series", "shard_checks")},
            window=WindowSpec.from_dict(raw["window"]),
            splits={name: SplitInfo(**info) for name, info in raw["splits"].items()},
            series={sid: SeriesInfo(**info) for sid, info in raw["series"].items()},
            shard_checks={name: ShardCheck(**check) for name, check in raw.get("shard_checks", {}).items()},
            reused=reused,
        )


def read_manifest(data_dir: str, reused: bool = False) -> Manifest:
    """The manifest of a prepared dataset, or a clear error if there is none."""
    path = storage.join(data_dir, MANIFEST_FILE)
    if not storage.exists(path):
        raise DataError(f"no prepared dataset in {data_dir} (missing {MANIFEST_FILE}); run `python train.py --prepare-only`")
    try:
        return Manifest.from_json(storage.read_json(path), reused)
    except (DataError, TypeError, KeyError, ValueError) as err:
        raise DataError(f"{path} is not a manifest this version can read ({err}); prepare the data again") from None
