"""LightningDataModule that reads the training shard of its own rank.

The validation file is shared: rank r takes windows r, r+N, r+2N, ... so the ranks cover it
exactly once and metrics synchronised across ranks are the global ones (no sampler padding,
no duplicated windows).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

from lit_forecast import storage
from lit_forecast.data.manifest import read_manifest
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
    """Training windows from ``train-<rank>-of-<N>.parquet``; validation windows split by rank."""

    def __init__(self, data_dir: str, batch_size: int, eval_batch_size: int = 512):
        super().__init__()
        self.data_dir, self.batch_size, self.eval_batch_size = data_dir, batch_size, eval_batch_size
        self.manifest = read_manifest(data_dir)
        self.datasets: dict[str, WindowSet] = {}

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _load(self, filename: str) -> WindowSet:
        table = storage.read_parquet(storage.join(self.data_dir, filename))
        return WindowSet(segments_from_table(table), self.manifest.series_stats(), self.manifest.window)

    def setup(self, stage: str | None = None) -> None:
        rank, world = self._rank_and_world()
        shards = self.manifest.num_shards
        if world != shards:
            raise DataError(
                f"{self.data_dir} holds {shards} training shard(s) but this run has {world} worker(s); "
                f"prepare the data for {world} workers (python train.py --prepare-only --set cluster.num_workers={world})"
            )
        if stage in (None, "fit") and "train" not in self.datasets:
            self.datasets["train"] = self._load(self.manifest.train_files[rank])
            if len(self.datasets["train"]) == 0:
                raise DataError(f"{self.data_dir}: training shard {rank} holds no windows; prepare the data again "
                                f"(python train.py --prepare-only) with fewer workers or more data")
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
