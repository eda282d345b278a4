"""Timing helpers shared by the benchmark scripts (each run as `python benchmarks/bench_*.py`)."""

from __future__ import annotations

import time


def seconds(fn) -> float:
    """Wall-clock seconds of one call of `fn`."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
