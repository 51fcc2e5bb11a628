"""Forecasting from a trained checkpoint: plain Python (checkpoint, windows, forecaster) and
a thin Ray-task fan-out (remote, imported only when used)."""
