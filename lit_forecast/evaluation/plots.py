"""One PNG per call: history, forecast, its quantile bands and actuals at one cutoff; for a backtest, error by step too.

:func:`forecast_figure` builds the matplotlib figure (TensorBoard takes it as it is);
:func:`plot_forecast` writes it as a PNG.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only, no display needed (servers, Ray workers, CI)
import matplotlib.dates as mdates  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from lit_forecast import storage  # noqa: E402
from lit_forecast.spec import central_intervals  # noqa: E402

PASSENGERS = FuncFormatter(lambda v, _: f"{v:,.0f}")
HISTORY_HORIZONS = 2  # history drawn before the cutoff, in horizons (2 days for the taxi's 48 slots)
COLORS = {
    "history": "0.45",
    "actual": "black",
    "model": "tab:blue",
    "naive_daily": "tab:orange",
    "naive_weekly": "tab:green",
}


def interval_bands(
    quantiles: np.ndarray, levels: list[float], times: pd.DatetimeIndex
) -> dict[str, tuple[pd.Series, pd.Series]]:
    """(H, Q) quantiles of one window -> {'80 % interval': (q0.1, q0.9)}, widest first; {} without levels."""
    return {
        f"{name[9:]} % interval": (pd.Series(quantiles[:, i], index=times), pd.Series(quantiles[:, j], index=times))
        for i, j, name in sorted(central_intervals(list(levels)))
    }


def date_formatter(locator: mdates.DateLocator) -> mdates.ConciseDateFormatter:
    """Tick labels that always name the day's month (``Wed 31 Dec``, ``Thu 01 Jan``), and hours between days.

    Matplotlib's concise default writes a month's first day as the month alone and puts the year
    and month of the axis's end in an offset label, which names the wrong month for the days of
    a plot that crosses a month's end; here every day label carries its month and nothing is offset.
    """
    day = "%a %d %b"
    return mdates.ConciseDateFormatter(
        locator,
        formats=["%Y", "%b %Y", day, "%H:%M", "%H:%M", "%S"],
        zero_formats=["", "%b %Y", day, day, "%H:%M", "%H:%M"],
        show_offset=False,
    )


def forecast_figure(
    history: pd.Series,
    forecast: pd.Series,
    actual: pd.Series | None = None,
    errors_by_step: dict[str, list[float]] | None = None,
    title: str = "",
    freq: str = "30min",
    bands: dict[str, tuple[pd.Series, pd.Series]] | None = None,
) -> plt.Figure:
    """The figure :func:`plot_forecast` writes; the caller closes it (``plt.close(fig)``).

    Only the last ``HISTORY_HORIZONS`` horizons of ``history`` are drawn, so the forecast and its
    bands take a third of the width instead of an eighth of a week.
    """
    panels = 2 if errors_by_step else 1
    fig, axes = plt.subplots(panels, 1, figsize=(11, 4.2 * panels), squeeze=False, layout="constrained")
    ax = axes[0, 0]
    history = history.iloc[-HISTORY_HORIZONS * len(forecast) :]
    ax.plot(history.index, history.to_numpy(), color=COLORS["history"], lw=1.0, label="history")
    for n, (label, (lower, upper)) in enumerate((bands or {}).items()):  # widest first, so narrower ones show on top
        ax.fill_between(
            lower.index,
            lower.to_numpy(),
            upper.to_numpy(),
            color=COLORS["model"],
            alpha=0.3 + 0.15 * n,
            lw=0,
            label=label,
        )
        for bound in (lower, upper):  # the edges stay visible where the band is thin
            ax.plot(bound.index, bound.to_numpy(), color=COLORS["model"], lw=0.7, alpha=0.8)
    if actual is not None and actual.notna().any():
        ax.plot(actual.index, actual.to_numpy(), color=COLORS["actual"], lw=1.3, label="actual")
    ax.plot(
        forecast.index,
        forecast.to_numpy(),
        color=COLORS["model"],
        lw=1.8,
        label="forecast (median)" if bands else "forecast",
    )
    ax.axvline(forecast.index[0], color="0.6", ls="--", lw=0.8)
    ax.annotate(
        f"cutoff {forecast.index[0]:%a %d %b %Y %H:%M}",
        (forecast.index[0], 1.0),
        xycoords=("data", "axes fraction"),
        xytext=(4, -12),
        textcoords="offset points",
        fontsize=8,
        color="0.35",
    )
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(date_formatter(locator))
    ax.yaxis.set_major_formatter(PASSENGERS)
    ax.set_ylabel(f"passengers per {freq}")
    ax.set_title(title or "forecast", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=9)
    if errors_by_step:
        ax = axes[1, 0]
        step_minutes = pd.Timedelta(freq).total_seconds() / 60
        for name, errors in errors_by_step.items():
            hours = [(k + 1) * step_minutes / 60 for k in range(len(errors))]
            ax.plot(hours, errors, marker=".", lw=1.5, color=COLORS.get(name), label=name)
        ax.set_xlabel("hours after the cutoff (horizon step)")
        ax.set_ylabel("MAE (passengers)")
        ax.yaxis.set_major_formatter(PASSENGERS)
        ax.set_title("error by horizon step over all cutoffs", fontsize=11)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    return fig


def plot_forecast(
    location: str,
    history: pd.Series,
    forecast: pd.Series,
    actual: pd.Series | None = None,
    errors_by_step: dict[str, list[float]] | None = None,
    title: str = "",
    freq: str = "30min",
    bands: dict[str, tuple[pd.Series, pd.Series]] | None = None,
) -> None:
    """Write a PNG to ``location`` (path or URI).

    history, forecast, actual: passengers indexed by slot timestamp (history: e.g. the last
    week before the cutoff; forecast: the median over the horizon from the cutoff). errors_by_step:
    per method (model, naive_daily, ...), the MAE at each horizon step; adds a second panel.
    bands: label -> (lower, upper) quantiles over the horizon, shaded (see :func:`interval_bands`).
    """
    fig = forecast_figure(history, forecast, actual, errors_by_step, title, freq, bands)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    storage.write_bytes(location, buffer.getvalue())


def plot_backtest_window(
    location: str,
    history: pd.Series,
    forecast: pd.Series,
    actual: pd.Series,
    table: dict | None,
    heading: str,
    freq: str,
    bands: dict[str, tuple[pd.Series, pd.Series]] | None = None,
) -> None:
    """:func:`plot_forecast` for one window of a backtest: the table adds MAE by step and its ratio to the title."""
    errors = {name: m["by_step"]["mae"] for name, m in table["methods"].items()} if table else None
    overall = (table or {}).get("methods", {}).get("model", {}).get("overall", {})
    cover = next((k for k in overall if k.startswith("coverage_")), None)
    title = f"{heading}forecast from {forecast.index[0]:%a %Y-%m-%d %H:%M}" + (
        f"\nbacktest over {len(table['cutoffs'])} cutoffs: model MAE / weekly-naive MAE "
        f"= {table['mae_ratio_model_vs_naive_weekly']:.2f}"
        + (f", {cover[9:]} % interval covers {100 * overall[cover]:.0f} %" if cover else "")
        if table
        else ""
    )
    plot_forecast(location, history, forecast, actual, errors, title, freq, bands)


def plot_fleet(location: str, mase_model, mase_naive_weekly, title: str = "") -> None:
    """Scatter PNG: per-series MASE of the model (y) against the weekly seasonal-naive forecast (x).

    Points under the diagonal are series where the model wins; series without a finite
    positive MASE are left out.
    """
    x, y = np.asarray(mase_naive_weekly, dtype=np.float64), np.asarray(mase_model, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    x, y = x[ok], y[ok]
    fig, ax = plt.subplots(figsize=(6.5, 6), layout="constrained")
    wins = y < x
    ax.scatter(x[wins], y[wins], s=9, alpha=0.6, color=COLORS["model"], label=f"model better ({wins.sum():,})")
    ax.scatter(
        x[~wins],
        y[~wins],
        s=9,
        alpha=0.6,
        color=COLORS["naive_daily"],
        label=f"weekly naive better ({(~wins).sum():,})",
    )
    hi = 1.05 * max(x.max(), y.max()) if len(x) else 1.0
    ax.plot([0, hi], [0, hi], color="0.4", lw=0.8, ls="--")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, hi)
    ax.set_aspect("equal")
    ax.set_xlabel("MASE of the weekly seasonal-naive forecast")
    ax.set_ylabel("MASE of the model")
    ax.set_title(title or f"per-series MASE, {len(x):,} series", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="upper left")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    storage.write_bytes(location, buffer.getvalue())
