"""What ``python infer.py`` does: checkpoint + data + cutoffs -> forecasts, backtest table, plot.

Three jobs, one function each, run in turn by :func:`infer`:

    forecasting  checkpoint -> model; data -> windows at the cutoffs -> quantiles (Ray tasks or plain)
                 (:func:`forecast_windows`, then the bands refitted at each cutoff on the days before it:
                 :mod:`lit_forecast.inference.recalibration`)
    scoring      with known actuals: the backtest table and per-series scores
                 (:func:`lit_forecast.evaluation.scoring.score_backtest`)
    writing      every file, each path named before anything runs (:mod:`lit_forecast.inference.outputs`)

Windows that cannot be cut without a hole or look-ahead are skipped and counted (``strict``:
an error); series the checkpoint never saw are scaled on their own history before each cutoff.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from lit_forecast import layout
from lit_forecast.config import DataConfig
from lit_forecast.data.source import Series
from lit_forecast.data.windows import WindowSet
from lit_forecast.errors import ConfigError
from lit_forecast.evaluation.baselines import seasonal_naive_lags
from lit_forecast.evaluation.scoring import Scores, score_backtest
from lit_forecast.inference import defaults, recalibration
from lit_forecast.inference.checkpoint import LoadedCheckpoint, load_checkpoint
from lit_forecast.inference.cutoffs import CutWindows, cut_windows, read_series
from lit_forecast.inference.forecaster import forecast, model_inputs
from lit_forecast.inference.outputs import OutputPaths, forecast_frame, plan_outputs, plot_series, write_outputs

log = logging.getLogger(__name__)


@dataclass
class InferenceRequest:
    """Everything infer.py can be asked; the defaults (:mod:`lit_forecast.inference.defaults`) are its flags'."""

    run: str | None = None  # a run folder <storage>/<name>; None: the latest finished run in ``storage``
    checkpoint: str | None = None  # a Ray checkpoint folder or .ckpt; wins over ``run``
    storage: str = defaults.STORAGE
    data: str | None = None  # CSV path/URL/URI; None: the checkpoint's data.source
    cutoffs: list[pd.Timestamp] | None = None  # None: right after the end of each series
    horizon: int | None = None  # None: the checkpoint's; another value is refused
    output: str | None = None  # .csv or .parquet; None: <run>/forecasts/forecast_<cutoff>.csv
    plot: str | None = None  # .png; None: next to the output
    plot_cutoff: pd.Timestamp | None = None  # None: the last cutoff
    plot_series: str | None = None  # None: the busiest series (largest mean), the only one for one series
    strict: bool = False  # True: a window that cannot be cut is an error instead of skipped and counted
    use_ray: bool = True
    num_cpus: float = defaults.CPUS_PER_TASK  # per task
    num_gpus: float = defaults.GPUS_PER_TASK  # per task
    windows_per_task: int = defaults.WINDOWS_PER_TASK
    batch_size: int = defaults.BATCH_SIZE
    max_retries: int = defaults.MAX_RETRIES
    recalibrate_days: float = defaults.RECALIBRATE_DAYS  # refit the bands at each cutoff on the days before it; 0: off


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


RECALIBRATE_DAYS_MAX = 36_500  # far beyond any useful window; pandas' date arithmetic ends near 106,751 days


def check_request(request: InferenceRequest) -> None:
    """Refuse an impossible request before anything is loaded, started or written (a ConfigError)."""
    if not (math.isfinite(request.num_cpus) and request.num_cpus > 0):
        raise ConfigError(
            f"--num-cpus {request.num_cpus:g}: CPUs per Ray task must be a positive number, e.g. 1 or 0.5"
        )
    if not (math.isfinite(request.num_gpus) and request.num_gpus >= 0):
        raise ConfigError(
            f"--num-gpus {request.num_gpus:g}: GPUs per Ray task must be 0 or a positive number, e.g. 1 or 0.25"
        )
    if request.windows_per_task < 1 or request.batch_size < 1:
        raise ConfigError("--windows-per-task and --batch-size must be >= 1")
    if not (math.isfinite(request.recalibrate_days) and request.recalibrate_days >= 0):
        raise ConfigError(
            f"--recalibrate-days {request.recalibrate_days:g}: days must be 0 (off) or a positive number, e.g. 14"
        )
    if request.recalibrate_days > RECALIBRATE_DAYS_MAX:
        raise ConfigError(
            f"--recalibrate-days {request.recalibrate_days:g}: at most {RECALIBRATE_DAYS_MAX:,} days (100 years)"
        )


def infer(request: InferenceRequest) -> InferenceResult:
    """Forecast, score when actuals are known, and write the files."""
    check_request(request)
    path = request.checkpoint or layout.best_checkpoint(request.run or layout.latest_run(request.storage))
    use_cuda = request.num_gpus > 0 and torch.cuda.is_available() and not request.use_ray
    loaded = load_checkpoint(path, "cuda" if use_cuda else "cpu", horizon=request.horizon)
    if request.use_ray:  # before the costly part: a local Ray refuses tasks larger than this machine here
        from lit_forecast.inference.remote import start_ray

        start_ray(request.num_cpus, request.num_gpus)
    spec, levels = loaded.window, loaded.model.levels
    log.info("checkpoint %s: %d past -> %d future slots of %s", loaded.path, spec.input_window, spec.horizon, spec.freq)

    data = _data_config(loaded.config.data, request.data)
    series = read_series(data)
    log.info(
        "data %s: %d series, %d slots of %s", data.source, len(series), sum(len(s.values) for s in series), spec.freq
    )
    lags = seasonal_naive_lags(spec.slots_per_day)
    evaluating = _has_actuals(series, request.cutoffs, spec.freq)
    # A backtest scores the seasonal-naive baselines too: they need their full lag before every cutoff.
    cut: CutWindows = cut_windows(
        series,
        loaded.series_stats,
        spec,
        request.cutoffs,
        data.max_gap,
        history=max(lags.values()) if evaluating else None,
        strict=request.strict,
    )
    windows = cut.windows
    # Before the costly part: a plot that cannot be drawn fails at once.
    plotted = plot_series(request.plot_series, request.plot_cutoff, windows, cut.filled)
    recalibrating = bool(request.recalibrate_days and levels)  # a point model (no model.quantiles) has no bands
    # Every file this run writes (paths.all()) is named here, before the costly part and before anything is
    # written: the one place to check them against the inputs.
    paths: OutputPaths = plan_outputs(request.output, request.plot, loaded.path, windows, evaluating)

    # 1. forecasting: windows -> quantiles (N, H, Q) in passengers
    quantiles = forecast_windows(request, loaded, windows)
    counts = None
    if recalibrating:
        quantiles, counts = _recalibrate(request, loaded, series, data, windows, quantiles)
    forecasts = quantiles[..., loaded.model.median_index]  # the median (N, H)

    # 2. scoring, where the data holds actuals after the cutoffs
    scores: Scores | None = None
    if evaluating:
        series_history = {
            s.series_id: (s.values, pd.date_range(s.start, periods=len(s.values), freq=spec.freq)) for s in cut.filled
        }
        scores = score_backtest(
            forecasts,
            windows.actual(),
            windows.history(slice(None), max(lags.values())),
            windows.series_ids,
            windows.cutoffs,
            series_history,
            pd.Timestamp(data.train_end),
            lags,
            quantiles,
            levels,
        )
        if cut.skipped:
            scores.table["skipped"] = {
                "windows": len(cut.skipped),
                "asked": cut.asked,
                "summary": cut.skip_summary(examples=3),
            }
        if cut.unseen:
            scores.table["unseen_series"] = {"count": len(cut.unseen), "series": sorted(cut.unseen)}
        if counts is not None:
            scores.table["recalibration"] = {"days": request.recalibrate_days, **counts}

    # 3. writing
    frame = forecast_frame(
        windows,
        forecasts,
        with_series=len(series) > 1 or bool(data.series_column),
        unseen=set(cut.unseen),
        quantiles=quantiles,
        levels=levels,
    )
    write_outputs(paths, frame, scores, windows, quantiles, levels, request.plot_cutoff, plotted)
    return InferenceResult(
        loaded.path,
        frame,
        paths.forecasts,
        paths.plot,
        table=scores.table if scores else None,
        table_path=paths.backtest,
        windows=windows,
        zones=scores.per_series if scores else None,
        zones_path=paths.per_series,
        fleet_plot=paths.fleet_plot,
        skipped=cut.skip_summary(),
        unseen=cut.unseen,
    )


def forecast_windows(request: InferenceRequest, loaded: LoadedCheckpoint, windows: WindowSet) -> np.ndarray:
    """Quantiles (N, H, Q) in passengers of ``windows``: Ray tasks, or a plain call with ``use_ray`` off."""
    if request.use_ray:
        from lit_forecast.inference.remote import forecast_remote  # Ray only when asked for

        return forecast_remote(
            loaded.path,
            windows,
            request.windows_per_task,
            request.num_cpus,
            request.num_gpus,
            request.batch_size,
            request.max_retries,
        )
    return forecast(loaded.model, model_inputs(windows), request.batch_size, report_progress=True)


def _recalibrate(
    request: InferenceRequest,
    loaded: LoadedCheckpoint,
    series: list[Series],
    data: DataConfig,
    windows: WindowSet,
    quantiles: np.ndarray,
) -> tuple[np.ndarray, dict]:
    """``quantiles`` with each window's bands refitted on its series' forecasts at the same time of day of the
    ``recalibrate_days`` days before its cutoff (:mod:`lit_forecast.inference.recalibration`), and the counts."""
    spec, days = loaded.window, request.recalibrate_days
    extra = recalibration.calibration_windows(
        series,
        windows,
        days,
        lambda group, at: cut_windows(group, loaded.series_stats, spec, at, data.max_gap, quiet=True).windows,
    )
    log.info("recalibrating the bands: forecasting %s earlier windows", f"{sum(len(w) for w in extra):,}")
    recent = recalibration.RecentForecasts.join(
        [recalibration.RecentForecasts(quantiles, windows.actual(), list(windows.series_ids), windows.cutoffs)]
        + [
            recalibration.RecentForecasts(
                forecast_windows(request, loaded, w), w.actual(), list(w.series_ids), w.cutoffs
            )
            for w in extra
        ]
    )
    quantiles, counts = recalibration.recalibrate(
        quantiles, windows.series_ids, windows.cutoffs, recent, loaded.model.levels, days, spec.freq
    )
    log.log(logging.INFO if counts["refitted"] else logging.WARNING, "%s", recalibration.describe(counts, days))
    return quantiles, counts


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
