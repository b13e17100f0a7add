"""Equalization chains: producer -> ops that commute with a per-unit positive scale -> consumer.

A unit is a field of the producer's output (one channel in the orbit-agnostic mode): CLE and
absorption give every channel of a unit the same scale (or shift). The walk follows the
producer's single consumer through ops and tracks, for every element of the current tensor,
the unit its value comes from (a tensor of unit ids shaped like one sample). An op passes when
it acts on each unit alone:

- elementwise ops (ReLU, dropout, copies) and spatial pools (max, average, adaptive average):
  per channel, so per unit;
- reshapes (view, reshape, flatten, unflatten, squeeze, unsqueeze) and permutes that keep the
  batch axis: they only move elements, and the ids move with them;
- reductions (``amax`` - group max-pooling -, ``mean`` - global mean -) over axes along which
  the unit id is constant: ``max_i(s x_i) = s max_i x_i`` and ``mean_i(s x_i) = s mean_i x_i``
  for one positive s. Group pooling reduces over the channels of a field: it passes in the
  block-aware mode and stops the chain in the orbit-agnostic mode (one scale per channel
  cannot pass a max over channels).

At the consumer (conv2d over ``(N, C, H, W)`` with ids constant over space, or linear over
``(N, C)``) the ids say which unit feeds each input column, so the consumer's column j is
scaled by the scale of unit ``ids[j]``. Everything else ends the chain, with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx

from eqdeploy.dfq.graph import CONV, LINEAR, RELU, Layer, layers, units
from eqdeploy.export import PlainModel

aten = torch.ops.aten

ELEMENTWISE = {*RELU, aten.clone.default, aten.dropout.default, aten.contiguous.default,
               aten.alias.default, aten.detach.default}
SPATIAL_POOLS = {aten.max_pool2d.default, aten.avg_pool2d.default,
                 aten.adaptive_avg_pool2d.default, aten.adaptive_max_pool2d.default}
RESHAPES = {aten.reshape.default, aten.view.default, aten._unsafe_view.default,
            aten.flatten.using_ints, aten.unflatten.int, aten.squeeze.dim, aten.squeeze.dims,
            aten.unsqueeze.default}
REDUCTIONS = {aten.amax.default, aten.mean.dim}


@dataclass
class Link:
    """``producer -> ops -> consumer`` with the unit feeding each consumer input column."""

    producer: Layer
    consumer: Layer
    ops: list[str] = field(default_factory=list)  # aten op names between them
    nodes: list[str] = field(default_factory=list)  # the nodes of those ops
    units: list[np.ndarray] = field(default_factory=list)  # producer channels per unit
    column_unit: np.ndarray | None = None  # consumer input column j <- unit column_unit[j]
    identity: bool = True  # column j reads producer channel j (no regrouping on the way)

    @property
    def has_relu(self) -> bool:
        return any(o.startswith("aten.relu") for o in self.ops)

    @property
    def passes_group_pool(self) -> bool:
        return not self.identity and "aten.amax" in self.ops

    def columns(self, per_unit: torch.Tensor) -> torch.Tensor:
        """A per-unit value spread over the consumer's input columns."""
        return per_unit[torch.as_tensor(self.column_unit, dtype=torch.long)]


class _Stop(Exception):
    """The chain ends at this op (the message says why)."""


def op_name(n: fx.Node) -> str:
    return str(n.target.overloadpacket).replace("aten::", "aten.")


def _shape(n: fx.Node) -> tuple:
    return tuple(n.meta["val"].shape)


def _dims(n: fx.Node, ndim: int) -> list[int]:
    d = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
    if d is None or (isinstance(d, (list, tuple)) and len(d) == 0):
        return list(range(ndim))  # a full reduction
    d = [d] if isinstance(d, int) else list(d)
    return sorted({int(a) % ndim for a in d})


def _step(node: fx.Node, ids: torch.Tensor, chan: torch.Tensor, agnostic: bool
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit ids (and producer channel ids) of ``node``'s output for one sample."""
    t = node.target
    if t in ELEMENTWISE:
        return ids, chan
    src, out = _shape(node.args[0]), _shape(node)
    if len(out) == 0 or str(out[0]) != str(src[0]):
        raise _Stop("the op mixes the batch axis")
    if t in SPATIAL_POOLS:
        if ids.dim() != 4 or not _constant(ids, [2, 3]):
            raise _Stop("a spatial pool over values of different units")
        shp = (1, ids.shape[1], *out[2:])
        return ids[:, :, :1, :1].expand(shp), chan[:, :, :1, :1].expand(shp)
    if t in RESHAPES:
        shp = (1, *(int(s) for s in out[1:]))
        return ids.reshape(shp), chan.reshape(shp)
    if t == aten.permute.default:
        perm = [int(p) % ids.dim() for p in node.args[1]]
        if perm[0] != 0:
            raise _Stop("the permute moves the batch axis")
        return ids.permute(perm), chan.permute(perm)
    if t in REDUCTIONS:
        dims = _dims(node, ids.dim())
        if 0 in dims:
            raise _Stop("the reduction runs over the batch axis")
        if node.kwargs.get("dtype") is not None:
            raise _Stop("the reduction changes the dtype")
        if not _constant(ids, dims):
            what = "a max over channels" if t == aten.amax.default else "a mean over channels"
            raise _Stop(f"{what} of different units" + (
                " (group pooling: one scale per channel cannot pass it; block-aware mode "
                "passes it with one scale per field)" if agnostic else ""))
        keep = bool(node.args[2]) if len(node.args) > 2 else bool(node.kwargs.get("keepdim"))
        return ids.amax(dims, keepdim=keep), chan.amax(dims, keepdim=keep)
    raise _Stop(f"{op_name(node)} does not commute with a per-unit positive scale")


def _constant(ids: torch.Tensor, dims: list[int]) -> bool:
    return bool((ids.amax(dims) == ids.amin(dims)).all())


def _consumer_columns(cons: Layer, ids: torch.Tensor, kind) -> np.ndarray | None:
    """Unit id per input column of ``cons`` (None if the ids vary over other axes)."""
    if kind == CONV and ids.dim() == 4 and _constant(ids, [2, 3]):
        col = ids[0, :, 0, 0]
    elif kind == LINEAR and ids.dim() == 2:
        col = ids[0]
    else:
        return None
    return col.numpy().astype(np.int64) if len(col) == cons.in_channels else None


def _initial(node: fx.Node, slices: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    shape = (1, *(int(s) for s in _shape(node)[1:]))
    per_chan = torch.empty(shape[1], dtype=torch.float64)
    for u, idx in enumerate(slices):
        per_chan[torch.as_tensor(idx)] = u
    view = (1, shape[1], *([1] * (len(shape) - 2)))
    chan = torch.arange(shape[1], dtype=torch.float64)
    return per_chan.reshape(view).expand(shape), chan.reshape(view).expand(shape)


def walk(pm: PlainModel, found: dict[str, Layer] | None = None, orbit_agnostic: bool = False
         ) -> tuple[list[Link], list[dict]]:
    """Every equalization chain of the graph, and where the others end (with the reason)."""
    found = layers(pm) if found is None else found
    nodes = {n.name: n for n in pm.program.graph.nodes}
    out, stops = [], []
    for name, layer in found.items():
        sl = units(pm, name, layer.out_channels, orbit_agnostic)
        if sl is None:
            stops.append({"producer": name, "at": name,
                          "reason": "no field layout for the producer's output"})
            continue
        node, ops, passed = nodes[name], [], []
        ids, chan = _initial(node, sl)
        while True:
            users = list(node.users)
            if len(users) != 1:
                stops.append({"producer": name, "at": node.name, "reason":
                              f"the tensor has {len(users)} consumers" if users
                              else "the graph output"})
                break
            nxt = users[0]
            if nxt.op != "call_function" or not nxt.args or nxt.args[0] is not node:
                stops.append({"producer": name, "at": nxt.name, "reason": "the graph output"
                              if nxt.op == "output" else "the tensor is not the op's first input"})
                break
            if nxt.name in found:
                cons = found[nxt.name]
                cols = _consumer_columns(cons, ids, nxt.target)
                if cols is None:
                    stops.append({"producer": name, "at": nxt.name, "reason":
                                  "the consumer's input columns do not follow the units"})
                else:
                    c = chan[(0, slice(None), *([0] * (chan.dim() - 2)))]
                    ident = cons.in_channels == layer.out_channels and bool(
                        (c == torch.arange(len(c), dtype=c.dtype)).all())
                    out.append(Link(layer, cons, ops, passed, sl, cols, ident))
                break
            try:
                ids, chan = _step(nxt, ids, chan, orbit_agnostic)
            except _Stop as e:
                stops.append({"producer": name, "at": nxt.name, "op": op_name(nxt),
                              "reason": str(e)})
                break
            ops.append(op_name(nxt))
            passed.append(nxt.name)
            node = nxt
    return out, stops
