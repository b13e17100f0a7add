"""The fixed-batch program every target converts, and its node names in the plain graph.

Edge converters want a static batch, so each target re-exports the plain graph at its
batch size; the re-export may rename nodes (a ``reshape`` can come back as ``view``).
``static_names`` aligns the two graphs' float nodes in order and checks that the ops
agree: the one map from plain-graph nodes (where quantization points live) to the nodes
the ONNX and TFLite converters see.
"""

from __future__ import annotations

from eqdeploy.errors import EqdeployError
from eqdeploy.export import PlainModel

_RESHAPES = {"aten.view.default", "aten.reshape.default", "aten._unsafe_view.default"}


def _float_nodes(graph) -> list:
    import torch

    out = []
    for n in graph.nodes:
        val = n.meta.get("val")
        if not (isinstance(val, torch.Tensor) and val.is_floating_point()):
            continue
        if n.op == "call_function" or (n.op == "placeholder" and n.users
                                       and not n.name.startswith(("p_", "b_", "c_"))):
            out.append(n)
    return out


def static_names(plain: PlainModel, static) -> dict[str, str]:
    """Node of ``plain.program`` -> node of its fixed-batch re-export (aligned in order;
    most names are equal, but e.g. a ``reshape`` may come back as ``view``)."""
    a, b = _float_nodes(plain.program.graph), _float_nodes(static.graph)
    if len(a) != len(b):
        raise EqdeployError(f"the static re-export has {len(b)} float nodes, the plain graph "
                            f"{len(a)}", "report this model to eqdeploy")
    out = {}
    for x, y in zip(a, b, strict=True):
        tx, ty = str(x.target), str(y.target)
        if tx != ty and not (tx in _RESHAPES and ty in _RESHAPES):
            raise EqdeployError(f"cannot align {x.name} ({tx}) with {y.name} ({ty}) in the "
                                "static re-export", "report this model to eqdeploy")
        out[x.name] = y.name
    return out
