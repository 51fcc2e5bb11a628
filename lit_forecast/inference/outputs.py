"""Every file a forecast run writes, named before anything runs and written in one step.

    <output>              the forecasts, .csv or .parquet (default <run>/forecasts/forecast_<cutoffs>.csv)
    <plot>                a PNG of one window with its bands (default <output> with .png)
    with known actuals:   <output>.backtest.json, the backtest table
    and several series:   <output>.zones.csv (per-series scores) and <output>.fleet.png (per-series MASE)

:func:`plan_outputs` names them all (:class:`OutputPaths`); :func:`write_outputs` writes them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from lit_forecast import layout, storage
from lit_forecast.data.source import Series
from lit_forecast.data.windows import WindowSet
from lit_forecast.errors import CutoffError
from lit_forecast.evaluation import backtest as bt
from lit_forecast.evaluation.plots import interval_bands, plot_backtest_window, plot_fleet
from lit_forecast.evaluation.scoring import Scores
from lit_forecast.models.transformer import median_index
from lit_forecast.output_guard import sibling
from lit_forecast.spec import SINGLE_SERIES, series_label


@dataclass(frozen=True)
class OutputPaths:
    """Where each file of a run goes; None for a file this run does not write."""

    forecasts: str
    plot: str
    backtest: str | None = None  # with known actuals
    per_series: str | None = None  # a backtest of several series
    fleet_plot: str | None = None  # a backtest of several series

    def all(self) -> list[str]:
        """Every path the run writes, forecasts first."""
        return [p for p in (self.forecasts, self.backtest, self.per_series, self.fleet_plot, self.plot) if p]


def plan_outputs(
    output: str | None, plot: str | None, checkpoint: str, windows: WindowSet, evaluating: bool
) -> OutputPaths:
    """The paths of every file: ``output`` and ``plot`` as asked, or their defaults, and their siblings.

    ``evaluating``: the data holds actuals after some cutoff (a backtest). Several series with
    windows make a fleet, whose backtest adds the per-series table and plot.
    """
    output = output or default_output(checkpoint, windows)
    fleet = evaluating and len(set(windows.series_ids)) > 1
    return OutputPaths(
        forecasts=output,
        plot=plot or sibling(output, ".png"),
        backtest=sibling(output, ".backtest.json") if evaluating else None,
        per_series=sibling(output, ".zones.csv") if fleet else None,
        fleet_plot=sibling(output, ".fleet.png") if fleet else None,
    )


def default_output(checkpoint: str, windows: WindowSet) -> str:
    """<run>/forecasts/forecast_<first cutoff>[-<last cutoff>].csv (``forecasts/`` here without a run)."""
    run = layout.run_of(checkpoint)
    folder = layout.forecasts_dir(run) if run else storage.absolute("forecasts")
    first, last = windows.cutoffs.min(), windows.cutoffs.max()
    stamp = f"{first:%Y%m%dT%H%M}" + (f"-{last:%Y%m%dT%H%M}" if last != first else "")
    return storage.join(folder, f"forecast_{stamp}.csv")


def plot_series(series_id: str | None, cutoff: pd.Timestamp | None, windows: WindowSet, filled: list[Series]) -> str:
    """The series to plot: ``series_id`` if it has a window (at ``cutoff``, if given), else the busiest (largest mean).

    A series or cutoff without a window is a CutoffError.
    """
    forecast_ids = set(windows.series_ids)
    if cutoff is not None and cutoff not in set(windows.cutoffs):
        raise CutoffError(f"--plot-cutoff {cutoff} is not one of the forecast cutoffs")
    if series_id is None:
        means = [
            (float(np.nanmean(s.values)), s.series_id)
            for s in filled
            if s.series_id in forecast_ids and np.isfinite(s.values).any()
        ]
        series_id = max(means)[1] if means else windows.series_ids[0]
    elif series_id not in forecast_ids:
        shown = ", ".join(map(repr, sorted(forecast_ids)[:5]))
        raise CutoffError(
            f"--plot-series {series_id!r} has no forecast window (series: {shown}"
            f"{' ...' if len(forecast_ids) > 5 else ''})"
        )
    pairs = zip(windows.series_ids, windows.cutoffs)
    if cutoff is not None and not any(s == series_id and c == cutoff for s, c in pairs):
        raise CutoffError(f"--plot-cutoff {cutoff} is not one of the forecast cutoffs{series_label(series_id)}")
    return series_id


def forecast_frame(
    windows: WindowSet,
    forecasts: np.ndarray,
    with_series: bool,
    unseen: set[str] = frozenset(),
    quantiles: np.ndarray | None = None,
    levels: list[float] | None = None,
) -> pd.DataFrame:
    """Long table, one row per window and step.

    Columns: [series_id,] cutoff, timestamp, forecast[, q<level>...][, actual][, in_checkpoint].

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


def write_outputs(
    paths: OutputPaths,
    frame: pd.DataFrame,
    scores: Scores | None,
    windows: WindowSet,
    quantiles: np.ndarray,
    levels: list[float],
    plot_cutoff: pd.Timestamp | None,
    plotted: str,
) -> None:
    """Write every file of ``paths``: the forecasts, the backtest files with ``scores``, and the plot.

    The plot shows series ``plotted`` at ``plot_cutoff`` (default: its last cutoff), with the
    quantile bands of ``quantiles`` (N, H, Q) at ``levels``, and the error by step if scored.
    """
    write_frame(paths.forecasts, frame)
    table = scores.table if scores else None
    if scores is not None and scores.per_series is not None:
        storage.write_text(paths.per_series, scores.per_series.to_csv(index=False, float_format="%.6g"))
        plot_fleet(
            paths.fleet_plot,
            scores.per_series["mase_model"],
            scores.per_series["mase_naive_weekly"],
            f"per-series MASE over {len(table['cutoffs'])} cutoffs, {len(scores.per_series):,} series",
        )
    if table is not None:
        bt.save_table(paths.backtest, table)
    plot_window(paths.plot, windows, quantiles, levels, table, plot_cutoff, plotted)


def plot_window(
    location: str,
    windows: WindowSet,
    quantiles: np.ndarray,
    levels: list[float],
    table: dict | None,
    cutoff: pd.Timestamp | None,
    series_id: str,
) -> None:
    """PNG of ``series_id`` at ``cutoff`` (default: its last cutoff) with its bands, and error by step if scored."""
    rows = [i for i, sid in enumerate(windows.series_ids) if sid == series_id and cutoff in (None, windows.cutoffs[i])]
    i = rows[-1]  # plot_series checked that there is one
    spec, at = windows.spec, windows.cutoffs[i]
    week = min(7 * spec.slots_per_day, int(windows.history_available()[i]))  # one week of history, or what there is
    step = pd.Timedelta(spec.freq)
    past = pd.date_range(at - week * step, periods=week, freq=spec.freq)
    history = pd.Series(windows.history([i], week)[0], index=past)
    times = pd.date_range(at, periods=spec.horizon, freq=spec.freq)
    median = quantiles[i, :, median_index(levels)]
    plot_backtest_window(
        location,
        history,
        pd.Series(median, index=times),
        pd.Series(windows.actual([i])[0], index=times),
        table,
        "" if series_id == SINGLE_SERIES else f"series {series_id}: ",
        spec.freq,
        bands=interval_bands(quantiles[i], levels, times),
    )
