"""The streaming path (Ray Data, actors) gives the plain path's forecasts and backtest, and survives faults.

A tiny random model and a fleet of five half-hourly series: three the checkpoint knows, one it
never saw (scaled on its own past), one that starts too late for any cutoff (every window
skipped), and a gap before one cutoff of another. One forward pass per window in both paths,
so the forecasts agree bit for bit. One local Ray with 2 CPUs for the module.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from lit_forecast import config as cfg
from lit_forecast.errors import ConfigError, CutoffError, DataError
from lit_forecast.inference.pipeline import InferenceRequest, infer
from lit_forecast.models.factory import hyperparameters, module_from_hyperparameters
from lit_forecast.spec import SeriesStats, WindowSpec

ray = pytest.importorskip("ray")
streaming = pytest.importorskip("lit_forecast.inference.streaming")

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

TINY = cfg.load(cfg.DEFAULT_CONFIG.parent / "tiny.yaml")
W, H = TINY.data.input_window, TINY.data.horizon
START, STEP = pd.Timestamp("2024-01-01"), pd.Timedelta("30min")
SLOTS = 3 * 336
STATS = {
    "z0": SeriesStats(1000.0, 300.0),
    "z1": SeriesStats(400.0, 120.0),
    "z2": SeriesStats(60.0, 20.0),
    "late": SeriesStats(50.0, 10.0),
}
CUTOFFS = [START + (2 * 336 + 24 * k) * STEP for k in range(7)]  # every 12 h of the third week
GAP_SLOT = 2 * 336 + 24 * 3 - 1  # z2's slot just before the fourth cutoff is missing


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A Ray-style checkpoint folder of a random tiny model that knows z0, z1, z2 and late (not new)."""
    folder = tmp_path_factory.mktemp("run") / "checkpoint_000000"
    plain = cfg.to_dict(TINY)
    plain["data"].update(
        series_column="zone", train_end=str(START + 2 * 336 * STEP), val_end=str(START + (SLOTS - 48) * STEP)
    )
    torch.manual_seed(0)
    module = module_from_hyperparameters(hyperparameters(TINY, WindowSpec(W, H, "30min"), STATS))
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    folder.mkdir(parents=True)
    trainer.save_checkpoint(folder / "checkpoint.ckpt")
    raw = torch.load(folder / "checkpoint.ckpt", weights_only=True)
    raw["lit_forecast_config"] = plain
    torch.save(raw, folder / "checkpoint.ckpt")
    return str(folder)


def fleet_csv(path, series: dict[str, np.ndarray], first: dict[str, int] | None = None) -> str:
    """Long CSV ``timestamp,zone,value``; NaN slots are missing rows."""
    rows = []
    for sid, values in series.items():
        offset = (first or {}).get(sid, 0)
        rows += [
            f"{START + (offset + i) * STEP:%Y-%m-%d %H:%M:%S},{sid},{v:.0f}"
            for i, v in enumerate(values)
            if not np.isnan(v)
        ]
    path.write_text("timestamp,zone,value\n" + "\n".join(rows) + "\n")
    return str(path)


def taxi_like(level: float, seed: int, slots: int = SLOTS) -> np.ndarray:
    t = np.arange(slots)
    rng = np.random.default_rng(seed)
    return np.maximum(level * (1 + 0.5 * np.sin(2 * np.pi * t / 48)) + rng.normal(0, level / 20, slots), 0).round()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    z2 = taxi_like(60, 2)
    z2[GAP_SLOT] = np.nan
    series = {
        "z0": taxi_like(1000, 0),
        "z1": taxi_like(400, 1),
        "z2": z2,
        "new": taxi_like(200, 3),
        "late": taxi_like(50, 4, slots=SLOTS - 2 * 336 - 40),
    }
    return fleet_csv(tmp_path_factory.mktemp("data") / "zones.csv", series, {"late": 2 * 336 + 40})


def assert_close(got, want, path="table"):
    """Nested dicts/lists of numbers equal to tolerance, NaN equal to NaN."""
    if isinstance(want, dict):
        assert set(got) == set(want), f"{path}: keys {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, rel=1e-9, abs=1e-12), (
            f"{path}: {got} != {want}"
        )
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def stream(checkpoint, data, output, cutoffs=CUTOFFS, **options):
    request = InferenceRequest(checkpoint=checkpoint, data=data, cutoffs=cutoffs, output=str(output), batch_size=1)
    return streaming.infer_streaming(request, streaming.StreamOptions(batch_size=1, **options))


def read_back(folder) -> pd.DataFrame:
    frame = pd.read_parquet(folder)
    return frame.sort_values(["series_id", "cutoff", "step"], kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def plain(checkpoint, data, tmp_path_factory):
    output = tmp_path_factory.mktemp("plain") / "plain.parquet"
    return infer(
        InferenceRequest(
            checkpoint=checkpoint, data=data, cutoffs=CUTOFFS, output=str(output), use_ray=False, batch_size=1
        )
    )


@pytest.fixture(scope="module")
def streamed(checkpoint, data, tmp_path_factory):
    return stream(checkpoint, data, tmp_path_factory.mktemp("stream") / "forecasts")


def test_streaming_forecasts_and_scores_equal_the_plain_path(plain, streamed):
    want = plain.frame.sort_values(["series_id", "cutoff", "timestamp"], kind="stable").reset_index(drop=True)
    got = read_back(streamed.output)
    assert len(got) == len(want) == 4 * 7 * H - H  # z0, z1, new at 7 cutoffs, z2 at 6; late never
    assert streamed.windows == len(want) // H
    assert got["series_id"].tolist() == want["series_id"].tolist()
    assert (got["cutoff"] == want["cutoff"]).all() and (got["timestamp"] == want["timestamp"]).all()
    np.testing.assert_array_equal(got["median"], want["forecast"])
    for column in ("q0.1", "q0.9", "actual"):
        np.testing.assert_array_equal(got[column], want[column])
    assert got["in_checkpoint"].tolist() == want["in_checkpoint"].tolist()
    assert set(got.loc[~got["in_checkpoint"], "series_id"]) == {"new"}

    table, expected = dict(streamed.table), dict(plain.table)
    assert table.pop("skipped")["windows"] == expected.pop("skipped")["windows"] == 1 + 7  # z2's gap, every late window
    assert table.pop("unseen_series") == expected.pop("unseen_series") == {"count": 1, "series": ["new"]}
    assert_close(table, expected)
    pd.testing.assert_frame_equal(streamed.zones, plain.zones, check_exact=False, rtol=1e-9, check_dtype=False)
    assert "7 too little history" in streamed.skipped and "1 gap before cutoff" in streamed.skipped


def test_both_paths_refit_the_bands_by_default_and_score_the_refitted_ones(plain, streamed, checkpoint, data, tmp_path):
    """On by default: every window has 13 earlier windows at its time of day (the 14th lacks history)."""
    assert plain.table["recalibration"] == streamed.table["recalibration"] == {"days": 14.0, "refitted": 27, "kept": 0}
    static = infer(
        InferenceRequest(
            checkpoint=checkpoint,
            data=data,
            cutoffs=CUTOFFS,
            output=str(tmp_path / "static.parquet"),
            use_ray=False,
            batch_size=1,
            recalibrate_days=0,
        )
    )
    assert "recalibration" not in static.table
    np.testing.assert_array_equal(static.frame["forecast"], plain.frame["forecast"])  # the median never moves
    assert not np.array_equal(static.frame["q0.9"], plain.frame["q0.9"])
    model, fixed = plain.table["methods"]["model"]["overall"], static.table["methods"]["model"]["overall"]
    assert model["wql"] != fixed["wql"]  # the scores are the refitted bands' (the stream's equal the plain's)


def test_the_next_day_forecast_streams_the_same_numbers(checkpoint, data, tmp_path):
    plain = infer(
        InferenceRequest(
            checkpoint=checkpoint, data=data, output=str(tmp_path / "p.parquet"), use_ray=False, batch_size=1
        )
    )
    result = stream(checkpoint, data, tmp_path / "next", cutoffs=None)
    got = read_back(result.output)
    want = plain.frame.sort_values(["series_id", "cutoff", "timestamp"], kind="stable").reset_index(drop=True)
    assert result.table is None and "actual" not in got.columns
    assert got["series_id"].tolist() == want["series_id"].tolist() and len(got) == 5 * H
    np.testing.assert_array_equal(got["median"], want["forecast"])


def test_an_output_folder_with_files_is_refused_without_overwrite(checkpoint, data, tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "mine.txt").write_text("a user's file")
    with pytest.raises(ConfigError, match="already holds files"):
        stream(checkpoint, data, folder)
    assert (folder / "mine.txt").read_text() == "a user's file"
    stream(checkpoint, data, folder, overwrite=True)  # replaced whole, once every file is written
    assert not (folder / "mine.txt").exists() and len(read_back(folder)) == 4 * 7 * H - H
    assert not list(tmp_path.glob("out.tmp-*")) and not list(tmp_path.glob("out.old-*"))


def test_a_strict_run_fails_on_a_skipped_window_and_leaves_nothing(checkpoint, data, tmp_path):
    request = InferenceRequest(
        checkpoint=checkpoint, data=data, cutoffs=CUTOFFS, output=str(tmp_path / "f"), strict=True
    )
    with pytest.raises(CutoffError):
        streaming.infer_streaming(request)
    assert list(tmp_path.iterdir()) == []


def parquet_of(csv: str, path, by_zone: bool) -> str:
    """The CSV as Parquet: one row group per zone (``by_zone``), or rows shuffled in row groups of 1,000."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = pd.read_csv(csv, parse_dates=["timestamp"])
    if not by_zone:
        pq.write_table(
            pa.Table.from_pandas(frame.sample(frac=1.0, random_state=0), preserve_index=False),
            path,
            row_group_size=1000,
        )
        return str(path)
    with pq.ParquetWriter(path, pa.Table.from_pandas(frame, preserve_index=False).schema) as writer:
        for _, rows in frame.groupby("zone", sort=True):
            writer.write_table(pa.Table.from_pandas(rows, preserve_index=False))
    return str(path)


def test_a_fleet_stored_series_by_series_is_cut_where_it_is_read(checkpoint, data, streamed, tmp_path):
    """Row groups whose zone ranges do not overlap: no shuffle, and the same forecasts and scores."""
    from lit_forecast.data.fetch import fetch
    from lit_forecast.data.ray_prepare import plan_chunks

    sorted_by_zone = parquet_of(data, tmp_path / "zones.parquet", by_zone=True)
    shuffled = parquet_of(data, tmp_path / "shuffled.parquet", by_zone=False)
    config = cfg.DataConfig(source=sorted_by_zone, sha256=None, series_column="zone")
    chunks = plan_chunks(fetch(config), config, tasks=4)[2]
    assert len(chunks) > 1 and streaming.series_aligned(chunks, sorted_by_zone, "zone")
    config = cfg.DataConfig(source=shuffled, sha256=None, series_column="zone")
    assert not streaming.series_aligned(plan_chunks(fetch(config), config, tasks=4)[2], shuffled, "zone")

    result = stream(checkpoint, sorted_by_zone, tmp_path / "out")
    pd.testing.assert_frame_equal(read_back(result.output), read_back(streamed.output))
    assert_close(result.table["methods"], streamed.table["methods"])
    assert result.skipped == streamed.skipped


# -- faults ------------------------------------------------------------------------------------------


def test_a_bad_series_is_skipped_and_counted_and_the_rest_is_unchanged(checkpoint, data, streamed, tmp_path):
    """A series read every 2 h cannot be put on the 30 min grid: skipped whole, named, and nothing else changes."""
    rows = [f"{START + 4 * i * STEP:%Y-%m-%d %H:%M:%S},sparse,{10 + i % 7}" for i in range(SLOTS // 4)]
    with_bad = tmp_path / "with_bad.csv"
    with_bad.write_text(Path(data).read_text() + "\n".join(rows) + "\n")
    result = stream(checkpoint, str(with_bad), tmp_path / "out")
    assert len(result.bad_series) == 1 and "(series 'sparse'): readings are 2h apart" in result.bad_series[0]
    assert result.table["skipped_series"]["count"] == 1
    pd.testing.assert_frame_equal(read_back(result.output), read_back(streamed.output))
    assert_close(result.table["methods"], streamed.table["methods"])


def test_an_unreadable_row_is_one_error_naming_the_file_and_nothing_is_written(checkpoint, data, tmp_path):
    broken = tmp_path / "broken.csv"
    broken.write_text(Path(data).read_text() + "2024-01-05 10:00:00,z0,lots\n")
    with pytest.raises(DataError, match=r"broken\.csv") as error:
        stream(checkpoint, str(broken), tmp_path / "out")
    assert "lots" in str(error.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.csv"]


def test_an_actor_killed_mid_backtest_costs_only_retried_blocks(checkpoint, data, streamed, tmp_path):
    """SIGKILL the only forecasting actor a second after it starts (it cuts and forecasts the blocks): Ray Data
    restarts it and retries its blocks; the dataset and the scores are complete and identical to an undisturbed run."""
    import psutil

    output = tmp_path / "out"
    killed = []

    def kill_the_actor_once_it_works():
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not killed:
            for proc in psutil.Process().children(recursive=True):  # this test's own Ray only
                try:
                    if "Forecaster" in " ".join(proc.cmdline()) and time.time() - proc.create_time() > 1.0:
                        proc.kill()
                        killed.append(proc.pid)
                        return
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_the_actor_once_it_works, daemon=True)
    watcher.start()
    result = stream(checkpoint, data, output, actors=1)
    watcher.join(timeout=5)
    assert killed, "the actor finished before it could be killed"
    pd.testing.assert_frame_equal(read_back(result.output), read_back(streamed.output))
    assert result.windows == streamed.windows
    assert_close(result.table["methods"], streamed.table["methods"])


# -- the command line --------------------------------------------------------------------------------


@pytest.fixture
def main():
    """infer.py's main, with the package logger restored afterwards (setup_logging reconfigures it)."""
    import logging
    import runpy

    logger = logging.getLogger("lit_forecast")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield runpy.run_path(str(cfg.DEFAULT_CONFIG.parent.parent / "infer.py"))["main"]
    logger.handlers[:], logger.level, logger.propagate = saved


def test_infer_streams_into_a_folder_and_refuses_a_huge_csv(main, checkpoint, data, tmp_path, capsys, monkeypatch):
    main(["--checkpoint", checkpoint, "--data", data, "--output", str(tmp_path / "next"), "--engine", "stream"])
    out = capsys.readouterr().out
    assert f"forecasts   {tmp_path / 'next'}  (5 windows, Parquet dataset" in out
    assert len(pd.read_parquet(tmp_path / "next")) == 5 * H
    for argv, message in [
        (["--engine", "stream", "--output", str(tmp_path / "f.csv")], "--engine stream writes a Parquet dataset"),
        (["--engine", "plain", "--output", str(tmp_path / "folder")], "the file name must end in .csv or .parquet"),
        (["--output", str(tmp_path / "next")], "already exists: pass --overwrite"),
    ]:
        with pytest.raises(SystemExit) as exit_:
            main(["--checkpoint", checkpoint, "--data", data, *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    monkeypatch.setattr(streaming, "AUTO_STREAM_READINGS", 1000)  # this small fleet is now "huge"
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", checkpoint, "--data", data, "--output", str(tmp_path / "f.csv")])
    assert exit_.value.code == 2 and "too many forecasts for one file; give a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["next"]
