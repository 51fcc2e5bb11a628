"""LightningDataModule that reads the training shard of its own rank.

Validation and test files are shared: rank r takes windows r, r+N, r+2N, ... so the ranks
cover each set exactly once and metrics synchronised across ranks are the global ones (no
sampler padding, no duplicated windows).
"""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from lit_forecast import storage
from lit_forecast.data.dataset import WindowDataset, segments_from_table
from lit_forecast.data.prepare import read_manifest
from lit_forecast.data.source import DataError


class ShardDataModule(L.LightningDataModule):
    """Training windows from ``train-<rank>-of-<N>.parquet``; val/test windows split by rank."""

    def __init__(self, data_dir: str, batch_size: int, eval_batch_size: int = 512):
        super().__init__()
        self.data_dir, self.batch_size, self.eval_batch_size = data_dir, batch_size, eval_batch_size
        self.manifest = read_manifest(data_dir)
        self.datasets: dict[str, WindowDataset] = {}

    def _rank_and_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def _load(self, filename: str) -> WindowDataset:
        w = self.manifest["window"]
        table = storage.read_parquet(storage.join(self.data_dir, filename))
        return WindowDataset(segments_from_table(table), self.manifest["series"], w["input_window"], w["horizon"], w["freq"])

    def setup(self, stage: str | None = None) -> None:
        rank, world = self._rank_and_world()
        shards = self.manifest["num_shards"]
        if world != shards:
            raise DataError(
                f"{self.data_dir} holds {shards} training shard(s) but this run has {world} worker(s); "
                f"prepare the data for {world} workers (python train.py --prepare-only --set cluster.num_workers={world})"
            )
        files = self.manifest["files"]
        if stage in (None, "fit") and "train" not in self.datasets:
            self.datasets["train"] = self._load(files["train"][rank])
        if stage in (None, "fit", "validate") and "val" not in self.datasets:
            self.datasets["val"] = self._load(files["val"]).subset(rank, world)
        if stage in (None, "test") and "test" not in self.datasets:
            self.datasets["test"] = self._load(files["test"]).subset(rank, world)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["train"], batch_size=self.batch_size, shuffle=True, drop_last=False)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["val"], batch_size=self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["test"], batch_size=self.eval_batch_size, shuffle=False)
