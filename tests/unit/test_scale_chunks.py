"""Read chunks for Ray Data (ray_prepare.plan_chunks): a Parquet file in runs of row groups, read
piecewise, gives exactly the rows (and row indices) of reading it whole; CSVs are cut so every CPU reads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lit_forecast.data import ray_prepare
from lit_forecast.data.fetch import fetch


def zones_table(rows: int) -> pa.Table:
    slots = pd.date_range("2024-01-01", periods=rows // 4, freq="30min")
    return pa.table(
        {
            "timestamp": np.tile(slots.values, 4),
            "zone": np.repeat([f"z{k}" for k in range(4)], len(slots)),
            "value": np.arange(len(slots) * 4, dtype=np.float64),
        }
    )


def test_parquet_row_groups_are_read_in_runs_with_true_row_indices(tmp_path, make_config):
    path = tmp_path / "zones.parquet"
    table = zones_table(4000)
    table = table.set_column(2, "value", pa.array(np.where(np.arange(4000) == 2500, -1.0, table["value"].to_numpy())))
    pq.write_table(table, path, row_group_size=500)  # 8 row groups
    config = make_config(path, series_column="zone").data
    _, _, chunks, _ = ray_prepare.plan_chunks(fetch(config), config, tasks=4)
    assert [c.row_groups for c in chunks] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert [c.line_shift for c in chunks] == [0, 1000, 2000, 3000]

    whole = ray_prepare._read_rows(ray_prepare.Chunk(str(path), "zones.parquet", 0, {}), str(path), config)
    parts = [ray_prepare._read_rows(c, str(path), config) for c in chunks]
    assert np.array_equal(np.concatenate([p.rows for p in parts]), whole.rows)
    assert np.array_equal(np.concatenate([p.values for p in parts]), whole.values)
    assert np.array_equal(np.concatenate([p.timestamps for p in parts]), whole.timestamps)
    bad = [e for p in parts for problem in p.problems for e in problem.examples]
    assert bad == [e for problem in whole.problems for e in problem.examples] == [(2500, "-1.0", "z2")]


def test_one_task_per_file_when_asked_for_one(tmp_path, make_config):
    path = tmp_path / "zones.parquet"
    pq.write_table(zones_table(4000), path, row_group_size=500)
    config = make_config(path, series_column="zone").data
    _, _, chunks, _ = ray_prepare.plan_chunks(fetch(config), config, tasks=1)
    assert len(chunks) == 1 and chunks[0].row_groups == ()  # 4,000 rows: far below CHUNK_ROWS


def test_a_csv_is_cut_into_two_ranges_per_cpu(tmp_path, make_config, monkeypatch):
    monkeypatch.setattr(ray_prepare, "MIN_CHUNK_BYTES", 1024)
    path = tmp_path / "zones.csv"
    zones_table(4000).to_pandas().to_csv(path, index=False, date_format="%Y-%m-%d %H:%M:%S")
    config = make_config(path, series_column="zone").data
    _, _, chunks, total = ray_prepare.plan_chunks(fetch(config), config, tasks=4)
    assert len(chunks) in (4, 5)  # ranges of ceil(total / 4) bytes, cut at the next line end
    assert chunks[0].start == 0 and chunks[-1].end == total
    assert all(a.end == b.start for a, b in zip(chunks, chunks[1:]))
