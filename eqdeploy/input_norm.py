"""The input normalization, read from the model when ``--input-norm`` is not given.

``--input-norm MEAN:STD`` says the artifact's input is ``(pixel - MEAN) / STD`` with pixels in
[0, 1]; it fixes the input's INT8 range, normalizes calibration images and shapes the
synthetic probes. Without it, eqdeploy looks in this order:

1. attributes of the model object: ``input_mean``/``input_std``, ``pixel_mean``/``pixel_std``,
   or a ``normalize``/``transform``/``preprocess`` attribute holding a torchvision-style
   ``Normalize`` (``.mean``, ``.std``);
2. the graph itself: if the first ops on the input are ``(x - m) / s`` (or ``* 1/s``) with
   constant per-channel ``m`` and ``s``, the model normalizes its own input, so the artifact
   takes raw pixels: range [0, 1] (or [0, 255] when ``m`` exceeds 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import fx

from eqdeploy.fx_attrs import attr_tensor

aten = torch.ops.aten
Norm = tuple[list[float], list[float]]

_ATTR_PAIRS = (("input_mean", "input_std"), ("pixel_mean", "pixel_std"))
_TRANSFORM_ATTRS = ("normalize", "transform", "preprocess", "input_transform")


def _floats(value) -> list[float] | None:
    if value is None:
        return None
    try:
        arr = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value,
                         dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        return None
    return [float(v) for v in arr] if arr.size else None


def _valid(mean: Sequence[float] | None, std: Sequence[float] | None) -> bool:
    return bool(mean) and bool(std) and len(mean) == len(std) and min(std) > 0


def from_attributes(model: object) -> tuple[Norm, str] | None:
    """Mean/std declared on the model object, with where they were found."""
    for m_attr, s_attr in _ATTR_PAIRS:
        mean, std = (_floats(getattr(model, a, None)) for a in (m_attr, s_attr))
        if _valid(mean, std):
            return (mean, std), f"model attributes {m_attr}/{s_attr}"
    for attr in _TRANSFORM_ATTRS:
        t = getattr(model, attr, None)
        mean, std = _floats(getattr(t, "mean", None)), _floats(getattr(t, "std", None))
        if t is not None and _valid(mean, std):
            return (mean, std), f"model attribute {attr} ({type(t).__name__})"
    return None


def _value(gm: fx.GraphModule, arg, depth: int = 0):
    """``arg`` evaluated if it depends on constants only (weights, literals), else None."""
    if isinstance(arg, (int, float)):
        return float(arg)
    if not isinstance(arg, fx.Node) or depth > 8:
        return None
    if arg.op == "get_attr":
        value = attr_tensor(gm, arg)
        return value if isinstance(value, torch.Tensor) else None
    if arg.op == "call_function" and arg.target is not aten.sym_size.int:
        args = [_value(gm, a, depth + 1) if isinstance(a, fx.Node) else a for a in arg.args]
        pairs = zip(args, arg.args, strict=True)
        if any(a is None for a, raw in pairs if isinstance(raw, fx.Node)):
            return None
        with torch.no_grad():
            return arg.target(*args, **arg.kwargs)
    return None


def _constant(gm: fx.GraphModule, arg) -> np.ndarray | None:
    value = _value(gm, arg)
    if isinstance(value, float):
        return np.asarray([value])
    return value.double().numpy().reshape(-1) if isinstance(value, torch.Tensor) else None


def from_graph(gm: fx.GraphModule) -> tuple[Norm, str] | None:
    """Raw-pixel input if the graph (unlifted: weights as ``get_attr``) starts with
    ``(x - m) / s``: returns the equivalent ``--input-norm`` (mean 0, std 1 for [0, 1]
    pixels; std 1/255 for [0, 255])."""
    x = next((n for n in gm.graph.nodes if n.op == "placeholder"), None)
    users = [u for u in (x.users if x is not None else ())
             if u.op == "call_function" and u.target is not aten.sym_size.int]
    if len(users) != 1 or users[0].target is not aten.sub.Tensor or users[0].args[0] is not x:
        return None
    sub = users[0]
    mean = _constant(gm, sub.args[1])
    nxt = [u for u in sub.users if u.op == "call_function"]
    if mean is None or len(nxt) != 1 or nxt[0].args[0] is not sub:
        return None
    scale = _constant(gm, nxt[0].args[1])
    if scale is None or nxt[0].target not in (aten.div.Tensor, aten.mul.Tensor):
        return None
    std = scale if nxt[0].target is aten.div.Tensor else 1.0 / scale
    if not np.all(std > 0):
        return None
    if float(mean.max()) > 1.0:
        return ([0.0], [1.0 / 255.0]), "graph: the model normalizes [0, 255] pixels itself"
    return ([0.0], [1.0]), "graph: the model normalizes [0, 1] pixels itself"


def read_input_norm(model: object, gm: fx.GraphModule) -> tuple[Norm, str] | None:
    """The model's declared normalization, else one implied by its graph, else None."""
    return (from_attributes(model) if model is not None else None) or from_graph(gm)
