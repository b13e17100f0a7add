"""Export stage: an e2cnn/escnn model -> a plain aten graph (``PlainModel``) + SymmetrySpec.

Every leaf equivariant module is swapped for its plain-torch equivalent (adapters), the
user's whole ``forward`` is captured by ``torch.export``, and every tensor of the graph is
given the field layout of the module that produced it. Later stages see only this value.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn

from eqdeploy.adapters import e2cnn_compat
from eqdeploy.adapters.field_types import layout_of, model_group
from eqdeploy.adapters.geometric import Swapped, framework_of, swapped_modules
from eqdeploy.errors import EqdeployError
from eqdeploy.graph_layouts import assign_layouts, output_node
from eqdeploy.spec import Layout, SymmetrySpec, trivial_layout


@dataclass
class PlainModel:
    """A plain conv network (aten graph) and how the group acts on its tensors."""

    program: torch.export.ExportedProgram
    spec: SymmetrySpec
    example: torch.Tensor
    info: dict = field(default_factory=dict)
    _static: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def module(self) -> nn.Module:
        """The graph as a runnable module (parameters as attributes)."""
        return self.program.module()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.program.module()(x)

    def static_program(self, batch: int) -> torch.export.ExportedProgram:
        """The graph re-exported with a fixed batch size, as edge targets want it (once per
        program and batch: every target of a conversion reads the same one)."""
        key = (id(self.program), batch)
        if key not in self._static:
            example = self.example[:1].repeat(batch, 1, 1, 1)
            self._static.clear()
            self._static[key] = torch.export.export(self.module(), (example,))
        return self._static[key]


class _TensorOutput(nn.Module):
    """Runs the user's model and unwraps a GeometricTensor output to its tensor."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.model(x)
        return y.tensor if hasattr(y, "tensor") and hasattr(y, "type") else y


def detect_framework(model: nn.Module) -> str | None:
    """'e2cnn' / 'escnn' if the model contains equivariant modules of that library."""
    e2cnn_compat.install_on_import()  # walking a flip-group model hashes e2cnn bases
    found = {framework_of(m) for m in model.modules()} - {None}
    if len(found) > 1:
        raise EqdeployError("the model mixes e2cnn and escnn modules",
                            "build it with one library")
    return found.pop() if found else None


def _trace_types(model: nn.Module, swapped: dict[str, Swapped], example: torch.Tensor):
    """Run once to find the input field type and the output value's field type."""
    calls: list[Swapped] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: calls.append(mod))
             for m in swapped.values()]
    try:
        with torch.no_grad():
            y = model(example)
    except Exception as e:  # noqa: BLE001 - the user's forward can raise anything
        why = " ".join(str(e).split())[:200] or type(e).__name__
        raise EqdeployError(f"the model's forward fails on an input of shape "
                            f"{tuple(example.shape)} ({why})",
                            "pass --input-shape N,C,H,W matching the model's input") from None
    finally:
        for h in hooks:
            h.remove()
    if not calls:
        raise EqdeployError("the model's forward never calls an equivariant module",
                            "check that forward wraps its input in a GeometricTensor")
    out_type = y.type if hasattr(y, "tensor") and hasattr(y, "type") else None
    return calls[0].in_type, out_type


def _clean_reexport(program: torch.export.ExportedProgram, traced: torch.Tensor,
                    batch) -> tuple[torch.export.ExportedProgram, dict[str, str]]:
    """Re-export the unlifted graph: drops the e2cnn wrapper objects from the trace, so the
    program saves and loads as ``.pt2`` with its dynamic batch intact (the first export
    loses it on load). Returns the program and old -> new node names."""
    clean = torch.export.export(program.module(), (traced,), dynamic_shapes=({0: batch},))

    def data_nodes(ep):
        inputs = set(ep.graph_signature.user_inputs)
        return [n.name for n in ep.graph.nodes
                if n.op == "call_function" or (n.op == "placeholder" and n.name in inputs)]

    old, new = data_nodes(program), data_nodes(clean)
    if len(old) != len(new):
        raise EqdeployError("re-exporting the plain graph changed its structure",
                            "report this model to eqdeploy")
    return clean, dict(zip(old, new, strict=True))


def export_equivariant(model: nn.Module, example: torch.Tensor,
                       group_name: str | None = None) -> PlainModel:
    """Export ``model`` (e2cnn or escnn, eval mode) traced at ``example``'s shape."""
    framework = detect_framework(model)
    if framework is None:
        raise EqdeployError("the model has no e2cnn/escnn modules, so eqdeploy cannot read its "
                            "field types", "pass --group C4|D4|... to discover the layouts "
                            "of a plain-PyTorch group-conv model by probing")
    trainable = sum(p.numel() for p in model.parameters())
    was_training = model.training
    model.eval()
    try:
        with swapped_modules(model) as swapped:
            return _export_swapped(model, swapped, example, group_name, framework, trainable)
    finally:
        model.train(was_training)


def _export_swapped(model: nn.Module, swapped: dict[str, Swapped], example: torch.Tensor,
                    group_name: str | None, framework: str, trainable: int) -> PlainModel:
    in_type, out_type = _trace_types(model, swapped, example)
    group = model_group([t.gspace for m in swapped.values() for t in (m.in_type, m.out_type)])
    if group_name and group_name.strip().upper() != group.name:
        raise EqdeployError(f"--group {group_name} does not match the model's group "
                            f"{group.name}", f"pass --group {group.name} or omit --group")

    wrapper = _TensorOutput(model).eval()
    t0 = time.perf_counter()
    try:
        # batch is dynamic in the graph (2 in the trace: torch.export specializes size 1);
        # targets fix it again to the requested batch size.
        batch = torch.export.Dim("batch", min=1, max=4096)
        traced = example.repeat(2, 1, 1, 1)[: max(2, example.shape[0])]
        program = torch.export.export(wrapper, (traced,), dynamic_shapes=({0: batch},))
    except Exception as e:  # noqa: BLE001 - torch.export raises many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EqdeployError(f"torch.export failed on the model's forward ({first[:200]})",
                            "keep forward free of data-dependent Python control flow") from e
    export_s = time.perf_counter() - t0

    reps: dict = {}
    input_layout = layout_of(in_type, group, reps)
    module_types = {f"model.{p}": (layout_of(m.in_type, group, reps),
                                   layout_of(m.out_type, group, reps))
                    for p, m in swapped.items()}

    def invariant(lay: Layout) -> bool:
        return all(reps[r].kind == "trivial" for _, r in lay.fields)

    def trivial(channels: int, spatial: bool) -> Layout:
        return trivial_layout(reps, group, channels, spatial)

    gm = program.graph_module
    user_input = program.graph_signature.user_inputs[0]
    layouts = assign_layouts(gm, user_input, input_layout, module_types, invariant, trivial)
    out = output_node(gm)
    program, renamed = _clean_reexport(program, traced, batch)
    layouts = {renamed.get(k, k): v for k, v in layouts.items()}
    info = {"framework": framework, "export_seconds": round(export_s, 3),
            "trainable_parameters": int(trainable),
            "deployed_parameters": int(sum(p.numel() for p in program.state_dict.values())),
            "swapped_modules": {p: m.source for p, m in swapped.items()},
            "input_shape": list(example.shape)}
    if out_type is not None:
        output_layout = layout_of(out_type, group, reps)
    elif out.name in layouts:
        output_layout = layouts[out.name]
    else:
        shape = tuple(out.meta["val"].shape)
        output_layout = trivial(shape[1], len(shape) == 4)
        info["output_action"] = "assumed invariant (the head is not traceable to field types)"
    spec = SymmetrySpec(group, reps, input_layout, output_layout, layouts, info={})
    spec.validate()
    return PlainModel(program, spec, example, info)
