"""Reading the constants of an unlifted fx graph (weights and buffers as ``get_attr``)."""

from __future__ import annotations

import torch
from torch import fx, nn


def module_attr(gm: nn.Module, target: str):
    """The attribute at dotted path ``target`` of ``gm`` (a parameter, buffer or module)."""
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def attr_tensor(gm: nn.Module, node) -> torch.Tensor | None:
    """The (detached) tensor behind a ``get_attr`` node, else None."""
    if not isinstance(node, fx.Node) or node.op != "get_attr":
        return None
    value = module_attr(gm, node.target)
    return value.detach() if isinstance(value, torch.Tensor) else None
