"""LightningDataModule that reads the training shards that fall to its rank.

A dataset holds K training shards (prepared for the largest worker count); at every start or
restart each rank takes its part for the world size it finds (:func:`shards.rank_windows`),
so a dataset prepared for 8 workers trains on 8, 6, 4 or 1 without being prepared again.
The validation file is shared: rank r takes windows r, r+N, r+2N, ... so the ranks cover it
exactly once and metrics synchronised across ranks are the global ones (no sampler padding,
no duplicated windows).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from lit_forecast import storage
from lit_forecast.data.manifest import read_manifest
from lit_forecast.data.shards import rank_windows
from lit_forecast.data.windows import WindowSet, collate_batch, segments_from_table
from lit_forecast.errors import DataError


class ShuffledBatches(Sampler[torch.Tensor]):
    """Every window once per epoch, in a new random order, as batches of index tensors.

    The batches ``DataLoader(shuffle=True, batch_size=B)`` would give, drawn the same way from
    torch's global generator (so a run, and its resume, trains on exactly those batches), but
    without the list of one Python int per window that its sampler builds at the start of
    every epoch: at 5,000 zones a shard holds 17.4 M windows, and that list cost over a second
    and 0.6 GiB per epoch, however few batches the epoch uses (``train.limit_train_batches``).
    """

    def __init__(self, size: int, batch_size: int):
        super().__init__()
        self.size, self.batch_size = size, batch_size

    def __len__(self) -> int:
        return math.ceil(self.size / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        # As torch's RandomSampler: one draw from the global generator seeds the epoch's order.
        generator = torch.Generator()
        generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
        order = torch.randperm(self.size, generator=generator)
        for lo in range(0, self.size, self.batch_size):  # sliced as drawn: split() would make every view up front
            yield order[lo : lo + self.batch_size]


class ShardDataModule(L.LightningDataModule):
    """Training windows from the shards that fall to this rank; validation windows split by rank."""

    def __init__(self, data_dir: str, batch_size: int, eval_batch_size: int = 512):
        super().__init__()
        self.data_dir, self.batch_size, self.eval_batch_size = data_dir, batch_size, eval_batch_size
        self.manifest = read_manifest(data_dir)
        self.datasets: dict[str, WindowSet] = {}

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _load(self, *filenames: str) -> WindowSet:
        tables = [storage.read_parquet(storage.join(self.data_dir, name)) for name in filenames]
        segments = [segment for table in tables for segment in segments_from_table(table)]
        return WindowSet(segments, self.manifest.series_stats(), self.manifest.window)

    def setup(self, stage: str | None = None) -> None:
        rank, world = self._rank_and_world()
        if stage in (None, "fit") and "train" not in self.datasets:
            try:
                shards, first, end = rank_windows(self.manifest.shard_windows, rank, world)
            except DataError as err:
                raise DataError(f"{self.data_dir}: {err}") from None
            windows = self._load(*(self.manifest.train_files[k] for k in shards))
            if len(windows) != sum(self.manifest.shard_windows[k] for k in shards):
                raise DataError(f"{self.data_dir}: training shards {shards} do not hold the windows the manifest says; "
                                f"delete {self.data_dir} and prepare the data again (python train.py --prepare-only)")
            whole = (first, end) == (0, len(windows))  # the world size divides the shard count
            self.datasets["train"] = windows if whole else windows.select(np.arange(first, end))
        if stage in (None, "fit", "validate") and "val" not in self.datasets:
            self.datasets["val"] = self._load(self.manifest.val_file).subset(rank, world)

    def _pin_memory(self) -> bool:
        """Pinned batches only when they go to a GPU: Lightning's non_blocking copies are then asynchronous."""
        trainer = self.trainer
        return trainer is not None and trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        # Batches are cut by one gather (WindowSet.__getitems__), not window by window.
        windows = self.datasets["train"]
        return DataLoader(
            windows, batch_sampler=ShuffledBatches(len(windows), self.batch_size), collate_fn=collate_batch,
            pin_memory=self._pin_memory(),
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        return DataLoader(
            self.datasets["val"], batch_size=self.eval_batch_size, shuffle=False, collate_fn=collate_batch, pin_memory=self._pin_memory()
        )
