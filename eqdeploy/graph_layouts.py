"""Assign a field layout to every tensor of an exported aten graph.

Tensors produced inside a swapped equivariant module take that module's field type (its
output node the out type; inner nodes of a type-preserving module the same type).
Tensors produced by the user's own code inherit a layout through ops that act on each
channel alone (elementwise ops, residual adds, spatial pooling and global reductions,
flatten of a 1x1 map); a Linear on invariant features gives invariant features.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import fx

from eqdeploy.spec import Layout

aten = torch.ops.aten

_CHANNELWISE = {
    aten.relu.default, aten.relu_.default, aten.add.Tensor, aten.sub.Tensor, aten.mul.Tensor,
    aten.div.Tensor, aten.clone.default, aten.dropout.default, aten.hardtanh.default,
    aten.hardtanh_.default, aten.sigmoid.default, aten.tanh.default, aten.elu.default,
    aten.leaky_relu.default, aten.gelu.default, aten.contiguous.default, aten.alias.default,
    aten.detach.default, aten.max_pool2d.default, aten.avg_pool2d.default,
    aten.adaptive_avg_pool2d.default, aten.adaptive_max_pool2d.default, aten.clamp.default,
    aten.relu6.default, aten.silu.default, aten.hardswish.default,
}
_GLOBAL_REDUCE = {aten.mean.dim, aten.amax.default, aten.sum.dim_IntList}
_RESHAPES = {aten.flatten.using_ints, aten.view.default, aten.reshape.default,
             aten.squeeze.dims, aten.squeeze.dim, aten._unsafe_view.default}


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    val = node.meta.get("val")
    return tuple(int(s) for s in val.shape) if isinstance(val, torch.Tensor) else None


def _tensor_args(node: fx.Node) -> list[fx.Node]:
    return [a for a in node.args if isinstance(a, fx.Node) and _shape(a) is not None]


def _propagate(node: fx.Node, layouts: dict[str, Layout],
               is_invariant: Callable[[Layout], bool], trivial: Callable[[int, bool], Layout]
               ) -> Layout | None:
    shape = _shape(node)
    args = _tensor_args(node)
    if shape is None or not args or args[0].name not in layouts:
        return None
    first = layouts[args[0].name]
    in_shape = _shape(args[0])
    if node.target in _CHANNELWISE:
        others = [layouts.get(a.name) for a in args[1:] if _shape(a) and len(_shape(a)) > 1]
        same = all(o == first for o in others)
        return first if same and len(shape) == len(in_shape) and shape[1] == in_shape[1] \
            else None
    if node.target in _GLOBAL_REDUCE:
        dims = node.args[1] if len(node.args) > 1 else None
        dims = sorted(d % len(in_shape) for d in (dims or []))
        if len(in_shape) == 4 and dims == [2, 3]:
            return dataclasses.replace(first, spatial=len(shape) == 4)
        return None
    if node.target in _RESHAPES:
        if len(in_shape) == 4 and in_shape[2:] == (1, 1) and shape == in_shape[:2]:
            return dataclasses.replace(first, spatial=False)
        return first if shape == in_shape else None
    if node.target in (aten.linear.default, aten.addmm.default) and is_invariant(first):
        return trivial(shape[-1], False)
    return None


def assign_layouts(gm: fx.GraphModule, input_name: str, input_layout: Layout,
                   module_types: dict[str, tuple[Layout, Layout]],
                   is_invariant: Callable[[Layout], bool],
                   trivial: Callable[[int, bool], Layout]) -> dict[str, Layout]:
    """Layouts by node name. ``module_types`` maps a module path to its (in, out) layouts."""
    layouts: dict[str, Layout] = {}
    owner: dict[str, str] = {}
    last_node_of: dict[str, str] = {}
    for node in gm.graph.nodes:
        stack = node.meta.get("nn_module_stack") or {}
        paths = [p for p, _ in stack.values() if p in module_types]
        if paths:
            owner[node.name] = paths[-1]
            last_node_of[paths[-1]] = node.name
    layouts[input_name] = input_layout
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.name in layouts:
            continue
        path = owner.get(node.name)
        if path is not None:
            lin, lout = module_types[path]
            shape = _shape(node)
            inner_same_type = lin == lout and shape is not None and len(shape) > 1 \
                and shape[1] == lout.channels
            if last_node_of[path] == node.name or inner_same_type:
                layouts[node.name] = lout
            continue
        lay = _propagate(node, layouts, is_invariant, trivial)
        if lay is not None:
            layouts[node.name] = lay
    return layouts


def output_node(gm: fx.GraphModule) -> fx.Node:
    out = next(n for n in gm.graph.nodes if n.op == "output")
    first = out.args[0]
    return first[0] if isinstance(first, (tuple, list)) else first
