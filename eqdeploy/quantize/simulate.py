"""Fake-quant INT8 simulation of a PlainModel in torch (fidelity before real artifacts exist).

Uses exactly the parameter set of ``eqdeploy.quantize.params`` (the one forced into every
target): weights int8 symmetric per field/channel or per tensor, activations int8
asymmetric per tensor at the tensors an integer runtime materializes, int32 biases; the
activation-quantized graph runs in float64 (see ``simulate_with``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import fx

from eqdeploy.quantize.params import (
    QMAX,
    QMIN,
    QuantParams,
    compute_qparams,
    quant_points,
    weight_scales,
    weight_slices,
)

__all__ = ["simulate_int8", "simulate_with", "fidelity", "fake_quant_weight", "weight_scales",
           "weight_slices"]


def fake_quant_weight(w: torch.Tensor, per_channel: bool,
                      slices: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """``clamp(round(w / s), -127, 127) * s`` with the scales of ``weight_scales``."""
    s = weight_scales(w, per_channel, slices).reshape(-1, *([1] * (w.dim() - 1)))
    return (torch.clamp(torch.round(w.double() / s), -127, 127) * s).to(w.dtype)


def _fake_quant(x: torch.Tensor, scale: float, zp: int) -> torch.Tensor:
    return (torch.clamp(torch.round(x / scale) + zp, QMIN, QMAX) - zp) * scale


class Int8Simulation:
    """Callable fake-quant model; ``ranges`` holds the activation range per quantized node."""

    def __init__(self, gm: fx.GraphModule, ranges: dict[str, tuple[float, float]],
                 qparams: dict[str, tuple[float, int]], float64: bool = False) -> None:
        self.gm, self.ranges, self.qparams = gm, ranges, qparams
        self.float64 = float64  # gm runs in float64 (its parameters converted)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.gm(x.double()).to(x.dtype) if self.float64 else self.gm(x)

    def numpy(self, x: np.ndarray) -> np.ndarray:
        """numpy batch in, numpy out (for the equivariance harness)."""
        return self(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


AVG_POOLS = (torch.ops.aten.avg_pool2d.default, torch.ops.aten.adaptive_avg_pool2d.default)
MUL, MEAN = torch.ops.aten.mul.Tensor, torch.ops.aten.mean.dim


def _int_mean(x: torch.Tensor, dims, keepdim: bool, s_in: float, s_out: float, z_out: int
              ) -> torch.Tensor:
    """INT8 mean over ``dims`` the way ORT's QLinearGlobalAveragePool and XNNPACK's qs8 mean
    compute it: the exact int32 sum of the zero-point-free inputs (independent of the
    summation order, so of the rotation) times the float32 ratio ``s_in / (count * s_out)``,
    rounded half to even (ties are common: ``s_in == s_out`` gives sums / count)."""
    k = torch.round(x.double() / s_in)
    count = int(np.prod([x.shape[d] for d in dims]))
    total = k.sum(dim=list(dims), keepdim=keepdim)
    ratio = np.float32(s_in) / (np.float32(s_out) * np.float32(count))
    q = torch.round(total.float() * torch.tensor(ratio, dtype=torch.float32))
    return (torch.clamp(q + z_out, QMIN, QMAX) - z_out).to(x.dtype) * s_out


def _int_mul(a: torch.Tensor, b: torch.Tensor, sa: float, sb: float, so: float, zo: int
             ) -> torch.Tensor:
    """INT8 x INT8 -> INT8 product the way ORT's QLinearMul and XNNPACK's qs8 multiply
    compute it: the exact integer product of the zero-point-free inputs times the float32
    ratio ``sa * sb / so`` (float32 arithmetic), rounded half to even, plus the zero point.
    (TFLite's reference kernel uses a 31-bit fixed-point multiplier instead: it can differ
    by one step where the product is within ~1e-7 of a half step.)"""
    ia = torch.round(a.double() / sa)  # q - zp, exact: a is on its grid
    ib = torch.round(b.double() / sb)
    ratio = np.float32(np.float32(sa) * np.float32(sb)) / np.float32(so)
    q = torch.round((ia * ib).float() * torch.tensor(ratio, dtype=torch.float32))
    return (torch.clamp(q + zo, QMIN, QMAX) - zo).to(a.dtype) * so


def simulate_with(pm, qp: QuantParams, quantize_weights: bool = True,
                  quantize_activations: bool = True, quantize_bias: bool = True
                  ) -> Int8Simulation:
    """Fake-quant version of ``pm`` (BN folded) with the parameter set ``qp``.

    Runs in float64: a conv's sum of on-grid products is then exact up to ~1e-16, so, like
    an integer runtime's int32 accumulation, it does not depend on the summation order (which
    follows the memory layout and so the rotation of the input; float32 sums flip a rounding
    now and then). Like the integer runtimes: biases on the int32 grid ``input scale x
    weight scale`` (float32 product), average pools rounded back onto their (shared) input
    grid, means as int32 sums (``_int_mean``), products of two activations in integers
    (``_int_mul``).
    """
    from eqdeploy.dfq.graph import clone, layers

    work = clone(pm)
    if quantize_weights:
        for name, layer in layers(work).items():
            s = torch.as_tensor(qp.weights[name], dtype=torch.float64)
            s = s.reshape(-1, *([1] * (layer.weight.dim() - 1)))
            with torch.no_grad():
                q = torch.clamp(torch.round(layer.weight.double() / s), -127, 127) * s
                layer.weight.copy_(q.to(layer.weight.dtype))
                if quantize_bias and quantize_activations and layer.bias is not None:
                    s_in = np.float32(qp.act_for(layer.input)[0])
                    bs = torch.as_tensor((s_in * np.asarray(qp.weights[name], np.float32)
                                          ).astype(np.float64))
                    layer.bias.copy_((torch.round(layer.bias.double() / bs) * bs
                                      ).to(layer.bias.dtype))
    gm = work.program.module()
    if not quantize_activations:
        return Int8Simulation(gm, {}, {})
    points, _ = quant_points(gm)
    consts = _quantize_constants(gm, qp)
    muls = [(n, *(consts.get((n.name, i)) or qp.act_for(a.name)[0]
                  for i, a in enumerate(n.args)))
            for n in gm.graph.nodes
            if n.op == "call_function" and n.target == MUL and n.name in qp.grid
            and len(n.args) == 2 and all(isinstance(a, fx.Node)
                                         and (a.name in qp.grid or (n.name, i) in consts)
                                         for i, a in enumerate(n.args))]
    means = [(n, n.args[0].name) for n in gm.graph.nodes
             if n.op == "call_function" and n.target == MEAN and n.name in qp.grid
             and isinstance(n.args[0], fx.Node) and n.args[0].name in qp.grid
             and n.kwargs.get("dtype") is None and (len(n.args) < 4 or n.args[3] is None)]
    points = {**points, **{n.name: n for n in gm.graph.nodes
                           if n.op == "call_function" and n.target in AVG_POOLS}}
    for q, node in points.items():
        scale, zp = qp.act_for(q)
        with gm.graph.inserting_after(node):
            fq = gm.graph.call_function(_fake_quant, (node, scale, zp))
        node.replace_all_uses_with(fq, delete_user_cb=lambda u, fq=fq: u is not fq)
    for node, a in means:  # exact int32 sum, one requantization
        keep = bool(node.args[2]) if len(node.args) > 2 else False
        node.target = _int_mean
        node.args = (node.args[0], list(node.args[1]), keep, qp.act_for(a)[0],
                     *qp.act_for(node.name))
    for node, sa, sb in muls:  # integer product and requantization (inputs now on grids)
        node.target = _int_mul
        node.args = (*node.args, sa, sb, *qp.act_for(node.name))
    gm.recompile()
    return Int8Simulation(gm.double(), dict(qp.ranges), dict(qp.activations), float64=True)


def _quantize_constants(gm: fx.GraphModule, qp: QuantParams) -> dict[tuple[str, int], float]:
    """Round every constant operand of ``qp.constants`` onto its int8 grid, in place (each
    gets its own copy, as each integer op stores its own); returns {(op, position): scale}."""
    from eqdeploy.quantize.params import constant_operands

    scales = {}
    for name, (node, pos, c) in constant_operands(gm).items():
        if name not in qp.constants:
            continue
        scale, zp = qp.constants[name]
        attr = f"_eqdeploy_int8_const_{name}"
        gm.register_buffer(attr, _fake_quant(c, scale, zp).float())
        with gm.graph.inserting_before(node):
            node.update_arg(pos, gm.graph.get_attr(attr))
        scales[(name, pos)] = scale
    return scales


def simulate_int8(pm, weights: str = "per_channel", activations: str = "minmax",
                  calibration: torch.Tensor | np.ndarray | None = None, n_sigma: float = 6.0,
                  orbit_shared: bool = True, quantize_weights: bool = True,
                  quantize_activations: bool = True) -> Int8Simulation:
    """Fake-quant INT8 version of ``pm`` (BN folded first if the graph still has BN).

    ``weights``: 'per_channel' (field-shared unless ``orbit_shared=False``) or 'per_tensor'.
    ``activations``: 'minmax' over ``calibration``, or 'bn' (data-free: folded BN statistics
    propagated through the graph; ``calibration`` is not used).
    """
    from eqdeploy.dfq.fold import BATCH_NORM, fold_batchnorm

    if weights not in ("per_channel", "per_tensor"):
        raise ValueError(f"weights must be 'per_channel' or 'per_tensor', not {weights!r}")
    if activations not in ("minmax", "bn"):
        raise ValueError(f"activations must be 'minmax' or 'bn', not {activations!r}")
    if any(n.target == BATCH_NORM for n in pm.program.graph.nodes):
        pm = fold_batchnorm(pm)[0]
    if activations == "minmax" and calibration is None and quantize_activations:
        raise ValueError("activations='minmax' needs calibration inputs")
    cal = None if activations == "bn" else np.asarray(calibration, dtype=np.float32)
    qp = compute_qparams(pm, weights == "per_channel", cal, n_sigma=n_sigma,
                         orbit_shared=orbit_shared)
    return simulate_with(pm, qp, quantize_weights, quantize_activations)


def fidelity(reference: Callable[[torch.Tensor], torch.Tensor],
             candidate: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> dict:
    """Top-1 agreement and SQNR (dB) of ``candidate`` against ``reference`` on ``x``."""
    with torch.no_grad():
        ref = reference(x).double()
        out = candidate(x).double()
    noise = float(((out - ref) ** 2).sum())
    signal = float((ref ** 2).sum())
    sqnr = float("inf") if noise == 0 else 10 * np.log10(signal / noise)
    return {"top1_agreement": float((out.argmax(1) == ref.argmax(1)).double().mean()),
            "sqnr_db": sqnr}
