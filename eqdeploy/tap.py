"""``--tap LAYER``: measure equivariance at an internal tensor of the deployed network.

Models whose head reads group channels without pooling (a Linear over every field) have an
output with no group action; what can be verified is the feature map the head reads. The
tap is the output of module ``LAYER`` (its dotted path, e.g. ``features.10``, or an fx node
name). ``truncate`` cuts a plain graph at the tap: the result is a normal single-output
model whose output is the tapped tensor, with its layout (spatial action + channel
permutation) as the output action, so it is emitted, verified and benched like any model.
Cut from the *quantized* graph with the *same* parameter set, its integer arithmetic up to
the tap is the deployed artifact's.
"""

from __future__ import annotations

import copy

import torch
from torch import fx

from eqdeploy.errors import EqdeployError
from eqdeploy.export import PlainModel
from eqdeploy.quantize.params import QuantParams

aten = torch.ops.aten
_BATCH_NORMS = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default}
_WRAPPERS = ("", "model.")  # the e2cnn/escnn exporter wraps the user's model as ``model``


def _paths(node: fx.Node) -> set[str]:
    stack = node.meta.get("nn_module_stack") or {}
    found = set()
    for path, _ in stack.values():
        for prefix in _WRAPPERS:
            if prefix and path.startswith(prefix):
                path = path[len(prefix):]
        found.add(path.removesuffix(".plain"))
    return found


def _data_nodes(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "call_function"
            and n.target is not aten.sym_size.int]


def resolve_tap(pm: PlainModel | torch.export.ExportedProgram, layer: str) -> str:
    """The graph node carrying the output of module ``layer`` (or the node named ``layer``)."""
    program = pm if isinstance(pm, torch.export.ExportedProgram) else pm.program
    nodes = _data_nodes(program.graph_module)
    if any(n.name == layer for n in nodes):
        return layer
    hits = [n for n in nodes if layer in _paths(n)]
    if not hits:
        known = sorted({p for n in nodes for p in _paths(n) if p})
        raise EqdeployError(f"--tap {layer}: no layer of that name in the exported graph",
                            "pass a module path such as " + ", ".join(known[-4:]))
    return hits[-1].name


def follow_tap(plain: PlainModel, tap: str, folded: PlainModel) -> str:
    """The node of ``folded`` (after DFQ) that carries ``plain``'s tap tensor."""
    gm = plain.program.graph_module
    node = next(n for n in gm.graph.nodes if n.name == tap)
    if node.target in _BATCH_NORMS:
        node = node.args[0]  # BN folds into its conv, whose output then is the BN's
    deepest = max(_paths(node), key=len)  # the leaf module that produced the tensor
    hits = [n for n in _data_nodes(folded.program.graph_module)
            if deepest and max(_paths(n), key=len, default="") == deepest]
    if not hits:
        raise EqdeployError(f"the tapped tensor {tap} did not survive DFQ",
                            "tap another layer, or pass --no-dfq")
    return hits[-1].name


def truncate(pm: PlainModel, tap: str) -> tuple[PlainModel, dict[str, str]]:
    """``pm`` cut at node ``tap``: its output is that tensor, with that tensor's layout."""
    from eqdeploy.dfq.graph import reexport

    layout = pm.spec.tensors.get(tap)
    if layout is None:
        raise EqdeployError(f"--tap: eqdeploy knows no field layout for tensor {tap}",
                            "tap the output of an equivariant layer (a conv, norm, "
                            "nonlinearity or pool)")
    probe = copy.deepcopy(pm.spec)
    probe.output = layout
    if probe.channel_perm(layout, probe.group.elements[0]) is None:
        raise EqdeployError(f"--tap: tensor {tap} has non-permutation fields (irreps)",
                            "tap a tensor of regular, quotient or trivial fields")
    gm = pm.module()
    target = next(n for n in gm.graph.nodes if n.name == tap)
    out = next(n for n in gm.graph.nodes if n.op == "output")
    out.args = ((target,),)
    cut, names = reexport(pm, gm)
    cut.spec.output = cut.spec.tensors[names[tap]]
    cut.info = {**cut.info, "tap": {"tensor": tap}}
    return cut, names


def renamed_params(qp: QuantParams, names: dict[str, str]) -> QuantParams:
    """``qp`` keyed by the node names of a truncated graph (entries of cut nodes dropped)."""
    grid = {names[k]: names[v] for k, v in qp.grid.items() if k in names and v in names}
    points = set(grid.values())
    return QuantParams(qp.per_channel, qp.ranges_from,
                       {names[k]: v for k, v in qp.activations.items() if names.get(k) in points},
                       {names[k]: v for k, v in qp.ranges.items() if names.get(k) in points},
                       grid, {names[k]: v for k, v in qp.weights.items() if k in names},
                       list(qp.notes),
                       {names[k]: v for k, v in qp.constants.items() if k in names})
