"""Data sources beyond one CSV, and the reliability fixes of the source layer.

Parquet files and folders of CSV/Parquet (hive-partitioned too) must give exactly the series
the equivalent single CSV gives; every bad input is a DataError naming the file (the member
file of a folder), the series and the row; downloads are cached per URL and checked.
"""

from __future__ import annotations

import hashlib
import io
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lit_forecast.config import NAB_NYC_TAXI_URL
from lit_forecast.data import fetch as fetch_module
from lit_forecast.data.fetch import fetch
from lit_forecast.data.source import load_series
from lit_forecast.errors import DataError

START = pd.Timestamp("2024-01-01 00:00")
STEP = pd.Timedelta("30min")
SLOTS = 240


def frame(values=None, series_id=None, start=START, step=STEP, n=SLOTS) -> pd.DataFrame:
    """One series as rows: timestamp (datetime64), value (float), optional series_id."""
    values = np.arange(n, dtype=np.float64) if values is None else np.asarray(values, dtype=np.float64)
    out = pd.DataFrame({"timestamp": pd.date_range(start, periods=len(values), freq=step), "value": values})
    if series_id is not None:
        out["series_id"] = series_id
    return out


def write_csv(path: Path, df: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False, date_format="%Y-%m-%d %H:%M:%S")
    return path


def write_parquet(path: Path, df: pd.DataFrame) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
    return path


def load(make_config, source, **data):
    config = make_config(source, **data).data
    return load_series(fetch(config), config)


def error_of(make_config, source, **data) -> str:
    with pytest.raises(DataError) as err:
        load(make_config, source, **data)
    return str(err.value)


def as_dict(series) -> dict:
    return {s.series_id: (s.start, s.values.tolist()) for s in series}


TWO = pd.concat([frame(series_id="a"), frame(1000 + 2.0 * np.arange(SLOTS - 4), "b", start=START + 4 * STEP)])


# ---------------------------------------------------------------------------------------------
# Formats: Parquet, folders, hive partitions, file:// URIs give what the single CSV gives


def test_parquet_and_folders_give_the_series_of_the_single_csv(tmp_path, make_config):
    expected, _ = load(make_config, write_csv(tmp_path / "all.csv", TWO), series_column="series_id")
    assert [s.series_id for s in expected] == ["a", "b"] and expected[1].start == START + 4 * STEP

    typed = write_parquet(tmp_path / "all.parquet", TWO)
    assert pa.types.is_timestamp(pq.read_schema(typed).field("timestamp").type)  # typed: no string parsing
    as_text = write_parquet(tmp_path / "text.parquet", TWO.astype({"timestamp": str, "value": str}))
    monthly = tmp_path / "monthly"  # one file per day, CSV and Parquet mixed, rows split at odd places
    for k, (day, part) in enumerate(TWO.groupby(TWO["timestamp"].dt.date)):
        (write_csv if k % 2 else write_parquet)(monthly / f"{day}.{'csv' if k % 2 else 'parquet'}", part)
    (monthly / "README.txt").write_text("not data")
    (monthly / "_SUCCESS").write_text("")
    hive = tmp_path / "hive"
    for sid, part in TWO.groupby("series_id"):
        write_parquet(hive / f"series_id={sid}" / "part-0.parquet", part.drop(columns="series_id"))

    for source in (typed, as_text, monthly, hive, f"file://{hive}", f"file://{monthly}/"):
        series, report = load(make_config, source, series_column="series_id")
        assert as_dict(series) == as_dict(expected), source
        assert report.rows == len(TWO)


def test_file_uri_with_encoded_characters(tmp_path, make_config):
    path = write_csv(tmp_path / "with space.csv", frame())
    (series,), _ = load(make_config, "file://" + str(path).replace(" ", "%20"))
    assert series.values.tolist() == list(range(SLOTS))
    assert "data file not found" in error_of(make_config, f"file://{tmp_path}/nope.csv")


def test_timestamps_pyarrow_cannot_parse_still_read_by_the_text_path(tmp_path, make_config):
    df = frame()
    rows = [f"{t:%m/%d/%Y %H:%M},{v:g}" for t, v in zip(df["timestamp"], df["value"])]
    path = tmp_path / "us_dates.csv"
    path.write_text("timestamp,value\n" + "\n".join(rows) + "\n")
    (series,), _ = load(make_config, path)
    assert series.start == START and series.values.tolist() == list(range(SLOTS))


# ---------------------------------------------------------------------------------------------
# Errors name the member file, the series and the row (line in a CSV, row index in Parquet)


def test_bad_rows_in_several_members_are_all_reported_with_file_and_row(tmp_path, make_config):
    folder = tmp_path / "zones"
    a = frame(series_id="a")
    a.loc[10, "value"] = -3.0
    write_csv(folder / "a.csv", a)
    b = frame(series_id="b")
    b.loc[7, "value"] = -5.0
    write_parquet(folder / "b.parquet", b)
    write_csv(folder / "c.csv", frame(series_id="c"))
    message = error_of(make_config, folder, series_column="series_id")
    assert "zones: negative value in 2 row(s) of 2 file(s):" in message
    assert "zones/a.csv row 12: '-3.0' (series 'a')" in message  # line 12: header + 10 rows before it
    assert "zones/b.parquet row index 7: -5.0 (series 'b')" in message


def test_csv_row_is_the_line_number_even_after_blank_lines(tmp_path, make_config):
    lines = [f"{t:%Y-%m-%d %H:%M:%S},{i}" for i, t in enumerate(frame()["timestamp"])]
    lines[5] = lines[5].replace(",5", ",oops")
    path = tmp_path / "blank.csv"
    path.write_text("timestamp,value\n\n" + "\n".join(lines[:3]) + "\n\n\n" + "\n".join(lines[3:]) + "\n")
    assert "row 10: 'oops'" in error_of(make_config, path)  # 1 header + 1 blank + 3 rows + 2 blank + 3 rows


@pytest.mark.parametrize(
    "table, fragment",
    [
        (
            pa.table(
                {
                    "timestamp": pa.array(frame()["timestamp"]).cast(pa.timestamp("us", "UTC")),
                    "value": np.arange(SLOTS, dtype=float),
                }
            ),
            "has time zone 'UTC'",
        ),
        (
            pa.table(
                {
                    "timestamp": pa.array(frame()["timestamp"]),
                    "value": pa.array([None] + list(range(1, SLOTS)), pa.int64()),
                }
            ),
            "missing (NaN) value in 1 row(s):\n  row index 0: null",
        ),
        (
            pa.table({"timestamp": pa.array(frame()["timestamp"]), "value": [str(i) for i in range(SLOTS)]}).set_column(
                1, "value", pa.array([str(i) if i != 3 else "x" for i in range(SLOTS)])
            ),
            "non-numeric value in 1 row(s):\n  row index 3: 'x'",
        ),
        (
            pa.table({"timestamp": pa.array([1] * SLOTS), "value": np.arange(SLOTS, dtype=float)}),
            "holds int64, not timestamps",
        ),
        (
            pa.table({"time": pa.array(frame()["timestamp"]), "value": np.arange(SLOTS, dtype=float)}),
            "missing column(s) ['timestamp']",
        ),
    ],
)
def test_parquet_errors_name_file_and_row_index(tmp_path, make_config, table, fragment):
    path = tmp_path / "typed.parquet"
    pq.write_table(table, path)
    message = error_of(make_config, path)
    assert message.startswith("typed.parquet") and fragment in message


BROKEN = {
    "empty file": (b"", "empty file (0 bytes)"),
    "blank lines only": (b"\n \n\r\n", "empty file (no header, no rows)"),
    "header only": (b"timestamp,value\n", "no data rows (only a header)"),
    "binary": (bytes(range(256)) * 4, "not a text CSV file (it holds binary data)"),
    "not utf-8": ("timestamp,valüe\n".encode("latin-1") + b"2024-01-01,1\n", "not a text CSV file"),
    "broken parquet": (b"PAR1" + b"\x01" * 100 + b"PAR1", "not a readable Parquet file"),
    "ragged csv": (b"timestamp,value\n2024-01-01 00:00:00,1,2,3\n", "not a readable CSV file"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_unusable_files_are_a_clear_error_naming_the_file(tmp_path, make_config, case):
    content, fragment = BROKEN[case]
    path = tmp_path / "broken.csv"
    path.write_bytes(content)
    message = error_of(make_config, path)
    assert message.startswith("broken.csv: ") and fragment in message
    folder = tmp_path / "many"  # as a folder member it is named with its folder, and others still read
    write_csv(folder / "good.csv", frame())
    (folder / "sub").mkdir()
    (folder / "sub" / "broken.csv").write_bytes(content)
    assert f"many/sub/broken.csv: {fragment}" in error_of(make_config, folder)


def test_folder_without_data_files(tmp_path, make_config):
    (tmp_path / "empty").mkdir()
    assert "no CSV or Parquet files" in error_of(make_config, tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    message = error_of(make_config, tmp_path / "other")
    assert "other: no CSV or Parquet files" in message and "notes.txt" in message


# ---------------------------------------------------------------------------------------------
# Extreme values


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_value_beyond_float32_is_an_error_naming_the_row(tmp_path, make_config, fmt):
    df = frame()
    df.loc[20, "value"] = 1e39
    path = write_csv(tmp_path / "big.csv", df) if fmt == "csv" else write_parquet(tmp_path / "big.parquet", df)
    message = error_of(make_config, path)
    assert "value beyond the float32 range" in message
    assert ("row 22: '1e+39'" if fmt == "csv" else "row index 20: 1e+39") in message


def test_value_that_would_make_the_scaler_meaningless_is_an_error_even_with_clip(tmp_path, make_config):
    df = frame(100 + np.arange(SLOTS) % 7)
    df.loc[30, "value"] = 1e30  # the scaler's std would be ~6e28: every real value scales to 0
    path = write_csv(tmp_path / "huge.csv", df)
    for outliers in ("error", "clip"):
        message = error_of(make_config, path, outliers=outliers)
        assert "scaler meaningless" in message and "row 32: 1e+30" in message


def test_outliers_refused_by_default_and_clipped_on_request(tmp_path, make_config):
    base = 100.0 + np.arange(SLOTS) % 7  # 99th percentile of the readings: 106
    df = frame(base)
    df.loc[40, "value"] = 5000.0  # 47 x the level: an outlier
    df.loc[41, "value"] = 1000.0  # 9.4 x: a plausible peak, kept
    path = write_csv(tmp_path / "spiky.csv", df)
    message = error_of(make_config, path)
    assert "outlier (over 20 x its series' level" in message and "row 42: 5000 (series level 106)" in message
    assert "data.outliers=clip" in message and "1000" not in message

    (series,), report = load(make_config, path, outliers="clip")
    expected = base.copy()
    expected[40], expected[41] = 20 * 106.0, 1000.0
    np.testing.assert_array_equal(series.values, expected)
    assert report.clipped == 1


def test_mostly_zero_series_uses_its_nonzero_readings_as_level(tmp_path, make_config):
    values = np.zeros(SLOTS)
    values[::10] = 3.0  # sparse demand: the 99th percentile is 3, a reading of 50 is fine
    values[55] = 50.0
    (series,), _ = load(make_config, write_csv(tmp_path / "sparse.csv", frame(values)))
    assert series.values[55] == 50.0
    values[::10] = 0.0
    values[::100] = 2.0  # 99 % zeros: level = median of non-zero readings (2); 50 is 25 x
    assert "outlier" in error_of(make_config, write_csv(tmp_path / "sparser.csv", frame(values)))


# ---------------------------------------------------------------------------------------------
# Wrong frequency


def test_hourly_readings_into_half_hour_slots_are_refused(tmp_path, make_config):
    path = write_csv(tmp_path / "hourly.csv", frame(n=SLOTS, step=pd.Timedelta("1h")))
    for fill_gaps in (True, False):  # training and inference alike
        config = make_config(path).data
        with pytest.raises(DataError) as err:
            load_series(fetch(config), config, fill_gaps=fill_gaps)
        message = str(err.value)
        assert "hourly.csv: readings are 1h apart (median) but data.freq=30min" in message
        assert "239 of 479 slots (50%) would be interpolated" in message and "data.freq=1h" in message
    (series,), report = load(make_config, path, freq="1h")
    assert series.values.tolist() == list(range(SLOTS)) and report.interpolated_slots == 0


def test_too_many_interpolated_slots_are_refused_even_at_the_right_spacing(tmp_path, make_config):
    df = frame()
    keep = np.arange(SLOTS) % 3 != 2  # every third slot missing: median spacing still 30 min
    message = error_of(make_config, write_csv(tmp_path / "holes.csv", df[keep]))
    assert "79 of 239 slots (33%) would be interpolated" in message and "at most 25%" in message
    keep = np.arange(SLOTS) % 10 != 9  # 10 %: interpolated and counted, as before
    (series,), report = load(make_config, write_csv(tmp_path / "few.csv", df[keep]))
    assert report.interpolated_slots == 23 and series.values.tolist() == list(range(SLOTS - 1))


# ---------------------------------------------------------------------------------------------
# Fleet scale: one bad series does not hide the others, and messages stay short


def test_many_bad_series_reported_as_count_and_examples(tmp_path, make_config):
    parts = [frame(series_id=f"ok{i}") for i in range(3)]
    parts += [frame(series_id=f"short{i:02d}", n=5) for i in range(30)]
    gappy = frame(series_id="gappy")
    parts.append(gappy[(gappy.index < 100) | (gappy.index >= 110)])
    message = error_of(make_config, write_csv(tmp_path / "fleet.csv", pd.concat(parts)), series_column="series_id")
    assert message.startswith("fleet.csv: 31 problem(s) in 34 series:")
    assert "fleet.csv (series 'gappy'): 1 gap(s) longer than data.max_gap=2h" in message
    assert "fleet.csv (series 'short00'): 5 slots of 30min" in message
    assert "... and 25 more series with too short series" in message
    assert len(message.splitlines()) < 20


def test_many_bad_rows_over_many_files_stay_short(tmp_path, make_config):
    folder = tmp_path / "fleet"
    for i in range(40):
        df = frame(series_id=f"z{i:02d}")
        df.loc[[3, 4], "value"] = -1.0
        write_csv(folder / f"z{i:02d}.csv", df)
    message = error_of(make_config, folder, series_column="series_id")
    assert "negative value in 80 row(s) of 40 file(s) (and 75 more):" in message
    assert "fleet/z00.csv row 5: '-1.0' (series 'z00')" in message
    assert len(message.splitlines()) == 6


def test_duplicates_across_files_name_both_files(tmp_path, make_config):
    folder = tmp_path / "months"
    df = frame()
    write_csv(folder / "jan.csv", df.iloc[:130])
    write_csv(folder / "feb.csv", df.iloc[120:])  # 10 rows overlap
    message = error_of(make_config, folder)
    assert "months: 20 rows share a timestamp:" in message
    assert f"months/feb.csv row 2: duplicate timestamp {START + 120 * STEP}" in message
    assert f"months/jan.csv row 122: duplicate timestamp {START + 120 * STEP}" in message
    assert "set data.series_column" in message


# ---------------------------------------------------------------------------------------------
# Checksums and the download cache


def test_folder_sha256_is_over_member_names_sizes_and_contents(tmp_path, make_config):
    folder = tmp_path / "data"
    a = write_csv(folder / "a.csv", frame())
    b = write_parquet(folder / "z=1" / "b.parquet", frame())
    lines = "".join(
        f"{rel}\0{p.stat().st_size}\0{hashlib.sha256(p.read_bytes()).hexdigest()}\n"
        for rel, p in (("a.csv", a), ("z=1/b.parquet", b))
    )
    first = fetch(make_config(folder).data).sha256
    assert first == hashlib.sha256(lines.encode()).hexdigest()
    (folder / "notes.txt").write_text("skipped files do not count")
    assert fetch(make_config(folder).data).sha256 == first
    a.rename(folder / "a2.csv")
    assert fetch(make_config(folder).data).sha256 != first
    # A single file keeps the plain sha256 of its bytes.
    assert fetch(make_config(b).data).sha256 == hashlib.sha256(b.read_bytes()).hexdigest()


def test_configured_sha256_is_checked_for_local_files_and_folders(tmp_path, make_config):
    path = write_csv(tmp_path / "x.csv", frame())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert fetch(make_config(path, sha256=digest).data).sha256 == digest
    assert fetch(make_config(f"file://{path}", sha256=digest).data).sha256 == digest
    with pytest.raises(DataError, match=r"x.csv: sha256 is [0-9a-f]{64}, expected data.sha256=0+; refusing"):
        fetch(make_config(path, sha256="0" * 64).data)
    with pytest.raises(DataError, match="set data.sha256"):
        fetch(make_config(tmp_path, sha256="0" * 64).data)


class FakeWeb:
    """Serves fixed bytes per URL instead of the network, counting downloads."""

    def __init__(self, pages: dict[str, bytes]):
        self.pages, self.calls = pages, []

    def __call__(self, url, timeout=None):
        self.calls.append(url)
        if url not in self.pages:
            raise urllib.error.URLError("offline")
        return io.BytesIO(self.pages[url])


def test_download_cache_is_keyed_by_url_and_checked(tmp_path, make_config, monkeypatch):
    a, b = "https://a.example/x/nyc.csv", "https://b.example/y/nyc.csv"
    web = FakeWeb({a: b"A bytes", b: b"B bytes"})
    monkeypatch.setattr(urllib.request, "urlopen", web)
    monkeypatch.delenv("LIT_FORECAST_CACHE", raising=False)
    fa = fetch(make_config(a).data)
    fb = fetch(make_config(b).data)
    assert Path(fa.location).read_bytes() == b"A bytes" and Path(fb.location).read_bytes() == b"B bytes"
    assert Path(fa.location).name == Path(fb.location).name == "nyc.csv" and fa.location != fb.location
    assert fetch(make_config(a).data).location == fa.location and web.calls == [a, b]  # second time: cached

    # A cached file that does not match the configured sha256 is downloaded again, then checked.
    good = hashlib.sha256(b"A bytes").hexdigest()
    Path(fa.location).write_bytes(b"tampered")
    assert fetch(make_config(a, sha256=good).data).sha256 == good and web.calls[-1] == a
    assert Path(fa.location).read_bytes() == b"A bytes"
    with pytest.raises(DataError, match="refusing to use it"):
        fetch(make_config(b, sha256=good).data)  # B's bytes never pass as A's


def test_legacy_cache_location_only_with_matching_sha256(tmp_path, make_config, monkeypatch):
    cache = tmp_path / "seeded"
    cache.mkdir()
    monkeypatch.setenv("LIT_FORECAST_CACHE", str(cache))  # what .ci/run seeds: $CACHE/nyc_taxi.csv
    web = FakeWeb({})
    monkeypatch.setattr(urllib.request, "urlopen", web)
    nab = write_csv(cache / "nyc_taxi.csv", frame())
    digest = hashlib.sha256(nab.read_bytes()).hexdigest()
    source = fetch(make_config(NAB_NYC_TAXI_URL, sha256=digest).data)
    assert source.location == str(nab) and source.sha256 == digest and web.calls == []
    # Without a checksum (or with another one) a file name alone proves nothing: not served.
    for sha in (None, "0" * 64):
        with pytest.raises(DataError, match="could not download") as err:
            fetch(make_config("https://other.example/nyc_taxi.csv", sha256=sha).data)
        other = fetch_module.url_cache_path("https://other.example/nyc_taxi.csv", make_config().data)
        assert str(other) in str(err.value)
