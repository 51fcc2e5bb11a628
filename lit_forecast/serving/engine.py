"""The model one server replica holds: loaded once, it forecasts a batch of checked queries at a time.

No Ray and no HTTP here: the Serve deployment (:mod:`lit_forecast.serving.app`) calls
:meth:`ServedModel.forecast_batch` from its ``@serve.batch`` method, and unit tests call it
directly. Windows are cut by the one window cutter (:func:`lit_forecast.inference.cutoffs.cut_windows`)
and forecast by the one decoding path (:func:`lit_forecast.inference.forecaster.forecast`), so a
served forecast is the number ``infer.py`` gives for the same window and checkpoint: a known
series is scaled with the checkpoint's statistics, an unknown one on its own history.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from lit_forecast import layout
from lit_forecast.config import DataConfig
from lit_forecast.data.source import Series
from lit_forecast.errors import CutoffError
from lit_forecast.inference.checkpoint import load_checkpoint
from lit_forecast.inference.cutoffs import cut_windows, read_series
from lit_forecast.inference.forecaster import forecast, model_inputs
from lit_forecast.serving.api import Context, ModelInfo, Query, RequestError
from lit_forecast.spec import gap_slots

log = logging.getLogger(__name__)


class ServedModel:
    """A checkpoint ready to answer queries, with the series of ``data`` for cutoff requests."""

    def __init__(self, checkpoint: str, data: str | None = None, device: str = "cpu"):
        """Load ``checkpoint`` (a run's checkpoint folder or .ckpt, path or URI) and, if given, read ``data``."""
        loaded = load_checkpoint(checkpoint, device)
        self.checkpoint = loaded.path
        self.model = loaded.model  # the plain ForecastModel, in eval mode, on ``device``
        self.spec = loaded.window
        self.stats = loaded.series_stats
        self.data_config: DataConfig = loaded.config.data
        self.series: dict[str, Series] = {}
        if data:
            source = (
                self.data_config
                if data == self.data_config.source
                else dataclasses.replace(self.data_config, source=data, sha256=None)
            )
            self.series = {s.series_id: s for s in read_series(source)}
        self.data = data
        self.context = Context(
            self.spec, frozenset(self.stats), {sid: s.start for sid, s in self.series.items()} if data else None, data
        )
        self._step = pd.Timedelta(self.spec.freq)
        self._margin = self.spec.input_window + gap_slots(self.data_config.max_gap, self.spec.freq) + 1

    def info(self) -> dict:
        """GET /model: run, checkpoint, window, levels and training range."""
        d = self.data_config
        return ModelInfo(
            run=layout.run_of(self.checkpoint),
            checkpoint=self.checkpoint,
            horizon=self.spec.horizon,
            input_window=self.spec.input_window,
            freq=self.spec.freq,
            quantiles=self.model.levels,
            series=len(self.stats),
            train_end=str(d.train_end),
            val_end=str(d.val_end),
            data=self.data,
        ).model_dump()

    def forecast_batch(self, queries: list[Query]) -> list[dict | RequestError]:
        """Answers in order: a ForecastResponse body per query, or the RequestError of a window that cannot be cut.

        All windows are cut in one :func:`cut_windows` call (each series ends the slot before its
        cutoff, so its one window is the next ``horizon`` slots) and forecast in one call.
        """
        answers: list[dict | RequestError | None] = [None] * len(queries)
        cuttable: list[tuple[int, Series]] = []
        for i, q in enumerate(queries):
            history = self._history(q)
            if isinstance(history, RequestError):
                answers[i] = history
            else:
                cuttable.append((i, history))
        if not cuttable:
            return answers
        try:
            cut = cut_windows(
                [s for _, s in cuttable], self.stats, self.spec, None, self.data_config.max_gap, quiet=True
            )
        except CutoffError:  # every window was skipped: say why for each
            for i, s in cuttable:
                answers[i] = self._why(s)
            return answers
        quantiles = forecast(self.model, model_inputs(cut.windows), len(cut.windows))  # (n, H, Q)
        # Windows and skips both come in series order, one per series. Only the cutoff form can
        # be skipped (a history was checked whole), and the same series at the same cutoff is
        # the same window there, skipped or not.
        skipped, row = list(cut.skipped), 0
        for i, _ in cuttable:
            q = queries[i]
            if skipped and q.history is None and (skipped[0].series_id, skipped[0].cutoff) == (q.series_id, q.cutoff):
                answers[i] = RequestError("cutoff", skipped.pop(0).message)
            else:
                answers[i] = self._answer(q, quantiles[row], cut.windows.cutoffs[row])
                row += 1
        return answers

    def _history(self, q: Query) -> Series | RequestError:
        """The values before the cutoff as a series that ends the slot before it."""
        if q.history is not None:
            return Series(q.series_id, q.cutoff - len(q.history) * self._step, q.history)
        s = self.series[q.series_id]
        c = int((q.cutoff - s.start) / self._step)  # on the grid: checked by parse_request
        last = s.start + (len(s.values) - 1) * self._step
        if c > len(s.values):
            return RequestError(
                "cutoff",
                f"{q.cutoff} is after the data of series {q.series_id!r}, which ends at "
                f"{last}: the latest cutoff is {last + self._step}; send the history for "
                "later ones",
            )
        if c <= 0:
            return RequestError("cutoff", f"{q.cutoff} is before the data of series {q.series_id!r} starts ({s.start})")
        # A known series needs only its look-back (and enough before it to fill a short gap at its
        # start); an unknown one is scaled on all its history before the cutoff, as infer.py does.
        lo = max(0, c - self._margin) if q.series_id in self.stats else 0
        return Series(q.series_id, s.start + lo * self._step, s.values[lo:c])

    def _why(self, s: Series) -> RequestError:
        """The error of a series whose one window cannot be cut."""
        try:
            cut_windows([s], self.stats, self.spec, None, self.data_config.max_gap, strict=True, quiet=True)
        except CutoffError as err:
            return RequestError("cutoff", str(err))
        return RequestError("cutoff", "no window could be cut")  # not reached: the batch failed on this series

    def _answer(self, q: Query, quantiles: np.ndarray, cutoff: pd.Timestamp) -> dict:
        """A ForecastResponse body from one window's (H, Q) quantiles."""
        times = pd.date_range(cutoff, periods=self.spec.horizon, freq=self.spec.freq)
        levels = self.model.levels
        return {
            "series_id": q.series_id,
            "timestamps": [f"{t:%Y-%m-%dT%H:%M:%S}" for t in times],
            "median": quantiles[:, self.model.median_index].tolist(),
            "quantiles": {f"{level:g}": quantiles[:, i].tolist() for i, level in enumerate(levels) if level != 0.5},
            "in_checkpoint": q.series_id in self.stats,
        }
