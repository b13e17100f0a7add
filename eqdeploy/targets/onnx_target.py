"""ONNX target: ``torch.onnx`` (dynamo) export of the plain graph, manifest in metadata_props."""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

import onnx
import torch

from eqdeploy.errors import EqdeployError
from eqdeploy.export import PlainModel
from eqdeploy.spec import SCHEMA

OPSET = 18


def export(plain: PlainModel, batch: int = 1) -> torch.onnx.ONNXProgram:
    """``plain`` through torch.onnx (dynamo, opset ``OPSET``) at a fixed batch size."""
    static = plain.static_program(batch)
    example = plain.example[:1].repeat(batch, 1, 1, 1)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress lines
        return torch.onnx.export(static, (example,), dynamo=True, external_data=False,
                                 opset_version=OPSET, input_names=["input"],
                                 output_names=["output"])


def emit(plain: PlainModel, path: Path, batch: int = 1,
         program: torch.onnx.ONNXProgram | None = None) -> dict:
    """Write ``plain`` as a single-file ONNX model with a fixed batch size (``program``:
    its ``export`` if already made)."""
    model = (program or export(plain, batch)).model_proto  # a fresh proto on every access
    strip_exporter_metadata(model)
    add_manifest(model, plain.spec.dumps())
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return {"opset": OPSET, "ops": sorted({n.op_type for n in model.graph.node})}


FX_NODE = "pkg.torch.onnx.fx_node"  # the FX node an ONNX node was lowered from


def fx_node_name(node: onnx.NodeProto) -> str | None:
    """The FX node ``node`` was lowered from (the exporter's ``%name : ...`` metadata)."""
    import re

    for p in node.metadata_props:
        if p.key == FX_NODE:
            m = re.match(r"%(\w+)\s*:", p.value)
            return m.group(1) if m else None
    return None


def strip_exporter_metadata(model: onnx.ModelProto) -> None:
    """Drop the exporter's per-node metadata (stack traces with local paths, module
    hierarchies: 10-20 kB) but the FX node name, which maps ONNX values to graph nodes."""
    for node in model.graph.node:
        fx = fx_node_name(node)
        del node.metadata_props[:]
        if fx is not None:
            entry = node.metadata_props.add()
            entry.key, entry.value = FX_NODE, f"%{fx} :"


def add_manifest(model: onnx.ModelProto, text: str) -> None:
    """Set (or replace) the symmetry manifest in ``model.metadata_props``."""
    for prop in list(model.metadata_props):
        if prop.key == SCHEMA:
            model.metadata_props.remove(prop)
    entry = model.metadata_props.add()
    entry.key, entry.value = SCHEMA, text


ORT_WEIGHTS = {  # --ort-weights -> ONNX weight type, ORT kernel, why
    "u8": ("QUInt8", "u8u8", "weights stored with zero point 128: ORT's u8u8 kernels widen to "
           "16 bits before multiplying, so results are exact on every CPU (default)"),
    "s8": ("QInt8", "u8s8", "weights stored with zero point 0 (--ort-weights s8): ORT's u8s8 "
           "kernels are exact only with VNNI (AVX-512 VNNI / AVX-VNNI); on AVX2-only x86 "
           "they saturate int16 pair sums: verify with 'eqdeploy bench' on the device"),
}


def emit_int8(plain: PlainModel, qp, path: Path, batch: int = 1,
              fp32: Path | onnx.ModelProto | None = None, float_io: bool = True,
              ort_weights: str = "u8") -> dict:
    """QDQ ONNX with the given parameter set, run by ORT's integer kernels (``onnx_int8``);
    ``fp32``: this model's FP32 ONNX (file or unstripped ``export`` proto) if already made
    (saves an export). QDQ models take
    and return float32 (their first QuantizeLinear and last DequantizeLinear are the
    integer boundary), so ``float_io`` changes nothing here."""
    from eqdeploy.targets.onnx_int8 import compare_qparams, float_ops_of, optimized_ops
    from eqdeploy.targets.onnx_int8 import emit_int8 as _emit_int8

    weight_type, kernel, why = ORT_WEIGHTS[ort_weights]
    info = _emit_int8(plain, qp, path, batch=batch, fp32=fp32,  # manifest included
                      weight_type=weight_type)
    info["ort_weight_kernel"], info["ort_weight_kernel_why"] = kernel, why
    mismatches = compare_qparams(path, qp, plain.spec)
    if mismatches:
        raise EqdeployError(f"the INT8 ONNX does not carry the parameter set ({mismatches[0]})",
                            "report this model to eqdeploy")
    ran = optimized_ops(path)  # the graph ORT runs after its QDQ fusions
    return {**info, "ort_ops": ran, "float_compute_ops": float_ops_of(ran)}


def reweighted(program: torch.onnx.ONNXProgram, exported_from: PlainModel, plain: PlainModel
               ) -> onnx.ModelProto | None:
    """``program`` (the ``export`` of ``exported_from``) carrying ``plain``'s parameters
    (``ONNXProgram.apply_weights``), or None where that would not be ``plain``'s export:
    other ops, other parameter names or shapes, a parameter without its own initializer (the
    exporter merges equal ones, which DFQ may make differ), or a float initializer the
    exporter computed from parameters (a new value would leave it stale). Mutates
    ``program``."""
    a, b = exported_from.program, plain.program
    if a.graph_module.code != b.graph_module.code:
        return None
    old, new = _parameters(a), _parameters(b)
    if old.keys() != new.keys() or any(old[k].shape != new[k].shape for k in old):
        return None
    inits = program.model.graph.initializers
    if any(k not in inits for k in new):  # unused, or merged with an equal one: unknown
        return None
    if any(name not in new and init.dtype is not None and init.dtype.is_floating_point()
           for name, init in inits.items()):
        return None
    program.apply_weights({k: v.detach() for k, v in new.items()})
    return program.model_proto


def _parameters(program: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    tensors = {k: v for k, v in program.constants.items() if isinstance(v, torch.Tensor)}
    return {**program.state_dict, **tensors}


def emit_pair(quant: PlainModel, qp, path: Path, fp32_plain: PlainModel, fp32_path: Path,
              batch: int = 1, float_io: bool = True, ort_weights: str = "u8"
              ) -> tuple[dict, dict]:
    """The INT8 artifact of ``quant`` and the FP32 counterpart ``fp32_plain`` from one
    torch.onnx export where DFQ changed only values (``reweighted``): the counterpart is
    exported and written, then given ``quant``'s parameters and quantized; else two exports.
    Returns (INT8 info, FP32 info), each with its ``seconds``."""
    t = time.perf_counter()
    program = export(fp32_plain, batch)
    info32 = emit(fp32_plain, fp32_path, batch, program=program)
    info32["seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    shared = reweighted(program, fp32_plain, quant)
    info = emit_int8(quant, qp, path, batch, fp32=shared, float_io=float_io,
                     ort_weights=ort_weights)
    info["fp32_export_shared"] = shared is not None
    info["seconds"] = round(time.perf_counter() - t, 2)
    return info, info32
