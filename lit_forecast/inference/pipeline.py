"""What ``python infer.py`` does: checkpoint + data + cutoffs -> forecasts, backtest table, plot.

    checkpoint (run's best, or given) -> model, training config and statistics
    data (checkpoint's data.source, or given) -> series on the grid
    cutoffs (default: right after the end of the data) -> windows -> forecasts (Ray tasks or plain)
    -> a CSV/Parquet of forecasts, a PNG, and with known actuals a backtest JSON
"""

from __future__ import annotations

import dataclasses
import io
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from lit_forecast import storage
from lit_forecast.config import DataConfig
from lit_forecast.data.prepare import slots_per_day
from lit_forecast.data.source import Series, fill_short_gaps
from lit_forecast.evaluation import backtest as bt
from lit_forecast.evaluation.baselines import seasonal_naive_lags
from lit_forecast.evaluation.plots import plot_forecast
from lit_forecast.inference.checkpoint import best_checkpoint, latest_run, load_checkpoint, run_of
from lit_forecast.inference.forecaster import forecast
from lit_forecast.inference.windows import CutoffError, ForecastWindows, build_windows, read_series

log = logging.getLogger(__name__)



@dataclass
class InferenceRequest:
    """Everything infer.py can be asked; the defaults are those of ``python infer.py``."""

    run: str | None = None  # a run folder <storage>/<name>; None: the latest finished run in ``storage``
    checkpoint: str | None = None  # a Ray checkpoint folder or .ckpt; wins over ``run``
    storage: str = "runs"
    data: str | None = None  # CSV path/URL/URI; None: the checkpoint's data.source
    cutoffs: list[pd.Timestamp] | None = None  # None: right after the end of each series
    horizon: int | None = None  # None: the checkpoint's; another value is refused
    output: str | None = None  # .csv or .parquet; None: <run>/forecasts/forecast_<cutoff>.csv
    plot: str | None = None  # .png; None: next to the output
    plot_cutoff: pd.Timestamp | None = None  # None: the last cutoff
    use_ray: bool = True
    num_cpus: float = 1  # per task
    num_gpus: float = 0  # per task
    windows_per_task: int = 256
    batch_size: int = 256
    max_retries: int = 3


@dataclass
class InferenceResult:
    checkpoint: str
    frame: pd.DataFrame  # series_id, cutoff, timestamp, forecast[, actual]
    output: str
    plot: str
    table: dict | None = None  # backtest table when actuals were known
    table_path: str | None = None
    windows: ForecastWindows | None = field(default=None, repr=False)


def infer(request: InferenceRequest) -> InferenceResult:
    """Load, forecast, evaluate when actuals are known, and write the files."""
    path = request.checkpoint or best_checkpoint(request.run or latest_run(request.storage))
    use_cuda = request.num_gpus > 0 and torch.cuda.is_available() and not request.use_ray
    loaded = load_checkpoint(path, "cuda" if use_cuda else "cpu", horizon=request.horizon)
    W, H, freq = loaded.window["input_window"], loaded.window["horizon"], loaded.window["freq"]
    log.info("checkpoint %s: %d past -> %d future slots of %s", loaded.path, W, H, freq)

    data = _data_config(loaded.config.data, request.data)
    series = read_series(data)
    log.info("data %s: %s", data.source, ", ".join(f"{_label(s)}{len(s.values)} slots from {s.start}" for s in series))
    windows = build_windows(series, loaded.series_stats, W, H, freq, request.cutoffs, data.max_gap)
    evaluating = bool(np.isfinite(windows.actual).any())
    if evaluating:  # the baselines need their full lag of history before every cutoff
        lags = seasonal_naive_lags(loaded.window["slots_per_day"])
        windows = build_windows(series, loaded.series_stats, W, H, freq, request.cutoffs, data.max_gap, history=max(W, *lags.values()))

    if request.use_ray:
        from lit_forecast.inference.remote import forecast_remote  # Ray only when asked for

        forecasts = forecast_remote(loaded.path, windows, request.windows_per_task, request.num_cpus,
                                    request.num_gpus, request.batch_size, request.max_retries)
    else:
        forecasts = forecast(loaded.module, windows.model_inputs(), request.batch_size)

    frame = forecast_frame(windows, forecasts, with_series=len(series) > 1 or bool(data.series_column))
    output = request.output or _default_output(loaded.path, windows)
    write_frame(output, frame)
    result = InferenceResult(loaded.path, frame, output, request.plot or _sibling(output, ".png"), windows=windows)
    if evaluating:
        scales = {s.series_id: _mase_scale(s, data, windows.cutoffs.min(), lags["naive_weekly"]) for s in series}
        result.table = bt.backtest(forecasts, windows.history, windows.actual, windows.series_ids, windows.cutoffs, scales, lags)
        result.table_path = _sibling(output, ".backtest.json")
        bt.save_table(result.table_path, result.table)
    _plot(result, series, forecasts, data, request.plot_cutoff)
    return result


def _data_config(trained: DataConfig, data: str | None) -> DataConfig:
    """The training data settings, reading ``data`` instead of the training source if given."""
    if not data or data == trained.source:
        return trained
    return dataclasses.replace(trained, source=data, sha256=None)  # new data: no checksum to expect


def _label(s: Series) -> str:
    return "" if s.series_id == "0" else f"series {s.series_id}: "


def _mase_scale(s: Series, data: DataConfig, first_cutoff: pd.Timestamp, week: int) -> float:
    """Weekly seasonal-naive in-sample MAE on the series' training period (before data.train_end).

    Newer data without that period is scaled on its history before the first cutoff instead;
    with less than a week of it, MASE is NaN.
    """
    values = fill_short_gaps(s.values, int(pd.Timedelta(data.max_gap) / pd.Timedelta(data.freq)))
    times = pd.date_range(s.start, periods=len(values), freq=data.freq)
    end = pd.Timestamp(data.train_end)
    if (times < end).sum() <= week:
        log.warning("%sless than a week of data before data.train_end=%s: MASE is scaled on the data before %s",
                    _label(s), end, first_cutoff)
        end = first_cutoff
    try:
        return bt.training_scale(values, times, end, week)
    except ValueError as err:
        log.warning("%sno MASE: %s", _label(s), err)
        return float("nan")


def forecast_frame(windows: ForecastWindows, forecasts: np.ndarray, with_series: bool) -> pd.DataFrame:
    """Long table, one row per window and step: [series_id,] cutoff, timestamp, forecast[, actual]."""
    N, H = forecasts.shape
    columns = {
        "series_id": np.repeat(windows.series_ids, H),
        "cutoff": np.repeat(windows.cutoffs.to_numpy(), H),
        "timestamp": windows.timestamps().ravel(),
        "forecast": forecasts.ravel(),
        "actual": windows.actual.ravel(),
    }
    frame = pd.DataFrame(columns)
    if not with_series:
        frame = frame.drop(columns="series_id")
    if not np.isfinite(windows.actual).any():
        frame = frame.drop(columns="actual")
    return frame


def write_frame(location: str, frame: pd.DataFrame) -> None:
    """Write the forecasts as CSV (timestamps as in the training CSV) or Parquet, by extension."""
    if location.endswith(".parquet"):
        storage.write_parquet(location, pa.Table.from_pandas(frame, preserve_index=False))
    elif location.endswith(".csv"):
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False, date_format="%Y-%m-%d %H:%M:%S", float_format="%.1f")
        storage.write_text(location, buffer.getvalue())
    else:
        raise ValueError(f"{location}: the file name must end in .csv or .parquet")


def _default_output(checkpoint: str, windows: ForecastWindows) -> str:
    run = run_of(checkpoint)
    folder = storage.join(run, "forecasts") if run else storage.absolute("forecasts")
    first, last = windows.cutoffs.min(), windows.cutoffs.max()
    stamp = f"{first:%Y%m%dT%H%M}" + (f"-{last:%Y%m%dT%H%M}" if last != first else "")
    return storage.join(folder, f"forecast_{stamp}.csv")


def _sibling(output: str, suffix: str) -> str:
    base = output.rsplit(".", 1)[0] if "." in output.rsplit("/", 1)[-1] else output
    return base + suffix


def _plot(result: InferenceResult, series: list[Series], forecasts: np.ndarray, data: DataConfig, cutoff: pd.Timestamp | None) -> None:
    """PNG of the first series at ``cutoff`` (default: its last cutoff), and error by step if evaluated."""
    windows = result.windows
    first = windows.series_ids[0]
    rows = [i for i, sid in enumerate(windows.series_ids) if sid == first]
    if cutoff is not None:
        rows = [i for i in rows if windows.cutoffs[i] == cutoff]
        if not rows:
            raise CutoffError(f"--plot-cutoff {cutoff} is not one of the forecast cutoffs")
    i = rows[-1]
    s = next(s for s in series if s.series_id == first)
    step = pd.Timedelta(data.freq)
    c = int((windows.cutoffs[i] - s.start) / step)
    lo = max(0, c - 7 * slots_per_day(data.freq))  # one week of history before the cutoff
    values = fill_short_gaps(s.values[:c], int(pd.Timedelta(data.max_gap) / step))  # only data before the cutoff
    history = pd.Series(values[lo:c], index=pd.date_range(s.start + lo * step, periods=c - lo, freq=data.freq))
    times = pd.DatetimeIndex(windows.timestamps()[i])
    errors = {name: m["by_step"]["mae"] for name, m in result.table["methods"].items()} if result.table else None
    title = f"{_label(s)}forecast from {windows.cutoffs[i]:%a %Y-%m-%d %H:%M}" + (
        f"  (backtest over {len(result.table['cutoffs'])} cutoffs: model MAE / weekly-naive MAE "
        f"= {result.table['mae_ratio_model_vs_naive_weekly']:.2f})" if result.table else ""
    )
    plot_forecast(result.plot, history, pd.Series(forecasts[i], index=times), pd.Series(windows.actual[i], index=times),
                  errors, title, data.freq)


def format_forecasts(frame: pd.DataFrame, max_rows: int = 48) -> str:
    """The first ``max_rows`` rows as a small aligned table, passengers rounded; one cutoff goes in the heading."""
    shown = frame.head(max_rows).copy()
    heading = ""
    if frame["cutoff"].nunique() == 1:
        heading = f"forecast from cutoff {frame['cutoff'].iloc[0]:%a %Y-%m-%d %H:%M}\n"
        shown = shown.drop(columns="cutoff")
    for column in ("cutoff", "timestamp"):
        if column in shown:
            shown[column] = shown[column].dt.strftime("%Y-%m-%d %H:%M")
    for column in ("forecast", "actual"):
        if column in shown:
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:,.0f}")
    text = heading + shown.to_string(index=False)
    if len(frame) > max_rows:
        text += f"\n... {len(frame) - max_rows} more rows"
    return text
