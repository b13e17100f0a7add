"""Structural passes: BN folding (with its statistics kept) and ReLU6 -> ReLU.

Folding a BN ``y = gamma (z - mu) / sqrt(var + eps) + beta`` into the conv/linear that
produces z: ``W' = W a``, ``b' = (b - mu) a + beta`` with ``a = gamma / sqrt(var + eps)`` per
output channel. The folded conv's output is the BN's output, whose per-channel mean and
std over the training data are ``beta`` and ``|gamma|``: kept in
``info["bn_stats"][conv]`` for absorption, bias correction and data-free activation ranges.
Every conv/linear gets a bias (zero if it had none) so later passes only edit values.
InnerBatchNorm statistics are per field, so the folded scales are shared by each field.
A BN with no conv/linear of its own before it (pre-activation ResNets: BN after a residual
sum) becomes the per-channel affine map it is, a depthwise 1x1 conv (``W = a``,
``b = beta - mu a``; a diagonal linear on 2-D tensors), which integer runtimes run as
DEPTHWISE_CONV_2D / QLinearConv like any other conv.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from eqdeploy.dfq.graph import CONV, LINEAR, RELU6, STATS_KEY, _is_relu6, clone, reexport
from eqdeploy.export import PlainModel

aten = torch.ops.aten
BATCH_NORM = aten.batch_norm.default


def _owner(gm: nn.Module, target: str) -> tuple[nn.Module, str]:
    prefix, _, leaf = target.rpartition(".")
    return (gm.get_submodule(prefix) if prefix else gm), leaf


def _attr(gm: nn.Module, node: fx.Node | None) -> torch.Tensor | None:
    if node is None:
        return None
    mod, leaf = _owner(gm, node.target)
    return getattr(mod, leaf)


def _ensure_bias(gm: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    """The bias tensor of a conv/linear node, adding a zero parameter if it has none."""
    args = list(node.args)
    while len(args) < 3:
        args.append(None)
    if args[2] is not None:
        return _attr(gm, args[2])
    w_node = args[1]
    mod, leaf = _owner(gm, w_node.target)
    name = "bias" if getattr(mod, "bias", None) is None and "bias" not in mod._buffers \
        else f"{leaf}_dfq_bias"
    channels = _attr(gm, w_node).shape[0]
    bias = nn.Parameter(torch.zeros(channels, dtype=_attr(gm, w_node).dtype),
                        requires_grad=False)
    if name in mod._parameters:
        del mod._parameters[name]
    mod.register_parameter(name, bias)
    target = f"{w_node.target.rpartition('.')[0]}.{name}".lstrip(".")
    with gm.graph.inserting_before(node):
        args[2] = gm.graph.get_attr(target)
    node.args = tuple(args)
    return bias


def _drop_unused_attrs(gm: fx.GraphModule) -> None:
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in [*gm.named_parameters(), *gm.named_buffers()]:
        if name not in used:
            mod, leaf = _owner(gm, name)
            mod._parameters.pop(leaf, None)
            mod._buffers.pop(leaf, None)


def _affine_layer(gm: fx.GraphModule, bn: fx.Node, gamma, beta, mu, var, eps: float
                  ) -> fx.Node | None:
    """Replace an eval BN by the depthwise 1x1 conv (4-D) or diagonal linear (2-D) computing
    the same per-channel affine map; returns the new node, or None for other ranks."""
    val = bn.meta.get("val")
    rank = val.dim() if isinstance(val, torch.Tensor) else 0
    if rank not in (2, 4):
        return None
    with torch.no_grad():
        g = torch.ones_like(mu) if gamma is None else gamma.detach()
        b = torch.zeros_like(mu) if beta is None else beta.detach()
        a = g.double() / torch.sqrt(var.double() + eps)
        bias = (b.double() - mu.double() * a).to(mu.dtype)
        weight = (a.reshape(-1, 1, 1, 1) if rank == 4 else torch.diag(a)).to(mu.dtype)
    name = bn.name.replace(".", "_")
    gm.register_parameter(f"{name}_affine_weight", nn.Parameter(weight, requires_grad=False))
    gm.register_parameter(f"{name}_affine_bias", nn.Parameter(bias, requires_grad=False))
    with gm.graph.inserting_before(bn):
        w = gm.graph.get_attr(f"{name}_affine_weight")
        b_node = gm.graph.get_attr(f"{name}_affine_bias")
        args = (bn.args[0], w, b_node, [1, 1], [0, 0], [1, 1], len(a)) if rank == 4 \
            else (bn.args[0], w, b_node)
        conv = gm.graph.call_function(CONV if rank == 4 else LINEAR, args)
    conv.meta = dict(bn.meta)
    bn.replace_all_uses_with(conv)
    gm.graph.erase_node(bn)
    return conv


def fold_batchnorm(pm: PlainModel) -> tuple[PlainModel, dict]:
    """Fold every eval-mode BN into the conv/linear before it; give every layer a bias."""
    work = clone(pm)
    gm = work.program.module()
    folded, kept, renamed, stats = [], [], {}, {}
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target != BATCH_NORM:
            continue
        prod = bn.args[0]
        training = bool(bn.args[5]) if len(bn.args) > 5 else bool(bn.kwargs.get("training"))
        if training:
            kept.append({"node": bn.name, "reason": "training-mode batch norm"})
            continue
        gamma, beta, mu, var = (_attr(gm, a) for a in bn.args[1:5])
        eps = float(bn.args[7]) if len(bn.args) > 7 else 1e-5
        if not (isinstance(prod, fx.Node) and prod.op == "call_function"
                and prod.target in (CONV, LINEAR) and len(prod.users) == 1
                and prod.args[1].op == "get_attr"):
            conv = _affine_layer(gm, bn, gamma, beta, mu, var, eps)
            if conv is None:
                kept.append({"node": bn.name, "reason": "not preceded by a single-use "
                             "conv/linear, and not a 2-D or 4-D tensor"})
                continue
            stats[conv.name] = (beta.detach().double() if beta is not None
                                else torch.zeros_like(mu.double()),
                                gamma.detach().double().abs() if gamma is not None
                                else torch.ones_like(mu.double()))
            renamed[bn.name] = conv.name
            folded.append({"batch_norm": bn.name, "into": conv.name, "as": "affine"})
            continue
        weight = _attr(gm, prod.args[1])
        bias = _ensure_bias(gm, prod)
        with torch.no_grad():
            gamma = torch.ones_like(mu) if gamma is None else gamma.detach().double()
            beta = torch.zeros_like(mu) if beta is None else beta.detach().double()
            a = gamma / torch.sqrt(var.double() + eps)
            new_w = weight.double() * a.reshape(-1, *([1] * (weight.dim() - 1)))
            new_b = (bias.double() - mu.double()) * a + beta
            weight.copy_(new_w.to(weight.dtype))
            bias.copy_(new_b.to(bias.dtype))
        stats[prod.name] = (beta, gamma.abs())
        bn.replace_all_uses_with(prod)
        gm.graph.erase_node(bn)
        renamed[bn.name] = prod.name
        folded.append({"batch_norm": bn.name, "into": prod.name})
    added = 0
    for n in list(gm.graph.nodes):
        if n.op == "call_function" and n.target in (CONV, LINEAR) \
                and (len(n.args) < 3 or n.args[2] is None) and n.args[1].op == "get_attr":
            _ensure_bias(gm, n)
            added += 1
    gm.graph.eliminate_dead_code()
    _drop_unused_attrs(gm)
    new, names = reexport(work, gm, renamed)
    for node, (mean, std) in stats.items():
        new.info.setdefault(STATS_KEY, {})[names[node]] = {
            "mean": [float(v) for v in mean], "std": [float(v) for v in std]}
    report = {"folded": [{**f, "into": names[f["into"]]} for f in folded],
              "kept": kept, "biases_added": added}
    return new, report


def replace_relu6(pm: PlainModel) -> tuple[PlainModel, dict]:
    """ReLU6 (hardtanh/clamp to [0, 6]) -> ReLU, as the DFQ paper and AIMET do."""
    work = clone(pm)
    gm = work.program.module()
    replaced = []
    for n in gm.graph.nodes:
        if n.op == "call_function" and n.target in RELU6 and _is_relu6(n):
            replaced.append(n.name)
            n.target = aten.relu.default
            n.args = (n.args[0],)
            n.kwargs = {}
    if not replaced:
        return work, {"replaced": []}
    new, names = reexport(work, gm)
    return new, {"replaced": [names[r] for r in replaced]}
