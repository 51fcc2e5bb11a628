"""bench.scale_steps measure_loading: times the training DataLoader of a rank's shard (a smoke test)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench import scale_steps
from lit_forecast.data import prepare as prep

START = pd.Timestamp("2024-01-01")


def test_loading_times_the_training_batches_of_rank_0(tmp_path, make_config):
    slots = pd.date_range(START, periods=240, freq="30min")
    frame = pd.concat(
        [
            pd.DataFrame({"timestamp": slots, "zone": f"z{k}", "value": 100.0 * (k + 1) + np.arange(240) % 48})
            for k in range(3)
        ]
    )
    csv = tmp_path / "zones.csv"
    frame.to_csv(csv, index=False, date_format="%Y-%m-%d %H:%M:%S")
    config = make_config(
        csv,
        series_column="zone",
        prepare_with="local",
        train_end=str(START + 160 * pd.Timedelta("30min")),
        val_end=str(START + 200 * pd.Timedelta("30min")),
    )
    manifest = prep.prepare(config, str(tmp_path / "data"), num_shards=2)

    datamodule = scale_steps.RankView(str(tmp_path / "data"), 8, 0, 2)
    figures = scale_steps.measure_loading(datamodule, batches=50)
    assert figures["shard_windows"] == manifest.shard_windows[0]  # rank 0's shard, not the whole set
    assert figures["batches"] == 50  # more than one pass over the shard: the loader restarts
    per_epoch = -(-manifest.shard_windows[0] // 8)
    full, last = divmod(50, per_epoch)
    assert figures["windows"] == full * manifest.shard_windows[0] + min(last * 8, manifest.shard_windows[0])
    assert figures["windows_per_s"] > 0
