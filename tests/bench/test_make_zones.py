"""The synthetic fleet (bench.common, written by bench.make_zones): deterministic, integer counts,
spread levels, short gaps; the process-tree memory sampler."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa
import pytest

from bench import common, make_zones
from lit_forecast import config as cfg
from lit_forecast.data.fetch import fetch
from lit_forecast.data.source import load_series, nan_runs

SPD = 48  # 30 min slots per day
DAYS = 14


def city() -> tuple[np.ndarray, np.ndarray]:
    """Two weeks of a daily profile around 15,000 passengers per slot, and the slot times."""
    t = np.arange(DAYS * SPD)
    values = 15_000 + 8_000 * np.sin(2 * np.pi * t / SPD)
    times = pd.date_range("2024-01-01", periods=len(t), freq="30min").to_numpy()
    return values, times


def fleet(zones: int, seed: int, zones_per_chunk: int = 3) -> pa.Table:
    values, times = city()
    return pa.concat_tables(common.generate(values, times, zones, seed, SPD, zones_per_chunk))


def test_same_seed_same_fleet_and_chunking_does_not_matter():
    a, b = fleet(8, seed=1), fleet(8, seed=1, zones_per_chunk=5)
    assert a.equals(b)
    assert not a.equals(fleet(8, seed=2))


def test_values_are_non_negative_integers_and_levels_span_two_orders_of_magnitude():
    frame = fleet(10, seed=0).to_pandas()
    assert frame["value"].dtype == np.int64 and (frame["value"] >= 0).all()
    means = frame.groupby("zone")["value"].mean()
    assert len(means) == 10
    assert means.max() / means.min() > 100
    assert means.min() < 10  # a few passengers per slot in the smallest zone


def test_gaps_are_at_most_two_hours_and_the_loader_fills_them(tmp_path):
    frame = fleet(10, seed=3).to_pandas()
    assert len(frame) < 10 * DAYS * SPD  # some rows are missing
    path = tmp_path / "zones.csv"
    common.write_fleet(iter([pa.Table.from_pandas(frame, preserve_index=False)]), str(path))
    data = cfg.DataConfig(source=str(path), sha256=None, series_column="zone", input_window=48, horizon=4)

    raw, _ = load_series(fetch(data), data, fill_gaps=False)  # the grid with every missing slot NaN
    runs = [e - s for s in raw for (s, e) in nan_runs(s.values)]
    assert runs and max(runs) <= 4  # data.max_gap = 2 h = 4 slots
    assert all(len(s.values) == DAYS * SPD for s in raw)  # first and last slots are never missing
    assert all(not np.isnan(s.values[SPD - 1 :: SPD]).any() for s in raw)  # 23:30 is always there

    filled, report = load_series(fetch(data), data)  # training's path: gaps interpolated, no error
    assert report.interpolated_slots == sum(runs)
    assert all(np.isfinite(s.values).all() for s in filled)


def test_output_format_follows_the_extension(tmp_path):
    table = fleet(2, seed=0)
    assert common.write_fleet(iter([table]), str(tmp_path / "z.parquet")) == table.num_rows
    common.write_fleet(iter([table]), str(tmp_path / "z.csv"))
    head = (tmp_path / "z.csv").read_text().splitlines()[:2]
    assert head[0] == "timestamp,zone,value"
    assert head[1].startswith("2024-01-01 ") and head[1].count(",") == 2
    with pytest.raises(ValueError, match="must end in .csv or .parquet"):
        common.write_fleet(iter([table]), str(tmp_path / "z.txt"))


def test_the_synthetic_city_needs_no_data_file_and_loads_as_a_long_format_source(tmp_path, monkeypatch):
    path = tmp_path / "zones.csv"
    monkeypatch.setattr("sys.argv", ["make_zones", "--synthetic", "--zones", "3", "--output", str(path)])
    make_zones.main()
    data = cfg.DataConfig(source=str(path), sha256=None, series_column="zone")
    series, report = load_series(fetch(data), data)
    assert [s.series_id for s in series] == ["z000", "z001", "z002"]
    days = (pd.Timestamp(make_zones.END) - pd.Timestamp(make_zones.START)).days
    assert all(len(s.values) == days * SPD for s in series)  # the NAB file's span, on the 30 min grid
    assert all(np.isfinite(s.values).all() for s in series)  # gaps interpolated by the loader


def test_the_memory_sampler_counts_the_children_of_this_process():
    code = "x = b'x' * (64 << 20); print('ready', flush=True); import time; time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"  # its 64 MiB are written
        memory = common.TreeMemory(interval=60).stop()  # a sample at the start and one at the stop
        own = psutil.Process().memory_info().rss
    finally:
        child.kill()
        child.wait()
    assert memory.peak_total >= own + (64 << 20)  # this process and the child's 64 MiB
    assert memory.peak_process >= max(own, 64 << 20) * 0.9
    assert memory.peak_name
