"""Preparation on Ray Data writes what the single-process path writes.

A small multi-series input goes through both paths; the shards must match byte for byte in
content: the same windows, each exactly once, shards balanced, the scaler fitted on training
slots only. One local Ray (1 CPU) is shared by the module; each test carries a timeout,
because a resource deadlock waits instead of failing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lit_forecast import storage
from lit_forecast.data import prepare as prep
from lit_forecast.data.fetch import fetch
from lit_forecast.data.shards import plan_train_shards
from lit_forecast.errors import DataError

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

START = pd.Timestamp("2024-01-01 00:00")
STEP = pd.Timedelta("30min")
W, H = 8, 4  # make_config's input_window, horizon
SPLIT_DATES = {"train_end": str(START + 160 * STEP), "val_end": str(START + 200 * STEP)}


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def fleet_csv(path, lengths: dict[str, tuple[int, int]]) -> dict[str, np.ndarray]:
    """Long CSV of series ``{id: (first slot, slots)}``, rows shuffled; value = 1000 * k + slot + 1."""
    values, rows = {}, []
    for k, (sid, (first, n)) in enumerate(lengths.items()):
        values[sid] = 1000.0 * k + first + np.arange(n) + 1
        rows += [
            (f"{START + (first + j) * STEP:%Y-%m-%d %H:%M:%S}", sid, repr(float(v))) for j, v in enumerate(values[sid])
        ]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    path.write_text("timestamp,zone,value\n" + "".join(",".join(r) + "\n" for r in rows))
    return values


# Five series of different lengths and starts: the 3 shards must cut some of them.
LENGTHS = {"z0": (0, 240), "z1": (10, 200), "z2": (0, 120), "z3": (40, 200), "z4": (0, 60)}


def both_paths(tmp_path, make_config, num_shards=3, **data):
    csv = tmp_path / "zones.csv"
    values = fleet_csv(csv, LENGTHS)
    manifests, tables = {}, {}
    for path in ("local", "ray"):
        config = make_config(csv, series_column="zone", prepare_with=path, **{**SPLIT_DATES, **data})
        folder = str(tmp_path / path)
        manifests[path] = prep.prepare(config, folder, num_shards=num_shards)
        tables[path] = {f: storage.read_parquet(storage.join(folder, f)) for f in manifests[path].files}
    return values, manifests, tables


def windows_of(table) -> list[tuple[str, pd.Timestamp, tuple]]:
    """(series, first target time, window values) of every window in a shard."""
    out = []
    for sid, start, values, starts in zip(
        *(table[c].to_pylist() for c in ("series_id", "start", "values", "window_starts"))
    ):
        out += [(sid, pd.Timestamp(start) + s * STEP, tuple(values[s - W : s + H])) for s in starts]
    return out


def test_ray_and_local_paths_write_the_same_shards(tmp_path, make_config):
    values, manifests, tables = both_paths(tmp_path, make_config)
    local, on_ray = manifests["local"].to_json(), manifests["ray"].to_json()
    for m in (local, on_ray):
        m.pop("created"), m["data_config"].pop("prepare_with")
    assert on_ray == local  # statistics, window counts, shard counts, load report, fingerprint
    for name in manifests["local"].files:
        assert tables["ray"][name].equals(tables["local"][name]), name

    shards = [windows_of(tables["ray"][f]) for f in manifests["ray"].train_files]
    assert len({len(s) for s in shards}) == 1  # balanced: every rank the same number of windows
    every = [w for s in shards for w in s]
    assert len(set(every)) == len(every)  # each window once
    expected = []  # every training window of every series, from the source values
    for sid, (first, n) in LENGTHS.items():
        for s in range(W, n - H + 1):
            if first + s + H <= 160:
                expected.append((sid, START + (first + s) * STEP, tuple(values[sid][s - W : s + H])))
    dropped = manifests["ray"].load_report["dropped_for_balance"]
    assert dropped == len(expected) % 3
    assert sorted(every) == expected[: len(expected) - dropped]  # the last windows of the last series are dropped

    for sid, (first, _) in LENGTHS.items():  # scaler: training slots only (targets before slot 160)
        train = values[sid][: max(0, 160 - first)]
        assert manifests["ray"].series[sid].mean == pytest.approx(train.mean(), rel=1e-12)
        assert manifests["ray"].series[sid].std == pytest.approx(train.std(), rel=1e-12)


def test_ray_path_is_idempotent(tmp_path, make_config):
    _, manifests, _ = both_paths(tmp_path, make_config, num_shards=2)
    csv = tmp_path / "zones.csv"
    again = prep.prepare(
        make_config(csv, series_column="zone", prepare_with="ray", **SPLIT_DATES), str(tmp_path / "ray"), num_shards=2
    )
    assert again.reused and again.fingerprint == manifests["ray"].fingerprint


def test_bad_rows_and_series_are_named_on_ray(tmp_path, make_config):
    csv = tmp_path / "bad.csv"
    fleet_csv(csv, LENGTHS)
    lines = csv.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ",-3"  # line 6: a negative value
    csv.write_text("\n".join(lines) + "\n")
    config = make_config(csv, series_column="zone", prepare_with="ray", **SPLIT_DATES)
    with pytest.raises(DataError, match=r"negative value in 1 row\(s\):\n  row 6: '-3' \(series 'z\d'\)"):
        prep.prepare(config, str(tmp_path / "out"), num_shards=2)
    assert not (tmp_path / "out").exists()

    short = tmp_path / "short.csv"
    fleet_csv(short, {**LENGTHS, "tiny": (0, 5), "tiny2": (0, 6)})
    config = make_config(short, series_column="zone", prepare_with="ray", **SPLIT_DATES)
    with pytest.raises(DataError, match=r"2 problem\(s\) in 7 series:\n.*series 'tiny'.*\n.*series 'tiny2'"):
        prep.prepare(config, str(tmp_path / "out2"), num_shards=2)


def test_large_csv_is_read_in_ranges_with_true_line_numbers(tmp_path, make_config, monkeypatch):
    from lit_forecast.data import ray_prepare

    monkeypatch.setattr(ray_prepare, "CHUNK_BYTES", 4096)  # 6 ranges of this 24 KB file
    csv = tmp_path / "zones.csv"
    fleet_csv(csv, LENGTHS)
    lines = csv.read_text().splitlines()
    lines[700] = lines[700].rsplit(",", 1)[0] + ",x"
    csv.write_text("\n".join(lines[:300]) + "\n\n" + "\n".join(lines[300:]) + "\n")  # a blank line: line 701 -> 702
    config = make_config(csv, series_column="zone", prepare_with="ray", **SPLIT_DATES)
    _, _, chunks, _ = ray_prepare.plan_chunks(fetch(config.data), config.data)
    assert len(chunks) >= 5
    with pytest.raises(DataError, match=r"non-numeric value in 1 row\(s\):\n  row 702: 'x'"):
        prep.prepare(config, str(tmp_path / "out"), num_shards=2)


@pytest.mark.parametrize(
    "counts, shards, plan, dropped",
    [
        ([("a", 149)], 3, {"a": [(0, 0, 49), (1, 49, 98), (2, 98, 147)]}, 2),
        ([("a", 5), ("b", 3), ("c", 4)], 2, {"a": [(0, 0, 5)], "b": [(0, 0, 1), (1, 1, 3)], "c": [(1, 0, 4)]}, 0),
        ([("a", 5), ("b", 0), ("c", 2)], 3, {"a": [(0, 0, 2), (1, 2, 4), (2, 4, 5)], "c": [(2, 0, 1)]}, 1),
    ],
)
def test_plan_cuts_series_in_order_into_equal_shards(counts, shards, plan, dropped):
    got, per_shard, lost = plan_train_shards(counts, shards)
    assert got == plan and lost == dropped and per_shard == sum(n for _, n in counts) // shards
