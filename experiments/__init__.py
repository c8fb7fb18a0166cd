"""Experiments and controls the benchmarks load; not part of the product (``cerebro_core``)."""
