"""What ``python infer.py`` does: checkpoint + data + cutoffs -> forecasts, backtest table, plot.

    checkpoint (run's best, or given) -> model, training config and statistics
    data (checkpoint's data.source, or given) -> series on the grid
    cutoffs (default: right after the end of the data) -> windows -> forecasts (Ray tasks or plain)
    -> a CSV/Parquet of forecasts, a PNG, and with known actuals a backtest JSON
       (for many series also a per-series table, <output>.zones.csv, and a fleet scatter, <output>.fleet.png)

Windows that cannot be cut without a hole or look-ahead are skipped and counted (``strict``:
an error); series the checkpoint never saw are scaled on their own history before each cutoff.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from lit_forecast import layout, storage
from lit_forecast.config import DataConfig
from lit_forecast.data.source import Series
from lit_forecast.data.windows import WindowSet
from lit_forecast.errors import ConfigError, CutoffError
from lit_forecast.evaluation import backtest as bt
from lit_forecast.evaluation.baselines import seasonal_naive_lags
from lit_forecast.evaluation.plots import interval_bands, plot_backtest_window, plot_fleet
from lit_forecast.inference.checkpoint import load_checkpoint
from lit_forecast.inference.cutoffs import CutWindows, cut_windows, read_series
from lit_forecast.inference.forecaster import forecast, model_inputs
from lit_forecast.inference.recalibration import RecentForecasts, calibration_cutoffs, recalibrate
from lit_forecast.models.quantiles import QuantileCalibration
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
    plot_series: str | None = None  # None: the busiest series (largest mean), the only one for one series
    strict: bool = False  # True: a window that cannot be cut is an error instead of skipped and counted
    use_ray: bool = True
    num_cpus: float = 1  # per task
    num_gpus: float = 0  # per task
    windows_per_task: int = 256
    batch_size: int = 256
    max_retries: int = 3
    recalibrate_days: float = 0  # > 0: refit the bands at each cutoff on the forecasts of the days before it


@dataclass
class InferenceResult:
    checkpoint: str
    frame: pd.DataFrame  # series_id, cutoff, timestamp, forecast (the median)[, q0.1, q0.9, ...][, actual]
    output: str
    plot: str
    table: dict | None = None  # backtest table when actuals were known
    table_path: str | None = None
    windows: WindowSet | None = field(default=None, repr=False)
    zones: pd.DataFrame | None = field(default=None, repr=False)  # per-series scores of a fleet backtest
    zones_path: str | None = None
    fleet_plot: str | None = None
    skipped: str = ""  # one-line summary of the windows skipped, '' if none
    unseen: list[str] = field(default_factory=list)  # series not in the checkpoint (scaled on their own history)


def infer(request: InferenceRequest) -> InferenceResult:
    """Load, forecast, evaluate when actuals are known, and write the files."""
    if not (math.isfinite(request.recalibrate_days) and request.recalibrate_days >= 0):
        raise ConfigError(f"--recalibrate-days {request.recalibrate_days:g}: days must be 0 (off) or a positive number, e.g. 14")
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
    cut: CutWindows = cut_windows(series, loaded.series_stats, spec, request.cutoffs, data.max_gap,
                                  history=max(lags.values()) if evaluating else None, strict=request.strict)
    windows, filled = cut.windows, cut.filled
    plot_series = _plot_series(request.plot_series, windows, filled)  # before the costly part: a wrong id fails at once

    if request.plot_cutoff is not None and request.plot_cutoff not in set(windows.cutoffs):
        raise CutoffError(f"--plot-cutoff {request.plot_cutoff} is not one of the forecast cutoffs")  # before anything is written

    levels = loaded.model.levels
    recalibrating = bool(request.recalibrate_days and levels)
    if recalibrating:  # before the costly part: a request too large fails at once
        recent_cutoffs = calibration_cutoffs(windows.cutoffs, request.recalibrate_days, spec.freq, spec.horizon,
                                             series=len(set(windows.series_ids)))
    elif request.recalibrate_days:
        log.warning("--recalibrate-days: this checkpoint forecasts one value per slot (no model.quantiles), no bands to refit")

    quantiles = _forecast(request, loaded, windows)  # (N, H, Q)
    if recalibrating:
        quantiles = _recalibrate(request, loaded, series, data, windows, quantiles, recent_cutoffs)
    forecasts = quantiles[..., loaded.model.median_index]  # the median (N, H)

    frame = forecast_frame(windows, forecasts, with_series=len(series) > 1 or bool(data.series_column),
                           unseen=set(cut.unseen), quantiles=quantiles, levels=levels)
    output = request.output or _default_output(loaded.path, windows)
    write_frame(output, frame)
    result = InferenceResult(loaded.path, frame, output, request.plot or _sibling(output, ".png"), windows=windows,
                             skipped=cut.skip_summary(), unseen=cut.unseen)
    if evaluating:
        week = lags["naive_weekly"]
        first = pd.Series(windows.cutoffs, index=windows.series_ids).groupby(level=0).min().to_dict()  # per series
        scored = {s.series_id: (s.values, pd.date_range(s.start, periods=len(s.values), freq=spec.freq))
                  for s in filled if s.series_id in first}  # series with every window skipped are not scored
        scales = bt.mase_scales(scored, pd.Timestamp(data.train_end), first, week)
        train_end = pd.Timestamp(data.train_end)
        residuals = {
            sid: bt.baseline_residual_quantiles(values, times, train_end, first[sid], lags, levels)
            for sid, (values, times) in scored.items()
        } if levels else None
        history = windows.history(slice(None), max(lags.values()))
        result.table = bt.backtest(forecasts, history, windows.actual(), windows.series_ids, windows.cutoffs, scales, lags,
                                   quantiles, levels, residuals)
        if len(scored) > 1:  # a fleet: scores per series, their spread, the worst ones, a scatter
            result.zones = bt.per_series(forecasts, history, windows.actual(), windows.series_ids, scales, lags)
            result.table["fleet"] = bt.fleet_summary(result.zones)
            result.zones_path = _sibling(output, ".zones.csv")
            storage.write_text(result.zones_path, result.zones.to_csv(index=False, float_format="%.6g"))
            result.fleet_plot = _sibling(output, ".fleet.png")
            plot_fleet(result.fleet_plot, result.zones["mase_model"], result.zones["mase_naive_weekly"],
                       f"per-series MASE over {len(result.table['cutoffs'])} cutoffs, {len(result.zones):,} series")
        if cut.skipped:
            result.table["skipped"] = {"windows": len(cut.skipped), "asked": cut.asked, "summary": cut.skip_summary(examples=3)}
        if cut.unseen:
            result.table["unseen_series"] = {"count": len(cut.unseen), "series": sorted(cut.unseen)}
        if recalibrating:
            result.table["recalibrate_days"] = request.recalibrate_days
        result.table_path = _sibling(output, ".backtest.json")
        bt.save_table(result.table_path, result.table)
    _plot(result, quantiles, levels, request.plot_cutoff, plot_series)
    return result


def _forecast(request: InferenceRequest, loaded, windows: WindowSet) -> np.ndarray:
    """Quantiles (N, H, Q) in passengers of ``windows``: Ray tasks, or a plain call with ``use_ray`` off."""
    if request.use_ray:
        from lit_forecast.inference.remote import forecast_remote  # Ray only when asked for

        return forecast_remote(loaded.path, windows, request.windows_per_task, request.num_cpus,
                               request.num_gpus, request.batch_size, request.max_retries)
    return forecast(loaded.model, model_inputs(windows), request.batch_size, report_progress=True)


def _recalibrate(request: InferenceRequest, loaded, series: list[Series], data: DataConfig, windows: WindowSet,
                 quantiles: np.ndarray, at: list[pd.Timestamp]) -> np.ndarray:
    """``quantiles`` with each window's bands refitted on its series' last ``recalibrate_days`` days,
    from the model's forecasts at the calibration cutoffs ``at``."""
    spec, days = loaded.window, request.recalibrate_days
    try:
        recent = cut_windows(series, loaded.series_stats, spec, at, data.max_gap, quiet=True).windows if at else None
    except CutoffError:  # every calibration window skipped: too little data before the cutoffs
        recent = None
    if recent is None:
        log.warning("--recalibrate-days %g: no forecast can be scored in the %g days before the cutoffs; the "
                    "checkpoint's bands are kept", days, days)
        return quantiles
    log.info("recalibrating the bands: forecasting %s windows of the %g days before the cutoffs", f"{len(recent):,}", days)
    done = RecentForecasts(_forecast(request, loaded, recent), recent.actual(), recent.series_ids, recent.cutoffs)
    quantiles, counts = recalibrate(quantiles, windows.series_ids, windows.cutoffs, done, loaded.model.levels, days, spec.freq)
    log.log(logging.INFO if counts["refitted"] else logging.WARNING,
            "recalibrated the bands of %s windows on the %g days before each cutoff%s", f"{counts['refitted']:,}", days,
            f"; {counts['kept']:,} kept the checkpoint's (fewer than {QuantileCalibration.MIN_WINDOWS} windows with known "
            f"actuals in those days: more days, or a later cutoff, give them some)" if counts["kept"] else "")
    return quantiles


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


def forecast_frame(windows: WindowSet, forecasts: np.ndarray, with_series: bool, unseen: set[str] = frozenset(),
                   quantiles: np.ndarray | None = None, levels: list[float] | None = None) -> pd.DataFrame:
    """Long table, one row per window and step: [series_id,] cutoff, timestamp, forecast[, q<level>...][, actual][, in_checkpoint].

    ``forecast`` (N, H) is the point forecast (the median); ``quantiles`` (N, H, Q) at ``levels``
    add one column per level other than 0.5, named ``q0.1``, ``q0.9``, ... ``in_checkpoint``
    (only when some series are ``unseen``): False for a series the model never saw, whose
    forecast was scaled on its own history before the cutoff.
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
    if unseen:
        columns["in_checkpoint"] = np.repeat([sid not in unseen for sid in windows.series_ids], H)
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


def _plot_series(series_id: str | None, windows: WindowSet, filled: list[Series]) -> str:
    """The series to plot: ``series_id`` if it has a window, else by default the busiest (largest mean) that has one."""
    forecast_ids = set(windows.series_ids)
    if series_id is None:
        means = [(float(np.nanmean(s.values)), s.series_id) for s in filled if s.series_id in forecast_ids and np.isfinite(s.values).any()]
        return max(means)[1] if means else windows.series_ids[0]
    if series_id not in forecast_ids:
        raise CutoffError(f"--plot-series {series_id!r} has no forecast window (series: {', '.join(map(repr, sorted(forecast_ids)[:5]))}"
                          f"{' ...' if len(forecast_ids) > 5 else ''})")
    return series_id


def _plot(result: InferenceResult, quantiles: np.ndarray, levels: list[float], cutoff: pd.Timestamp | None, first: str) -> None:
    """PNG of series ``first`` at ``cutoff`` (default: its last cutoff) with its quantile bands, and error by step if evaluated."""
    windows = result.windows
    rows = [i for i, sid in enumerate(windows.series_ids) if sid == first]
    if cutoff is not None:
        rows = [i for i in rows if windows.cutoffs[i] == cutoff]
        if not rows:
            raise CutoffError(f"--plot-cutoff {cutoff} is not one of the forecast cutoffs{series_label(first)}")
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
