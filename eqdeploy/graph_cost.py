"""Multiply-adds of an aten graph, per sample: what a rewrite costs at inference.

Counted for the ops that carry the arithmetic: convolutions (any rank, grouped or not:
``output elements x input channels per group x kernel size``) and linear/matmul layers
(``output elements x input features``). Shapes come from the nodes' ``meta["val"]``; the
batch axis is left out (a symbolic batch counts as 1).
"""

from __future__ import annotations

import math

import torch
from torch import fx

aten = torch.ops.aten
_CONVS = {aten.conv1d.default, aten.conv2d.default, aten.conv3d.default,
          aten.convolution.default}
_LINEAR = {aten.linear.default, aten.addmm.default, aten.mm.default}


def _shape(node) -> tuple | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _per_sample(shape: tuple) -> int:
    return math.prod(int(d) for d in shape[1:]) if len(shape) > 1 else 1


def node_multiply_adds(node: fx.Node) -> int:
    """Multiply-adds of one node per sample (0 for ops that are not conv/linear)."""
    if node.op != "call_function":
        return 0
    out = _shape(node)
    if out is None:
        return 0
    if node.target in _CONVS:
        w = _shape(node.args[1])
        if w is None:
            return 0
        if node.target == aten.convolution.default and node.args[6]:  # transposed
            return _per_sample(_shape(node.args[0])) * int(w[1]) * math.prod(w[2:])
        return _per_sample(out) * int(w[1]) * math.prod(int(d) for d in w[2:])
    if node.target in _LINEAR:
        x = node.args[1] if node.target == aten.addmm.default else node.args[0]
        shape = _shape(x)
        return 0 if shape is None else _per_sample(out) * int(shape[-1])
    return 0


def multiply_adds(graph: fx.Graph) -> int:
    """Total multiply-adds per sample of ``graph``."""
    return int(sum(node_multiply_adds(n) for n in graph.nodes))
