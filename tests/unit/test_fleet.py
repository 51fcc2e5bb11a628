"""Fleet scale: skipped windows, series the checkpoint never saw, per-series scores, bounded validation.

A tiny model (configs/tiny.yaml: 16 past -> 4 future slots) with random weights, trained on
zones 'a', 'b' and 'c' as far as the checkpoint knows, and synthetic long-format CSVs of three
weeks of half-hours from Monday 2024-01-01.
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
from lit_forecast.data import prepare as prep
from lit_forecast.data.fetch import fetch
from lit_forecast.data.source import load_series
from lit_forecast.data.splits import thin_evenly, window_starts
from lit_forecast.errors import CutoffError
from lit_forecast.evaluation.backtest import fleet_summary, per_series
from lit_forecast.inference.cutoffs import cut_windows, parse_cutoffs, read_series
from lit_forecast.inference.forecaster import model_inputs
from lit_forecast.inference.pipeline import InferenceRequest, infer
from lit_forecast.models.factory import module_from_hyperparameters
from lit_forecast.spec import SeriesStats, WindowSpec, stats_to_dict

TINY = cfg.load(cfg.DEFAULT_CONFIG.parent / "tiny.yaml")
W, H = TINY.data.input_window, TINY.data.horizon
START, STEP = pd.Timestamp("2024-01-01"), pd.Timedelta("30min")
SLOTS = 3 * 336
STATS = {zone: SeriesStats(mean=1000.0, std=300.0) for zone in "abc"}
SPEC = WindowSpec(W, H, "30min")
BACKTEST = f"{START + 2 * 336 * STEP}..{START + (SLOTS - H) * STEP}/12h"  # 14 cutoffs, each with a week of history


def at(slot: int) -> pd.Timestamp:
    return START + slot * STEP


def taxi_like(slots: int = SLOTS, seed: int = 0, level: float = 1200) -> np.ndarray:
    t = np.arange(slots)
    return (level + level / 2 * np.sin(2 * np.pi * t / 48) + np.random.default_rng(seed).normal(0, 30, slots)).round()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A Ray-style checkpoint folder of a random tiny model that knows zones a, b and c."""
    folder = tmp_path_factory.mktemp("run") / "checkpoint_000000"
    plain = cfg.to_dict(TINY)
    plain["data"].update(series_column="zone", train_end=str(at(2 * 336)), val_end=str(at(SLOTS - 48)))
    torch.manual_seed(0)
    module = module_from_hyperparameters(
        {"model": plain["model"], "window": SPEC.to_dict(), "train": plain["train"], "series": stats_to_dict(STATS)}
    )
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    folder.mkdir(parents=True)
    trainer.save_checkpoint(folder / "checkpoint.ckpt")
    raw = torch.load(folder / "checkpoint.ckpt", weights_only=True)
    raw["lit_forecast_config"] = plain
    torch.save(raw, folder / "checkpoint.ckpt")
    return str(folder)


@pytest.fixture
def zones_csv(tmp_path):
    """Write {zone: values from START} as one long CSV (timestamp,zone,value); NaN slots are missing rows."""

    def make(zones: dict[str, np.ndarray], name: str = "zones.csv") -> str:
        lines = ["timestamp,zone,value"]
        for zone, values in zones.items():
            lines += [f"{at(i):%Y-%m-%d %H:%M:%S},{zone},{float(v)!r}" for i, v in enumerate(values) if not np.isnan(v)]
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n")
        return str(path)

    return make


def fleet_with_holes() -> dict[str, np.ndarray]:
    """a: complete; b: the slot before the 2024-01-16 00:00 cutoff missing; c: from slot 400 (late for 3 cutoffs)."""
    b = taxi_like(seed=1, level=300)
    b[719] = np.nan  # slot 720 is 2024-01-16 00:00, one of the backtest's cutoffs
    c = taxi_like(seed=2, level=200)
    c[:400] = np.nan
    return {"a": taxi_like(seed=0), "b": b, "c": c}


def request(checkpoint: str, data: str, tmp_path, **kwargs) -> InferenceRequest:
    return InferenceRequest(
        checkpoint=checkpoint,
        data=data,
        cutoffs=parse_cutoffs([BACKTEST]),
        output=str(tmp_path / "out.csv"),
        use_ray=False,
        **kwargs,
    )


# -- skipped windows ---------------------------------------------------------------------------------


def test_a_fleet_backtest_skips_windows_with_holes_and_forecasts_every_other_one(checkpoint, zones_csv, tmp_path):
    zones = fleet_with_holes()
    result = infer(request(checkpoint, zones_csv(zones), tmp_path))
    cutoffs = parse_cutoffs([BACKTEST])
    assert len(cutoffs) == 14
    assert result.skipped == (
        "skipped 4 of 42 windows: 1 gap before cutoff (e.g. 'b' at 2024-01-16 00:00:00), "
        "3 too little history (e.g. 'c' at 2024-01-15 00:00:00)"
    )
    forecast = set(zip(result.windows.series_ids, result.windows.cutoffs))
    skipped = {("b", at(720)), ("c", at(672)), ("c", at(696)), ("c", at(720))}  # c has 336 slots of history from 736 on
    assert forecast == {(z, c) for z in "abc" for c in cutoffs} - skipped
    assert result.table["windows"] == 38 and result.table["skipped"]["windows"] == 4
    # The other zones go on untouched: zone a forecasts exactly what it forecasts alone.
    alone = infer(request(checkpoint, zones_csv({"a": zones["a"]}, name="a.csv"), tmp_path / "alone", strict=True))
    a = result.frame[result.frame["series_id"] == "a"].reset_index(drop=True)
    # (to float32 rounding: matrix kernels depend on the batch a window lands in)
    np.testing.assert_allclose(a["forecast"].to_numpy(), alone.frame["forecast"].to_numpy(), rtol=1e-6)
    # Fleet outputs: per-series table, its summary and the scatter.
    per_zone = pd.read_csv(result.zones_path)
    assert per_zone["series_id"].tolist() == ["a", "b", "c"] and per_zone["windows"].tolist() == [14, 13, 11]
    assert result.table["fleet"]["series"] == 3 and len(result.table["fleet"]["worst"]) == 3
    assert storage.read_bytes(result.fleet_plot)[:4] == b"\x89PNG"


def test_strict_turns_a_skipped_window_into_an_error(checkpoint, zones_csv, tmp_path, capsys, package_logger):
    data = zones_csv(fleet_with_holes())
    with pytest.raises(
        CutoffError, match=rf"cutoff {at(720)} \(series 'b'\): slot {at(719)} just before it is missing"
    ):
        infer(request(checkpoint, data, tmp_path, strict=True))
    main = runpy.run_path(str(cfg.DEFAULT_CONFIG.parent.parent / "infer.py"))["main"]
    args = [
        "--checkpoint",
        checkpoint,
        "--data",
        data,
        "--no-ray",
        "--cutoffs",
        BACKTEST,
        "--output",
        str(tmp_path / "f.csv"),
    ]
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--strict"])
    assert exit_.value.code == 2 and "just before it is missing" in capsys.readouterr().err
    main(args)
    out = capsys.readouterr().out
    assert "skipped 4 of 42 windows: 1 gap before cutoff" in out
    assert "fleet: 3 series" in out and "3 worst series by model MASE" in out


def test_skip_messages_are_counted_not_listed(checkpoint, zones_csv, caplog):
    """A hundred skipped windows make one warning line, not a hundred."""
    zones = {f"z{i:02d}": taxi_like(seed=i) for i in range(10)}
    for values in zones.values():
        values[:500] = np.nan  # every zone starts late: cutoffs before slot 500 + 336 lack history
    data = cfg.DataConfig(source=zones_csv(zones), sha256=None, series_column="zone", input_window=W, horizon=H)
    stats = {z: STATS["a"] for z in zones}
    with caplog.at_level(logging.INFO, logger="lit_forecast"):
        cut = cut_windows(read_series(data), stats, SPEC, parse_cutoffs([BACKTEST]), history=336)
    assert (
        len(cut.windows) == 10 * 7 and len(cut.skipped) == 10 * 7
    )  # cutoffs 840 .. 984 (7 of 14) have a week of history
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"skipped 70 of 140 windows: 70 too little history (e.g. 'z00' at {at(672)})"]


def test_per_series_scores_pool_each_series_points():
    """Two series, two windows each, errors known by construction."""
    actual = np.array([[10.0, 10.0], [10.0, np.nan], [100.0, 100.0], [100.0, 100.0]])
    forecast = actual + np.array([[1.0, 3.0], [2.0, 0.0], [-10.0, 10.0], [0.0, 0.0]])
    history = np.full((4, 4), 10.0)  # weekly (lag 4) naive forecasts 10 everywhere
    forecast[1, 1] = 5.0  # its actual is unknown: left out
    zones = per_series(forecast, history, actual, ["x", "x", "y", "y"], {"x": 2.0, "y": 40.0}, {"naive_weekly": 4})
    assert zones["series_id"].tolist() == ["x", "y"] and zones["windows"].tolist() == [2, 2]
    np.testing.assert_allclose(zones["mae_model"], [2.0, 5.0])  # x: (1 + 3 + 2) / 3, y: (10 + 10 + 0 + 0) / 4
    np.testing.assert_allclose(zones["mase_model"], [1.0, 0.125])
    np.testing.assert_allclose(zones["mae_naive_weekly"], [0.0, 90.0])
    np.testing.assert_allclose(zones["mase_naive_weekly"], [0.0, 2.25])
    summary = fleet_summary(zones)
    assert summary["share_model_beats_naive_weekly"] == 0.5  # y only
    assert summary["mase_median"]["model"] == pytest.approx(0.5625) and [w["series_id"] for w in summary["worst"]] == [
        "x",
        "y",
    ]


# -- series the checkpoint never saw --------------------------------------------------------------------


def test_an_unseen_series_is_scaled_on_its_own_history_before_each_cutoff(zones_csv):
    values = taxi_like(seed=5, level=3000)
    values[100:103] = np.nan  # a short gap, filled from its neighbours
    data = cfg.DataConfig(
        source=zones_csv({"new": values}), sha256=None, series_column="zone", input_window=W, horizon=H
    )
    cutoffs = [at(200), at(700), at(W - 1)]  # the last has too little history: skipped, with the reason
    cut = cut_windows(read_series(data), STATS, SPEC, cutoffs)
    assert cut.unseen == ["new"] and list(cut.windows.cutoffs) == cutoffs[:2]
    assert [(k.series_id, k.cutoff, k.reason) for k in cut.skipped] == [("new", at(W - 1), "too_little_history")]
    filled = values.copy()
    filled[100:103] = np.interp([100, 101, 102], [99, 103], values[[99, 103]])
    inputs = model_inputs(cut.windows)
    for i, c in enumerate((200, 700)):
        mean, std = filled[:c].mean(), filled[:c].std()  # strictly before the cutoff
        assert inputs["loc"][i] == pytest.approx(mean, rel=1e-6) and inputs["scale"][i] == pytest.approx(std, rel=1e-6)
        np.testing.assert_allclose(inputs["past_target"][i], (filled[c - W : c] - mean) / std, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(cut.windows.actual([i])[0], filled[c : c + H])


def test_a_known_series_unlike_its_training_statistics_is_flagged(zones_csv, caplog):
    """The same zone name for other data (another fleet, a renumbering) would be scaled wrongly: say so."""
    data = cfg.DataConfig(
        source=zones_csv({"a": taxi_like(seed=0), "b": taxi_like(seed=1, level=20000)}),
        sha256=None,
        series_column="zone",
        input_window=W,
        horizon=H,
    )
    with caplog.at_level(logging.WARNING, logger="lit_forecast"):
        cut_windows(read_series(data), STATS, SPEC, [at(700)])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith(
        "1 series ('b') have a mean before their first cutoff more than 3 training"
    )


def test_an_unseen_series_forecast_does_not_look_ahead(checkpoint, zones_csv, tmp_path):
    """Data after the cutoff (other values, a gap, or none at all) changes neither the scaling nor the forecast."""
    values = taxi_like(seed=6, level=800)
    cutoff = 700
    altered = values.copy()
    altered[cutoff:] = altered[cutoff:] * 5 + 1234
    altered[cutoff + 1 : cutoff + 4] = np.nan
    results = []
    for name, zone in (("original", values), ("altered", altered), ("truncated", values[:cutoff])):
        data = zones_csv({"a": taxi_like(seed=0), "new": zone}, name=f"{name}.csv")
        result = infer(
            InferenceRequest(
                checkpoint=checkpoint,
                data=data,
                cutoffs=[at(cutoff)],
                output=str(tmp_path / f"{name}.csv"),
                use_ray=False,
            )
        )
        results.append(result.frame[result.frame["series_id"] == "new"])
        assert result.unseen == ["new"]
    assert results[0]["in_checkpoint"].eq(False).all()
    for other in results[1:]:
        np.testing.assert_array_equal(other["forecast"].to_numpy(), results[0]["forecast"].to_numpy())


def test_recalibrated_bands_do_not_look_ahead(checkpoint, zones_csv, tmp_path):
    """Refitted on the days before the cutoff only (on by default): data after it changes none of the quantiles."""
    values, cutoff = taxi_like(seed=7), 700
    altered = values.copy()
    altered[cutoff:] = altered[cutoff:] * 3 + 500
    frames = []
    for name, zone in (("original", values), ("altered", altered)):
        data = zones_csv({"a": zone}, name=f"{name}.csv")
        result = infer(
            InferenceRequest(
                checkpoint=checkpoint,
                data=data,
                cutoffs=[at(cutoff)],
                output=str(tmp_path / f"{name}.csv"),
                use_ray=False,
            )
        )
        frames.append(result.frame)
    plain = infer(
        InferenceRequest(
            checkpoint=checkpoint,
            data=zones_csv({"a": values}),
            cutoffs=[at(cutoff)],
            output=str(tmp_path / "plain.csv"),
            use_ray=False,
            recalibrate_days=0,
        )
    ).frame
    for column in ("forecast", "q0.1", "q0.9"):
        np.testing.assert_array_equal(frames[1][column].to_numpy(), frames[0][column].to_numpy())
    np.testing.assert_array_equal(
        frames[0]["forecast"].to_numpy(), plain["forecast"].to_numpy()
    )  # the median never moves
    assert not np.array_equal(frames[0]["q0.9"].to_numpy(), plain["q0.9"].to_numpy())  # the bands were refitted


def test_a_series_with_too_little_known_past_keeps_the_checkpoints_bands_with_one_line(
    checkpoint, zones_csv, tmp_path, caplog
):
    """The next day after each series' end: 'a' has 7 earlier days at that time of day, 'b' only 5."""
    data = zones_csv({"a": taxi_like(slots=W + 7 * 48, seed=1), "b": taxi_like(slots=W + 5 * 48 + 12, seed=2)})
    frames = {}
    for days in (14, 0):
        with caplog.at_level(logging.INFO, logger="lit_forecast"):
            frames[days] = infer(
                InferenceRequest(
                    checkpoint=checkpoint,
                    data=data,
                    output=str(tmp_path / f"next{days}.csv"),
                    use_ray=False,
                    recalibrate_days=days,
                )
            ).frame.set_index(["series_id", "timestamp"])
    lines = [r.getMessage() for r in caplog.records if "bands refitted" in r.getMessage()]
    assert lines == [
        "bands refitted at 1 windows on their series' forecasts of the 14 days before; 1 kept the checkpoint's "
        "bands (fewer than 7 earlier windows at the cutoff's time of day with known actuals: too little known "
        "past before the cutoff)"
    ]
    refit, static = frames[14], frames[0]
    np.testing.assert_array_equal(refit.loc["b", "q0.9"], static.loc["b", "q0.9"])
    assert not np.array_equal(refit.loc["a", "q0.9"], static.loc["a", "q0.9"])
    np.testing.assert_array_equal(refit["forecast"], static["forecast"])


# -- validation windows: bounded and deterministic -------------------------------------------------------


def test_thin_evenly_keeps_at_most_n_evenly_spaced_windows_deterministically():
    starts = np.arange(5000, 5000 + 1441)
    assert thin_evenly(starts, None, "0") is starts and thin_evenly(starts[:3], 5, "z1").tolist() == [5000, 5001, 5002]
    picks = {sid: thin_evenly(starts, 4, sid) for sid in ("z0001", "z0002", "z0003")}
    for sid, kept in picks.items():
        assert len(kept) == 4 and np.all(np.diff(kept) > 0) and set(kept) <= set(starts)
        assert np.all(np.abs(np.diff(kept) - 1441 / 4) <= 1)  # evenly spaced
        np.testing.assert_array_equal(kept, thin_evenly(starts.copy(), 4, sid))  # the same every time
    assert len({tuple(k) for k in picks.values()}) == 3  # series are validated at different slots


def test_prepare_keeps_at_most_n_validation_windows_per_series(tmp_path, make_config, zones_csv):
    zones = {f"z{i}": taxi_like(slots=240, seed=i) for i in range(3)}
    path = zones_csv(zones)
    split = {"train_end": str(at(160)), "val_end": str(at(200)), "series_column": "zone"}
    full = prep.prepare(make_config(path, **split), str(tmp_path / "all"))
    thinned_config = make_config(path, **split, val_windows_per_series=5)
    thinned = prep.prepare(thinned_config, str(tmp_path / "five"))
    data = thinned_config.data
    series, _ = load_series(fetch(data), data)
    per_series_all = {s.series_id: window_starts(s, "val", data) for s in series}
    assert full.splits["val"].windows == sum(len(w) for w in per_series_all.values()) == 3 * 37  # the default keeps all
    assert thinned.splits["val"].windows == 15 and thinned.splits["train"] == full.splits["train"]
    assert thinned.fingerprint != full.fingerprint
    table = storage.read_parquet(str(tmp_path / "five" / prep.VAL_FILE)).to_pydict()
    for sid, start, kept in zip(table["series_id"], table["start"], table["window_starts"]):
        offset = int((pd.Timestamp(start) - START) / STEP)
        np.testing.assert_array_equal(np.asarray(kept) + offset, thin_evenly(per_series_all[sid], 5, sid))
    again = prep.prepare(thinned_config, str(tmp_path / "again"))
    assert storage.read_bytes(str(tmp_path / "again" / prep.VAL_FILE)) == storage.read_bytes(
        str(tmp_path / "five" / prep.VAL_FILE)
    )
    assert again.fingerprint == thinned.fingerprint


# -- fleet configs ----------------------------------------------------------------------------------------


def test_fleet_configs_are_valid_and_sample_validation():
    from lit_forecast.training import ray_train  # the Ray Train arguments build without a cluster or GPUs

    local = cfg.load(cfg.DEFAULT_CONFIG.parent / "fleet-local.yaml")
    assert local.data.series_column == "zone" and local.data.val_windows_per_series is not None
    assert isinstance(local.train.limit_train_batches, int)  # a bounded number of steps, whatever the fleet
    scaling = ray_train.scaling_config(local)
    assert not scaling.use_gpu and scaling.num_workers * scaling.resources_per_worker["CPU"] <= 2
    gpu = cfg.load(cfg.DEFAULT_CONFIG.parent / "8gpu-fleet.yaml")
    assert ray_train.scaling_config(gpu).num_workers == 8 and ray_train.torch_config(gpu).backend == "nccl"
    assert gpu.data.series_column == "zone" and gpu.data.val_windows_per_series is not None
    assert ray_train.trainer_arguments(gpu)["limit_train_batches"] == gpu.train.limit_train_batches


def test_the_plot_shows_the_busiest_series_or_the_one_asked_for(checkpoint, zones_csv, tmp_path, monkeypatch):
    from lit_forecast.inference import outputs

    data = zones_csv({"a": taxi_like(seed=0, level=300), "b": taxi_like(seed=1, level=2000)})
    headings = []  # the plot's heading names its series
    monkeypatch.setattr(
        outputs,
        "plot_backtest_window",
        lambda location, history, forecast, actual, table, heading, freq, bands=None: headings.append(heading),
    )
    for plot_series in (None, "a"):
        infer(
            InferenceRequest(
                checkpoint=checkpoint,
                data=data,
                cutoffs=[at(2 * 336)],
                output=str(tmp_path / "f.csv"),
                use_ray=False,
                plot_series=plot_series,
            )
        )
    assert headings == ["series b: ", "series a: "]  # b is the busier
    with pytest.raises(CutoffError, match="--plot-series 'zz' has no forecast window"):
        infer(
            InferenceRequest(checkpoint=checkpoint, data=data, cutoffs=[at(2 * 336)], use_ray=False, plot_series="zz")
        )
