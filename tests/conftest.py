"""Shared fixtures: small synthetic CSVs and a shrunken config. No real data, no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lit_forecast import config as cfg


@pytest.fixture
def synthetic_csv(tmp_path: Path):
    """Factory writing a small CSV into ``tmp_path`` and returning its path.

    Either ``values`` (one row per ``freq`` slot from ``start``; a series column is added when
    ``series_id`` is given) or ``rows`` (tuples written verbatim, for malformed input).
    """

    def make(
        values=None,
        *,
        start: str = "2024-01-01 00:00",
        freq: str = "30min",
        rows=None,
        header=("timestamp", "value"),
        name: str = "series.csv",
        series_id: str | None = None,
    ) -> Path:
        if rows is None:
            times = pd.date_range(start, periods=len(values), freq=freq)
            rows = [(f"{t:%Y-%m-%d %H:%M:%S}", repr(float(v))) for t, v in zip(times, np.asarray(values))]
            if series_id is not None:
                header = (*header, "series_id")
                rows = [(*r, series_id) for r in rows]
        path = tmp_path / name
        lines = [",".join(header)] + [",".join(str(x) for x in r) for r in rows]
        path.write_text("\n".join(lines) + "\n")
        return path

    return make


@pytest.fixture
def make_config(tmp_path: Path):
    """Factory for a tiny, valid Config: 8 past -> 4 future slots, 2 workers, a small model.

    Keyword arguments override ``data`` keys; ``model``/``train``/``cluster`` take dicts.
    """

    def make(source=None, *, model=None, train=None, cluster=None, **data) -> cfg.Config:
        raw = {
            "data": {
                "source": str(source) if source is not None else str(tmp_path / "missing.csv"),
                "sha256": None,
                "cache_dir": str(tmp_path / "cache"),
                "input_window": 8,
                "horizon": 4,
                "test_end": None,
                **data,
            },
            "model": {
                "d_model": 16,
                "nhead": 2,
                "encoder_layers": 1,
                "decoder_layers": 1,
                "dim_feedforward": 32,
                "dropout": 0.0,
                "patch_len": 4,
                "seasonal_lag": 0,
                "daily_lag": 0,
                **(model or {}),
            },
            "train": {"max_epochs": 1, "batch_size": 8, "warmup_steps": 1, "precision": "32-true", **(train or {})},
            "cluster": {"num_workers": 2, "use_gpu": False, **(cluster or {})},
            "run": {"storage": str(tmp_path / "runs")},
        }
        return cfg.validate(cfg.from_dict(raw))

    return make


@pytest.fixture(scope="module")
def taxi_like_csv(tmp_path_factory) -> Path:
    """Eight weeks of half-hourly counts with daily and weekly cycles and noise (the Ray tests' data)."""
    slots = pd.date_range("2024-01-01", periods=8 * 7 * 48, freq="30min")
    hour = slots.hour + slots.minute / 60
    weekday = slots.day_of_week.to_numpy()
    rng = np.random.default_rng(0)
    values = (
        10_000 + 6_000 * np.sin((hour - 6) / 24 * 2 * np.pi) + 1_500 * (weekday >= 5) + rng.normal(0, 300, len(slots))
    )
    path = tmp_path_factory.mktemp("data") / "taxi_like.csv"
    pd.DataFrame({"timestamp": slots, "value": values.round()}).to_csv(path, index=False)
    return path
