"""What the scripts print: a prepared dataset, a finished run, forecasts and a backtest table.

Formatting only: every function takes plain results and returns text. Nothing here computes.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pandas as pd

from lit_forecast.data.manifest import Manifest

# decimals shown in the backtest table (coverage: 1)
DIGITS = {"mae": 0, "rmse": 0, "mape": 1, "smape": 1, "mase": 2, "wql": 3}


def percent(metric: str) -> bool:
    """Fractions in the JSON, percentages when printed: MAPE, sMAPE and interval coverage."""
    return metric in ("mape", "smape") or metric.startswith("coverage_")


def format_dataset(manifest: Manifest, data_dir: str) -> str:
    """A prepared dataset: source, series, windows per split, shards."""
    st, w = manifest.load_report, manifest.window
    lines = [
        f"dataset  {data_dir} ({'reused' if manifest.reused else 'prepared'}, fingerprint {manifest.fingerprint})",
        f"source   {manifest.source['origin']} (sha256 {manifest.source['sha256'][:12]}...)",
        f"series   {len(manifest.series)}, {st['rows']} rows -> {st['points']} slots of {w.freq}; "
        f"{st['interpolated_slots']} slots interpolated in {st['interpolated_gaps']} gaps"
        + (f"; {len(st['long_gaps'])} long gaps dropped" if st["long_gaps"] else ""),
        f"windows  {w.input_window} past -> {w.horizon} future, stride {w.stride} (eval {w.eval_stride})",
    ]
    for split, info in manifest.splits.items():
        lines.append(f"  {split:<5}  {info.windows:>6} windows, targets {info.first_target} .. {info.last_target}")
    lines.append(
        f"shards   {manifest.num_shards} training shards x {manifest.shard_windows[0]} windows"
        + (f" ({st['dropped_for_balance']} dropped to balance)" if st["dropped_for_balance"] else "")
    )
    return "\n".join(lines)


def interpreter_bin(prefix: str | None = None, base_prefix: str | None = None, cwd: str | None = None) -> str:
    """How to name the environment's programs in a printed command: ``.venv/bin/`` when this
    Python is the project's own ``.venv`` (what ``make train`` creates) seen from ``cwd``, so the
    command works without activating it; ``""`` (plain ``python``) in any other environment."""
    prefix = sys.prefix if prefix is None else prefix
    base_prefix = sys.base_prefix if base_prefix is None else base_prefix
    if prefix == base_prefix:
        return ""
    here = Path(os.getcwd() if cwd is None else cwd).resolve()
    return ".venv/bin/" if Path(prefix).resolve() == here / ".venv" else ""


def format_run(result: dict, bin_prefix: str | None = None) -> str:
    """Closing words of a run: best checkpoint, its metrics, the commands to run next.

    ``bin_prefix`` goes before ``python`` and ``tensorboard`` (default: :func:`interpreter_bin`).
    """
    bin_prefix = interpreter_bin() if bin_prefix is None else bin_prefix
    best = result.get("best_checkpoint")
    metrics = result.get("best_metrics", {})
    keys = ("val/mae", "val/rmse", "val/mape", "val/smape", "val/loss")
    shown = "  ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)
    epoch = result.get("best_epoch")
    if epoch is None and "epoch" in metrics:  # a summary without best_epoch holds Lightning's count, from 0
        epoch = int(metrics["epoch"]) + 1
    return "\n".join(
        [
            "",
            f"run          {result['run_dir']}",
            f"epochs       {result.get('epochs')}" + (f" (epoch {epoch} best)" if epoch is not None else ""),
            f"best         {best}",
            f"metrics      {shown}  (passengers; mape/smape as fractions)",
            f"tensorboard  {bin_prefix}tensorboard --logdir {result['tensorboard']}",
            f"forecast     {bin_prefix}python infer.py --run {result['run_dir']}",
        ]
    )


def format_forecasts(frame: pd.DataFrame, max_rows: int = 48) -> str:
    """The first ``max_rows`` rows as a small aligned table, passengers rounded; one cutoff goes in the heading.

    The heading says the unit and what the quantile columns bound (``q0.1`` and ``q0.9``: the 80 % interval).
    """
    shown = frame.head(max_rows).copy()
    heading = ""
    if frame["cutoff"].nunique() == 1:
        heading = f"forecast from cutoff {frame['cutoff'].iloc[0]:%a %Y-%m-%d %H:%M}\n"
        shown = shown.drop(columns="cutoff")
    heading += f"{forecast_legend(list(frame.columns), slot_length(frame['timestamp']))}\n"
    for column in ("cutoff", "timestamp"):
        if column in shown:
            shown[column] = shown[column].dt.strftime("%Y-%m-%d %H:%M")
    for column in ("forecast", "actual", *(c for c in shown.columns if c.startswith("q"))):
        if column in shown:
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:,.0f}")
    text = heading + shown.to_string(index=False)
    if len(frame) > max_rows:
        text += f"\n... {len(frame) - max_rows} more rows"
    return text


def slot_length(timestamps: pd.Series) -> str:
    """The smallest step between distinct timestamps as words (``30 min``, ``1 h``); ``slot`` if there is one."""
    steps = pd.Series(sorted(timestamps.unique())).diff().dropna()
    if steps.empty:
        return "slot"
    minutes = steps.min().total_seconds() / 60
    return f"{minutes:g} min" if minutes < 60 else f"{minutes / 60:g} h"


def forecast_legend(columns: list[str], slot: str = "slot") -> str:
    """What the forecast table's numbers are: passengers per slot, the median, and each central interval."""
    levels = sorted(float(c[1:]) for c in columns if c.startswith("q") and _is_level(c[1:]))
    pairs = [(low, high) for low in levels for high in levels if low < 0.5 < high and abs(low + high - 1) < 1e-9]
    text = f"passengers per {slot}" + ("; forecast = the median" if pairs else "")
    for low, high in sorted(pairs):  # widest first
        text += f"; q{low:g} .. q{high:g} = the {round(100 * (high - low))} % interval"
    return text


def _is_level(text: str) -> bool:
    try:
        return 0.0 < float(text) < 1.0
    except ValueError:
        return False


def format_backtest(table: dict, steps: list[int] | None = None) -> str:
    """The overall table, and MAE by horizon step (1-based ``steps``; default step 1 and every 6th)."""
    H = table["horizon"]
    steps = steps or sorted({1, *range(6, H + 1, 6), H})
    names = list(table["methods"])
    metrics = list(next(iter(table["methods"].values()))["overall"])
    lines = [
        f"backtest: {table['windows']} windows x {H} steps, cutoffs {table['cutoffs'][0]} .. {table['cutoffs'][-1]} "
        f"({len(table['cutoffs'])}); MAE/RMSE in passengers, MAPE/sMAPE in %, MASE vs weekly naive in-sample"
        + (
            "; wQL over levels " + ", ".join(f"{q:g}" for q in table["levels"]) + ", coverage of central intervals in %"
            if table.get("levels")
            else ""
        ),
        f"{'method':<14}" + "".join(f"{m.upper().replace('COVERAGE_', 'COVER'):>10}" for m in metrics),
    ]
    for name in names:
        overall = table["methods"][name]["overall"]
        cells = (_num(overall[m] * (100 if percent(m) else 1), DIGITS.get(m, 1)) for m in metrics)
        lines.append(f"{name:<14}" + "".join(cells))
    lines.append(f"model MAE / weekly-naive MAE = {table['mae_ratio_model_vs_naive_weekly']:.3f}")
    if "wql_ratio_model_vs_naive_weekly" in table:
        ratio = table["wql_ratio_model_vs_naive_weekly"]
        lines.append(
            f"model wQL / weekly-naive wQL = {ratio:.3f}  (naive quantiles: "
            "the forecast plus the empirical quantiles of its in-sample residuals before data.train_end)"
        )
    lines.append("")
    lines.append("MAE by horizon step (all steps and metrics in the JSON):")
    lines.append(f"{'step':>6}" + "".join(f"{n:>14}" for n in names))
    for k in steps:
        lines.append(f"{k:>6}" + "".join(_num(table["methods"][n]["by_step"]["mae"][k - 1], 0, 14) for n in names))
    return "\n".join(lines)


def _num(value: float | None, digits: int, width: int = 10) -> str:
    return f"{'nan':>{width}}" if value is None or math.isnan(value) else f"{value:>{width},.{digits}f}"


def format_fleet(table: dict) -> str:
    """A fleet backtest's spread over series: mean and median MASE, the share where the model
    beats the weekly seasonal-naive forecast, the worst series by MASE, and what was skipped."""
    fleet = table["fleet"]
    methods = list(fleet["mase_mean"])
    lines = [
        f"fleet: {fleet['series']:,} series ({fleet['series_scored']:,} with a MASE); MASE over series:",
        f"{'':<14}" + "".join(f"{m:>14}" for m in methods),
        f"{'mean':<14}" + "".join(_num(fleet["mase_mean"][m], 2, 14) for m in methods),
        f"{'median':<14}" + "".join(_num(fleet["mase_median"][m], 2, 14) for m in methods),
        "model beats the weekly seasonal-naive forecast (lower MASE) in "
        f"{_share(fleet['share_model_beats_naive_weekly'])} of series",
    ]
    if fleet["worst"]:
        lines += [
            "",
            f"{len(fleet['worst'])} worst series by model MASE (all in the per-series table):",
            f"{'series':<12}{'MASE model':>12}{'MASE weekly':>13}{'MAE model':>11}{'mean actual':>13}",
        ]
        for row in fleet["worst"]:
            lines.append(
                f"{row['series_id']:<12}"
                + _num(row["mase_model"], 2, 12)
                + _num(row["mase_naive_weekly"], 2, 13)
                + _num(row["mae_model"], 1, 11)
                + _num(row["mean_actual"], 1, 13)
            )
    return "\n".join(lines)


def _share(share: float | None) -> str:
    return "nan %" if share is None or math.isnan(share) else f"{100 * share:.1f} %"
