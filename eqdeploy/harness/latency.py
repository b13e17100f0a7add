"""Latency of one artifact: init, first inference, warm-up, then N timed runs (numpy only).

Unlike TFLite's ``benchmark_model`` (mean and std only) this keeps every sample, so the
report has percentiles and a histogram. One run is one invoke of one batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def summarize_ms(samples_ms: np.ndarray | list[float]) -> dict:
    """min/p50/p90/p99/mean/std of latency samples in milliseconds."""
    s = np.asarray(samples_ms, dtype=np.float64)
    if s.size == 0:
        return {k: None for k in ("min_ms", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms")}
    p50, p90, p99 = np.percentile(s, [50, 90, 99])
    return {"min_ms": float(s.min()), "p50_ms": float(p50), "p90_ms": float(p90),
            "p99_ms": float(p99), "mean_ms": float(s.mean()), "std_ms": float(s.std())}


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    """``fn()`` and its wall time in milliseconds (init, first inference)."""
    t0 = time.perf_counter_ns()
    out = fn()
    return out, (time.perf_counter_ns() - t0) / 1e6


def time_runs(run: Callable[[], object], runs: int, warmup: int) -> dict:
    """``warmup`` untimed calls of ``run``, then ``runs`` timed ones: stats and samples."""
    for _ in range(warmup):
        run()
    samples = np.empty(runs, dtype=np.float64)
    for i in range(runs):
        t0 = time.perf_counter_ns()
        run()
        samples[i] = (time.perf_counter_ns() - t0) / 1e6
    return {"warmup": warmup, "runs": runs, **summarize_ms(samples),
            "samples_ms": [round(float(v), 6) for v in samples]}
