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

from lit_forecast import layout, storage
from lit_forecast.config import DataConfig
from lit_forecast.data.source import Series
from lit_forecast.data.windows import WindowSet
from lit_forecast.errors import CutoffError
from lit_forecast.evaluation import backtest as bt
from lit_forecast.evaluation.baselines import seasonal_naive_lags
from lit_forecast.evaluation.plots import interval_bands, plot_backtest_window
from lit_forecast.inference.checkpoint import load_checkpoint
from lit_forecast.inference.cutoffs import build_windows, read_series
from lit_forecast.inference.forecaster import forecast, model_inputs
from lit_forecast.spec import SINGLE_SERIES, series_label

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
    frame: pd.DataFrame  # series_id, cutoff, timestamp, forecast (the median)[, q0.1, q0.9, ...][, actual]
    output: str
    plot: str
    table: dict | None = None  # backtest table when actuals were known
    table_path: str | None = None
    windows: WindowSet | None = field(default=None, repr=False)


def infer(request: InferenceRequest) -> InferenceResult:
    """Load, forecast, evaluate when actuals are known, and write the files."""
    path = request.checkpoint or layout.best_checkpoint(request.run or layout.latest_run(request.storage))
    use_cuda = request.num_gpus > 0 and torch.cuda.is_available() and not request.use_ray
    loaded = load_checkpoint(path, "cuda" if use_cuda else "cpu", horizon=request.horizon)
    spec = loaded.window
    log.info("checkpoint %s: %d past -> %d future slots of %s", loaded.path, spec.input_window, spec.horizon, spec.freq)

    data = _data_config(loaded.config.data, request.data)
    series = read_series(data)
    log.info("data %s: %d series, %d slots of %s", data.source, len(series), sum(len(s.values) for s in series), spec.freq)
    lags = seasonal_naive_lags(spec.slots_per_day)
    evaluating = _has_actuals(series, request.cutoffs, spec.freq)
    # A backtest scores the seasonal-naive baselines too: they need their full lag before every cutoff.
    windows, filled = build_windows(series, loaded.series_stats, spec, request.cutoffs, data.max_gap,
                                    history=max(lags.values()) if evaluating else None)

    if request.use_ray:
        from lit_forecast.inference.remote import forecast_remote  # Ray only when asked for

        forecasts = forecast_remote(loaded.path, windows, request.windows_per_task, request.num_cpus,
                                    request.num_gpus, request.batch_size, request.max_retries)
    else:
        forecasts = forecast(loaded.module, model_inputs(windows), request.batch_size)
    levels = loaded.module.levels
    quantiles, forecasts = forecasts, forecasts[..., loaded.module.median_index]  # (N, H, Q); the median (N, H)

    frame = forecast_frame(windows, forecasts, with_series=len(series) > 1 or bool(data.series_column), quantiles=quantiles, levels=levels)
    output = request.output or _default_output(loaded.path, windows)
    write_frame(output, frame)
    result = InferenceResult(loaded.path, frame, output, request.plot or _sibling(output, ".png"), windows=windows)
    if evaluating:
        week, first = lags["naive_weekly"], windows.cutoffs.min()
        scales = {
            s.series_id: bt.mase_scale(s.values, pd.date_range(s.start, periods=len(s.values), freq=spec.freq),
                                       pd.Timestamp(data.train_end), first, week, series_label(s.series_id))
            for s in filled
        }
        residuals = {
            s.series_id: bt.baseline_residual_quantiles(s.values, pd.date_range(s.start, periods=len(s.values), freq=spec.freq),
                                                        pd.Timestamp(data.train_end), first, lags, levels)
            for s in filled
        } if levels else None
        history = windows.history(slice(None), max(lags.values()))
        result.table = bt.backtest(forecasts, history, windows.actual(), windows.series_ids, windows.cutoffs, scales, lags,
                                   quantiles, levels, residuals)
        result.table_path = _sibling(output, ".backtest.json")
        bt.save_table(result.table_path, result.table)
    _plot(result, quantiles, levels, request.plot_cutoff)
    return result


def _has_actuals(series: list[Series], cutoffs: list[pd.Timestamp] | None, freq: str) -> bool:
    """True if the data holds any slot at or after one of the cutoffs (None: after the end, so no)."""
    if cutoffs is None:
        return False
    step = pd.Timedelta(freq)
    return any(c < s.start + len(s.values) * step for s in series for c in cutoffs)


def _data_config(trained: DataConfig, data: str | None) -> DataConfig:
    """The training data settings, reading ``data`` instead of the training source if given."""
    if not data or data == trained.source:
        return trained
    return dataclasses.replace(trained, source=data, sha256=None)  # new data: no checksum to expect


def forecast_frame(windows: WindowSet, forecasts: np.ndarray, with_series: bool,
                   quantiles: np.ndarray | None = None, levels: list[float] | None = None) -> pd.DataFrame:
    """Long table, one row per window and step: [series_id,] cutoff, timestamp, forecast[, q<level>...][, actual].

    ``forecast`` (N, H) is the point forecast (the median); ``quantiles`` (N, H, Q) at ``levels``
    add one column per level other than 0.5, named ``q0.1``, ``q0.9``, ...
    """
    N, H = forecasts.shape
    actual = windows.actual()
    steps = np.arange(H) * pd.Timedelta(windows.spec.freq).to_timedelta64()
    columns = {
        "series_id": np.repeat(windows.series_ids, H),
        "cutoff": np.repeat(windows.cutoffs.to_numpy(), H),
        "timestamp": (windows.cutoffs.to_numpy()[:, None] + steps[None, :]).ravel(),
        "forecast": forecasts.ravel(),
        **{f"q{q:g}": quantiles[..., i].ravel() for i, q in enumerate(levels or []) if q != 0.5},
        "actual": actual.ravel(),
    }
    frame = pd.DataFrame(columns)
    if not with_series:
        frame = frame.drop(columns="series_id")
    if not np.isfinite(actual).any():
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


def _default_output(checkpoint: str, windows: WindowSet) -> str:
    run = layout.run_of(checkpoint)
    folder = layout.forecasts_dir(run) if run else storage.absolute("forecasts")
    first, last = windows.cutoffs.min(), windows.cutoffs.max()
    stamp = f"{first:%Y%m%dT%H%M}" + (f"-{last:%Y%m%dT%H%M}" if last != first else "")
    return storage.join(folder, f"forecast_{stamp}.csv")


def _sibling(output: str, suffix: str) -> str:
    base = output.rsplit(".", 1)[0] if "." in output.rsplit("/", 1)[-1] else output
    return base + suffix


def _plot(result: InferenceResult, quantiles: np.ndarray, levels: list[float], cutoff: pd.Timestamp | None) -> None:
    """PNG of the first series at ``cutoff`` (default: its last cutoff) with its quantile bands, and error by step if evaluated."""
    windows = result.windows
    first = windows.series_ids[0]
    rows = [i for i, sid in enumerate(windows.series_ids) if sid == first]
    if cutoff is not None:
        rows = [i for i in rows if windows.cutoffs[i] == cutoff]
        if not rows:
            raise CutoffError(f"--plot-cutoff {cutoff} is not one of the forecast cutoffs")
    i = rows[-1]
    spec, at = windows.spec, windows.cutoffs[i]
    week = min(7 * spec.slots_per_day, int(windows.history_available()[i]))  # one week of history, or what there is
    step = pd.Timedelta(spec.freq)
    history = pd.Series(windows.history([i], week)[0], index=pd.date_range(at - week * step, periods=week, freq=spec.freq))
    times = pd.date_range(at, periods=spec.horizon, freq=spec.freq)
    median = quantiles[i, :, levels.index(0.5) if levels else 0]
    plot_backtest_window(result.plot, history, pd.Series(median, index=times), pd.Series(windows.actual([i])[0], index=times),
                         result.table, "" if first == SINGLE_SERIES else f"series {first}: ", spec.freq,
                         bands=interval_bands(quantiles[i], levels, times))
