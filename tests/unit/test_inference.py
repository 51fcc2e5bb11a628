"""Checkpoint loading, windows at cutoffs, the plain and Ray-task forecasts, and user errors.

A tiny model (configs/tiny.yaml: 16 past -> 4 future slots) with random weights, saved the way
training saves it, and a synthetic CSV of three weeks of half-hours from Monday 2024-01-01.
"""

from __future__ import annotations

import logging
import runpy

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from lit_forecast import config as cfg
from lit_forecast import storage
from lit_forecast.data.manifest import read_manifest
from lit_forecast.data.prepare import prepare
from lit_forecast.data.windows import WindowSet, segments_from_table
from lit_forecast.errors import CheckpointError, CutoffError
from lit_forecast.inference.checkpoint import load_checkpoint
from lit_forecast.inference.cutoffs import build_windows, parse_cutoffs, read_series
from lit_forecast.inference.forecaster import forecast, model_inputs
from lit_forecast.inference.pipeline import InferenceRequest, infer
from lit_forecast.layout import best_checkpoint, latest_run
from lit_forecast.models.factory import model_from_hyperparameters, module_from_hyperparameters
from lit_forecast.spec import SeriesStats, WindowSpec, stats_to_dict

TINY = cfg.load(cfg.DEFAULT_CONFIG.parent / "tiny.yaml")
W, H = TINY.data.input_window, TINY.data.horizon
START, STEP = pd.Timestamp("2024-01-01"), pd.Timedelta("30min")
SLOTS = 3 * 336
STATS = {"0": SeriesStats(mean=1000.0, std=300.0)}  # the checkpoint's, deliberately not the data's
SPEC = WindowSpec(W, H, "30min")


def at(slot: int) -> pd.Timestamp:
    return START + slot * STEP


def taxi_like(slots: int = SLOTS, seed: int = 0) -> np.ndarray:
    t = np.arange(slots)
    # whole passengers, as in the real data: values survive the CSV round trip exactly
    return (1200 + 600 * np.sin(2 * np.pi * t / 48) + np.random.default_rng(seed).normal(0, 30, slots)).round()


def save_checkpoint(folder, horizon: int = H, with_config: bool = True) -> str:
    """A Ray-style checkpoint folder (``folder/checkpoint.ckpt``) of a random tiny model."""
    plain = cfg.to_dict(TINY)
    plain["data"].update(horizon=horizon, train_end=str(at(2 * 336)), val_end=str(at(SLOTS - 48)))
    torch.manual_seed(0)
    window = WindowSpec(W, horizon, "30min").to_dict()
    module = module_from_hyperparameters(
        {"model": plain["model"], "window": window, "train": plain["train"], "series": stats_to_dict(STATS)}
    )
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    folder.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(folder / "checkpoint.ckpt")
    if with_config:  # as training's ReportCallback.on_save_checkpoint does
        raw = torch.load(folder / "checkpoint.ckpt", weights_only=True)
        raw["lit_forecast_config"] = plain
        torch.save(raw, folder / "checkpoint.ckpt")
    return str(folder)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    return save_checkpoint(tmp_path_factory.mktemp("run") / "checkpoint_000000")


@pytest.fixture
def csv(synthetic_csv):
    """Write values (default taxi_like()) from START as a CSV; NaN slots become missing rows (gaps)."""

    def make(values=None, name: str = "series.csv") -> str:
        values = taxi_like() if values is None else values
        rows = [(f"{at(i):%Y-%m-%d %H:%M:%S}", repr(float(v))) for i, v in enumerate(values) if not np.isnan(v)]
        return str(synthetic_csv(rows=rows, name=name))

    return make


def windows_for(path: str, cutoffs, history: int | None = None, max_gap: str = "2h", stats=STATS) -> WindowSet:
    data = cfg.DataConfig(source=path, sha256=None, input_window=W, horizon=H)
    windows, _ = build_windows(read_series(data), stats, SPEC, cutoffs, max_gap, history)
    return windows


def plain_forecast(checkpoint: str, windows) -> np.ndarray:
    return forecast(load_checkpoint(checkpoint).model, model_inputs(windows))


# -- windows -----------------------------------------------------------------------------------------


def test_a_forecast_at_a_cutoff_sees_the_training_window_with_that_target_start(csv, tmp_path):
    """Training windows (prepared shards) and inference windows (cutoffs) come from one cutter."""
    values = taxi_like()
    values[300:302] = np.nan  # a short gap, filled the same way on both paths
    path = csv(values)
    config = cfg.from_dict(
        {
            **cfg.to_dict(TINY),
            "data": {
                **cfg.to_dict(TINY)["data"],
                "source": path,
                "sha256": None,
                "train_end": str(at(2 * 336)),
                "val_end": str(at(SLOTS - 48)),
            },
        }
    )
    manifest = prepare(config, str(tmp_path / "data"), num_shards=1)
    assert read_manifest(str(tmp_path / "data")) == manifest
    table = storage.read_parquet(str(tmp_path / "data" / manifest.train_files[0]))
    training = WindowSet(segments_from_table(table), manifest.series_stats(), manifest.window)
    picked = np.array([0, 290 - W, 303 - W, len(training) - 1])  # incl. a window over the filled gap
    cutoffs = list(training.cutoffs[picked])
    inference = windows_for(path, cutoffs, stats=manifest.series_stats())
    trained, served = training.batch(picked), inference.batch(slice(None))
    for name in ("past_target", "future_target", "past_time", "future_time", "loc", "scale"):
        torch.testing.assert_close(served[name], trained[name], rtol=0, atol=0, msg=name)
    filled = values.copy()
    filled[300:302] = np.interp([300, 301], [299, 302], values[[299, 302]])
    np.testing.assert_array_equal(inference.actual()[1], filled[290 : 290 + H])
    stats = manifest.series_stats()["0"]
    np.testing.assert_allclose(
        model_inputs(inference)["past_target"][1], (filled[290 - W : 290] - stats.mean) / stats.std, rtol=1e-6
    )


def test_default_cutoff_forecasts_the_slots_after_the_end_of_the_data(csv):
    windows = windows_for(csv(), None)
    assert list(windows.cutoffs) == [at(SLOTS)]
    assert np.isnan(windows.actual()).all()
    future_time = windows.batch(slice(None))["future_time"]
    assert future_time[0, 0].tolist() == [0, 0, 0]  # 00:00 (slot 0) on Monday 2024-01-22 (day 0), no holiday


def test_no_look_ahead_data_after_the_cutoff_changes_nothing(csv, checkpoint):
    values = taxi_like()
    values[496:498] = np.nan  # a short gap before the cutoff, filled from earlier slots only
    cutoff = 500
    original = csv(values, name="original.csv")
    altered_values = values.copy()
    altered_values[cutoff:] = altered_values[cutoff:] * 3 + 777
    altered_values[cutoff + 1 : cutoff + 4] = np.nan  # and a gap right after the cutoff
    altered = csv(altered_values, name="altered.csv")
    truncated = csv(values[:cutoff], name="truncated.csv")  # the data ends just before the cutoff
    results = [plain_forecast(checkpoint, windows_for(path, [at(cutoff)])) for path in (original, altered, truncated)]
    np.testing.assert_array_equal(results[0], results[1])
    np.testing.assert_array_equal(results[0], results[2])
    inputs = [model_inputs(windows_for(path, [at(cutoff)]))["past_target"] for path in (original, altered)]
    np.testing.assert_array_equal(*inputs)


def test_a_gap_reaching_the_cutoff_is_refused(csv):
    values = taxi_like()
    values[498:500] = np.nan  # filling these would need the value at slot 500, the cutoff
    with pytest.raises(CutoffError, match=f"cutoff {at(500)}: slot {at(499)} just before it is missing"):
        windows_for(csv(values), [at(500)])


def test_too_little_history_before_a_cutoff(csv):
    with pytest.raises(CutoffError, match=rf"too little history before cutoff {at(W - 1)}: {W - 1} slots .* needs {W}"):
        windows_for(csv(), [at(W - 1)])
    with pytest.raises(CutoffError, match="seasonal-naive baselines 336"):
        windows_for(csv(), [at(300)], history=336)


def test_cutoffs_outside_the_data_or_off_the_grid(csv):
    path = csv()
    with pytest.raises(CutoffError, match=f"cutoff {at(SLOTS + 1)} is outside the data.*{at(SLOTS - 1)}"):
        windows_for(path, [at(SLOTS + 1)])
    with pytest.raises(CutoffError, match=f"cutoff {at(-2)} is outside the data"):
        windows_for(path, [at(-2)])
    with pytest.raises(CutoffError, match="not on the 0 days 00:30:00 grid"):
        windows_for(path, [at(100) + pd.Timedelta("10min")])


def test_cutoff_syntax():
    midnights = parse_cutoffs(["2015-01-01..2015-01-31/1D"])
    assert (
        len(midnights) == 31
        and midnights[0] == pd.Timestamp("2015-01-01")
        and midnights[-1] == pd.Timestamp("2015-01-31")
    )
    assert parse_cutoffs(["2015-01-02T12:00,2015-01-01", "2015-01-01"]) == [
        pd.Timestamp("2015-01-01"),
        pd.Timestamp("2015-01-02 12:00"),
    ]
    assert len(parse_cutoffs(["2015-01-01..2015-01-01T03:00/30min"])) == 7
    with pytest.raises(CutoffError, match="cannot read 'yesterday'"):
        parse_cutoffs(["yesterday"])


# -- checkpoints ---------------------------------------------------------------------------------------


def test_unknown_checkpoint_path_is_named(tmp_path):
    missing = tmp_path / "nowhere" / "checkpoint.ckpt"
    with pytest.raises(CheckpointError, match=f"checkpoint not found: {missing}"):
        load_checkpoint(str(missing))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="folder without checkpoint.ckpt"):
        load_checkpoint(str(tmp_path / "empty"))
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"{tmp_path / 'junk.ckpt'} is not a readable PyTorch checkpoint"):
        load_checkpoint(str(tmp_path / "junk.ckpt"))


def test_a_checkpoint_for_another_horizon_is_refused(checkpoint, csv):
    with pytest.raises(CheckpointError, match=rf"{checkpoint}/checkpoint.ckpt forecasts {H} steps, but 8 were asked"):
        load_checkpoint(checkpoint, horizon=8)
    with pytest.raises(CheckpointError, match=f"forecasts {H} steps, but 8 were asked"):
        infer(InferenceRequest(checkpoint=checkpoint, data=csv(), horizon=8, use_ray=False))


def test_a_checkpoint_without_stored_config_falls_back_to_its_window(tmp_path):
    loaded = load_checkpoint(save_checkpoint(tmp_path / "ck", with_config=False))
    assert (loaded.config.data.input_window, loaded.config.data.horizon) == (W, H)
    assert loaded.series_stats == STATS


def old_layout(raw: dict, calibration: bool = True) -> dict:
    """``raw`` as training wrote checkpoints before the model was split from its LightningModule.

    The module then held the members as ``nets`` and the factors as ``calibration`` at its top
    (keys ``nets.0.patch_embed.weight``, ..., ``calibration``) under the same hyperparameters.
    ``calibration`` False: from before calibration existed (no factors).
    """
    state = {k.removeprefix("model."): v for k, v in raw["state_dict"].items()}
    assert {k.split(".")[0] for k in state} == {"nets", "calibration"}
    if not calibration:
        del state["calibration"]
    return {**raw, "state_dict": state}


def test_checkpoints_in_the_layout_before_the_plain_model_forecast_the_same_numbers(tmp_path, csv):
    folder = tmp_path / "checkpoint_000000"
    save_checkpoint(folder)
    path = folder / "checkpoint.ckpt"
    raw = torch.load(path, weights_only=True)
    factors = torch.tensor([[0.5, 1.0, 2.0], [0.8, 1.0, 1.2], [1.5, 1.0, 0.9], [1.1, 1.0, 3.0]])
    raw["state_dict"]["model.calibration"] = factors  # not ones: a lost factor would show
    torch.save(raw, path)
    windows = windows_for(csv(), [at(400), at(500), at(600)])
    current = plain_forecast(str(folder), windows)

    torch.save(old_layout(raw), tmp_path / "old.ckpt")
    np.testing.assert_array_equal(plain_forecast(str(tmp_path / "old.ckpt"), windows), current)

    # Before calibration: factors of one, i.e. the members' mean as the head gives it.
    torch.save(old_layout(raw, calibration=False), tmp_path / "uncalibrated.ckpt")
    loaded = load_checkpoint(str(tmp_path / "uncalibrated.ckpt"))
    assert torch.equal(loaded.model.calibration, torch.ones(H, 3))
    raw["state_dict"]["model.calibration"] = torch.ones(H, 3)
    torch.save(raw, path)
    uncalibrated = forecast(loaded.model, model_inputs(windows))
    np.testing.assert_array_equal(uncalibrated, plain_forecast(str(folder), windows))
    assert not np.array_equal(uncalibrated, current)

    # Before quantiles: the network had no daily lag and one output, so such a checkpoint's weights
    # do not fit a shape read with today's config defaults; they load as the point model they are.
    point = {
        k: v for k, v in raw["hyper_parameters"]["model"].items() if k not in ("quantiles", "daily_lag", "residual")
    }
    torch.manual_seed(0)
    old_model = model_from_hyperparameters(
        {**raw["hyper_parameters"], "model": {**point, "quantiles": [], "daily_lag": 0}}
    )
    old = {**raw, "hyper_parameters": {**raw["hyper_parameters"], "model": point}, "state_dict": old_model.state_dict()}
    torch.save(old, tmp_path / "point.ckpt")
    loaded = load_checkpoint(str(tmp_path / "point.ckpt"))
    assert loaded.model.levels == [] and (loaded.model.shape.daily_lag, loaded.model.shape.residual) == (0, False)
    np.testing.assert_array_equal(
        forecast(loaded.model, model_inputs(windows)), forecast(old_model.eval(), model_inputs(windows))
    )


def test_latest_finished_run_and_its_best_checkpoint(tmp_path):
    runs = tmp_path / "runs"
    for name in ("old", "unfinished", "new"):
        save_checkpoint(runs / name / "checkpoint_000001")
    storage.write_json(
        str(runs / "old" / "summary.json"), {"best_checkpoint": "/gone/old/checkpoint_000001/checkpoint.ckpt"}
    )
    storage.write_json(
        str(runs / "new" / "summary.json"),
        {"best_checkpoint": str(runs / "new" / "checkpoint_000001" / "checkpoint.ckpt")},
    )
    assert latest_run(str(runs)) == str(runs / "new")
    assert best_checkpoint(str(runs / "new")) == str(runs / "new" / "checkpoint_000001" / "checkpoint.ckpt")
    # a moved run: the summary's absolute path is stale, the same checkpoint is found inside
    assert best_checkpoint(str(runs / "old")) == str(runs / "old" / "checkpoint_000001" / "checkpoint.ckpt")
    (runs / "unfinished" / "checkpoint_manager_snapshot.json").write_text("{}")  # Ray's file, sorted after the folders
    assert best_checkpoint(str(runs / "unfinished")).endswith("unfinished/checkpoint_000001/checkpoint.ckpt")
    with pytest.raises(CheckpointError, match=f"no finished run in {tmp_path / 'elsewhere'}"):
        latest_run(str(tmp_path / "elsewhere"))


# -- end to end --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_backtest_writes_forecasts_table_and_plot(checkpoint, csv, tmp_path, suffix):
    output = str(tmp_path / f"out{suffix}")
    cutoffs = parse_cutoffs([f"{at(2 * 336)}..{at(SLOTS - H)}/12h"])
    result = infer(InferenceRequest(checkpoint=checkpoint, data=csv(), cutoffs=cutoffs, output=output, use_ray=False))
    frame = pd.read_csv(output, parse_dates=["cutoff", "timestamp"]) if suffix == ".csv" else pd.read_parquet(output)
    assert list(frame.columns) == ["cutoff", "timestamp", "forecast", "q0.1", "q0.9", "actual"]
    assert len(frame) == len(cutoffs) * H and frame["actual"].notna().all()
    assert (frame["q0.1"] <= frame["forecast"]).all() and (frame["forecast"] <= frame["q0.9"]).all()
    assert set(result.table["methods"]) == {"model", "naive_daily", "naive_weekly"}
    for scores in result.table["methods"].values():
        assert 0 <= scores["overall"]["coverage_80"] <= 1 and scores["overall"]["wql"] > 0
    assert result.table_path == str(tmp_path / "out.backtest.json") and storage.exists(result.table_path)
    assert (tmp_path / "out.png").read_bytes()[:4] == b"\x89PNG"


# -- Ray ---------------------------------------------------------------------------------------------


@pytest.fixture
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_ray_tasks_forecast_exactly_what_the_plain_call_does(local_ray, checkpoint, csv, tmp_path, caplog):
    from lit_forecast.inference.remote import forecast_remote

    windows = windows_for(csv(), [at(s) for s in range(400, 400 + 11 * 37, 37)])  # 11 windows
    plain = forecast(load_checkpoint(checkpoint).model, model_inputs(windows), batch_size=2)
    # 4 windows per task: 3 tasks, the last one short, batched as the plain call batches them;
    # results must come back in window order, bit for bit.
    with caplog.at_level(logging.INFO, logger="lit_forecast"):
        remote = forecast_remote(checkpoint, windows, windows_per_task=4, num_cpus=1, batch_size=2)
        forecast_remote(checkpoint, windows_for(csv(), [at(400)]), windows_per_task=4, num_cpus=1, batch_size=2)
    np.testing.assert_array_equal(remote, plain)
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("forecasting ")]
    assert said == [
        "forecasting 11 windows in 3 Ray tasks (1 CPU each)",
        "forecasting 1 window in 1 Ray task (1 CPU each)",
    ]
    # Other batch boundaries change only float32 rounding (matrix kernels depend on the batch size).
    regrouped = forecast_remote(checkpoint, windows, windows_per_task=3, num_cpus=1, batch_size=3)
    np.testing.assert_allclose(regrouped, plain, rtol=1e-6)

    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=f"{junk} is not a readable PyTorch checkpoint"):
        forecast_remote(str(junk), windows, windows_per_task=6)


def test_infer_command_line(checkpoint, csv, tmp_path, capsys, package_logger):
    main = runpy.run_path(str(cfg.DEFAULT_CONFIG.parent.parent / "infer.py"))["main"]
    main(["--checkpoint", checkpoint, "--data", csv(), "--no-ray", "--output", str(tmp_path / "f.csv")])
    out = capsys.readouterr().out
    assert f"forecast from cutoff Mon {at(SLOTS):%Y-%m-%d %H:%M}" in out and f"forecasts   {tmp_path / 'f.csv'}" in out
    assert pd.read_csv(tmp_path / "f.csv").columns.tolist() == ["cutoff", "timestamp", "forecast", "q0.1", "q0.9"]
    assert (tmp_path / "f.png").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["--checkpoint", str(tmp_path / "nope"), "--no-ray"])
    assert exit_.value.code == 2 and f"checkpoint not found: {tmp_path / 'nope'}" in capsys.readouterr().err


def test_infer_command_line_backtest_prints_its_scores_not_the_forecast_rows(
    checkpoint, csv, tmp_path, capsys, package_logger
):
    main = runpy.run_path(str(cfg.DEFAULT_CONFIG.parent.parent / "infer.py"))["main"]
    main(
        [
            "--checkpoint",
            checkpoint,
            "--data",
            csv(),
            "--no-ray",
            "--output",
            str(tmp_path / "b.csv"),
            "--cutoffs",
            f"{at(2 * 336)}..{at(SLOTS - H)}/12h",
        ]
    )
    out = capsys.readouterr().out
    assert out.startswith("backtest: ") and "model MAE / weekly-naive MAE = " in out
    assert "more rows" not in out and "forecast from cutoff" not in out
    assert f"forecasts   {tmp_path / 'b.csv'}" in out and len(pd.read_csv(tmp_path / "b.csv")) > 48


def test_infer_command_line_defaults_are_the_requests(monkeypatch, package_logger):
    """infer.py's flags default to the values of lit_forecast.inference.defaults, as InferenceRequest does."""
    script = runpy.run_path(str(cfg.DEFAULT_CONFIG.parent.parent / "infer.py"))
    asked = []

    def record(request):
        asked.append(request)
        raise CheckpointError("stop here")

    monkeypatch.setitem(script["main"].__globals__, "infer", record)
    monkeypatch.setitem(script["main"].__globals__, "_engine", lambda args, request: "plain")
    with pytest.raises(SystemExit):
        script["main"]([])
    assert asked == [InferenceRequest()]
    assert (asked[0].storage, asked[0].batch_size, asked[0].windows_per_task) == ("runs", 256, 256)


def test_every_output_path_is_named_before_anything_is_written(csv, tmp_path, monkeypatch):
    from lit_forecast.inference.outputs import OutputPaths, plan_outputs

    one = windows_for(csv(), [at(500), at(600)])
    paths = plan_outputs(str(tmp_path / "f.parquet"), None, str(tmp_path / "x.ckpt"), one, evaluating=True)
    assert paths == OutputPaths(str(tmp_path / "f.parquet"), str(tmp_path / "f.png"), str(tmp_path / "f.backtest.json"))
    assert paths.all() == [str(tmp_path / "f.parquet"), str(tmp_path / "f.backtest.json"), str(tmp_path / "f.png")]
    monkeypatch.chdir(tmp_path)  # a checkpoint outside a run folder: forecasts/ here
    future = plan_outputs(None, str(tmp_path / "p.png"), str(tmp_path / "x.ckpt"), one, evaluating=False)
    assert future.all() == [
        str(tmp_path / "forecasts" / "forecast_20240111T1000-20240113T1200.csv"),
        str(tmp_path / "p.png"),
    ]
