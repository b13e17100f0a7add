"""Latency at batch 1, one thread, every candidate interleaved in one loop (round r runs
each candidate once, in a rotating order), so a load change on the machine hits all of them
alike and their ratios hold."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from eqdeploy.harness.latency import summarize_ms


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int,
                warmup: int = 20) -> dict[str, dict]:
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    samples = {n: np.empty(rounds) for n in names}
    for r in range(rounds):
        for j in range(len(names)):
            name = names[(r + j) % len(names)]
            t0 = time.perf_counter_ns()
            candidates[name]()
            samples[name][r] = (time.perf_counter_ns() - t0) / 1e6
    return {n: {**summarize_ms(s), "runs": rounds} for n, s in samples.items()}
