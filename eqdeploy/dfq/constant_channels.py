"""Exact high-bias absorption next to zero padding: constant channels carry the shift.

After absorbing ``c`` (producer bias ``-= c``), the consumer sees ``a' = a - c`` zero-padded,
while the original saw ``a`` zero-padded: ``conv(pad0(a)) = conv(pad0(a')) + conv(pad0(c 1))``.
The second term is a convolution of a constant plane that is ``c`` inside the image and 0 on
the padding ring, which the network can compute itself: the producer gets extra output
channels with zero weights and bias ``v`` (ReLU and max pooling keep a positive constant,
and the consumer's zero padding supplies the 0 ring), and the consumer reads them with
kernels ``K_f = (c_f / v) sum_{i in f} W2[:, i]`` per absorbed field f (split over as many
channels as keep ``|K|`` within the consumer's weight range). The result equals the original
everywhere, borders included; each constant channel is one trivial (invariant) field, so
equivariance is unchanged. Cost: a few more channels; no new op, so every runtime runs it.

In INT8 the constant must lie on its tensor's grid, or its rounding error (the same at every
position, so no averaging) biases the consumer: ``v`` is the tensor's largest value (from the
BN statistics, or measured on the given inputs by ``fit_to_data``), which INT8 maps exactly
to the top grid point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from eqdeploy.dfq.fold import _owner
from eqdeploy.dfq.graph import STATS_KEY, layers, reexport
from eqdeploy.export import PlainModel
from eqdeploy.spec import Layout, trivial_layout

RECORDS_KEY = "constant_channels"  # PlainModel.info[RECORDS_KEY]: one record per plan


@dataclass
class Plan:
    """Constant channels for one absorbed link."""

    producer: str
    consumer: str
    chain: list[str]  # nodes between them (their layouts grow with the producer's output)
    value: float  # the constant v
    kernels: torch.Tensor  # (consumer out, m, kh, kw): weights reading the m new channels


def plan_for(lk, per_unit: torch.Tensor, value: float) -> Plan:
    """Kernels reading the constant channels that replace ``W2 . c`` for link ``lk``."""
    w2 = lk.consumer.weight.detach().double()
    limit = float(w2.abs().max())
    parts = []
    for u, idx in enumerate(lk.units):
        c = float(per_unit[u])
        if c <= 0:
            continue
        k = w2[:, torch.as_tensor(idx)].sum(1, keepdim=True) * (c / value)
        m = max(1, math.ceil(float(k.abs().max()) / limit)) if limit > 0 else 1
        parts += [k / m] * m
    return Plan(lk.producer.node, lk.consumer.node, list(lk.nodes), value,
                torch.cat(parts, 1))


def _param(gm: nn.Module, target: str) -> tuple[nn.Module, str, torch.Tensor]:
    mod, leaf = _owner(gm, target)
    return mod, leaf, getattr(mod, leaf)


def _set(mod: nn.Module, leaf: str, value: torch.Tensor) -> None:
    mod._parameters.pop(leaf, None)
    mod._buffers.pop(leaf, None)
    mod.register_parameter(leaf, nn.Parameter(value.contiguous(), requires_grad=False))


def add_constant_channels(pm: PlainModel, plans: list[Plan]) -> PlainModel:
    """``pm`` with every plan's constant channels added (producer rows, consumer columns)."""
    if not plans:
        return pm
    gm = pm.program.module()
    nodes = {n.name: n for n in gm.graph.nodes}
    for p in plans:  # rows first: a layer may be one plan's consumer and another's producer
        node = nodes[p.producer]
        m = p.kernels.shape[1]
        mod, leaf, w = _param(gm, node.args[1].target)
        _set(mod, leaf, torch.cat([w.detach(), w.new_zeros(m, *w.shape[1:])]))
        mod, leaf, b = _param(gm, node.args[2].target)
        _set(mod, leaf, torch.cat([b.detach(), b.new_full((m,), p.value)]))
    for p in plans:
        mod, leaf, w = _param(gm, nodes[p.consumer].args[1].target)
        k = p.kernels.to(w.dtype)
        k = torch.cat([k, k.new_zeros(w.shape[0] - k.shape[0], *k.shape[1:])])
        _set(mod, leaf, torch.cat([w.detach(), k], 1))
    gm.recompile()
    new, names = reexport(pm, gm)
    for p in plans:
        m = p.kernels.shape[1]
        for old in [p.producer, *p.chain]:
            lay = pm.spec.tensors.get(old)
            if lay is None:
                continue
            extra = trivial_layout(new.spec.representations, new.spec.group, m, lay.spatial)
            new.spec.tensors[names[old]] = Layout(
                lay.fields + tuple((lay.channels + s, r) for s, r in extra.fields),
                lay.channels + m, lay.spatial)
        st = new.info.get(STATS_KEY, {}).get(names[p.producer])
        if st is not None:
            st["mean"] = [*st["mean"], *[p.value] * m]
            st["std"] = [*st["std"], *[0.0] * m]
        width = layers(new)[names[p.consumer]].in_channels
        rows = layers(new)[names[p.producer]].out_channels
        new.info.setdefault(RECORDS_KEY, []).append({
            "producer": names[p.producer], "consumer": names[p.consumer],
            "tensors": [names[n] for n in p.chain], "rows": [rows - m, rows],
            "channels": [width - m, width], "value": p.value})
    new.spec.validate()
    return new


def fit_to_data(pm: PlainModel, inputs) -> list[dict]:
    """Set each constant to the largest value its tensor takes on ``inputs`` (in place).

    Min/max ranges over the same inputs then put the constant exactly on the top grid point
    (``hi = v``, ``q = 127``), so INT8 rounds it to itself; data-free ranges do the same with
    the value planned from BN statistics (``max(mean + 6 std)``)."""
    from eqdeploy.dfq.verify import taps

    records = pm.info.get(RECORDS_KEY, [])
    if not records:
        return []
    names = {n for r in records for n in r["tensors"]}
    vals = taps(pm, inputs, names)
    found = layers(pm)
    for r in records:
        a, b = r["rows"]
        top = max(float(np.delete(vals[n], np.s_[a:b], axis=1).max()) for n in r["tensors"])
        if top <= 0:
            continue
        ratio = r["value"] / top
        prod, cons = found[r["producer"]], found[r["consumer"]]
        c0, c1 = r["channels"]
        with torch.no_grad():
            prod.bias[a:b] = top
            cons.weight[:, c0:c1].mul_(ratio)
        st = pm.info.get(STATS_KEY, {}).get(r["producer"])
        if st is not None:
            st["mean"][a:b] = [top] * (b - a)
        r["value"] = top
    return records
