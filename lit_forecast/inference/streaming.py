"""Streaming fleet inference on Ray Data: forecasts that never meet in one process.

The plain path (:mod:`lit_forecast.inference.pipeline`) reads every reading into the driver.
This one streams, in four Ray Data stages (``G`` series groups)::

    read      the preparation's reading plan and row checks (data/ray_prepare.py: one task per
              file, byte range or run of row groups); each reading tagged with its series' group
    cut       groupby(group).map_groups: a group holds whole series. The preparation's
              duplicate and outlier checks and resampling (every missing slot left NaN), then
              inference/cutoffs.py's ``cut_windows`` at the cutoffs: the same WindowSet and
              scaling as the plain path (the checkpoint's statistics for known series, each
              cutoff's own past for unseen ones). For a backtest the seasonal-naive baselines
              are scored here, as sums (evaluation/aggregates.py). Out: one row per window
              (the model's inputs, its actuals), plus one row per group carrying its sums.
    forecast  map_batches over :class:`Forecaster` on an actor pool (``ActorPoolStrategy``):
              each actor loads the checkpoint once and forecasts with the plain call
              (forecaster.forecast); sized in CPUs or a share of a GPU.
    write     map_batches: each block's forecasts as one Parquet file of the output dataset
              (written to a temporary folder, moved into place once all succeeded) and the
              model's score sums. Out: one small row per block.

The driver merges the sums of those small rows as they arrive and logs a progress line every
few seconds; the forecasts themselves never reach it. A block whose actor dies is retried on
a restarted actor (``max_restarts``); its file has a name fixed by its first window, so a
retry rewrites the same file.

Output dataset (one ``part-<group>-<window>.parquet`` per block), one row per window and step:

    series_id      string
    cutoff         timestamp[ns]  the first forecast slot (a forecast at t uses data before t)
    timestamp      timestamp[ns]  the slot forecast: cutoff + step x freq
    step           int16          0 .. horizon-1
    median         float64        passengers (the point forecast)
    q<level>       float64        one column per other quantile level: q0.1, q0.9, ...
    actual         float64        passengers; null where unknown (only with --cutoffs)
    in_checkpoint  bool           False for a series the model never saw (scaled on its own past)

It reads back with ``pandas.read_parquet(folder)``, ``pyarrow.dataset.dataset(folder)`` or
``ray.data.read_parquet(folder)``.

Differences from the plain path, by design: a series whose readings cannot be put on the grid
(sparser than data.freq, sums beyond float32) is skipped and counted instead of failing the
whole input; with ``--cutoffs`` every window needs the baselines' week of history (the plain
path needs it only when some actual is known); there is no single-window plot, only the
fleet plot.

Recalibration (--recalibrate-days, on by default): a group holds whole series, so the cut stage
cuts each series' calibration windows (inference/recalibration.py) beside its forecast windows,
the actors forecast both, and the write stage refits each forecast window's bands on its
series' windows in the same block before writing and scoring it (the calibration windows are
neither written nor scored): the plain path's numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import math
import os
import pickle
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import ray
import torch

from lit_forecast import layout, ray_cluster, storage
from lit_forecast.config import DataConfig
from lit_forecast.data import checks
from lit_forecast.data.fetch import fetch
from lit_forecast.data.ray_prepare import GROUP_ROWS, NOTE_GROUP, group_rows, plan_chunks, raise_problems, read_chunk
from lit_forecast.data.source import Series, fill_short_gaps, regularise
from lit_forecast.errors import ConfigError, CutoffError, DataError
from lit_forecast.evaluation import aggregates as agg
from lit_forecast.evaluation import backtest as bt
from lit_forecast.evaluation.baselines import seasonal_naive_lags
from lit_forecast.evaluation.plots import plot_fleet
from lit_forecast.inference import recalibration
from lit_forecast.inference.checkpoint import load_checkpoint
from lit_forecast.inference.cutoffs import SKIP_REASONS, SkippedWindow, cut_windows
from lit_forecast.inference.forecaster import MODEL_INPUTS, forecast, model_inputs
from lit_forecast.inference.pipeline import InferenceRequest, check_request
from lit_forecast.spec import SeriesStats, WindowSpec, gap_slots, series_label

log = logging.getLogger(__name__)

# auto: the plain path holds every reading in one process (about 200 bytes each at its peak:
# 8.5 GB for 5,000 zones' 51.6 M readings); above this many readings, stream.
AUTO_STREAM_READINGS = 5_000_000
CSV_ROW_BYTES = 28  # a long-format CSV row, to estimate readings from bytes
MAX_CSV_ROWS = 2_000_000  # --output file.csv holds at most this many rows (windows x horizon)
PROGRESS_EVERY_S = 5.0
EXAMPLES = 3  # skipped windows remembered per reason and group


@dataclass
class StreamOptions:
    """How the streaming path runs; the defaults fit a 2-CPU machine."""

    actors: int = 0  # forecasting actors at most; 0: as many as the CPUs (or GPUs) allow, at least 1
    num_cpus: float = 1  # per actor (also its torch threads)
    num_gpus: float = 0  # per actor, where the cluster has GPUs
    batch_size: int = 256  # windows per forward pass
    overwrite: bool = False  # replace an output folder that holds files
    object_store_mb: int = 1024  # Ray Data's object store budget for this dataset


@dataclass
class StreamResult:
    """What :func:`infer_streaming` made; no window-sized array."""

    checkpoint: str
    output: str  # the Parquet dataset folder
    windows: int
    sample: pd.DataFrame  # a few forecast rows, read back from the output (for printing)
    table: dict | None = None
    table_path: str | None = None
    zones: pd.DataFrame | None = field(default=None, repr=False)
    zones_path: str | None = None
    fleet_plot: str | None = None
    skipped: str = ""
    unseen: int = 0
    bad_series: list[str] = field(default_factory=list)  # why each series skipped whole was (names it)
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# Choosing the path


def estimated_readings(location: str) -> int:
    """Readings in a CSV/Parquet file or folder: exact from Parquet metadata, estimated from CSV bytes."""
    import pyarrow.parquet as pq

    from lit_forecast.data import readers

    fs, path = storage.resolve(location)
    info = fs.get_file_info(path)
    members = readers.list_data_files(fs, path)[0] if info.type == pafs.FileType.Directory else [info]
    total = 0
    for member in members:
        if member.path.lower().endswith((".parquet", ".pq")):
            try:
                with fs.open_input_file(member.path) as f:
                    total += pq.ParquetFile(f).metadata.num_rows
                continue
            except (pa.ArrowInvalid, OSError):
                pass
        total += (member.size or 0) * (4 if member.path.lower().endswith(".gz") else 1) // CSV_ROW_BYTES
    return total


def choose_engine(engine: str, request: InferenceRequest) -> str:
    """``plain`` or ``stream`` for ``request``: ``auto`` streams inputs of more than AUTO_STREAM_READINGS readings.

    An output file (.csv, .parquet) is one file written by the plain path: with a fleet that
    large (or ``stream``) it is refused, before anything runs, in favour of a folder.
    """
    output = request.output or ""
    is_file = output.endswith((".csv", ".parquet"))
    if engine == "stream" and is_file:
        raise ConfigError(
            f"--output {output}: --engine stream writes a Parquet dataset; give a folder name, "
            f"e.g. {output.rsplit('.', 1)[0]}/"
        )
    if engine == "plain" and not output.endswith(".csv"):
        return "plain"
    if engine == "stream":
        return "stream"
    path = request.checkpoint or layout.best_checkpoint(request.run or layout.latest_run(request.storage))
    data = data_config(load_checkpoint(path, "cpu").config.data, request.data)
    readings = estimated_readings(fetch(data).location)
    huge = readings > AUTO_STREAM_READINGS
    if huge and (output.endswith(".csv") or (engine == "auto" and is_file)):
        raise ConfigError(
            f"--output {output}: {data.source} holds about {readings:,} readings, too many forecasts for "
            f"one file; give a folder (e.g. --output {output.rsplit('.', 1)[0]}/) for a Parquet dataset "
            f"written by --engine stream"
        )
    chosen = "stream" if engine == "auto" and huge else "plain" if engine == "auto" else engine
    log.info("--engine %s: about %s readings -> %s", engine, f"{readings:,}", chosen)
    return chosen


def data_config(trained: DataConfig, data: str | None) -> DataConfig:
    """The training data settings, reading ``data`` instead of the training source if given."""
    if not data or data == trained.source:
        return trained
    return dataclasses.replace(trained, source=data, sha256=None)


# ---------------------------------------------------------------------------------------------
# Stage 2: whole series -> windows (and the baselines' sums)


def _series_of(table: pa.Table, name: str, displays: list[str], data: DataConfig, many_files: bool):
    """(series on the grid with every missing slot NaN, fatal notes, [(series, why)] skipped whole).

    The single-process checks (data/source.py) on one group's readings: duplicates and
    outliers fail the input, as on the plain path; a series that cannot be put on the grid is
    skipped and counted.
    """
    rows = group_rows(table, displays)
    names = rows["names"]
    problems = checks.Problems()
    checks.check_duplicates(name, rows, data, problems, many_files)
    bounds = checks.series_bounds(rows["codes"])
    if not problems.any():
        checks.check_outliers(name, rows, bounds, data, problems, many_files)
    if problems.any():
        note = {
            "stage": 2,
            "series_in_group": len(names),
            "files": problems.files,
            "rows": problems.rows,
            "series": problems.series,
        }
        return [], [note], []
    series = regularise(name, rows, bounds, data, None, problems)
    kept = {s.series_id for s in series}
    bad = [
        (sid, next((m for ms in problems.series.values() for m in ms if series_label(sid) in m), f"{sid}: unusable"))
        for sid in rows["names"]
        if sid not in kept
    ]
    return series, [], bad


def _cut_group(
    table: pa.Table,
    name: str,
    displays: list[str],
    config: dict,
    many_files: bool,
    stats: dict[str, tuple[float, float]],
    spec: dict,
    cutoffs: list[int] | None,
    history: int | None,
    strict: bool,
    evaluating: bool,
    recalibrate_days: float = 0.0,
) -> dict:
    """Map_groups UDF: one group's windows as model inputs, and a meta row with its counts and sums.

    With ``recalibrate_days`` (and quantile levels) each series' calibration windows follow, flagged.
    """
    data = DataConfig(**config)
    window = WindowSpec.from_dict(spec)
    group = int(table["group"][0].as_py())
    meta = _empty_meta(group)
    if group == NOTE_GROUP:  # problems found while reading
        meta["notes"] = [json.loads(x) for x in table["note"].to_pylist()]
        return _rows(window, meta)
    series, notes, bad = _series_of(table, name, displays, data, many_files)
    meta["notes"], meta["bad"], meta["series"] = notes, bad, len(series)
    if not series:
        return _rows(window, meta)
    scaling = {sid: SeriesStats(mean, std) for sid, (mean, std) in stats.items()}
    at = [pd.Timestamp(c) for c in cutoffs] if cutoffs is not None else None
    full = series
    days = recalibrate_days if _levels(spec) else 0.0
    back = max(recalibration.offsets(days, window.freq, window.horizon), default=pd.Timedelta(0))
    if not strict:  # strict messages name each series' first slot
        series = [_recent(s, scaling, window, at, history, data, back) for s in series]
    try:
        cut = cut_windows(series, scaling, window, at, data.max_gap, history, strict=strict, quiet=True)
    except CutoffError as err:
        if strict or "no windows to forecast" not in str(err):
            meta["notes"] = [{"stage": 5, "error": str(err)}]
            return _rows(window, meta)
        cut = None  # every window of the group skipped
    asked = len(series) * (len(at) if at is not None else 1)
    meta["asked"] = asked
    if cut is None:
        cut_skipped = _skips_of(series, scaling, window, at, data.max_gap, history)
        _count_skips(meta, cut_skipped)
        meta["unseen"] = [s.series_id for s in series if s.series_id not in scaling]
        return _rows(window, meta)
    _count_skips(meta, cut.skipped)
    meta["unseen"] = list(cut.unseen)
    windows = cut.windows
    scale = np.full(len(windows), np.nan)
    if evaluating:
        lags = seasonal_naive_lags(window.slots_per_day)
        max_slots = gap_slots(data.max_gap, window.freq)
        filled = [dataclasses.replace(s, values=fill_short_gaps(s.values, max_slots)) for s in full]
        scales, residuals, moved, none = _series_scores(filled, windows, data, window, lags, _levels(spec))
        meta["mase_moved"], meta["mase_none"] = moved, none
        actual = windows.actual()
        sums = agg.window_sums(actual, windows.series_ids, windows.cutoffs, window.horizon, _levels(spec))
        sums.methods = agg.baseline_sums(
            windows.history(slice(None), max(lags.values())),
            actual,
            windows.series_ids,
            scales,
            lags,
            _levels(spec),
            residuals,
        )
        sums.mase_scale, sums.residuals = scales, residuals or {}
        meta["sums"] = sums
        scale = np.array([scales[sid] for sid in windows.series_ids], dtype=np.float64)
    extra = []
    if days:
        extra = recalibration.calibration_windows(
            series,
            windows,
            days,
            lambda group, cutoffs: cut_windows(group, scaling, window, cutoffs, data.max_gap, quiet=True).windows,
        )
    return _rows(window, meta, windows, scale, extra)


def _recent(
    s: Series,
    scaling: dict,
    window: WindowSpec,
    at: list[pd.Timestamp] | None,
    history: int | None,
    data: DataConfig,
    back: pd.Timedelta,
) -> Series:
    """``s`` from a little before its earliest window's history (``back`` before its earliest cutoff: the
    calibration windows'): the same windows at a fraction of the slots.

    A known series is scaled with the checkpoint's statistics, so its windows depend only on
    the slots they hold and on the gaps filled among them: a gap short enough to be filled
    (at most ``data.max_gap``) that touches a window's history starts at most max_gap slots
    before it, so keeping one slot more keeps every fill identical. A series the checkpoint
    never saw is scaled on all its past, and is kept whole; so is one whose first cutoff is
    not on its grid (cut_windows names that mistake).
    """
    if s.series_id not in scaling:
        return s
    step = pd.Timedelta(window.freq)
    need = max(history or window.input_window, window.input_window) + gap_slots(data.max_gap, window.freq) + 1
    first = (min(at) if at is not None else s.start + len(s.values) * step) - back
    offset = (first - s.start) / step
    if offset != int(offset):
        return s
    lo = int(offset) - need
    if lo <= 0:
        return s
    return dataclasses.replace(s, start=s.start + lo * step, values=s.values[lo:])


def _empty_meta(group: int) -> dict:
    """A group's counts before anything is cut (``sums``: its baselines' ScoreSums, once scored)."""
    return {
        "group": group,
        "notes": [],
        "bad": [],
        "skipped": {},
        "examples": {},
        "asked": 0,
        "unseen": [],
        "series": 0,
        "sums": None,
        "mase_moved": 0,
        "mase_none": 0,
    }


def _levels(spec: dict) -> list[float]:
    return list(spec.get("levels") or [])


def _skips_of(series, scaling, window, at, max_gap, history) -> list[SkippedWindow]:
    """The skipped windows of a group where every window was skipped (cut_windows raised), series by series."""
    skipped = []
    for s in series:
        try:
            skipped += cut_windows([s], scaling, window, at, max_gap, history, quiet=True).skipped
        except CutoffError:
            skipped += _only_skips(s, scaling, window, at, max_gap, history)
    return skipped


def _only_skips(s: Series, scaling, window, at, max_gap, history) -> list[SkippedWindow]:
    """The skipped windows of one series none of whose windows can be cut: each cutoff alone, strictly."""
    out = []
    for c in at if at is not None else [None]:
        try:
            cut_windows([s], scaling, window, [c] if c is not None else None, max_gap, history, strict=True, quiet=True)
        except CutoffError as err:
            message = str(err)
            if c is not None and "outside the data" in message:
                reason = "too_little_history" if c < s.start else "data_ends_before_cutoff"
            elif "too little history" in message:
                reason = "too_little_history"
            elif "just before it is missing" in message:
                reason = "gap_before_cutoff"
            else:
                reason = "gap_in_history"
            out.append(SkippedWindow(s.series_id, c if c is not None else s.start, reason, message))
    return out


def _count_skips(meta: dict, skipped: list[SkippedWindow]) -> None:
    for k in skipped:
        meta["skipped"][k.reason] = meta["skipped"].get(k.reason, 0) + 1
        shown = meta["examples"].setdefault(k.reason, [])
        if len(shown) < EXAMPLES:
            shown.append((k.series_id, str(k.cutoff)))


def _series_scores(
    filled: list[Series], windows, data: DataConfig, window: WindowSpec, lags: dict[str, int], levels: list[float]
):
    """Per series with a window: its MASE scale and baseline residual quantiles, as the plain path computes them."""
    first = pd.Series(windows.cutoffs, index=windows.series_ids).groupby(level=0).min().to_dict()
    week, train_end = lags["naive_weekly"], pd.Timestamp(data.train_end)
    scales, residuals, moved, none = {}, {}, 0, 0
    quiet = logging.getLogger(bt.__name__)
    level, quiet.level = quiet.level, logging.ERROR  # counted once on the driver, not once per series
    try:
        for s in filled:
            if s.series_id not in first:
                continue
            times = pd.date_range(s.start, periods=len(s.values), freq=window.freq)
            end = train_end
            if (times < end).sum() <= week:
                moved += 1
                end = first[s.series_id]
            try:
                scales[s.series_id] = bt.training_scale(s.values, times, end, week)
            except ValueError:
                none += 1
                scales[s.series_id] = float("nan")
            if levels:
                residuals[s.series_id] = bt.baseline_residual_quantiles(
                    s.values, times, train_end, first[s.series_id], lags, levels
                )
    finally:
        quiet.level = level
    return scales, (residuals if levels else None), moved, none


def _rows(window: WindowSpec, meta: dict, windows=None, scale: np.ndarray | None = None, extra=()) -> dict:
    """The stage's output: a first row (index -1) carrying ``meta``, one row per window, then one per window of
    ``extra`` (calibration windows: ``calibration`` True, fitted on but neither written nor scored).

    ``pool``: how many windows of its series the group holds, so that the write stage can tell a series
    whose windows Ray Data split over two blocks.
    """
    H = window.horizon
    parts = ([windows] if windows is not None and len(windows) else []) + [w for w in extra if len(w)]
    n = sum(len(w) for w in parts)
    forecast_rows = len(windows) if windows is not None else 0
    ids = [sid for w in parts for sid in w.series_ids]
    pool = pd.Series(ids, dtype=object).value_counts().to_dict() if ids else {}
    out = {
        "group": np.full(n + 1, meta["group"], dtype=np.int64),
        "index": np.arange(-1, n, dtype=np.int64),
        "series_id": np.asarray([""] + ids, dtype=object),
        "cutoff": np.concatenate([[0]] + [w.cutoffs.as_unit("ns").asi8 for w in parts]).astype(np.int64),
        "calibration": np.arange(-1, n) >= forecast_rows,
        "pool": np.asarray([0] + [pool[sid] for sid in ids], dtype=np.int64),
        "in_checkpoint": np.ones(n + 1, dtype=bool),
        "mase_scale": np.concatenate([[np.nan], scale if forecast_rows else [], np.full(n - forecast_rows, np.nan)]),
        "actual": np.concatenate([np.full((1, H), np.nan)] + [w.actual() for w in parts]),
        "meta": np.asarray([pickle.dumps(meta)] + [b""] * n, dtype=object),
    }
    out["calibration"][0] = False
    unseen = set(meta["unseen"])
    out["in_checkpoint"][1:] = [sid not in unseen for sid in ids]
    inputs = [model_inputs(w) for w in parts]
    for name in MODEL_INPUTS:
        blank = np.zeros((1, *_input_shape(window, name)), dtype=np.float32)
        value = np.concatenate([blank] + [x[name] for x in inputs])
        if name.endswith("_time"):  # slot of day, weekday, holiday: small integers travel as int16
            value = value.astype(np.int16)
        out[name] = value
    return out


def _input_shape(window: WindowSpec, name: str) -> tuple[int, ...]:
    W, H = window.input_window, window.horizon
    return {"past_target": (W,), "past_time": (W, 3), "future_time": (H, 3), "loc": (), "scale": ()}[name]


def series_aligned(chunks: list, location: str, series_column: str | None) -> bool:
    """True if no series spans two read chunks, by the Parquet statistics of the series column.

    A fleet written series by series (bench/make_zones.py, most exports) has row groups whose
    [min, max] series ranges do not overlap: each chunk then holds whole series, and windows are
    cut where the chunk is read, without the shuffle that gathers a series' readings.
    """
    import pyarrow.parquet as pq

    if not series_column or not chunks or any(not c.row_groups and c.end != -1 for c in chunks):
        return False
    ranges = []
    fs, _ = storage.resolve(location)
    for chunk in chunks:
        try:
            with fs.open_input_file(chunk.path) as f:
                meta = pq.ParquetFile(f).metadata
        except (pa.ArrowInvalid, OSError):
            return False  # not Parquet (a CSV) or unreadable: the reader names the problem
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]
        if series_column not in names:
            return False
        column = names.index(series_column)
        lows, highs = [], []
        for group in chunk.row_groups or range(meta.num_row_groups):
            stats = meta.row_group(group).column(column).statistics
            if meta.row_group(group).num_rows == 0:
                continue
            if stats is None or not stats.has_min_max or stats.null_count:
                return False
            lows.append(stats.min)
            highs.append(stats.max)
        if lows:
            ranges.append((min(lows), max(highs)))
    ranges.sort()
    return all(high < low for (_, high), (low, _) in itertools.pairwise(ranges))


def _read_and_cut(batch: dict, chunks: list, location: str, config: dict, many_files: bool, **cut) -> dict:
    """Map_batches UDF for a chunk that holds whole series: read it and cut its windows (no shuffle)."""
    index = int(batch["chunk"][0])
    table = read_chunk(batch, chunks, location, config, 1, many_files)
    if table.num_rows and table["group"][0].as_py() != NOTE_GROUP:
        table = table.set_column(
            table.schema.get_field_index("group"), "group", pa.array(np.full(table.num_rows, index, dtype=np.int32))
        )
    if not table.num_rows:
        return _rows(WindowSpec.from_dict(cut["spec"]), _empty_meta(index))
    return _cut_group(table, config=config, many_files=many_files, **cut)


# ---------------------------------------------------------------------------------------------
# Stage 3: the actors


class Forecaster:
    """Map_batches callable on an actor: loads the checkpoint once, forecasts every batch it is given."""

    def __init__(self, checkpoint, name: str, use_gpu: bool, threads: int, batch_size: int):
        torch.set_num_threads(max(1, threads))
        payload = ray.get(checkpoint) if isinstance(checkpoint, ray.ObjectRef) else checkpoint
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model = load_checkpoint(payload, device, name=name).model
        self.batch_size = batch_size

    def __call__(self, batch: dict) -> dict:
        """Quantiles (n, H, Q) float64 passengers of the batch's windows; meta rows pass through as NaN."""
        rows = np.flatnonzero(batch["index"] >= 0)
        H = batch["actual"].shape[1]
        Q = max(1, len(self.model.levels))
        quantiles = np.full((len(batch["index"]), H, Q), np.nan)
        if len(rows):
            inputs = {name: np.ascontiguousarray(batch[name][rows]) for name in MODEL_INPUTS}
            for name in ("past_time", "future_time"):
                inputs[name] = inputs[name].astype(np.int64)
            quantiles[rows] = forecast(self.model, inputs, self.batch_size)
        keep = ("group", "index", "series_id", "cutoff", "calibration", "pool", "in_checkpoint", "mase_scale")
        keep += ("actual", "meta")
        return {**{k: batch[k] for k in keep}, "quantiles": quantiles}


# ---------------------------------------------------------------------------------------------
# Stage 4: write each block and score it


def forecast_schema(levels: list[float], with_actual: bool) -> pa.Schema:
    """The output dataset's schema (see the module docstring)."""
    fields = [
        ("series_id", pa.string()),
        ("cutoff", pa.timestamp("ns")),
        ("timestamp", pa.timestamp("ns")),
        ("step", pa.int16()),
        ("median", pa.float64()),
    ]
    fields += [(f"q{q:g}", pa.float64()) for q in levels if q != 0.5]
    fields += [("actual", pa.float64())] if with_actual else []
    return pa.schema(fields + [("in_checkpoint", pa.bool_())])


# The write stage reserves no CPU: the forecasting actors may hold every CPU of the cluster for
# the whole run, and a write task that waited for one would hold every forecast block in the
# object store until the actors were released at the end. Writing (and refitting) a block is
# light next to forecasting it. Tasks that reserve nothing are not limited by the CPUs, so
# WRITERS caps how many run at once: without a cap Ray Data started a worker process per block.
WRITE_CPUS = 0
WRITERS = 1


def _write_block(
    batch: dict,
    folder: str,
    levels: list[float],
    median_index: int,
    freq: str,
    evaluating: bool,
    recalibrate_days: float = 0.0,
) -> dict:
    """Map_batches UDF: refit the block's bands, write its forecasts as one Parquet file; return its sums, metas
    and recalibration counts (one row)."""
    metas = [pickle.loads(m) for m in batch["meta"][batch["index"] < 0]]
    rows = np.flatnonzero((batch["index"] >= 0) & ~batch["calibration"])
    n = len(rows)
    model, counts = None, {"refitted": 0, "kept": 0}
    if n:
        quantiles = batch["quantiles"][rows]
        if recalibrate_days and levels:
            quantiles, counts = _refit(batch, rows, quantiles, levels, freq, recalibrate_days)
        H = quantiles.shape[1]
        median = quantiles[..., median_index]
        ids = batch["series_id"][rows].tolist()
        cutoffs = batch["cutoff"][rows].astype(np.int64)
        actual = batch["actual"][rows].astype(np.float64)
        step_ns = pd.Timedelta(freq).value
        columns = {
            "series_id": pa.array(np.repeat(np.asarray(ids, dtype=object), H), pa.string()),
            "cutoff": pa.array(np.repeat(cutoffs, H), pa.timestamp("ns")),
            "timestamp": pa.array((cutoffs[:, None] + np.arange(H) * step_ns).ravel(), pa.timestamp("ns")),
            "step": pa.array(np.tile(np.arange(H, dtype=np.int16), n)),
            "median": pa.array(median.ravel()),
            **{f"q{q:g}": pa.array(quantiles[..., i].ravel()) for i, q in enumerate(levels) if q != 0.5},
        }
        if evaluating:
            flat = actual.ravel()
            columns["actual"] = pa.array(flat, mask=~np.isfinite(flat))
        columns["in_checkpoint"] = pa.array(np.repeat(batch["in_checkpoint"][rows].astype(bool), H))
        table = pa.Table.from_pydict(columns, schema=forecast_schema(levels, evaluating))
        first = (int(batch["group"][rows[0]]), int(batch["index"][rows[0]]))
        storage.write_parquet(storage.join(folder, f"part-{first[0]:05d}-{first[1]:08d}.parquet"), table)
        if evaluating:
            model = agg.method_sums(
                median,
                actual,
                ids,
                batch["mase_scale"][rows].astype(np.float64),
                quantiles if levels else None,
                levels or None,
            )
    payload = pickle.dumps((model, metas, counts))
    return {"windows": np.array([n], dtype=np.int64), "payload": np.array([payload], dtype=object)}


def _refit(batch: dict, rows: np.ndarray, quantiles: np.ndarray, levels: list[float], freq: str, days: float):
    """The forecast ``rows``' quantiles refitted on the windows of their series in this block, and the counts."""
    every = np.flatnonzero(batch["index"] >= 0)
    ids = batch["series_id"][every].tolist()
    held = pd.Series(ids, dtype=object).value_counts()
    split = [sid for sid, pool in zip(ids, batch["pool"][every]) if held[sid] != pool]
    if split:  # a block sliced by Ray Data: the fit would miss windows, and differ from the plain path
        raise RuntimeError(
            f"series {split[0]!r}: its windows were split over two Ray Data blocks, so its bands cannot be refitted "
            f"as on the plain path; use fewer cutoffs per call, or --recalibrate-days 0"
        )
    recent = recalibration.RecentForecasts(
        batch["quantiles"][every],
        batch["actual"][every].astype(np.float64),
        ids,
        pd.to_datetime(batch["cutoff"][every].astype(np.int64), unit="ns"),
    )
    cutoffs = pd.to_datetime(batch["cutoff"][rows].astype(np.int64), unit="ns")
    return recalibration.recalibrate(quantiles, batch["series_id"][rows].tolist(), cutoffs, recent, levels, days, freq)


# ---------------------------------------------------------------------------------------------
# The driver


@contextlib.contextmanager
def _data_context(cpus: float, gpus: float, object_store_mb: int):
    """Ray Data's limits set for this dataset (restored afterwards), its progress bars and chatter off."""
    from ray.data import DataContext, ExecutionResources

    context = DataContext.get_current()
    saved = (
        context.execution_options.resource_limits,
        context.enable_progress_bars,
        context.print_on_execution_start,
        context.enable_auto_log_stats,
        context.op_resource_reservation_enabled,
    )
    ray_log, bars_log = logging.getLogger("ray.data"), logging.getLogger("ray.data._internal.progress")
    ray_level, bars_level = ray_log.level, bars_log.level
    context.execution_options.resource_limits = ExecutionResources(
        cpu=cpus, gpu=gpus, object_store_memory=object_store_mb << 20
    )
    context.enable_progress_bars = False  # our own progress line instead (one line every few seconds)
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    # Every stage may use every CPU (see ray_prepare._every_cpu_per_stage): blocks are bounded
    # by the group size and the forecast blocks, so no per-stage reservation is needed.
    context.op_resource_reservation_enabled = False
    ray_log.setLevel(logging.WARNING)
    bars_log.setLevel(logging.ERROR)  # "Progress bars disabled": on purpose, ours replaces them
    try:
        yield
    finally:
        (
            context.execution_options.resource_limits,
            context.enable_progress_bars,
            context.print_on_execution_start,
            context.enable_auto_log_stats,
            context.op_resource_reservation_enabled,
        ) = saved
        ray_log.setLevel(ray_level)
        bars_log.setLevel(bars_level)


def default_output(checkpoint: str, cutoffs: list[pd.Timestamp] | None) -> str:
    """<run>/forecasts/forecast_<first>-<last>/ (``forecast_next`` without cutoffs)."""
    run = layout.run_of(checkpoint)
    folder = layout.forecasts_dir(run) if run else storage.absolute("forecasts")
    if not cutoffs:
        return storage.join(folder, "forecast_next")
    first, last = min(cutoffs), max(cutoffs)
    return storage.join(folder, f"forecast_{first:%Y%m%dT%H%M}" + (f"-{last:%Y%m%dT%H%M}" if last != first else ""))


def check_output(output: str, overwrite: bool) -> None:
    """Refuse, before anything runs, an output that is a file or a folder holding files (without ``overwrite``)."""
    fs, path = storage.resolve(output)
    try:
        info = fs.get_file_info(path)
    except OSError as err:
        raise ConfigError(f"--output {output}: cannot be reached ({err})") from None
    if info.type == pafs.FileType.File:
        raise ConfigError(
            f"--output {output} is a file: the streaming path writes a folder of Parquet files; "
            f"give a folder name, or a .csv/.parquet file with --engine plain"
        )
    if info.type == pafs.FileType.Directory and not overwrite and fs.get_file_info(pafs.FileSelector(path)):
        raise ConfigError(
            f"--output {output} already holds files: give a new folder, or --overwrite to replace it "
            f"(the new forecasts are moved into place only once all are written)"
        )
    if not storage.is_uri(output):
        parent = next((p for p in Path(path).parents if p.exists()), None)
        if parent is not None and (not parent.is_dir() or not os.access(parent, os.W_OK)):
            raise ConfigError(f"--output {output}: {parent} is not a writable folder")


def _move_into_place(fs: pafs.FileSystem, tmp: str, path: str) -> None:
    """The finished temporary folder becomes ``path``; an old one is moved aside first, then deleted."""
    old = None
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        old = f"{path}.old-{uuid.uuid4().hex[:8]}"
        fs.move(path, old)
    fs.move(tmp, path)
    if old:
        fs.delete_dir(old)


def infer_streaming(request: InferenceRequest, options: StreamOptions | None = None) -> StreamResult:
    """Forecast (and with known actuals, backtest) every series of the data on Ray Data; see the module docstring."""
    options = options or StreamOptions()
    started = time.perf_counter()
    check_request(request)
    if request.plot_cutoff is not None or request.plot_series is not None:
        raise ConfigError(
            "--plot-cutoff and --plot-series draw one window: use --engine plain (the streaming path "
            "draws the fleet plot only)"
        )
    path = request.checkpoint or layout.best_checkpoint(request.run or layout.latest_run(request.storage))
    loaded = load_checkpoint(path, "cpu", horizon=request.horizon)
    model = loaded.model
    spec, levels = loaded.window, list(model.levels)
    data = data_config(loaded.config.data, request.data)
    output = request.output or default_output(loaded.path, request.cutoffs)
    check_output(output, options.overwrite or request.output is None)
    source = fetch(data)
    evaluating = request.cutoffs is not None
    lags = seasonal_naive_lags(spec.slots_per_day)

    gpus_asked = options.num_gpus if torch.cuda.device_count() else 0
    ray_cluster.init_ray(options.num_cpus, gpus_asked, "--num-cpus or --num-gpus (per actor)")
    cpus = max(1.0, float(ray.cluster_resources().get("CPU", 1)))
    gpus = float(ray.cluster_resources().get("GPU", 0))
    num_gpus = options.num_gpus if gpus else 0
    if options.num_gpus and not gpus:
        log.warning("--num-gpus %s asked, but the Ray cluster has no GPU: forecasting on CPU", options.num_gpus)
    most = int(gpus // num_gpus) if num_gpus else int(cpus // options.num_cpus)
    actors = max(1, min(options.actors or most, most or 1))

    name, displays, chunks, _ = plan_chunks(source, data, tasks=2 * int(cpus))
    if not chunks:
        raise DataError(f"{source.location}: no CSV or Parquet files (.csv, .csv.gz, .parquet, .pq) in this folder")
    aligned = series_aligned(chunks, source.location, data.series_column)
    groups = len(chunks) if aligned else max(2 * int(cpus), math.ceil(sum(c.rows for c in chunks) / GROUP_ROWS))
    settings = dataclasses.asdict(data)
    stats = {sid: (s.mean, s.std) for sid, s in loaded.series_stats.items()}
    spec_dict = {**spec.to_dict(), "levels": levels}
    fs, out_path = storage.resolve(output)
    tmp = f"{out_path.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    fs.create_dir(tmp, recursive=True)
    # Actors on one machine read the checkpoint's path; on a cluster a local file travels as bytes, once.
    one_node = len([n for n in ray.nodes() if n.get("Alive")]) == 1
    payload = loaded.path if storage.is_uri(loaded.path) or one_node else ray.put(storage.read_bytes(loaded.path))
    log.info(
        "streaming %s: %d read task(s), %s; %d forecasting actor(s) of %s CPU%s",
        name,
        len(chunks),
        "each holding whole series (no shuffle)" if aligned else f"{groups} series group(s)",
        actors,
        options.num_cpus,
        f" and {num_gpus} GPU" if num_gpus else "",
    )
    tmp_location = tmp if not storage.is_uri(output) else output.split("://", 1)[0] + "://" + tmp
    try:
        with _data_context(cpus, gpus, options.object_store_mb):
            results = _run(
                chunks=chunks,
                location=source.location,
                name=name,
                displays=displays,
                settings=settings,
                groups=groups,
                stats=stats,
                spec_dict=spec_dict,
                request=request,
                evaluating=evaluating,
                lags=lags,
                levels=levels,
                median_index=model.median_index,
                freq=spec.freq,
                tmp=tmp_location,
                payload=payload,
                options=options,
                actors=actors,
                num_gpus=num_gpus,
                aligned=aligned,
            )
        sums, metas, windows, refitted = results
        notes = [n for m in metas for n in m["notes"]]
        strict = [n["error"] for n in notes if n.get("stage") == 5]
        if strict:
            raise CutoffError(strict[0])
        raise_problems(name, [n for n in notes if n.get("stage") != 5], sum(m["series"] for m in metas))
        if windows == 0:
            raise CutoffError("no windows to forecast: " + (_skip_summary(metas) or "no series or no cutoffs"))
        _move_into_place(fs, tmp, out_path)
    except BaseException:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_dir(tmp)
        raise
    result = StreamResult(
        loaded.path,
        output,
        windows,
        _sample(output),
        skipped=_skip_summary(metas),
        unseen=sum(len(m["unseen"]) for m in metas),
        bad_series=[why for m in metas for _, why in m["bad"]],
    )
    _log_counts(metas, result, data)
    recalibrating = bool(request.recalibrate_days and levels)
    if recalibrating:
        log.log(
            logging.INFO if refitted["refitted"] else logging.WARNING,
            "%s",
            recalibration.describe(refitted, request.recalibrate_days),
        )
    if evaluating and sums is not None:
        _score(result, sums, lags, metas, output)
        if recalibrating:
            result.table["recalibration"] = {"days": request.recalibrate_days, **refitted}
            bt.save_table(result.table_path, result.table)
    result.seconds = time.perf_counter() - started
    log.info(
        "forecast %s windows in %.1f s (%s windows/s) -> %s",
        f"{windows:,}",
        result.seconds,
        f"{windows / max(result.seconds, 1e-9):,.0f}",
        output,
    )
    return result


def _run(  # keyword-only: twenty settings of one dataset, none of which may be swapped
    *,
    chunks,
    location,
    name,
    displays,
    settings,
    groups,
    stats,
    spec_dict,
    request,
    evaluating,
    lags,
    levels,
    median_index,
    freq,
    tmp,
    payload,
    options: StreamOptions,
    actors: int,
    num_gpus: float,
    aligned: bool,
):
    """Build and consume the dataset; only the blocks' sums and metas reach this process."""
    history = max(lags.values()) if evaluating else None
    many_files = len(displays) > 1
    cutoffs = [c.value for c in request.cutoffs] if request.cutoffs is not None else None
    cut = {
        "name": name,
        "displays": displays,
        "stats": stats,
        "spec": spec_dict,
        "cutoffs": cutoffs,
        "history": history,
        "strict": request.strict,
        "evaluating": evaluating,
        "recalibrate_days": request.recalibrate_days,
    }
    items = ray.data.from_items([{"chunk": i} for i in range(len(chunks))], override_num_blocks=len(chunks))
    if aligned:  # every chunk holds whole series: cut where it is read
        windows = items.map_batches(
            _read_and_cut,
            batch_size=1,
            batch_format="numpy",
            fn_kwargs={"chunks": chunks, "location": location, "config": settings, "many_files": many_files, **cut},
        )
    else:  # gather each group's readings first (an all-to-all shuffle)
        readings = items.map_batches(
            read_chunk,
            batch_size=1,
            batch_format="numpy",
            fn_kwargs={
                "chunks": chunks,
                "location": location,
                "config": settings,
                "groups": groups,
                "many_files": many_files,
            },
        )
        windows = readings.groupby("group", num_partitions=groups).map_groups(
            _cut_group, batch_format="pyarrow", fn_kwargs={"config": settings, "many_files": many_files, **cut}
        )
    forecasts = windows.map_batches(
        # One call per block: a block is one chunk's or group's windows, bounded by its readings. A batch size
        # here would be fused into the stage before it and bundle that many of its inputs (whole chunks) per task.
        Forecaster,
        batch_size=None,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=actors),
        fn_constructor_args=(payload, name, num_gpus > 0, int(max(1, options.num_cpus)), options.batch_size),
        num_cpus=options.num_cpus,
        num_gpus=num_gpus or None,
    )  # Ray Data restarts an actor that dies and retries its blocks (max_restarts=-1, max_task_retries=-1)
    written = forecasts.map_batches(
        _write_block,
        batch_size=None,
        batch_format="numpy",
        num_cpus=WRITE_CPUS,
        compute=ray.data.TaskPoolStrategy(size=WRITERS),
        fn_kwargs={
            "folder": tmp,
            "levels": levels,
            "median_index": median_index,
            "freq": freq,
            "evaluating": evaluating,
            "recalibrate_days": request.recalibrate_days,
        },
    )
    sums = None
    metas: list[dict] = []
    counts = {"windows": 0, "blocks": 0, "groups": 0}
    refitted = {"refitted": 0, "kept": 0}  # recalibration counts, summed over blocks
    with _progress_line(counts, groups):
        for batch in written.iter_batches(batch_size=None, batch_format="numpy"):
            for count, blob in zip(batch["windows"], batch["payload"]):
                model, group_metas, refits = pickle.loads(blob)
                for key in refitted:
                    refitted[key] += refits[key]
                counts["windows"] += int(count)
                counts["blocks"] += 1
                for meta in group_metas:
                    group_sums = meta.pop("sums")
                    if group_sums is not None:
                        sums = group_sums if sums is None else sums.merge(group_sums)
                    metas.append(meta)
                    counts["groups"] += meta["group"] >= 0
                    if meta["notes"]:  # a problem that fails the input: the caller reports it
                        return sums, metas, counts["windows"], refitted
                if model is not None:
                    part = agg.ScoreSums(len(model.point["n"]), levels, {bt.MODEL: model})
                    sums = part if sums is None else sums.merge(part)
    return sums, metas, counts["windows"], refitted


@contextlib.contextmanager
def _progress_line(counts: dict, groups: int):
    """Log ``forecast: 12,288 windows, 310 windows/s, 30 blocks written, 14 of 40 series groups cut`` now and then."""
    stop = threading.Event()
    started = time.perf_counter()

    def report() -> None:
        while not stop.wait(PROGRESS_EVERY_S):
            elapsed = time.perf_counter() - started
            log.info(
                "forecast: %s windows, %s windows/s, %d blocks written, %d of at most %d series groups cut, %.0f s",
                f"{counts['windows']:,}",
                f"{counts['windows'] / elapsed:,.0f}",
                counts["blocks"],
                counts["groups"],
                groups,
                elapsed,
            )

    thread = threading.Thread(target=report, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _skip_summary(metas: list[dict]) -> str:
    """``skipped 3 of 31,000 windows: 2 gap before cutoff (e.g. 'z0038' at 2015-01-22), ...``; '' if none."""
    counts: dict[str, int] = {}
    examples: dict[str, list] = {}
    for m in metas:
        for reason, n in m["skipped"].items():
            counts[reason] = counts.get(reason, 0) + n
            examples.setdefault(reason, []).extend(m["examples"].get(reason, []))
    if not counts:
        return ""
    asked = sum(m["asked"] for m in metas)
    parts = [
        f"{counts[r]:,} {label} (e.g. " + ", ".join(f"{sid!r} at {c}" for sid, c in sorted(examples[r])[:1]) + ")"
        for r, label in SKIP_REASONS.items()
        if r in counts
    ]
    return f"skipped {sum(counts.values()):,} of {asked:,} windows: " + ", ".join(parts)


def _log_counts(metas: list[dict], result: StreamResult, data: DataConfig) -> None:
    if result.unseen:
        log.info(
            "%d series not in the checkpoint: scaled with the mean and std of their own history before each cutoff",
            result.unseen,
        )
    if result.bad_series:
        log.warning(
            "%d series skipped, their readings cannot be put on the data.freq=%s grid: %s",
            len(result.bad_series),
            data.freq,
            "; ".join(result.bad_series[:EXAMPLES]),
        )
    if result.skipped:
        log.warning("%s", result.skipped)
    moved, none = sum(m["mase_moved"] for m in metas), sum(m["mase_none"] for m in metas)
    if moved:
        log.warning(
            "MASE: %d series have less than a week of data before data.train_end=%s, so they are scaled on "
            "their data before their first cutoff",
            moved,
            data.train_end,
        )
    if none:
        log.warning("MASE: %d series have no weekly seasonal-naive error to scale by: their MASE is NaN", none)


def _score(result: StreamResult, sums: agg.ScoreSums, lags: dict[str, int], metas: list[dict], output: str) -> None:
    """The backtest table, per-series scores and fleet plot from the merged sums, written next to the output."""
    table, zones = agg.finalize(sums, lags)
    base = output.rstrip("/")
    if len(zones) > 1:
        table["fleet"] = bt.fleet_summary(zones)
        result.zones, result.zones_path, result.fleet_plot = zones, base + ".zones.csv", base + ".fleet.png"
        storage.write_text(result.zones_path, zones.to_csv(index=False, float_format="%.6g"))
        plot_fleet(
            result.fleet_plot,
            zones["mase_model"],
            zones["mase_naive_weekly"],
            f"per-series MASE over {len(table['cutoffs'])} cutoffs, {len(zones):,} series",
        )
    if result.skipped:
        skipped = sum(n for m in metas for n in m["skipped"].values())
        table["skipped"] = {"windows": skipped, "asked": sum(m["asked"] for m in metas), "summary": result.skipped}
    if result.unseen:
        table["unseen_series"] = {"count": result.unseen, "series": sorted(s for m in metas for s in m["unseen"])}
    if result.bad_series:
        table["skipped_series"] = {"count": len(result.bad_series), "series": sorted(result.bad_series)}
    result.table, result.table_path = table, base + ".backtest.json"
    bt.save_table(result.table_path, table)


def _sample(output: str, rows: int = 48) -> pd.DataFrame:
    """The first rows of the first file of the output (what the command line prints), as the plain frame names them."""
    fs, path = storage.resolve(output)
    files = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path)) if i.path.endswith(".parquet"))
    if not files:
        return pd.DataFrame()
    import pyarrow.parquet as pq

    with fs.open_input_file(files[0]) as f:
        first = pq.ParquetFile(f).read_row_group(0)
    return first.slice(0, rows).to_pandas().rename(columns={"median": "forecast"}).drop(columns=["step"])
