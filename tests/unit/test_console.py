"""What a newcomer reads: the forecast table's legend, the closing words of a run, and the plots."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.collections import PolyCollection

from lit_forecast.console import format_forecasts, format_run, interpreter_bin
from lit_forecast.evaluation.plots import forecast_figure, interval_bands


def forecast_frame(quantiles: bool = True) -> pd.DataFrame:
    timestamps = pd.date_range("2015-01-01", periods=4, freq="30min")
    frame = pd.DataFrame({"cutoff": timestamps[0], "timestamp": timestamps, "forecast": [100.0, 200.4, 300.6, 1234.0]})
    if quantiles:
        frame["q0.1"], frame["q0.9"] = frame["forecast"] - 50, frame["forecast"] + 50
    return frame


def test_forecast_table_names_its_unit_and_the_interval_its_quantiles_bound():
    lines = format_forecasts(forecast_frame()).splitlines()
    assert lines[0] == "forecast from cutoff Thu 2015-01-01 00:00"
    assert lines[1] == "passengers per 30 min; forecast = the median; q0.1 .. q0.9 = the 80 % interval"
    assert lines[2].split() == ["timestamp", "forecast", "q0.1", "q0.9"]
    assert lines[-1].split() == ["2015-01-01", "01:30", "1,234", "1,184", "1,284"]
    point = format_forecasts(forecast_frame(quantiles=False)).splitlines()
    assert point[1] == "passengers per 30 min"


def test_forecast_table_names_every_central_interval_and_cuts_long_tables():
    frame = forecast_frame()
    frame["q0.05"], frame["q0.95"] = frame["forecast"] - 90, frame["forecast"] + 90
    hourly = pd.concat([frame.assign(timestamp=frame["timestamp"] + pd.Timedelta(hours=h)) for h in (0, 2)])
    text = format_forecasts(hourly, max_rows=3)
    assert "q0.05 .. q0.95 = the 90 % interval; q0.1 .. q0.9 = the 80 % interval" in text
    assert text.splitlines()[-1] == "... 5 more rows"


def test_closing_words_name_the_best_epoch_as_the_epoch_lines_count_and_runnable_commands():
    summary = {
        "run_dir": "runs/x",
        "epochs": 10,
        "best_epoch": 7,
        "best_checkpoint": "runs/x/checkpoint_000006/checkpoint.ckpt",
        "best_metrics": {"val/mae": 1202.3, "step": 7000},
        "tensorboard": "runs/x/tensorboard",
    }
    lines = format_run(summary, bin_prefix=".venv/bin/").splitlines()
    assert "epochs       10 (epoch 7 best)" in lines
    assert "metrics      val/mae 1202  (passengers; mape/smape as fractions)" in lines
    assert "tensorboard  .venv/bin/tensorboard --logdir runs/x/tensorboard" in lines
    assert lines[-1] == "forecast     .venv/bin/python infer.py --run runs/x"
    assert format_run(summary, bin_prefix="").splitlines()[-1] == "forecast     python infer.py --run runs/x"
    assert "best)" not in format_run({**summary, "best_epoch": None}, bin_prefix="")
    older = {**summary, "best_metrics": {"val/mae": 1202.3, "epoch": 6}}
    del older["best_epoch"]
    assert "epochs       10 (epoch 7 best)" in format_run(older, bin_prefix="").splitlines()


def test_commands_name_the_project_venv_only_when_this_python_is_it(tmp_path):
    (tmp_path / ".venv").mkdir()
    venv = str(tmp_path / ".venv")
    assert interpreter_bin(prefix=venv, base_prefix="/usr", cwd=str(tmp_path)) == ".venv/bin/"
    assert interpreter_bin(prefix=venv, base_prefix="/usr", cwd=str(tmp_path / ".venv")) == ""  # run from elsewhere
    assert interpreter_bin(prefix="/opt/other-env", base_prefix="/usr", cwd=str(tmp_path)) == ""
    assert interpreter_bin(prefix="/usr", base_prefix="/usr", cwd=str(tmp_path)) == ""  # no virtualenv at all


def backtest_figure():
    history_times = pd.date_range("2014-12-25", periods=336, freq="30min")
    future = pd.date_range("2015-01-01", periods=48, freq="30min")
    median = np.full(48, 1000.0)
    bands = interval_bands(np.stack([median - 200, median, median + 200], axis=1), [0.1, 0.5, 0.9], future)
    title = "forecast from Thu 2015-01-01 00:00\nbacktest over 31 cutoffs: model MAE / weekly-naive MAE = 0.75"
    fig = forecast_figure(
        pd.Series(np.full(336, 900.0), index=history_times), pd.Series(median, index=future), title=title, bands=bands
    )
    fig.canvas.draw()
    return fig


def test_plot_dates_name_their_own_month_and_the_band_is_drawn_plainly():
    fig = backtest_figure()
    try:
        ax = fig.axes[0]
        labels = [tick.get_text() for tick in ax.get_xticklabels() if tick.get_text()]
        days = [label for label in labels if ":" not in label]
        assert "Wed 31 Dec" in days and "Thu 01 Jan" in days, labels
        assert all(label.endswith((" Dec", " Jan")) for label in days), labels
        assert ax.xaxis.get_offset_text().get_text() == ""  # no "2015-Jan" under December's days
        # two days of history before the cutoff, not the whole week: the forecast gets a third of the width
        left, right = ax.get_xlim()
        cutoff = plt.matplotlib.dates.date2num(pd.Timestamp("2015-01-01"))
        assert (right - cutoff) / (right - left) > 0.3
        band = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(band) == 1 and band[0].get_alpha() >= 0.3 and band[0].get_label() == "80 % interval"
        renderer = fig.canvas.get_renderer()
        title = ax.title.get_window_extent(renderer)
        assert ax.get_title().count("\n") == 1 and title.width <= fig.bbox.width  # the title fits the figure
    finally:
        plt.close(fig)
