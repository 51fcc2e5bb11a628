"""A dataset prepared for 8 workers trains on 8, 6, 4, 2 or 1 without being prepared again:
each rank takes the shards that fall to it for the world size it finds, and every window is
seen once per epoch (all of them when the world size divides the shard count).
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from lit_forecast import storage
from lit_forecast.data import prepare as prep
from lit_forecast.data.datamodule import ShardDataModule
from lit_forecast.data.shards import rank_windows
from lit_forecast.data.windows import WindowSet, segments_from_table
from lit_forecast.errors import DataError

START = pd.Timestamp("2024-01-01")
STEP = pd.Timedelta("30min")
SHARDS = 8


@pytest.mark.parametrize(
    "shard_windows, world, expected",
    [
        ([5, 5, 5, 5], 4, [([0], 0, 5), ([1], 0, 5), ([2], 0, 5), ([3], 0, 5)]),  # whole shards
        ([5, 5, 5, 5], 2, [([0, 1], 0, 10), ([2, 3], 0, 10)]),
        ([5, 5, 5, 5], 1, [([0, 1, 2, 3], 0, 20)]),
        ([5, 5, 5, 5], 3, [([0, 1], 0, 6), ([1, 2], 1, 7), ([2, 3], 2, 8)]),  # 20 // 3 = 6 each, 2 left out
    ],
)
def test_rank_windows_cuts_the_shards_into_equal_runs(shard_windows, world, expected):
    assert [rank_windows(shard_windows, rank, world) for rank in range(world)] == expected


def test_more_workers_than_shards_is_refused():
    with pytest.raises(DataError, match=r"holds 4 training shard\(s\), too few for 5 worker\(s\)"):
        rank_windows([5, 5, 5, 5], 0, 5)


@pytest.fixture(scope="module")
def eight_shards(tmp_path_factory):
    """(data folder, every training window as (series, first target)) of three series prepared for 8 workers."""
    from lit_forecast import config as cfg

    folder = tmp_path_factory.mktemp("eight")
    rows = []
    for k, n in enumerate([240, 200, 150]):
        rows += [f"{START + j * STEP:%Y-%m-%d %H:%M:%S},s{k},{100 + (j % 48) + 10 * k}" for j in range(n)]
    (folder / "fleet.csv").write_text("timestamp,series_id,value\n" + "\n".join(rows) + "\n")
    config = cfg.validate(cfg.from_dict({
        "data": {"source": str(folder / "fleet.csv"), "sha256": None, "series_column": "series_id",
                 "input_window": 8, "horizon": 4, "train_end": str(START + 160 * STEP),
                 "val_end": str(START + 200 * STEP), "test_end": None},
        "model": {"seasonal_lag": 0, "daily_lag": 0}, "cluster": {"num_workers": SHARDS, "use_gpu": False},
    }))  # fmt: skip
    data_dir = str(folder / "data")
    manifest = prep.prepare(config, data_dir)
    assert manifest.num_shards == SHARDS and len(manifest.train_files) == SHARDS
    every = []
    for name in manifest.train_files:
        every += windows_of(WindowSet(segments_from_table(storage.read_parquet(storage.join(data_dir, name))),
                                      manifest.series_stats(), manifest.window))  # fmt: skip
    assert len(every) == SHARDS * manifest.shard_windows[0] and len(set(every)) == len(every)
    return data_dir, every


def windows_of(windows: WindowSet) -> list[tuple[str, pd.Timestamp]]:
    return list(zip(windows.series_ids, windows.cutoffs))


def rank_module(data_dir: str, rank: int, world: int, monkeypatch) -> ShardDataModule:
    module = ShardDataModule(data_dir, batch_size=4)
    monkeypatch.setattr(module, "_rank_and_world", lambda: (rank, world))
    module.setup("fit")
    return module


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_every_window_once_per_epoch_for_world_sizes_dividing_the_shards(eight_shards, world, monkeypatch):
    data_dir, every = eight_shards
    real_read = storage.read_parquet
    parts = []
    for rank in range(world):
        reads = []

        def read(loc, reads=reads):
            reads.append(loc.rsplit("/", 1)[-1])
            return real_read(loc)

        monkeypatch.setattr(storage, "read_parquet", read)
        module = rank_module(data_dir, rank, world, monkeypatch)
        per = SHARDS // world  # whole shards, only its own
        own = [f"train-{k:05d}-of-{SHARDS:05d}.parquet" for k in range(rank * per, (rank + 1) * per)]
        assert sorted(reads) == [*own, "val.parquet"]
        parts.append(windows_of(module.datasets["train"]))
        # An epoch is every window of the rank's part, once (the sampler draws each index once).
        drawn = [i for batch in module.train_dataloader().batch_sampler for i in batch.tolist()]
        assert sorted(drawn) == list(range(len(parts[-1])))
    assert len({len(p) for p in parts}) == 1  # the same number of steps on every rank
    flat = [w for p in parts for w in p]
    assert sorted(flat) == sorted(every)  # each window exactly once


def test_a_world_size_that_does_not_divide_the_shards_shares_their_edges(eight_shards, monkeypatch):
    data_dir, every = eight_shards
    parts = [windows_of(rank_module(data_dir, rank, 6, monkeypatch).datasets["train"]) for rank in range(6)]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == len(every) // 6
    flat = [w for p in parts for w in p]
    assert len(set(flat)) == len(flat) and flat == every[: len(flat)]  # in order, the last len(every) % 6 left out
    assert len(every) - len(flat) == len(every) % 6 < 6


def test_a_shard_that_lost_windows_after_the_drivers_check_is_refused_by_the_worker(
    eight_shards, tmp_path, monkeypatch
):
    import shutil

    data_dir = str(tmp_path / "copy")
    shutil.copytree(eight_shards[0], data_dir)
    shard = storage.join(data_dir, f"train-00001-of-{SHARDS:05d}.parquet")
    table = storage.read_parquet(shard)
    storage.write_parquet(
        shard, table.slice(0, 1).set_column(3, "window_starts", pa.array([[8]], pa.list_(pa.int32())))
    )
    with pytest.raises(DataError) as err:
        rank_module(data_dir, 0, 4, monkeypatch)
    assert str(err.value) == (
        f"{data_dir}: training shards [0, 1] do not hold the windows the manifest says; "
        f"delete {data_dir} and prepare the data again (python train.py --prepare-only)"
    )
