"""Metrics, seasonal-naive baselines, rolling-origin backtests and forecast plots (numpy, matplotlib)."""
