"""Graph rewrites before quantization so every target quantizes the same ops the same way.

``adaptive_avg_pool2d(x, 1)`` (``nn.AdaptiveAvgPool2d(1)``) becomes ``mean(x, (2, 3),
keepdim=True)``: the ONNX exporter lowers it to a ReduceMean that carries no FX name, so ORT
would choose that tensor's parameters itself; as a ``mean`` it is a quant point of the
parameter set like any other global average (exact: the same arithmetic).
"""

from __future__ import annotations

import torch

from eqdeploy.export import PlainModel

aten = torch.ops.aten


def _is_global_pool(node) -> bool:
    if node.op != "call_function" or node.target is not aten.adaptive_avg_pool2d.default:
        return False
    size = node.args[1]
    return list(size if isinstance(size, (list, tuple)) else [size, size]) == [1, 1]


def global_pools_to_mean(pm: PlainModel) -> tuple[PlainModel, int]:
    """``pm`` with every adaptive average pool to 1x1 as a spatial mean; returns the count."""
    from eqdeploy.dfq.graph import reexport

    gm = pm.module()
    pools = [n for n in gm.graph.nodes if _is_global_pool(n)]
    renamed = {}
    for pool in pools:
        with gm.graph.inserting_before(pool):
            mean = gm.graph.call_function(aten.mean.dim, (pool.args[0], [2, 3], True))
        mean.meta = dict(pool.meta)
        pool.replace_all_uses_with(mean)
        gm.graph.erase_node(pool)
        renamed[pool.name] = mean.name
    if not pools:
        return pm, 0
    gm.recompile()
    new, _ = reexport(pm, gm, renamed)
    return new, len(pools)
