"""Analytical (data-free) bias correction for the expected weight-quantization error.

``eps = W_q - W`` (W_q the simulated INT8 weights the quantizer will use), summed over the
kernel; ``b -= eps . E[x]``, with E[x] per input channel from the folded BN statistics of
the layer feeding it: a normal N(beta, gamma^2) clipped by the activation,

    E[clip(X, a, b)] = a Phi(alpha) + beta (Phi(b') - Phi(alpha)) + gamma (phi(alpha) - phi(b'))
                       + b (1 - Phi(b')),   alpha = (a - beta) / gamma,  b' = (b - beta) / gamma

(ReLU: a = 0, b = inf, giving ``beta (1 - Phi(-beta/gamma)) + gamma phi(-beta/gamma)``;
no activation: beta). Layers whose input has no statistics (the first layer, after a max pool,
an add or a group pooling) are left alone, unless inputs are given (the calibration set or
the inputs distilled from the BN statistics): then E[x] is measured at every layer's input
on the FP32 graph being corrected (empirical bias correction), which covers every layer.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from eqdeploy.dfq.graph import clone, input_chain, layers, stats_of
from eqdeploy.export import PlainModel
from eqdeploy.quantize.simulate import fake_quant_weight, weight_slices


def _Phi(x: torch.Tensor) -> torch.Tensor:
    return torch.special.ndtr(x)


def _phi(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def clipped_normal_mean(mean: torch.Tensor, std: torch.Tensor, lo: float = -math.inf,
                        hi: float = math.inf) -> torch.Tensor:
    """E[clip(X, lo, hi)] for X ~ N(mean, std^2), elementwise (std 0 -> clip(mean))."""
    mean, std = mean.double(), std.double()
    safe = torch.where(std > 0, std, torch.ones_like(std))
    a = (lo - mean) / safe
    b = (hi - mean) / safe
    Pa = _Phi(a) if math.isfinite(lo) else torch.zeros_like(mean)
    Pb = _Phi(b) if math.isfinite(hi) else torch.ones_like(mean)
    pa = _phi(a) if math.isfinite(lo) else torch.zeros_like(mean)
    pb = _phi(b) if math.isfinite(hi) else torch.zeros_like(mean)
    e = mean * (Pb - Pa) + safe * (pa - pb)
    if math.isfinite(lo):
        e = e + lo * Pa
    if math.isfinite(hi):
        e = e + hi * (1 - Pb)
    return torch.where(std > 0, e, mean.clamp(lo, hi))


def _clip_of(ops: list[str]) -> tuple[float, float]:
    lo, hi = -math.inf, math.inf
    for o in ops:
        if o in ("aten.relu", "aten.relu_"):
            lo = max(lo, 0.0)
        elif o in ("aten.hardtanh", "aten.hardtanh_", "aten.relu6", "aten.clamp"):
            lo, hi = max(lo, 0.0), min(hi, 6.0)
    return lo, hi


def measured_input_means(pm: PlainModel, found: dict, inputs: np.ndarray
                         ) -> dict[str, torch.Tensor]:
    """Per layer, the mean of each input channel over ``inputs`` (and space), averaged over
    each field of the input's layout: the mean over the inputs' orbits, so the correction is
    shared by each field like the weights' scales (a finite sample's per-channel means differ
    inside a field, and correcting with them would break exact equivariance)."""
    from eqdeploy.dfq.verify import taps

    vals = taps(pm, inputs, {lay.input for lay in found.values()})
    out = {}
    for name, lay in found.items():
        v = vals[lay.input].astype(np.float64)
        m = v.mean(axis=tuple(a for a in range(v.ndim) if a != 1))
        layout = pm.spec.tensors.get(lay.input)
        if layout is not None and layout.channels == len(m):
            for idx in pm.spec.field_channels(layout):
                m[idx] = m[idx].mean()
        out[name] = torch.from_numpy(m)
    return out


def correct_bias(pm: PlainModel, weights: str = "per_channel", orbit_agnostic: bool = False,
                 inputs: np.ndarray | None = None) -> tuple[PlainModel, dict]:
    """Subtract the expected output error of INT8 weights from every layer's bias
    (E[x] analytical from BN statistics, or measured on ``inputs``)."""
    work = clone(pm)
    found = layers(work)
    measured = None if inputs is None else measured_input_means(work, found, inputs)
    corrected, skipped = [], []
    for name, layer in found.items():
        chain = input_chain(work, layer, found) if measured is None else None
        st = stats_of(work, chain[0].node) if chain else None
        if (st is None and measured is None) or layer.bias is None:
            skipped.append({"layer": name, "reason": "no BN statistics for its input"
                            if layer.bias is not None else "no bias"})
            continue
        if measured is not None:
            ex = measured[name]
        else:
            lo, hi = _clip_of(chain[1])
            ex = clipped_normal_mean(st[0], st[1], lo, hi)
        sl = weight_slices(work, name, layer.out_channels, not orbit_agnostic)
        wq = fake_quant_weight(layer.weight.detach(), weights == "per_channel", sl)
        delta = layer.apply_in(ex, weight=(wq.double() - layer.weight.detach().double()))
        with torch.no_grad():
            layer.bias.sub_(delta.to(layer.bias.dtype))
        corrected.append({"layer": name, "input_from": chain[0].node if chain else layer.input,
                          "max_abs_correction": float(delta.abs().max())})
    return work, {"corrected": corrected, "skipped": skipped, "weights": weights,
                  "expectation": "analytical (BN statistics)" if inputs is None else
                  f"measured on {len(inputs)} inputs"}
