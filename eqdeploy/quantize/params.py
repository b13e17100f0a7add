"""One INT8 quantization-parameter set per conversion, shared inside each field.

*Which* tensors are quantized: the input, every conv/linear output (after a following
ReLU/ReLU6 when fused), adds, products of two tensors, sums and means; ops that keep their
input's grid (max pool, avg pool, reshapes, group max-pooling, one-hot patch convs) share
their input's parameters, as integer runtimes require. *How* a range becomes parameters:
weights int8 symmetric in [-127, 127], zero point 0, one scale per output channel equal
inside each field (max of the field's ranges), or one per tensor; activations int8
asymmetric per tensor covering [lo, hi] and 0.
*Where* ranges come from: data-free, per channel ``mean +- n_sigma * std`` with mean/std
from folded BN statistics where a conv had a BN, propagated through the graph elsewhere
(linear maps, ReLU as a clipped normal, adds and sums as sums of independent variables,
products of two tensors as products of independent variables, their range the product of
the factors' ranges), the input's from the declared normalization; or min/max over
calibration inputs.
The same numbers are then forced into every target (TFLite via PT2E, ONNX via ORT).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx

from eqdeploy.errors import EqdeployError

aten = torch.ops.aten

ACTIVATIONS = {aten.relu.default, aten.relu_.default, aten.hardtanh.default,
               aten.hardtanh_.default, aten.relu6.default, aten.clamp.default}
RESHAPES = {aten.reshape.default, aten.view.default, aten._unsafe_view.default,
            aten.flatten.using_ints, aten.unflatten.int, aten.squeeze.dims, aten.squeeze.dim,
            aten.unsqueeze.default, aten.clone.default, aten.contiguous.default,
            aten.alias.default, aten.detach.default}
# ops whose output lies on its input's quantization grid
SAME_GRID = {*ACTIVATIONS, *RESHAPES, aten.max_pool2d.default, aten.amax.default,
             aten.dropout.default, aten.permute.default, aten.adaptive_max_pool2d.default,
             aten.max.dim, aten.sym_size.int, aten.avg_pool2d.default,
             aten.adaptive_avg_pool2d.default, aten.rot90.default, aten.flip.default}
STACKS = {aten.stack.default, aten.cat.default}  # same grid when every input is on one grid
CONV, LINEAR = aten.conv2d.default, aten.linear.default
AVERAGING = {aten.mean.dim, aten.avg_pool2d.default, aten.adaptive_avg_pool2d.default}
SUMS = {aten.sum.dim_IntList}
QMIN, QMAX = -128, 127
# ops whose int8 kernels require one output grid (TFLite LOGISTIC/SOFTMAX: 1/256, -128;
# TANH: 1/128, 0; ORT's QLinearSigmoid accepts the same): the set uses it, not a range
FIXED_OUTPUT = {aten.sigmoid.default: (1 / 256, -128), aten._softmax.default: (1 / 256, -128),
                aten.tanh.default: (1 / 128, 0)}


def weight_scales(w: torch.Tensor, per_channel: bool,
                  slices: list[np.ndarray] | None = None) -> torch.Tensor:
    """Scale per output channel (equal within each field's channels, ``slices`` as from
    ``SymmetrySpec.field_channels``; one value if per tensor)."""
    r = w.detach().abs().reshape(w.shape[0], -1).amax(1).double()
    if not per_channel:
        r = torch.full_like(r, float(r.max()))
    elif slices is not None:
        for idx in slices:
            idx = torch.as_tensor(idx, dtype=torch.long)
            r[idx] = r[idx].max()
    return torch.where(r > 0, r / 127.0, torch.ones_like(r))


def weight_slices(pm, node: str, channels: int, orbit_shared: bool = True
                  ) -> list[np.ndarray] | None:
    """Channels of each field of a layer's output (scales shared per field); all channels
    as one field if the output has no layout."""
    if not orbit_shared:
        return None
    lay = pm.spec.tensors.get(node)
    if lay is None or lay.channels != channels:
        return [np.arange(channels)]
    return pm.spec.field_channels(lay)


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """Asymmetric int8 (scale, zero point) covering [lo, hi] and 0."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = int(np.clip(round(QMIN - lo / scale), QMIN, QMAX))
    return scale, zp


def act_clip(node: fx.Node) -> tuple[float, float]:
    """The output interval an activation node clips to."""
    if node.target in (aten.relu.default, aten.relu_.default):
        return 0.0, float("inf")
    if node.target == aten.relu6.default:
        return 0.0, 6.0
    if node.target in ACTIVATIONS:
        lo = node.args[1] if len(node.args) > 1 else None
        hi = node.args[2] if len(node.args) > 2 else None
        return (-float("inf") if lo is None else float(lo),
                float("inf") if hi is None else float(hi))
    return -float("inf"), float("inf")


def _is_float(n: fx.Node) -> bool:
    val = n.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def is_selection(gm: fx.GraphModule, n: fx.Node) -> bool:
    """A conv that only copies input values (each weight row one 1, the rest 0; no or zero
    bias): the one-hot patch conv of ``adapters.unfold``. Its output stays on its input's
    grid (int8 weight 127 at scale 1/127: the integer kernels reproduce the input exactly)."""
    if n.op != "call_function" or n.target != CONV or not isinstance(n.args[1], fx.Node):
        return False
    w = _param(gm, n.args[1])
    b = _param(gm, n.args[2]) if len(n.args) > 2 and n.args[2] is not None else None
    if w is None or (len(n.args) > 2 and n.args[2] is not None and b is None):
        return False
    rows = w.reshape(w.shape[0], -1)
    return bool(((rows == 0) | (rows == 1)).all() and (rows.sum(1) == 1).all()
                and (b is None or (b == 0).all()))


def _grid_root(gm: fx.GraphModule, n: fx.Node) -> fx.Node:
    """The node whose quantization grid ``n`` lies on (itself unless it keeps its input's)."""
    while keeps_grid(gm, n) and n.args and isinstance(_first_input(n), fx.Node):
        n = _first_input(n)
    return n


def _first_input(n: fx.Node):
    a = n.args[0]
    return a[0] if n.target in STACKS and isinstance(a, (list, tuple)) and a else a


def keeps_grid(gm: fx.GraphModule, n: fx.Node) -> bool:
    """Does ``n``'s output lie on its first input's quantization grid? (A stack or concat
    does when all its inputs lie on one grid, e.g. the rotated copies of the input.)"""
    if n.op != "call_function":
        return False
    if n.target in STACKS:
        parts = n.args[0] if n.args and isinstance(n.args[0], (list, tuple)) else []
        roots = {_grid_root(gm, p).name for p in parts if isinstance(p, fx.Node)}
        return len(parts) > 0 and len(roots) == 1
    return n.target in SAME_GRID or is_selection(gm, n)


def _fused_activation(n: fx.Node) -> fx.Node | None:
    """The activation that alone consumes ``n``, directly or through reshapes (e.g.
    conv -> unflatten -> relu over a stacked group axis): its range quantizes ``n``."""
    while len(n.users) == 1:
        n = next(iter(n.users))
        if n.target in ACTIVATIONS:
            return n
        if n.target not in RESHAPES:
            return None
    return None


def quant_points(gm: fx.GraphModule) -> tuple[dict[str, fx.Node], dict[str, fx.Node]]:
    """Quantized nodes by name, and for each, the node that produced it before a fused act."""
    points, producer = {}, {}
    for n in gm.graph.nodes:
        if n.op == "placeholder" and _is_float(n) and n.users:
            if any(u.op == "call_function" for u in n.users) and not n.name.startswith(
                    ("p_", "b_", "c_")):
                points[n.name], producer[n.name] = n, n
            continue
        if n.op != "call_function" or not _is_float(n) or keeps_grid(gm, n):
            continue
        q = _fused_activation(n) or n
        points[q.name], producer[q.name] = q, n
    return points, producer


def grid_of(gm: fx.GraphModule, points: dict[str, fx.Node], producer: dict[str, fx.Node]
            ) -> dict[str, str]:
    """For every float node, the quant point whose parameters it carries."""
    fused = {p.name: q for q, p in producer.items()}
    grid: dict[str, str] = {}
    for n in gm.graph.nodes:
        if not _is_float(n):
            continue
        if n.name in points:
            grid[n.name] = n.name
        elif n.name in fused:
            grid[n.name] = fused[n.name]
        elif keeps_grid(gm, n) and n.args \
                and isinstance(_first_input(n), fx.Node) and _first_input(n).name in grid:
            grid[n.name] = grid[_first_input(n).name]
    return grid


@dataclass
class QuantParams:
    """The parameter set of one conversion (node names of the plain graph)."""

    per_channel: bool
    ranges_from: str  # "bn-stats" | "calibration"
    activations: dict[str, tuple[float, int]]  # quant point -> (scale, zero point)
    ranges: dict[str, tuple[float, float]]  # quant point -> (lo, hi) before rounding
    grid: dict[str, str]  # every float node -> its quant point
    weights: dict[str, np.ndarray]  # conv/linear node -> per-output-channel scales
    notes: list[str] = field(default_factory=list)
    # op node -> (scale, zero point) of its constant tensor operand (e.g. e2cnn's
    # MaskModule ``x * mask``): int8 asymmetric per tensor over the constant's own range
    constants: dict[str, tuple[float, int]] = field(default_factory=dict)

    def act_for(self, node: str) -> tuple[float, int]:
        return self.activations[self.grid[node]]

    def to_json(self) -> dict:
        return {
            "scheme": {"weights": "int8 symmetric [-127,127], zero point 0, "
                       + ("per channel, equal within each field" if self.per_channel
                          else "per tensor"),
                       "activations": "int8 asymmetric [-128,127], per tensor",
                       "ranges_from": self.ranges_from},
            "activations": {k: {"scale": s, "zero_point": z, "range": list(self.ranges[k])}
                            for k, (s, z) in self.activations.items()},
            "weights": {k: [float(x) for x in v] for k, v in self.weights.items()},
            "constants": {k: {"scale": s, "zero_point": z}
                          for k, (s, z) in self.constants.items()},
            "notes": self.notes,
        }


# --- data-free ranges: per-channel normal statistics propagated through the graph -----------
def _clipped_normal(mean: np.ndarray, std: np.ndarray, lo: float, hi: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of clip(N(mean, std), lo, hi) (lo finite or -inf, hi finite or inf)."""
    from scipy.stats import norm

    std = np.maximum(std, 1e-12)
    a, b = (lo - mean) / std, (hi - mean) / std
    pa, pb = norm.cdf(a), norm.cdf(b)
    phia, phib = norm.pdf(a), norm.pdf(b)
    lo_t = np.where(np.isfinite(lo), lo, 0.0)
    hi_t = np.where(np.isfinite(hi), hi, 0.0)
    m = mean * (pb - pa) + std * (phia - phib) + lo_t * pa + hi_t * (1 - pb)
    ex2 = ((mean ** 2 + std ** 2) * (pb - pa) + std * ((mean + (np.where(np.isfinite(a), lo, 0)
                                                              )) * phia
                                                       - (mean + np.where(np.isfinite(b), hi, 0))
                                                       * phib)
           + lo_t ** 2 * pa + hi_t ** 2 * (1 - pb))
    return m, np.sqrt(np.maximum(ex2 - m ** 2, 0.0))


def _param(gm: fx.GraphModule, node) -> torch.Tensor | None:
    if isinstance(node, fx.Node) and node.op == "get_attr":
        obj = gm
        for part in node.target.split("."):
            obj = getattr(obj, part)
        return obj.detach().double()
    return None


def _sum_stats(n: fx.Node, mu: np.ndarray, sd: np.ndarray, channels: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """A sum over axes of independent terms: means add, variances add."""
    shape = tuple(n.args[0].meta["val"].shape)
    dims = {int(d) % len(shape) for d in n.args[1]}
    terms = int(np.prod([shape[d] for d in dims if d != 1]))
    if 1 in dims and len(shape) > 1:  # the channel axis is summed too
        mu, sd = np.array([mu.sum()]), np.array([np.sqrt((sd ** 2).sum())])
    mu, sd = mu * terms, sd * np.sqrt(terms)
    if len(mu) != channels:  # channels regrouped: pooled, conservative
        mu, sd = np.full(channels, mu.max()), np.full(channels, sd.max())
    return mu, sd


def propagate_stats(gm: fx.GraphModule, bn_stats: dict, input_mean: np.ndarray,
                    input_std: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel (mean, std) of every float node, data-free (independence assumed)."""
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for n in gm.graph.nodes:
        if not _is_float(n):
            continue
        channels = int(n.meta["val"].shape[1]) if n.meta["val"].dim() > 1 else 1
        if n.op == "placeholder":
            stats[n.name] = (np.broadcast_to(input_mean, (channels,)).astype(float),
                             np.broadcast_to(input_std, (channels,)).astype(float))
            continue
        if n.op != "call_function":
            continue
        ins = [stats.get(a.name) for a in n.args if isinstance(a, fx.Node)]
        if n.target in STACKS and n.args and isinstance(n.args[0], (list, tuple)):
            ins = [stats.get(a.name) for a in n.args[0] if isinstance(a, fx.Node)]
            ins = ins[:1] if ins and all(i is not None for i in ins) else []
        if n.name in bn_stats:
            st = bn_stats[n.name]
            stats[n.name] = (np.asarray(st["mean"], float), np.asarray(st["std"], float))
        elif n.target in (CONV, LINEAR) and ins and ins[0] is not None:
            w, b = _param(gm, n.args[1]), _param(gm, n.args[2] if len(n.args) > 2 else None)
            mu_in, sd_in = ins[0]
            groups = int(n.args[6]) if n.target == CONV and len(n.args) > 6 else 1
            wsum = w.reshape(w.shape[0], w.shape[1], -1).numpy()
            cin = w.shape[1]
            out = w.shape[0]
            g_of = np.arange(out) // (out // groups)
            mu_g = np.stack([mu_in[g * cin:(g + 1) * cin] for g in g_of])
            var_g = np.stack([sd_in[g * cin:(g + 1) * cin] ** 2 for g in g_of])
            mean = (wsum.sum(2) * mu_g).sum(1) + (b.numpy() if b is not None else 0.0)
            var = ((wsum ** 2).sum(2) * var_g).sum(1)
            stats[n.name] = (mean, np.sqrt(var))
        elif n.target in ACTIVATIONS and ins and ins[0] is not None:
            stats[n.name] = _clipped_normal(*ins[0], *act_clip(n))
        elif n.target == aten.add.Tensor and len(ins) == 2 and None not in ins:
            stats[n.name] = (ins[0][0] + ins[1][0], np.sqrt(ins[0][1] ** 2 + ins[1][1] ** 2))
        elif n.target == aten.mul.Tensor and len(ins) == 2 and None not in ins:
            (m1, s1), (m2, s2) = ins  # product of independent variables
            stats[n.name] = (np.broadcast_to(m1 * m2, (channels,)).copy(),
                             np.broadcast_to(np.sqrt((s1 * s2) ** 2 + (s1 * m2) ** 2
                                                     + (s2 * m1) ** 2), (channels,)).copy())
        elif n.target == aten.mul.Tensor and len(ins) == 1 and ins[0] is not None \
                and isinstance(n.args[1], (int, float)):
            c = float(n.args[1])
            stats[n.name] = (ins[0][0] * c, ins[0][1] * abs(c))
        elif n.target in SUMS and ins and ins[0] is not None:
            stats[n.name] = _sum_stats(n, *ins[0], channels)
        elif ins and ins[0] is not None:
            mu, sd = ins[0]
            if len(mu) == channels:
                stats[n.name] = (mu, sd)
            else:  # a channel-regrouping op (group pooling): pooled, conservative
                stats[n.name] = (np.full(channels, mu.max()), np.full(channels, sd.max()))
    return stats


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, points: set[str], ranges: dict) -> None:
        super().__init__(gm)
        self.points, self.ranges = points, ranges

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.points:
            lo, hi = float(out.min()), float(out.max())
            old = self.ranges.get(n.name)
            self.ranges[n.name] = (lo, hi) if old is None else (min(lo, old[0]), max(hi, old[1]))
        return out


def calibration_ranges(gm: fx.GraphModule, points: set[str], x: np.ndarray
                       ) -> dict[str, tuple[float, float]]:
    """Min/max of each quant point over calibration inputs ``x``."""
    found: dict[str, tuple[float, float]] = {}
    xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
    with torch.no_grad():
        for chunk in torch.split(xt, 64):
            _Recorder(gm, points, found).run(chunk)
    return found


def compute_qparams(pm, per_channel: bool = True, calibration: np.ndarray | None = None,
                    input_mean: float | np.ndarray = 0.0, input_std: float | np.ndarray = 1.0,
                    n_sigma: float = 6.0, orbit_shared: bool = True,
                    input_range: tuple[float, float] | None = None,
                    range_selector=None) -> QuantParams:
    """The parameter set for ``pm`` (BN folded, e.g. the DFQ stage's output).

    ``input_range``: the exact range of the model input when its normalization is known
    (pixels in [0, 1] normalized by mean/std give [-mean/std, (1-mean)/std]).
    ``range_selector(gm, points, calibration) -> ranges`` replaces min/max over the
    calibration inputs (``eqdeploy.quantize.ranges``: percentile, MSE).
    """
    from eqdeploy.dfq.graph import STATS_KEY, layers

    gm = pm.program.module()
    points, producer = quant_points(gm)
    grid = grid_of(gm, points, producer)
    notes = []
    if calibration is not None:
        ranges = (range_selector or calibration_ranges)(gm, set(points), calibration)
        source = "calibration"
    else:
        stats = propagate_stats(gm, pm.info.get(STATS_KEY, {}), np.asarray(input_mean, float),
                                np.asarray(input_std, float))
        ranges: dict[str, tuple[float, float]] = {}
        for q, node in points.items():  # graph order: an op's inputs come first
            if q not in stats:
                raise EqdeployError(f"no data-free statistics reach tensor {q} "
                                    f"({producer[q].target})",
                                    "pass --calibration with a few real inputs")
            mu, sd = stats[q]
            lo, hi = float((mu - n_sigma * sd).min()), float((mu + n_sigma * sd).max())
            clip_lo, clip_hi = act_clip(node)
            prod = producer[q]
            if prod.target == aten.mul.Tensor and all(
                    isinstance(a, fx.Node) and grid.get(a.name) in ranges for a in prod.args):
                # a product of two quantized tensors: the product of their (clipped) ranges
                # bounds it exactly; its heavy tails defeat a mean +- n std estimate
                (l1, h1), (l2, h2) = (ranges[grid[a.name]] for a in prod.args)
                ends = (l1 * l2, l1 * h2, h1 * l2, h1 * h2)
                lo, hi = min(ends), max(ends)
            if node.target in AVERAGING:  # a mean stays within its input's range
                src = qp_source = grid.get(node.args[0].name)
                if qp_source in ranges:
                    clip_lo, clip_hi = max(clip_lo, ranges[src][0]), min(clip_hi, ranges[src][1])
            ranges[q] = (float(np.clip(lo, clip_lo, clip_hi)), float(np.clip(hi, clip_lo,
                                                                             clip_hi)))
        source = "bn-stats"
        notes.append(f"data-free ranges: mean +- {n_sigma} std per channel; input assumed "
                     f"mean {np.asarray(input_mean).tolist()}, std "
                     f"{np.asarray(input_std).tolist()}")
    inputs = [q for q, node in points.items() if node.op == "placeholder"]
    if input_range is not None:
        for q in inputs:
            ranges[q] = (float(input_range[0]), float(input_range[1]))
        notes.append(f"input range {list(input_range)} from the declared normalization")
    weights = {}
    for name, layer in layers(pm).items():
        sl = weight_slices(pm, name, layer.out_channels, orbit_shared)
        weights[name] = weight_scales(layer.weight, per_channel, sl).numpy()
    acts = {q: activation_qparams(*ranges[q]) for q in points}
    for q, node in points.items():  # integer kernels with a fixed output grid
        if node.target in FIXED_OUTPUT:
            acts[q] = FIXED_OUTPUT[node.target]
            ranges[q] = fixed_range(*acts[q])
    return QuantParams(per_channel, source, acts, ranges, grid, weights, notes,
                       constant_qparams(gm))


def constant_operands(gm: fx.GraphModule) -> dict[str, tuple[fx.Node, int, torch.Tensor]]:
    """Ops other than conv/linear with a float constant tensor operand: op name -> (op node,
    argument position, constant). Integer runtimes store such a constant as an int8 tensor."""
    found = {}
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target in (CONV, LINEAR) or not _is_float(n):
            continue
        for i, a in enumerate(n.args):
            c = _param(gm, a)
            if c is not None and c.is_floating_point():
                found[n.name] = (n, i, c)
                break
    return found


def constant_qparams(gm: fx.GraphModule) -> dict[str, tuple[float, int]]:
    """(scale, zero point) of every constant operand, asymmetric over its min/max (and 0)."""
    return {name: activation_qparams(float(c.min()), float(c.max()))
            for name, (_, _, c) in constant_operands(gm).items()}


def fixed_range(scale: float, zp: int) -> tuple[float, float]:
    """The real interval an int8 grid (scale, zero point) covers."""
    return (QMIN - zp) * scale, (QMAX - zp) * scale
