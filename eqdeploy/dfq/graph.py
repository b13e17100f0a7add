"""Graph plumbing shared by the DFQ passes: copies, re-export, layers, units (chains:
``eqdeploy.dfq.chains``).

A pass never mutates its input: ``clone`` deep-copies the program (parameter values are
then edited in place in the copy's ``state_dict``); structural passes edit
``program.module()`` and ``reexport`` it with the same dynamic batch dim, carrying every
layout over to the new node names.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import fx

from eqdeploy.errors import EqdeployError
from eqdeploy.export import PlainModel
from eqdeploy.spec import Layout

aten = torch.ops.aten

CONV = aten.conv2d.default
LINEAR = aten.linear.default
RELU = (aten.relu.default, aten.relu_.default)
RELU6 = (aten.hardtanh.default, aten.hardtanh_.default, aten.relu6.default, aten.clamp.default)
STATS_KEY = "bn_stats"  # PlainModel.info[STATS_KEY][node] = {"mean": [...], "std": [...]}


# --- copies and re-export -------------------------------------------------------------------
def clone(pm: PlainModel) -> PlainModel:
    """An independent copy: program (with its parameters), spec and info."""
    return PlainModel(copy.deepcopy(pm.program), copy.deepcopy(pm.spec), pm.example,
                      copy.deepcopy(pm.info))


def _ops(graph: fx.Graph) -> list[fx.Node]:
    return [n for n in graph.nodes if n.op == "call_function"
            and isinstance(n.target, torch._ops.OpOverload) and n.target != aten.sym_size.int]


def reexport(pm: PlainModel, gm: fx.GraphModule, renamed: dict[str, str] | None = None
             ) -> tuple[PlainModel, dict[str, str]]:
    """Export an edited ``program.module()`` again; returns the model and old->new names.

    ``renamed`` maps a node of ``pm`` that was removed to the node of ``gm`` that now carries
    its value (a folded batch_norm -> its conv), so its layout and stats follow.
    """
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and n.target == "_guards_fn":
            gm.graph.erase_node(n)
    gm.graph.eliminate_dead_code()
    gm.recompile()
    batch = torch.export.Dim("batch", min=1, max=4096)
    traced = pm.example.repeat(2, 1, 1, 1)[: max(2, pm.example.shape[0])]
    program = torch.export.export(gm, (traced,), dynamic_shapes=({0: batch},))
    old, new = _ops(gm.graph), _ops(program.graph)
    if [n.target for n in old] != [n.target for n in new]:
        raise EqdeployError("re-export changed the op sequence, so layouts cannot be carried "
                            "over", "report this model to the eqdeploy developers")
    names = {o.name: n.name for o, n in zip(old, new, strict=True)}
    for a, b in zip(pm.program.graph_signature.user_inputs,
                    program.graph_signature.user_inputs, strict=True):
        names[a] = b
    for gone, keeper in (renamed or {}).items():
        names.setdefault(gone, names.get(keeper, keeper))
    spec = copy.deepcopy(pm.spec)
    tensors: dict[str, Layout] = {}
    for name, lay in pm.spec.tensors.items():
        if name in names and names[name] not in tensors:
            tensors[names[name]] = lay
    spec.tensors = tensors
    info = copy.deepcopy(pm.info)
    stats = info.get(STATS_KEY, {})
    info[STATS_KEY] = {names[k]: v for k, v in stats.items() if k in names}
    return PlainModel(program, spec, pm.example, info), names


# --- parameters -----------------------------------------------------------------------------
def tensor_of(program: torch.export.ExportedProgram, node: fx.Node | None
              ) -> torch.Tensor | None:
    """The parameter/buffer/constant tensor behind a placeholder of ``program.graph``."""
    if node is None:
        return None
    sig = program.graph_signature
    if node.name in sig.inputs_to_parameters:
        return program.state_dict[sig.inputs_to_parameters[node.name]]
    if node.name in sig.inputs_to_buffers:
        key = sig.inputs_to_buffers[node.name]
        return program.state_dict[key] if key in program.state_dict else program.constants[key]
    if node.name in sig.inputs_to_lifted_tensor_constants:
        return program.constants[sig.inputs_to_lifted_tensor_constants[node.name]]
    raise EqdeployError(f"weight {node.name} is computed in the graph, not a parameter",
                        "export the model in eval mode with constant weights")


@dataclass
class Layer:
    """A conv2d or linear node whose weight (and bias) are parameters of the program."""

    node: str
    input: str
    weight: torch.Tensor  # live tensor in the program's state_dict: edit in place
    bias: torch.Tensor | None
    groups: int = 1
    padding: tuple[int, ...] = (0, 0)

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    @property
    def in_channels(self) -> int:
        return self.weight.shape[1] * self.groups

    def out_ranges(self) -> torch.Tensor:
        """``r_i = max |W[i, ...]|`` per output channel."""
        return self.weight.detach().abs().reshape(self.out_channels, -1).amax(1)

    def in_ranges(self) -> torch.Tensor:
        """``r_i = max |W[:, i, ...]|`` per input channel (within its group)."""
        w = self.weight.detach().abs()
        g = self.groups
        w = w.reshape(g, self.out_channels // g, w.shape[1], -1)
        return w.amax(dim=(1, 3)).reshape(-1)

    def scale_out(self, s: torch.Tensor) -> None:
        """Output channel i times ``s_i`` (weight rows and bias)."""
        with torch.no_grad():
            self.weight.mul_(s.reshape(-1, *([1] * (self.weight.dim() - 1))))
            if self.bias is not None:
                self.bias.mul_(s)

    def scale_in(self, s: torch.Tensor) -> None:
        """Input channel i times ``s_i`` (weight columns, group-aware)."""
        g = self.groups
        w = self.weight
        with torch.no_grad():
            view = w.view(g, self.out_channels // g, w.shape[1], *w.shape[2:])
            view.mul_(s.reshape(g, 1, w.shape[1], *([1] * (w.dim() - 2))))

    def apply_in(self, v: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``sum_{i, kernel} W[j, i] v_i`` per output channel j (group-aware)."""
        w = self.weight.detach() if weight is None else weight
        g = self.groups
        cpg = w.shape[1]
        w = w.reshape(g, self.out_channels // g, cpg, -1).sum(3)
        return torch.einsum("goi,gi->go", w.double(), v.double().reshape(g, cpg)).reshape(-1)


def layers(pm: PlainModel) -> dict[str, Layer]:
    """Every conv2d / linear of the graph with parameter weights, by node name."""
    out = {}
    for n in pm.program.graph.nodes:
        if n.op != "call_function" or n.target not in (CONV, LINEAR):
            continue
        args = list(n.args)
        bias = args[2] if len(args) > 2 else n.kwargs.get("bias")
        groups, padding = 1, (0, 0)
        if n.target == CONV:
            groups = int(args[6]) if len(args) > 6 else int(n.kwargs.get("groups", 1))
            pad = args[4] if len(args) > 4 else n.kwargs.get("padding", (0, 0))
            padding = tuple(pad) if isinstance(pad, (list, tuple)) else (pad, pad)
        out[n.name] = Layer(n.name, args[0].name, tensor_of(pm.program, args[1]),
                            tensor_of(pm.program, bias), groups, padding)
    return out


def input_chain(pm: PlainModel, layer: Layer, found: dict[str, Layer]
                ) -> tuple[Layer, list[str]] | None:
    """The layer whose output reaches ``layer``'s input through per-channel ops, and those ops
    (relu, relu6 and linear per-channel ops), even when the tensor has other consumers."""
    nodes = {n.name: n for n in pm.program.graph.nodes}
    node, ops = nodes[layer.input], []
    allowed = {*RELU, *RELU6, aten.mean.dim, aten.flatten.using_ints, aten.clone.default,
               aten.dropout.default, aten.contiguous.default, aten.alias.default,
               aten.avg_pool2d.default, aten.adaptive_avg_pool2d.default}
    while node.op == "call_function":
        if node.name in found:
            return found[node.name], ops[::-1]
        if node.target not in allowed or not isinstance(node.args[0], fx.Node):
            return None
        if node.target in RELU6 and not _is_relu6(node):
            return None
        ops.append(str(node.target.overloadpacket).replace("aten::", "aten."))
        node = node.args[0]
    return None


def _is_relu6(node: fx.Node) -> bool:
    lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
    hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
    if node.target == aten.relu6.default:
        return True
    return lo == 0 and hi == 6


# --- units: fields, or channels in the orbit-agnostic mode --------------------------------
def units(pm: PlainModel, node: str, channels: int, orbit_agnostic: bool
          ) -> list[np.ndarray] | None:
    """Channels that must share one scale: the fields of ``node``'s layout (index arrays,
    ``SymmetrySpec.field_channels``; fields may be strided).

    Per channel when ``orbit_agnostic``; None when the tensor has no layout (block-aware
    passes then leave it alone rather than guess).
    """
    if orbit_agnostic:
        return [np.array([i]) for i in range(channels)]
    lay = pm.spec.tensors.get(node)
    if lay is None or lay.channels != channels:
        return None
    return pm.spec.field_channels(lay)


def same_units(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def unit_max(v: torch.Tensor, slices: list[np.ndarray]) -> torch.Tensor:
    return torch.stack([v[torch.as_tensor(idx)].max() for idx in slices])


def unit_min(v: torch.Tensor, slices: list[np.ndarray]) -> torch.Tensor:
    return torch.stack([v[torch.as_tensor(idx)].min() for idx in slices])


def expand(per_unit: torch.Tensor, slices: list[np.ndarray], channels: int
           ) -> torch.Tensor:
    out = torch.empty(channels, dtype=per_unit.dtype)
    for idx, s in zip(slices, per_unit, strict=True):
        out[torch.as_tensor(idx)] = s
    return out


# --- BN statistics side table ---------------------------------------------------------------
def stats_of(pm: PlainModel, node: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    st = pm.info.get(STATS_KEY, {}).get(node)
    if st is None:
        return None
    return (torch.tensor(st["mean"], dtype=torch.float64),
            torch.tensor(st["std"], dtype=torch.float64))


def set_stats(pm: PlainModel, node: str, mean: torch.Tensor, std: torch.Tensor) -> None:
    pm.info.setdefault(STATS_KEY, {})[node] = {"mean": [float(v) for v in mean],
                                               "std": [float(v) for v in std]}
