"""Parameters and multiply-adds of a model, counted on its exported plain graph.

Trainable: the source model's parameters (for e2cnn/escnn the basis coefficients). Expanded:
the weights and biases of every conv / linear node of the ``torch.export`` graph (the filters
that are deployed; a filter bank built in ``forward`` counts with its built shape).
Multiply-adds per image: ``out.numel() / N * prod(weight.shape[1:])`` per conv, ``out / N *
in_features`` per linear; elementwise ops, pools and BN are not counted.
"""

from __future__ import annotations

import math

import torch

_CONVS = {"conv1d", "conv2d", "conv3d", "convolution"}
_LINEAR = {"linear"}


def _op_name(node) -> str:
    return str(getattr(node.target, "__name__", node.target)).split(".")[0]


def _shape(node) -> tuple[int, ...] | None:
    val = node.meta.get("val") if hasattr(node, "meta") else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def graph_cost(program: torch.export.ExportedProgram) -> dict:
    """``{"expanded_params", "macs"}`` per image of an exported graph."""
    params, macs = 0, 0
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        op = _op_name(node)
        if op not in _CONVS and op not in _LINEAR:
            continue
        out, w = _shape(node), _shape(node.args[1])
        if out is None or w is None:
            continue
        bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
        b = _shape(bias) if isinstance(bias, torch.fx.Node) else None
        params += math.prod(w) + (math.prod(b) if b else 0)
        per_out = math.prod(w[1:])
        macs += math.prod(out[1:]) * per_out
    return {"expanded_params": int(params), "macs": int(macs)}


def trainable_params(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))
