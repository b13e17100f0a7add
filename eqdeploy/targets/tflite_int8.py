"""Fully-integer TFLite through litert-torch's PT2E flow, with *our* parameters forced in.

``prepare_pt2e`` with litert's quantizer decides where quantize/dequantize pairs go (and
which tensors share parameters); every observer it inserts is then replaced by one that
returns the parameters of our set (``QuantParams``) for the tensor it observes, so the
scales land verbatim in the .tflite: activations per tensor, weights per output channel
with one scale per field.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import fx

from eqdeploy.export import PlainModel
from eqdeploy.normalize.source import unmapped
from eqdeploy.quantize.params import QuantParams


def _fixed_observer_cls():
    from torchao.quantization.pt2e import ObserverBase

    class FixedQParamsObserver(ObserverBase):
        """An observer that observes nothing and returns the parameters it was given."""

        def __init__(self, scale, zero_point, qscheme, quant_min: int, quant_max: int,
                     ch_axis: int = 0) -> None:
            super().__init__(dtype=torch.int8)
            self.qscheme, self.quant_min, self.quant_max = qscheme, quant_min, quant_max
            self.ch_axis = ch_axis
            self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
            self.register_buffer("zero_point", torch.as_tensor(zero_point, dtype=torch.int32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

        def calculate_qparams(self):
            return self.scale, self.zero_point

    return FixedQParamsObserver


def _observed_point(node: fx.Node, qp: QuantParams, names: dict[str, str],
                    graph: fx.Graph) -> str:
    """The quant point whose parameters the tensor at ``node`` carries (``names``: static
    node -> plain node)."""
    seen = node
    while names.get(seen.name, seen.name) not in qp.grid:
        if not seen.args or not isinstance(seen.args[0], fx.Node):
            raise unmapped("tflite", graph, [names.get(node.name, node.name)],
                           "quantization parameters")
        seen = seen.args[0]
    return qp.grid[names.get(seen.name, seen.name)]


def force_parameters(prepared: fx.GraphModule, qp: QuantParams,
                     names: dict[str, str] | None = None, graph: fx.Graph | None = None
                     ) -> int:
    """Replace every observer of a prepared PT2E graph; returns how many were replaced.

    ``names`` maps the prepared (static) graph's nodes to the plain graph's, where ``qp``
    lives (identity when omitted); ``graph`` (the plain graph) names source lines in errors.
    """
    fixed = _fixed_observer_cls()
    names = names or {}
    graph = graph if graph is not None else prepared.graph
    count = 0
    for node in list(prepared.graph.nodes):
        if node.op != "call_module" or not node.target.startswith("activation_post_process"):
            continue
        src = node.args[0]
        if src.op == "get_attr":  # a weight: its consumer is the conv/linear
            layer = next(u for u in node.users if u.op == "call_function")
            name = names.get(layer.name, layer.name)
            if name in qp.weights:
                s = torch.as_tensor(qp.weights[name], dtype=torch.float32)
                obs = fixed(s, torch.zeros(len(s), dtype=torch.int32),
                            torch.per_channel_symmetric, -127, 127)
            elif name in qp.constants:  # a constant operand, e.g. a mask: per tensor
                obs = fixed(*qp.constants[name], torch.per_tensor_affine, -128, 127)
            else:
                raise unmapped("tflite", graph, [name], "quantization parameters for its "
                               "constant operand")
        else:
            scale, zp = qp.activations[_observed_point(src, qp, names, graph)]
            obs = fixed(scale, zp, torch.per_tensor_affine, -128, 127)
        setattr(prepared, node.target, obs)
        count += 1
    return count


_SOURCE_FNS = {torch.ops.aten.add.Tensor: torch.add, torch.ops.aten.mul.Tensor: torch.mul}


def tag_sources(gm: fx.GraphModule) -> int:
    """Restore the ``source_fn_stack`` litert's add/mul annotators look for.

    They find ``add``/``mul`` (and a fused ReLU after them) by the Python function that made
    the node; re-exported graphs have lost that metadata, which left residual adds
    unannotated: float ADDs (and everything after them up to the next observed input) in an
    otherwise integer model. Returns how many nodes were tagged.
    """
    tagged = 0
    for node in gm.graph.nodes:
        fn = _SOURCE_FNS.get(node.target) if node.op == "call_function" else None
        if fn is None or sum(isinstance(a, fx.Node) for a in node.args[:2]) != 2:
            continue
        node.meta["source_fn_stack"] = [(node.name, fn)]
        tagged += 1
        users = list(node.users)
        if len(users) == 1 and users[0].target in (torch.ops.aten.relu.default,
                                                   torch.ops.aten.relu_.default):
            users[0].meta["source_fn_stack"] = [(users[0].name, torch.nn.ReLU)]
    return tagged


# elementwise ops with int8 TFLite kernels that litert's PT2E quantizer leaves unannotated
# (so they would run in float between a DEQUANTIZE and a QUANTIZE): a ReLU it annotates
# only fused after a conv/linear/add, not after a stack (a rotation stack's
# ``relu(stack([conv(x) ...], -1))``)
UNARY_INT8 = {torch.ops.aten.elu.default, torch.ops.aten.leaky_relu.default,
              torch.ops.aten.hardswish.default, torch.ops.aten.tanh.default,
              torch.ops.aten.relu.default}


def _quantizer_cls(base):
    """litert's PT2E quantizer, plus an annotation for the unary ops in ``UNARY_INT8`` whose
    input is quantized (the parameters themselves are forced afterwards, as for all ops)."""
    from litert_torch.quantize import pt2e_quantizer_utils as utils
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    class UnaryAwareQuantizer(base):
        def annotate(self, model: fx.GraphModule) -> fx.GraphModule:
            model = super().annotate(model)
            config = self.global_config
            for node in model.graph.nodes:
                if node.op != "call_function" or node.target not in UNARY_INT8 \
                        or utils._is_annotated([node]) or not isinstance(node.args[0], fx.Node):
                    continue
                node.meta["quantization_annotation"] = QuantizationAnnotation(
                    input_qspec_map={node.args[0]: utils.get_input_act_qspec(config)},
                    output_qspec=utils.get_output_act_qspec(config), _annotated=True)
            return model

    return UnaryAwareQuantizer


def emit_int8(plain: PlainModel, qp: QuantParams, path: Path, batch: int = 1,
              float_io: bool = False) -> dict:
    """Write a fully-integer .tflite of ``plain`` (BN folded) with ``qp``: int8 input and
    output, or float32 ones around QUANTIZE/DEQUANTIZE with ``float_io``."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from eqdeploy.spec import SCHEMA
    from eqdeploy.targets.static import static_names
    from eqdeploy.targets.tflite_io import with_float_io
    from eqdeploy.targets.tflite_target import tflite_ops, with_metadata

    example = plain.example[:1].repeat(batch, 1, 1, 1)
    quantizer = _quantizer_cls(PT2EQuantizer)().set_global(
        get_symmetric_quantization_config(is_per_channel=True))
    with contextlib.redirect_stdout(io.StringIO()), tempfile.TemporaryDirectory() as tmp:
        program = plain.static_program(batch)
        names = {s: p for p, s in static_names(plain, program).items()}
        static = program.module()
        tag_sources(static)
        prepared = prepare_pt2e(static, quantizer)
        replaced = force_parameters(prepared, qp, names, plain.program.graph)
        prepared(example)
        converted = convert_pt2e(prepared, fold_quantize=False)
        edge = litert_torch.convert(converted, (example,),
                                    quant_config=QuantConfig(pt2e_quantizer=quantizer))
        raw = Path(tmp) / "model.tflite"
        edge.export(str(raw))
        content = raw.read_bytes()
    if float_io:
        content = with_float_io(content)
    path.write_bytes(with_metadata(content, SCHEMA, plain.spec.dumps().encode()))
    return {"ops": tflite_ops(path), "forced_observers": replaced, "io": io_types(path),
            "float_tensors": float_tensors(path), "float_ops": float_ops(path)}


def io_types(path: Path) -> dict[str, list[str]]:
    """Element types of a .tflite's inputs and outputs, e.g. ``{"inputs": ["INT8"], ...}``."""
    from ai_edge_litert import schema_py_generated as schema

    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    graph = schema.Model.GetRootAs(path.read_bytes(), 0).Subgraphs(0)
    return {"inputs": [names[graph.Tensors(graph.Inputs(i)).Type()]
                       for i in range(graph.InputsLength())],
            "outputs": [names[graph.Tensors(graph.Outputs(i)).Type()]
                        for i in range(graph.OutputsLength())]}


def float_tensors(path: Path) -> list[str]:
    """Names of float32 tensors in a .tflite (none in a fully-integer model)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    return [graph.Tensors(i).Name().decode() for i in range(graph.TensorsLength())
            if graph.Tensors(i).Type() == schema.TensorType.FLOAT32]


def float_ops(path: Path) -> list[str]:
    """Operators that compute in float32 (a float32 output), QUANTIZE/DEQUANTIZE excepted:
    what stays float in an INT8 model and why the report says it is not fully integer."""
    from ai_edge_litert import schema_py_generated as schema

    from eqdeploy.targets.tflite_target import schema_op_name

    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    out = set()
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        name = schema_op_name(model.OperatorCodes(op.OpcodeIndex()))
        if name in ("QUANTIZE", "DEQUANTIZE"):
            continue
        if any(graph.Tensors(op.Outputs(k)).Type() == schema.TensorType.FLOAT32
               for k in range(op.OutputsLength()) if op.Outputs(k) >= 0):
            out.add(name)
    return sorted(out)


def tflite_parameters(path: Path) -> dict:
    """Every quantization parameter in a .tflite: per-tensor (scale, zp) of activations and
    per-channel scale vectors of weights."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    acts, weights = set(), []
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        q = t.Quantization()
        if q is None or q.ScaleLength() == 0 or t.Type() != schema.TensorType.INT8:
            continue
        scales = q.ScaleAsNumpy()
        if q.ScaleLength() > 1 or model.Buffers(t.Buffer()).DataLength() > 0:
            weights.append(np.asarray(scales, dtype=np.float32))
        else:
            acts.add((float(np.float32(scales[0])), int(q.ZeroPointAsNumpy()[0])))
    return {"activations": acts, "weights": weights}
