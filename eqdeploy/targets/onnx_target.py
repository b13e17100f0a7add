"""ONNX target: ``torch.onnx`` (dynamo) export of the plain graph, manifest in metadata_props."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import onnx
import torch

from eqdeploy.errors import EqdeployError
from eqdeploy.export import PlainModel
from eqdeploy.spec import SCHEMA

OPSET = 18


def emit(plain: PlainModel, path: Path, batch: int = 1) -> dict:
    """Write ``plain`` as a single-file ONNX model with a fixed batch size."""
    static = plain.static_program(batch)
    example = plain.example[:1].repeat(batch, 1, 1, 1)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress lines
        program = torch.onnx.export(static, (example,), dynamo=True,
                                    external_data=False, opset_version=OPSET,
                                    input_names=["input"], output_names=["output"])
    model = program.model_proto
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


def emit_int8(plain: PlainModel, qp, path: Path, batch: int = 1, fp32: Path | None = None,
              float_io: bool = True, ort_weights: str = "u8") -> dict:
    """QDQ ONNX with the given parameter set, run by ORT's integer kernels (``onnx_int8``);
    ``fp32``: this model's FP32 ONNX if already written (saves an export). QDQ models take
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
