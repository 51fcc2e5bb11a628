"""Bench scripts: each prints figures (see bench/README.md); run as ``python -m bench.<name>``."""
