"""Data foundation: CSV validation, resampling, splits, scaler, windows, shards, datamodule, storage.

Most series are ``arange``: the value of a slot is its index, so a window's values say exactly
which slots it holds. The default layout has 240 half-hour slots from Monday 2024-01-01 00:00:
training targets before slot 160, validation targets in [160, 200), test targets from 200.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from torch.utils.data import BatchSampler, RandomSampler

from lit_forecast import storage
from lit_forecast.data import prepare as prep
from lit_forecast.data import windows as windows_module
from lit_forecast.data.datamodule import ShardDataModule, ShuffledBatches
from lit_forecast.data.fetch import fetch
from lit_forecast.data.manifest import MANIFEST_FILE, SeriesInfo, read_manifest
from lit_forecast.data.source import load_series
from lit_forecast.data.splits import window_starts
from lit_forecast.data.windows import Segment, WindowSet, calendar_features, segments_from_table
from lit_forecast.errors import DataError
from lit_forecast.spec import SeriesStats, WindowSpec

START = pd.Timestamp("2024-01-01 00:00")  # a Monday
STEP = pd.Timedelta("30min")
SLOTS, TRAIN_SLOTS, VAL_SLOTS = 240, 160, 200
W, H = 8, 4  # input_window, horizon (the make_config defaults)


def at(slot: int) -> pd.Timestamp:
    return START + slot * STEP


SPLIT_DATES = {"train_end": str(at(TRAIN_SLOTS)), "val_end": str(at(VAL_SLOTS))}


def load_file(data_dir: str, filename: str) -> WindowSet:
    """The windows of one prepared Parquet file, scaled with the manifest's statistics."""
    manifest = read_manifest(data_dir)
    table = storage.read_parquet(storage.join(data_dir, filename))
    return WindowSet(segments_from_table(table), manifest.series_stats(), manifest.window)


CONFIGS: dict[str, object] = {}  # data folder -> the config that prepared it


def held_out_starts(data_dir: str, series_id: str = "0") -> list[int]:
    """Target starts of one series' test windows (not stored in the dataset), from the source."""
    data = CONFIGS[data_dir].data
    series, _ = load_series(fetch(data), data)
    return [int(t) for s in series if s.series_id == series_id for t in window_starts(s, "test", data)]


def target_starts(ds: WindowSet, start: pd.Timestamp = START) -> list[int]:
    """Slot index (counted from ``start``) of each window's first target."""
    return [int((c - start) / STEP) for c in ds.cutoffs]


def raw_window(ds: WindowSet, i: int) -> tuple[np.ndarray, np.ndarray]:
    """(past, future) of window ``i`` back in passengers."""
    item = ds[i]
    unscale = lambda x: (x * item["scale"] + item["loc"]).double().numpy()  # noqa: E731
    return unscale(item["past_target"]), unscale(item["future_target"])


def assert_windows_match(ds: WindowSet, expected: np.ndarray, start: pd.Timestamp = START, w: int = W, h: int = H):
    """Every window's past and future are exactly ``expected`` around its cutoff."""
    assert len(ds) > 0
    for i, s in enumerate(target_starts(ds, start)):
        past, future = raw_window(ds, i)
        np.testing.assert_allclose(past, expected[s - w : s], rtol=0, atol=1e-3)
        np.testing.assert_allclose(future, expected[s : s + h], rtol=0, atol=1e-3)


def file_state(data_dir) -> dict[str, tuple[int, int, bytes]]:
    """(inode, mtime_ns, bytes) of each file: an atomic rewrite changes the inode."""
    state = {}
    for path in Path(data_dir).iterdir():
        st = path.stat()
        state[path.name] = (st.st_ino, st.st_mtime_ns, path.read_bytes())
    return state


def load_one(make_config, csv, **data):
    """The single series that load_series makes of ``csv``, and its load report."""
    config = make_config(csv, **data).data
    (series,), report = load_series(fetch(config), config)
    return series, report


@pytest.fixture
def prepared(tmp_path, synthetic_csv, make_config):
    """Factory: write ``values`` as a CSV, prepare it into a fresh folder, return (folder, manifest)."""
    count = iter(range(1000))

    def make(values=None, *, num_shards=2, csv=None, **data):
        n = next(count)
        csv = csv or synthetic_csv(values, name=f"series{n}.csv")
        config = make_config(csv, **{**SPLIT_DATES, **data})
        data_dir = str(tmp_path / f"prepared{n}")
        CONFIGS[data_dir] = config
        return data_dir, prep.prepare(config, data_dir, num_shards=num_shards)

    return make


# ---------------------------------------------------------------------------------------------
# Windows: alignment, calendar, split boundaries, strides


def test_window_alignment_exact_on_arange(prepared):
    data_dir, manifest = prepared(np.arange(SLOTS), num_shards=1)
    slots = np.arange(SLOTS, dtype=np.float64)
    train = load_file(data_dir, manifest.train_files[0])
    assert target_starts(train)[0] == W  # the first window whose past fits
    for i in range(len(train)):
        past, future = raw_window(train, i)
        s = int(round(future[0]))  # arange: the value is the slot index
        np.testing.assert_allclose(past, slots[s - W : s], rtol=0, atol=1e-3)
        np.testing.assert_allclose(future, slots[s : s + H], rtol=0, atol=1e-3)
        assert train.cutoffs[i] == at(s)
    assert_windows_match(load_file(data_dir, manifest.val_file), slots)


def test_calendar_features_exact():
    times = pd.DatetimeIndex(["2024-01-01 00:00", "2024-01-01 00:30", "2024-01-06 13:30", "2024-01-07 23:30"])
    # [slot of day, day of week (Monday 0), US federal holiday]: 2024-01-01 is New Year's Day
    expected = [[0, 0, 1], [1, 0, 1], [27, 5, 0], [47, 6, 0]]
    np.testing.assert_array_equal(calendar_features(times, "30min"), expected)
    np.testing.assert_array_equal(calendar_features(pd.DatetimeIndex(["2024-01-03 13:00"]), "1h"), [[13, 2, 0]])
    thanksgiving = pd.DatetimeIndex(["2014-11-26 23:30", "2014-11-27 00:00", "2014-11-27 23:30", "2014-11-28 00:00"])
    np.testing.assert_array_equal(calendar_features(thanksgiving, "30min")[:, 2], [0, 1, 1, 0])


def test_window_calendar_features_follow_slots(prepared):
    data_dir, manifest = prepared(np.arange(SLOTS), num_shards=1)
    for name in [*manifest.train_files, manifest.val_file]:
        ds = load_file(data_dir, name)
        for i, s in enumerate(target_starts(ds)):
            item = ds[i]
            slots = np.arange(s - W, s + H)  # START is Monday midnight
            expected = np.stack([slots % 48, (slots // 48) % 7, slots // 48 == 0], axis=1)  # day 0: 2024-01-01
            np.testing.assert_array_equal(item["past_time"].numpy(), expected[:W])
            np.testing.assert_array_equal(item["future_time"].numpy(), expected[W:])


@pytest.mark.parametrize(
    "offset, last_train_target, first_val_target",
    [
        ("0min", TRAIN_SLOTS - 1, TRAIN_SLOTS),  # boundary on a slot: that slot is validation
        ("10min", TRAIN_SLOTS, TRAIN_SLOTS + 1),  # boundary inside slot 160: it starts before, so training
        ("-10min", TRAIN_SLOTS - 1, TRAIN_SLOTS),
    ],
)
def test_no_target_crosses_a_split_boundary(prepared, offset, last_train_target, first_val_target):
    train_end = at(TRAIN_SLOTS) + pd.Timedelta(offset)
    data_dir, manifest = prepared(np.arange(SLOTS), num_shards=1, train_end=str(train_end))
    starts = {
        "train": target_starts(load_file(data_dir, manifest.train_files[0])),
        "val": target_starts(load_file(data_dir, manifest.val_file)),
        "test": held_out_starts(data_dir),
    }

    assert starts["train"] == list(range(W, last_train_target - H + 2))
    assert starts["val"] == list(range(first_val_target, VAL_SLOTS - H + 1))
    assert starts["test"] == list(range(VAL_SLOTS, SLOTS - H + 1))
    assert max(s + H - 1 for s in starts["train"]) == last_train_target and at(last_train_target) < train_end
    assert at(first_val_target) >= train_end
    # Windows whose targets straddle a boundary belong to no split.
    everywhere = set(starts["train"]) | set(starts["val"]) | set(starts["test"])
    for boundary in (first_val_target, VAL_SLOTS):
        assert not everywhere & set(range(boundary - H + 1, boundary))
    # The first validation window's past reaches back into training: known history, allowed.
    ds = load_file(data_dir, manifest.val_file)
    past, _ = raw_window(ds, 0)
    assert past[0] == first_val_target - W and at(int(past[0])) < train_end
    assert {k: manifest.splits[k].windows for k in starts} == {k: len(v) for k, v in starts.items()}


def test_strides(prepared):
    data_dir, manifest = prepared(np.arange(SLOTS), num_shards=1, stride=5, eval_stride=12)
    assert target_starts(load_file(data_dir, manifest.train_files[0])) == list(range(W, 157, 5))
    assert target_starts(load_file(data_dir, "val.parquet")) == list(range(TRAIN_SLOTS, 197, 12))
    assert held_out_starts(data_dir) == list(range(VAL_SLOTS, 237, 12))


def test_test_end_bounds_test_targets(prepared):
    data_dir, manifest = prepared(np.arange(SLOTS), num_shards=1, test_end=str(at(220)))
    assert held_out_starts(data_dir) == list(range(VAL_SLOTS, 220 - H + 1))
    assert manifest.splits["test"].last_target == str(at(219))


# ---------------------------------------------------------------------------------------------
# Scaler


def test_scaler_fitted_on_training_slots_only(prepared):
    rng = np.random.default_rng(0)
    values = np.round(rng.uniform(10, 100, SLOTS), 3)
    _, first = prepared(values)
    stats = first.series["0"]
    assert stats.mean == pytest.approx(np.mean(values[:TRAIN_SLOTS]), rel=1e-12)
    assert stats.std == pytest.approx(np.std(values[:TRAIN_SLOTS]), rel=1e-12)

    later = values.copy()
    later[TRAIN_SLOTS:] *= 50  # validation and test change, training does not
    data_dir, second = prepared(later)
    assert second.series["0"] == stats
    ds = load_file(data_dir, "val.parquet")
    assert float(ds[0]["loc"]) == pytest.approx(stats.mean) and float(ds[0]["scale"]) == pytest.approx(stats.std)

    last_train = values.copy()
    last_train[TRAIN_SLOTS - 1] += 1000  # the last training slot does count
    _, third = prepared(last_train)
    assert third.series["0"].mean == pytest.approx(np.mean(last_train[:TRAIN_SLOTS]), rel=1e-12)


def test_constant_training_series_gets_unit_std(prepared):
    values = np.full(SLOTS, 7.0)
    _, manifest = prepared(values)
    assert manifest.series["0"] == SeriesInfo(mean=7.0, std=1.0, start=str(START), slots=SLOTS)


# ---------------------------------------------------------------------------------------------
# Bad input: a DataError naming the file and rows, and nothing written


def _rows(n: int = SLOTS) -> list[list[str]]:
    return [[f"{at(i):%Y-%m-%d %H:%M:%S}", str(i)] for i in range(n)]


def _with(rows, index, column, text):
    rows[index][column] = text
    return rows


BAD_INPUTS = {
    "misnamed timestamp column": (dict(header=("time", "value")), {}, ["missing column(s) ['timestamp']", "'time'"]),
    "missing value column": (dict(header=("timestamp", "passengers")), {}, ["missing column(s) ['value']"]),
    "missing series column": ({}, dict(series_column="series_id"), ["missing column(s) ['series_id']"]),
    "unparseable timestamp": (
        dict(rows=_with(_rows(), 10, 0, "not a time")),
        {},
        ["unparseable timestamp in 1 row(s)", "row 12: 'not a time'"],
    ),
    "empty timestamp": (dict(rows=_with(_rows(), 3, 0, "")), {}, ["unparseable timestamp", "row 5: ''"]),
    "non-numeric value": (dict(rows=_with(_rows(), 20, 1, "12abc")), {}, ["non-numeric value", "row 22: '12abc'"]),
    "negative value": (dict(rows=_with(_rows(), 30, 1, "-5")), {}, ["negative value", "row 32: '-5'"]),
    "empty value": (dict(rows=_with(_rows(), 40, 1, "")), {}, ["missing (NaN) value", "row 42: ''"]),
    "NaN value": (
        dict(rows=_with(_with(_rows(), 41, 1, "NaN"), 60, 1, "nan")),
        {},
        ["missing (NaN) value in 2 row(s)", "row 43: 'NaN'", "row 62: 'nan'"],
    ),
    "infinite value": (dict(rows=_with(_rows(), 7, 1, "inf")), {}, ["infinite value", "row 9: 'inf'"]),
    "duplicate timestamp": (
        dict(rows=_with(_rows(), 50, 0, f"{at(49):%Y-%m-%d %H:%M:%S}")),
        {},
        ["2 rows share a timestamp", f"row 51: duplicate timestamp {at(49)}", f"row 52: duplicate timestamp {at(49)}"],
    ),
    "UTC offset": (
        dict(rows=[[f"{at(i):%Y-%m-%d %H:%M:%S}+00:00", str(i)] for i in range(SLOTS)]),
        {},
        ["timestamps carry a UTC offset", "row 2: '2024-01-01 00:00:00+00:00'"],
    ),
    "mixed UTC offsets": (
        dict(rows=_with(_with(_rows(), 0, 0, "2024-01-01 00:00:00+01:00"), 1, 0, "2024-01-01 00:30:00+02:00")),
        {},
        ["column 'timestamp'", "Mixed timezones"],
    ),
    "too short": (dict(rows=_rows(W + H - 1)), {}, ["11 slots of 30min", "needs at least 12"]),
    "long gap": (
        dict(rows=_rows()[:100] + _rows()[110:]),
        {},
        ["1 gap(s) longer than data.max_gap=2h", f"{at(100)} .. {at(109)} (10 slots)", "data.long_gaps=drop"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_names_file_and_rows_and_writes_nothing(tmp_path, synthetic_csv, make_config, case):
    csv_args, data, fragments = BAD_INPUTS[case]
    csv = synthetic_csv(**{"rows": _rows(), **csv_args}, name="bad_input.csv")
    data_dir = str(tmp_path / "prepared")
    with pytest.raises(DataError) as err:
        prep.prepare(make_config(csv, **SPLIT_DATES, **data), data_dir, num_shards=2)
    assert "bad_input.csv" in str(err.value)
    for fragment in fragments:
        assert fragment in str(err.value)
    assert storage.list_dir(data_dir) == []


def test_missing_file_is_named_and_writes_nothing(tmp_path, make_config):
    data_dir = str(tmp_path / "prepared")
    with pytest.raises(DataError, match="data file not found: .*nope.csv"):
        prep.prepare(make_config(tmp_path / "nope.csv", **SPLIT_DATES), data_dir)
    assert storage.list_dir(data_dir) == []


def test_too_short_series_in_multi_series_file_is_named(tmp_path, synthetic_csv, make_config):
    rows = [[*r, "long"] for r in _rows()] + [[*r, "short"] for r in _rows(5)]
    csv = synthetic_csv(rows=rows, header=("timestamp", "value", "series_id"), name="many.csv")
    with pytest.raises(DataError) as err:
        prep.prepare(make_config(csv, series_column="series_id", **SPLIT_DATES), str(tmp_path / "out"))
    assert "many.csv (series 'short'): 5 slots" in str(err.value) and "at least 12" in str(err.value)


def test_read_manifest_without_dataset(tmp_path):
    with pytest.raises(DataError, match="no prepared dataset"):
        read_manifest(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# Gaps and resampling


@pytest.mark.parametrize("gap_slots", [1, 3, 4])  # 4 slots = max_gap 2h: still interpolated
def test_short_gaps_interpolated_linearly_and_counted(prepared, make_config, synthetic_csv, gap_slots):
    values = 50.0 + 3.0 * (np.arange(SLOTS) % 7) ** 2  # not linear, so interpolation shows
    missing = list(range(60, 60 + gap_slots)) + [120]
    rows = [r for i, r in enumerate(_rows()) if i not in missing]
    for r in rows:
        r[1] = repr(float(values[int((pd.Timestamp(r[0]) - START) / STEP)]))
    csv = synthetic_csv(rows=rows, name="gappy.csv")

    expected = values.copy()
    lo, hi = 59, 60 + gap_slots  # known neighbours of the first gap
    for k, slot in enumerate(range(lo + 1, hi), start=1):
        expected[slot] = values[lo] + (values[hi] - values[lo]) * k / (hi - lo)
    expected[120] = (values[119] + values[121]) / 2

    series, report = load_one(make_config, csv)
    np.testing.assert_allclose(series.values, expected, rtol=1e-12)
    assert (report.interpolated_gaps, report.interpolated_slots) == (2, gap_slots + 1)

    data_dir, manifest = prepared(csv=csv, num_shards=1)
    assert manifest.load_report["interpolated_gaps"] == 2
    assert manifest.load_report["interpolated_slots"] == gap_slots + 1
    assert manifest.load_report["rows"] == SLOTS - gap_slots - 1 and manifest.load_report["points"] == SLOTS
    assert_windows_match(load_file(data_dir, manifest.train_files[0]), expected.astype(np.float32))


def test_gap_one_slot_over_max_gap_is_long(tmp_path, synthetic_csv, make_config):
    csv = synthetic_csv(rows=[r for i, r in enumerate(_rows()) if not 60 <= i < 65], name="gap5.csv")
    with pytest.raises(DataError, match=r"1 gap\(s\) longer than data.max_gap=2h"):
        prep.prepare(make_config(csv, **SPLIT_DATES), str(tmp_path / "out"))


def test_long_gap_drop_skips_exactly_the_windows_touching_it(prepared, synthetic_csv):
    gap = range(100, 110)  # 10 missing slots, longer than max_gap (4 slots)
    csv = synthetic_csv(rows=[r for i, r in enumerate(_rows()) if i not in gap], name="long_gap.csv")
    data_dir, manifest = prepared(csv=csv, num_shards=1, long_gaps="drop")

    train = load_file(data_dir, manifest.train_files[0])
    touching = {s for s in range(W, TRAIN_SLOTS - H + 1) if s + H > gap.start and s - W < gap.stop}
    assert touching == set(range(gap.start - H + 1, gap.stop + W))  # independent sanity check
    assert target_starts(train) == [s for s in range(W, TRAIN_SLOTS - H + 1) if s not in touching]
    assert_windows_match(train, np.arange(SLOTS, dtype=np.float64))  # no NaN reaches a window
    assert manifest.splits["train"].windows == 149 - len(touching)
    assert manifest.load_report["long_gaps"] == [f"0: {at(100)} .. {at(109)} (10 slots)"]
    kept = np.array([i for i in range(TRAIN_SLOTS) if i not in gap], dtype=np.float64)
    assert manifest.series["0"].mean == pytest.approx(kept.mean(), rel=1e-12)
    assert manifest.series["0"].std == pytest.approx(kept.std(), rel=1e-12)


def test_finer_readings_are_summed_into_slots(synthetic_csv, make_config):
    csv = synthetic_csv(np.arange(3 * SLOTS), freq="10min", name="ten_minutes.csv")  # 3 readings per slot
    k = np.arange(SLOTS)
    series, report = load_one(make_config, csv)
    assert series.start == START and report.rows == 3 * SLOTS
    np.testing.assert_array_equal(series.values, 9 * k + 3)  # (3k) + (3k+1) + (3k+2)
    series, _ = load_one(make_config, csv, aggregation="mean")
    np.testing.assert_array_equal(series.values, 3 * k + 1)


def test_irregular_unsorted_readings_are_resampled(synthetic_csv, make_config):
    rng = np.random.default_rng(1)
    rows, expected = [], np.zeros(SLOTS)
    for slot in range(SLOTS):
        for second in rng.choice(1800, size=1 + slot % 3, replace=False):  # 1 to 3 readings inside the slot
            when = at(slot) + pd.Timedelta(seconds=int(second))
            value = int(rng.integers(0, 100))
            rows.append([f"{when:%Y-%m-%d %H:%M:%S}", str(value)])
            expected[slot] += value
    rows = [rows[i] for i in rng.permutation(len(rows))]
    csv = synthetic_csv(rows=rows, name="irregular.csv")
    series, report = load_one(make_config, csv)
    assert series.start == START and report.interpolated_slots == 0
    np.testing.assert_array_equal(series.values, expected)


def test_timestamps_written_in_mixed_iso_precision(synthetic_csv, make_config):
    rows = _rows()
    rows[48][0] = "2024-01-02"  # midnight written as a date: common in spreadsheet exports
    rows[49][0] = "2024-01-02T00:30"
    csv = synthetic_csv(rows=rows, name="mixed.csv")
    series, _ = load_one(make_config, csv)
    np.testing.assert_array_equal(series.values, np.arange(SLOTS))


# ---------------------------------------------------------------------------------------------
# Several series in one file


OFFSET = 4  # series b starts 2 h after series a


def two_series_csv(synthetic_csv):
    """Series a (arange from START) and b (1000 + 2j from slot OFFSET), rows shuffled together.

    Returns the CSV path and ``{series_id: (values, start)}``.
    """
    a = np.arange(SLOTS, dtype=np.float64)
    b = 1000.0 + 2.0 * np.arange(SLOTS - OFFSET)
    rows = [[*r, "a"] for r in _rows()]
    rows += [[f"{at(OFFSET + j):%Y-%m-%d %H:%M:%S}", repr(float(v)), "b"] for j, v in enumerate(b)]
    rows = [rows[i] for i in np.random.default_rng(2).permutation(len(rows))]
    csv = synthetic_csv(rows=rows, header=("timestamp", "value", "series_id"), name="two.csv")
    return csv, {"a": (a, START), "b": (b, at(OFFSET))}


def assert_series_windows_match(ds: WindowSet, expected: dict) -> list[tuple[str, int]]:
    """Every window holds exactly its own series' values; returns (series_id, target start)."""
    seen = []
    for i, sid in enumerate(ds.series_ids):
        values, start = expected[sid]
        s = int((ds.cutoffs[i] - start) / STEP)
        past, future = raw_window(ds, i)  # another series' values or scaler would not match
        np.testing.assert_allclose(np.concatenate([past, future]), values[s - W : s + H], rtol=0, atol=1e-3)
        seen.append((sid, s))
    return seen


def test_multi_series_windowed_and_scaled_separately(prepared, synthetic_csv):
    csv, expected = two_series_csv(synthetic_csv)
    data_dir, manifest = prepared(csv=csv, num_shards=2, series_column="series_id")

    train_slots = {"a": expected["a"][0][:TRAIN_SLOTS], "b": expected["b"][0][: TRAIN_SLOTS - OFFSET]}
    for sid, values in train_slots.items():
        assert manifest.series[sid].mean == pytest.approx(values.mean(), rel=1e-12)
        assert manifest.series[sid].std == pytest.approx(values.std(), rel=1e-12)
    assert manifest.splits["train"].windows == 149 + (149 - OFFSET)
    assert manifest.splits["val"].windows == 2 * 37 and manifest.splits["test"].windows == 2 * 37

    seen = {split: [] for split in ("train", "val", "test")}
    for name in manifest.train_files:
        seen["train"] += assert_series_windows_match(load_file(data_dir, name), expected)
    seen["val"] = assert_series_windows_match(load_file(data_dir, "val.parquet"), expected)
    seen["test"] = [(sid, s) for sid in ("a", "b") for s in held_out_starts(data_dir, sid)]
    # Target starts counted in each series' own slots (b's slot j is a's slot j + OFFSET).
    assert sorted(seen["train"]) == [("a", s) for s in range(W, 157)] + [("b", s) for s in range(W, 157 - OFFSET)]
    assert sorted(seen["val"]) == [("a", s) for s in range(160, 197)] + [("b", s) for s in range(156, 193)]
    assert sorted(seen["test"]) == [("a", s) for s in range(200, 237)] + [("b", s) for s in range(196, 233)]


# ---------------------------------------------------------------------------------------------
# Shards: balance and size


def test_train_shards_hold_equal_contiguous_window_counts(prepared):
    data_dir, manifest = prepared(np.arange(SLOTS), num_shards=3)  # 149 windows -> 3 x 49, 2 dropped
    assert manifest.shard_windows == [49, 49, 49] and manifest.load_report["dropped_for_balance"] == 2
    assert manifest.train_files == [f"train-0000{r}-of-00003.parquet" for r in range(3)]
    shards = [target_starts(load_file(data_dir, name)) for name in manifest.train_files]
    assert [len(s) for s in shards] == [49, 49, 49]
    assert shards[0] + shards[1] + shards[2] == list(range(W, W + 147))  # disjoint, in time order


def _stored_values(data_dir: str, names: list[str]) -> int:
    return sum(
        len(v) for name in names for v in storage.read_parquet(storage.join(data_dir, name))["values"].to_pylist()
    )


def test_shard_storage_is_linear_in_series_length(prepared):
    n, train_slots, num_shards = 960, 800, 4
    dates = {"train_end": str(at(train_slots)), "val_end": str(at(880))}
    stored = {}
    for w in (8, 16):
        data_dir, manifest = prepared(np.arange(n), num_shards=num_shards, input_window=w, **dates)
        stored[w] = _stored_values(data_dir, manifest.train_files)
        assert stored[w] <= train_slots + num_shards * (w + H)
        assert _stored_values(data_dir, ["val.parquet"]) == (880 - train_slots - H + 1) + w + H - 1
        assert manifest.splits["train"].windows * (w + H) > 10 * stored[w]  # windows are not stored
    assert 0 < stored[16] - stored[8] <= num_shards * 8


# ---------------------------------------------------------------------------------------------
# Idempotence and interruption


def test_second_prepare_reuses_and_touches_nothing(tmp_path, synthetic_csv, make_config):
    csv = synthetic_csv(np.arange(SLOTS), name="a.csv")
    data_dir = str(tmp_path / "prepared")
    first = prep.prepare(make_config(csv, **SPLIT_DATES), data_dir)
    assert first.reused is False
    before = file_state(data_dir)
    assert sorted(before) == sorted(
        ["manifest.json", "config.yaml", "val.parquet", "train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    )

    again = prep.prepare(make_config(csv, **SPLIT_DATES), data_dir)
    assert again.reused is True and again == first
    assert file_state(data_dir) == before

    copy = tmp_path / "elsewhere" / "b.csv"  # the same bytes elsewhere are the same data
    copy.parent.mkdir()
    copy.write_bytes(csv.read_bytes())
    assert prep.prepare(make_config(copy, **SPLIT_DATES), data_dir).reused is True
    assert file_state(data_dir) == before


@pytest.mark.parametrize(
    "change",
    ["config", "shards", "source bytes", "missing file"],
)
def test_changed_inputs_prepare_again(tmp_path, synthetic_csv, make_config, change):
    csv = synthetic_csv(np.arange(SLOTS), name="a.csv")
    data_dir = str(tmp_path / "prepared")
    prep.prepare(make_config(csv, **SPLIT_DATES), data_dir, num_shards=2)
    before = file_state(data_dir)
    config, num_shards = make_config(csv, **SPLIT_DATES), 2
    if change == "config":
        config = make_config(csv, **SPLIT_DATES, horizon=6)
    elif change == "shards":
        num_shards = 3
    elif change == "source bytes":
        synthetic_csv(np.arange(SLOTS) + 1, name="a.csv")
    else:
        os.remove(os.path.join(data_dir, "val.parquet"))
    manifest = prep.prepare(config, data_dir, num_shards=num_shards)
    assert manifest.reused is False
    assert os.stat(os.path.join(data_dir, "manifest.json")).st_ino != before["manifest.json"][0]
    assert read_manifest(data_dir).fingerprint == manifest.fingerprint
    assert all(storage.exists(storage.join(data_dir, f)) for f in manifest.files)
    if change == "config":
        assert manifest.window.horizon == 6 and len(load_file(data_dir, "val.parquet")[0]["future_target"]) == 6


def test_interrupted_prepare_leaves_no_manifest_and_recovers(tmp_path, synthetic_csv, make_config, monkeypatch):
    csv = synthetic_csv(np.arange(SLOTS), name="a.csv")
    data_dir = str(tmp_path / "prepared")
    manifest_path = storage.join(data_dir, MANIFEST_FILE)
    prep.prepare(make_config(csv, **SPLIT_DATES), data_dir)  # an older dataset, another config
    assert storage.exists(manifest_path)

    real_write = storage.write_bytes
    manifest_seen = []

    def write_then_fail(location, data):
        if location.endswith(".parquet"):
            manifest_seen.append(storage.exists(manifest_path))
            if len(manifest_seen) > 1:
                raise OSError("disk full")
        real_write(location, data)

    monkeypatch.setattr(storage, "write_bytes", write_then_fail)
    changed = make_config(csv, **SPLIT_DATES, horizon=6)
    with pytest.raises(OSError, match="disk full"):
        prep.prepare(changed, data_dir)
    assert manifest_seen == [False, False]  # the old manifest went before any file was replaced
    assert not storage.exists(manifest_path)
    assert not [n for n in storage.list_dir(data_dir) if ".tmp" in n]
    with pytest.raises(DataError, match="no prepared dataset"):
        ShardDataModule(data_dir, batch_size=4)

    monkeypatch.setattr(storage, "write_bytes", real_write)
    manifest = prep.prepare(changed, data_dir)
    assert manifest.reused is False and read_manifest(data_dir).window.horizon == 6
    assert_windows_match(load_file(data_dir, manifest.train_files[1]), np.arange(SLOTS), h=6)


# ---------------------------------------------------------------------------------------------
# Datamodule


def _module(data_dir, monkeypatch, rank, world):
    """A datamodule that believes it is rank ``rank`` of ``world``."""
    module = ShardDataModule(data_dir, batch_size=4, eval_batch_size=16)
    monkeypatch.setattr(module, "_rank_and_world", lambda: (rank, world))
    return module


def test_each_rank_reads_only_its_own_shard(prepared, monkeypatch):
    data_dir, manifest = prepared(np.arange(SLOTS), num_shards=2)
    real_read = storage.read_parquet
    train_starts = []
    for rank in range(2):
        reads = []
        monkeypatch.setattr(
            storage, "read_parquet", lambda loc, reads=reads: reads.append(loc.rsplit("/", 1)[-1]) or real_read(loc)
        )
        module = _module(data_dir, monkeypatch, rank, 2)
        module.setup("fit")
        assert sorted(reads) == sorted([f"train-0000{rank}-of-00002.parquet", "val.parquet"])
        own = target_starts(module.datasets["train"])
        monkeypatch.setattr(storage, "read_parquet", real_read)
        assert own == target_starts(load_file(data_dir, manifest.train_files[rank]))
        train_starts.append(own)
    assert not set(train_starts[0]) & set(train_starts[1])
    assert len(train_starts[0]) == len(train_starts[1]) == 74


def test_eval_subsets_of_ranks_are_disjoint_and_cover_all(prepared, synthetic_csv, monkeypatch):
    stage, split = "validate", "val"
    csv, expected = two_series_csv(synthetic_csv)  # two scalers: a subset must keep loc/scale aligned
    data_dir, manifest = prepared(csv=csv, num_shards=3, series_column="series_id")
    parts = []
    for rank in range(3):
        module = _module(data_dir, monkeypatch, rank, 3)
        module.setup(stage)
        assert list(module.datasets) == [split]
        parts.append(assert_series_windows_match(module.datasets[split], expected))
    assert [len(p) for p in parts] == [25, 25, 24]  # 74 windows, every third one per rank
    flat = [w for p in parts for w in p]
    assert len(set(flat)) == len(flat) == manifest.splits[split].windows
    assert sorted(flat) == sorted(assert_series_windows_match(load_file(data_dir, f"{split}.parquet"), expected))


def test_a_world_larger_than_the_shard_count_is_refused(prepared, monkeypatch):
    data_dir, _ = prepared(np.arange(SLOTS), num_shards=2)
    with pytest.raises(DataError) as err:
        _module(data_dir, monkeypatch, 0, 3).setup("fit")
    assert str(err.value) == (
        f"{data_dir}: the dataset holds 2 training shard(s), too few for 3 worker(s); "
        "prepare it for 3 or more (python train.py --prepare-only --set cluster.num_workers=3)"
    )
    module = ShardDataModule(data_dir, batch_size=4)  # no trainer: rank 0 of 1 takes both shards
    module.setup("fit")
    assert target_starts(module.datasets["train"]) == [
        t
        for name in ("train-00000-of-00002.parquet", "train-00001-of-00002.parquet")
        for t in target_starts(load_file(data_dir, name))
    ]


def test_dataloaders_yield_named_tensors_without_trainer(prepared):
    data_dir, _ = prepared(np.arange(SLOTS), num_shards=1)
    module = ShardDataModule(data_dir, batch_size=4, eval_batch_size=5)
    module.setup()
    batch = next(iter(module.train_dataloader()))
    shapes = {k: tuple(v.shape) for k, v in batch.items()}
    assert shapes == {
        "past_target": (4, W),
        "future_target": (4, H),
        "past_time": (4, W, 3),
        "future_time": (4, H, 3),
        "loc": (4,),
        "scale": (4,),
    }
    assert {k for k, v in batch.items() if v.dtype == torch.float32} == {"past_target", "future_target", "loc", "scale"}
    assert batch["past_time"].dtype == batch["future_time"].dtype == torch.int64
    val = next(iter(module.val_dataloader()))  # not shuffled: time order
    first = (val["future_target"][:, 0] * val["scale"] + val["loc"]).numpy()
    np.testing.assert_allclose(first, np.arange(TRAIN_SLOTS, TRAIN_SLOTS + 5), atol=1e-3)
    assert set(module.datasets) == {"train", "val"}  # nothing reads the test period while training


@pytest.mark.parametrize("size, batch", [(10, 4), (12, 4), (1, 3)])
def test_training_batches_are_those_of_a_shuffled_dataloader_as_index_tensors(size, batch):
    torch.manual_seed(7)
    expected = list(BatchSampler(RandomSampler(range(size)), batch, drop_last=False))
    after_expected = torch.rand(3)  # the global generator moved as far
    torch.manual_seed(7)
    sampler = ShuffledBatches(size, batch)
    got = list(sampler)
    assert [b.tolist() for b in got] == expected and all(b.dtype == torch.int64 for b in got)
    assert torch.equal(torch.rand(3), after_expected)
    assert len(sampler) == len(expected) and sorted(i for b in got for i in b.tolist()) == list(range(size))


def test_training_epochs_draw_new_orders_and_cover_every_window_once(prepared):
    data_dir, _ = prepared(np.arange(SLOTS), num_shards=1)
    module = ShardDataModule(data_dir, batch_size=8)
    module.setup("fit")
    epochs = [[i for b in module.train_dataloader().batch_sampler for i in b.tolist()] for _ in range(2)]
    assert epochs[0] != epochs[1]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(len(module.datasets["train"])))


def reference_window_set(segments, stats, spec):
    """What WindowSet holds, built segment by segment (the loop it replaced)."""
    values, times, targets, first, loc, scale, cutoffs, ids, base = [], [], [], [], [], [], [], [], 0
    for seg in segments:
        own = seg.stats or stats[seg.series_id]
        slots = pd.date_range(seg.start, periods=len(seg.values), freq=spec.freq)
        values.append((seg.values - own.mean) / own.std)
        times.append(calendar_features(slots, spec.freq))
        targets += list(base + seg.window_starts)
        first += [base] * len(seg.window_starts)
        loc += [own.mean] * len(seg.window_starts)
        scale += [own.std] * len(seg.window_starts)
        cutoffs += list(slots[seg.window_starts])
        ids += [seg.series_id] * len(seg.window_starts)
        base += len(seg.values)
    return values, times, targets, first, loc, scale, cutoffs, ids


@pytest.mark.parametrize("count, chunk", [(0, 1 << 20), (3, 1 << 20), (3, 7)])  # 7: calendar chunks cut inside segments
def test_window_set_lays_segments_end_to_end(count, chunk, monkeypatch):
    monkeypatch.setattr(windows_module, "CALENDAR_CHUNK", chunk)
    spec = WindowSpec(W, H, "30min")
    stats = {"a": SeriesStats(10.0, 2.0), "b": SeriesStats(-1.0, 0.5)}
    segments = [
        Segment("a", START, np.arange(30.0), np.asarray([8, 12, 26])),
        Segment("b", START + 5 * STEP, np.arange(20.0) * 2, np.asarray([], dtype=np.int64)),  # no windows
        Segment(
            "new", pd.Timestamp("2024-12-31 22:00"), np.arange(14.0), np.asarray([9, 10]), stats=SeriesStats(3.0, 4.0)
        ),
    ][:count]
    ws = WindowSet(segments, stats, spec)
    values, times, targets, first, loc, scale, cutoffs, ids = reference_window_set(segments, stats, spec)
    np.testing.assert_allclose(ws.values.numpy(), np.concatenate(values) if values else [], rtol=1e-6)
    assert ws.times.tolist() == (np.concatenate(times).tolist() if times else [])
    assert ws.targets.tolist() == targets and ws.first_slot.tolist() == first
    np.testing.assert_allclose(ws.loc.numpy(), loc)
    np.testing.assert_allclose(ws.scale.numpy(), scale)
    assert list(ws.cutoffs) == cutoffs and ws.series_ids == ids
    assert len(ws) == len(targets)


def test_segments_read_from_several_row_chunks_are_the_rows(prepared):
    data_dir, manifest = prepared(np.arange(SLOTS), num_shards=1)
    table = storage.read_parquet(storage.join(data_dir, manifest.train_files[0]))
    doubled = pa.concat_tables([table, table])  # two chunks
    one_chunk = doubled.combine_chunks()
    for part in (table, doubled, one_chunk.slice(1), doubled.slice(1)):  # a slice starts inside its list buffers
        rows = part.to_pylist()
        segments = segments_from_table(part)
        assert len(segments) == len(rows) > 0
        for segment, row in zip(segments, rows):
            assert segment.series_id == row["series_id"] and segment.start == pd.Timestamp(row["start"])
            np.testing.assert_array_equal(segment.values, np.asarray(row["values"], dtype=np.float64))
            np.testing.assert_array_equal(segment.window_starts, np.asarray(row["window_starts"], dtype=np.int64))


# ---------------------------------------------------------------------------------------------
# Storage


def test_write_bytes_is_atomic_and_leaves_no_tmp(tmp_path):
    target = str(tmp_path / "deep" / "er" / "blob.bin")
    storage.write_bytes(target, b"first")
    storage.write_bytes(target, b"second")
    assert storage.read_bytes(target) == b"second"
    assert storage.list_dir(str(tmp_path / "deep" / "er")) == ["blob.bin"]

    (tmp_path / "taken").mkdir()  # the final move fails: the temporary file must go too
    with pytest.raises(OSError):
        storage.write_bytes(str(tmp_path / "taken"), b"x")
    assert sorted(os.listdir(tmp_path)) == ["deep", "taken"]

    storage.write_json(str(tmp_path / "m.json"), {"a": [1, 2.5, None]})
    assert storage.read_json(str(tmp_path / "m.json")) == {"a": [1, 2.5, None]}


def test_prepare_leaves_no_temporary_files(prepared):
    data_dir, manifest = prepared(np.arange(SLOTS), num_shards=2)
    assert sorted(storage.list_dir(data_dir)) == sorted([*manifest.files, "manifest.json", "config.yaml"])
