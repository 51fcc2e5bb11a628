"""Fixtures every unit test gets."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def package_logger(monkeypatch):
    """Restore the package logger that the scripts' setup_logging reconfigures; no cluster address from outside."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    logger = logging.getLogger("lit_forecast")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
