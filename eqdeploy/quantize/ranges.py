"""Activation range selection on calibration (or distilled) inputs: min/max, percentile, MSE.

``minmax`` covers every value seen. ``percentile`` clips to the ``[p, 100 - p]`` percentiles
(p = 0.01). ``mse`` is the measured criterion: for each quantization point, the clipping
``[a lo, a hi]`` (a = 2^(-k/8), k = 0 ... 48: 1 down to 1/64, min/max included) whose INT8
fake-quant ``q`` minimizes the mean squared error ``E[(q(x) - x)^2]`` over the recorded
values, so a range is narrowed only where the rounding error it removes outweighs the
clipping error it adds (ReLU outputs: lo = 0, only hi moves). Every choice is reported per
tensor: the min/max range, the chosen one, the fraction of values clipped and the MSE
against min/max's, so clipping is never silent.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from eqdeploy.errors import EqdeployError
from eqdeploy.quantize.params import QMAX, QMIN, activation_qparams

METHODS = ("minmax", "percentile", "mse")
PERCENTILE = 0.01  # percent clipped at each end by ``percentile``
MSE_FACTORS = 2.0 ** (-np.arange(0, 49) / 8)
SAMPLES_PER_POINT = 1 << 17  # values kept per tensor (a seeded random subset)


class _Sampler(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, points: set[str], store: dict, rng) -> None:
        super().__init__(gm)
        self.points, self.store, self.rng = points, store, rng

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.points:
            v = out.detach().double().reshape(-1).numpy()
            lo, hi, parts = self.store.get(n.name, (np.inf, -np.inf, []))
            keep = v if len(v) <= SAMPLES_PER_POINT else self.rng.choice(
                v, SAMPLES_PER_POINT, replace=False)
            self.store[n.name] = (min(lo, float(v.min())), max(hi, float(v.max())),
                                  [*parts, keep])
        return out


def record(gm: fx.GraphModule, points: set[str], x: np.ndarray, seed: int = 0) -> dict:
    """Per quant point: exact (min, max) and a seeded subset of its values over ``x``."""
    store: dict = {}
    rng = np.random.default_rng(seed)
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    with torch.no_grad():
        for chunk in torch.split(xt, 64):
            _Sampler(gm, points, store, rng).run(chunk)
    out = {}
    for name, (lo, hi, parts) in store.items():
        v = np.concatenate(parts)
        if len(v) > SAMPLES_PER_POINT:
            v = rng.choice(v, SAMPLES_PER_POINT, replace=False)
        out[name] = (lo, hi, v)
    return out


def quant_mse(v: np.ndarray, lo: float, hi: float) -> float:
    """Mean squared error of the INT8 fake-quant covering [lo, hi] (and 0) on ``v``."""
    scale, zp = activation_qparams(lo, hi)
    q = (np.clip(np.round(v / scale) + zp, QMIN, QMAX) - zp) * scale
    return float(np.mean((q - v) ** 2))


def choose(v: np.ndarray, lo: float, hi: float, method: str) -> tuple[float, float]:
    """The range ``method`` picks for values ``v`` with exact extremes ``lo``, ``hi``."""
    if method == "minmax" or hi <= lo:
        return lo, hi
    if method == "percentile":
        a, b = np.percentile(v, [PERCENTILE, 100 - PERCENTILE])
        return (float(a) if lo < 0 else lo), float(b) if hi > 0 else hi
    errs = [quant_mse(v, f * lo if lo < 0 else lo, f * hi if hi > 0 else hi)
            for f in MSE_FACTORS]
    f = float(MSE_FACTORS[int(np.argmin(errs))])
    return (f * lo if lo < 0 else lo), (f * hi if hi > 0 else hi)


def select_ranges(method: str, report: dict | None = None):
    """A range selector for ``compute_qparams(..., range_selector=...)``; fills ``report``
    (per tensor: min/max, chosen range, clipped fraction, MSE vs min/max's)."""
    if method not in METHODS:
        raise EqdeployError(f"unknown range method {method!r}", f"use one of {list(METHODS)}")

    def selector(gm: fx.GraphModule, points: set[str], x: np.ndarray
                 ) -> dict[str, tuple[float, float]]:
        found = record(gm, points, x)
        missing = sorted(set(points) - set(found))
        if missing:
            raise EqdeployError(f"calibration never reached tensor(s) {missing[:3]}",
                                "report this model to the eqdeploy developers")
        ranges = {}
        for name, (lo, hi, v) in found.items():
            if not (np.isfinite(lo) and np.isfinite(hi)):
                raise EqdeployError(f"tensor {name} holds non-finite values on the "
                                    "calibration inputs", "check the inputs and the model")
            c_lo, c_hi = choose(v, lo, hi, method)
            ranges[name] = (c_lo, c_hi)
            if report is not None:
                base = quant_mse(v, lo, hi)
                report[name] = {
                    "minmax": [lo, hi], "chosen": [c_lo, c_hi],
                    "clipped_fraction": float(np.mean((v < c_lo) | (v > c_hi))),
                    "mse_vs_minmax": (quant_mse(v, c_lo, c_hi) / base) if base > 0 else 1.0}
        return ranges

    return selector
