"""Cerebro core: the pure library behind the pipeline (no Prefect import anywhere in here)."""

__version__ = "0.1.0"
