"""TFLite target: litert-torch conversion of the plain graph, manifest as TFLite metadata.

The manifest goes into the flatbuffer's ``metadata`` table (name ``eqdeploy.symmetry``)
through the schema's generated object API shipped with ai-edge-litert.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import time
from pathlib import Path

import flatbuffers
from ai_edge_litert import schema_py_generated as schema

from eqdeploy.export import PlainModel
from eqdeploy.spec import SCHEMA


def emit(plain: PlainModel, path: Path, batch: int = 1, **convert_kwargs) -> dict:
    """Convert ``plain`` at a fixed batch size and write the .tflite with its manifest."""
    import litert_torch

    example = plain.example[:1].repeat(batch, 1, 1, 1)
    with contextlib.redirect_stdout(io.StringIO()), tempfile.TemporaryDirectory() as tmp:
        edge = litert_torch.convert(plain.static_program(batch).module(), (example,),
                                    **convert_kwargs)
        raw = Path(tmp) / "model.tflite"
        edge.export(str(raw))
        content = raw.read_bytes()
    path.write_bytes(with_metadata(content, SCHEMA, plain.spec.dumps().encode()))
    return {"ops": tflite_ops(path)}


def tflite_ops(path: Path) -> list[str]:
    """The builtin operators a .tflite uses."""
    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    return sorted({schema_op_name(model.OperatorCodes(graph.Operators(i).OpcodeIndex()))
                   for i in range(graph.OperatorsLength())})


def schema_op_name(code) -> str:
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    op = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
    return names.get(op, str(op))


def short_tensor_names(model: schema.ModelT) -> int:
    """Name interior tensors ``t<index>`` (the converter writes each op's whole module path,
    ~350 bytes a tensor: ~5% of a ResNet18-sized INT8 file); model inputs and outputs and the
    signatures keep theirs. Returns the bytes saved."""
    saved = 0
    for graph in model.subgraphs:
        keep = {*graph.inputs, *graph.outputs}
        for i, tensor in enumerate(graph.tensors):
            if i in keep or tensor.name is None:
                continue
            short = f"t{i}".encode()
            saved += len(tensor.name) - len(short)
            tensor.name = short
    return saved


def with_metadata(content: bytes, name: str, data: bytes, short_names: bool = True) -> bytes:
    """``content`` with metadata entry ``name`` set to ``data`` (replacing an old one), and
    short interior tensor names unless ``short_names`` is False."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(content), 0)
    if short_names:
        short_tensor_names(model)
    model.metadata = [m for m in (model.metadata or []) if m.name != name.encode()
                      and m.name != name]
    buf = schema.BufferT()
    buf.data = list(data)
    model.buffers.append(buf)
    entry = schema.MetadataT()
    entry.name = name
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    builder = flatbuffers.Builder(len(content) + len(data) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def emit_int8(plain: PlainModel, qp, path: Path, batch: int = 1, fp32: Path | None = None,
              float_io: bool = False) -> dict:
    """Fully-integer .tflite with the given parameter set (see ``tflite_int8``); int8 I/O
    unless ``float_io``."""
    from eqdeploy.targets.tflite_int8 import emit_int8 as _emit_int8

    return _emit_int8(plain, qp, path, batch, float_io=float_io)


def emit_pair(quant: PlainModel, qp, path: Path, fp32_plain: PlainModel, fp32_path: Path,
              batch: int = 1, float_io: bool = False) -> tuple[dict, dict]:
    """The INT8 artifact of ``quant`` and the FP32 counterpart ``fp32_plain`` (two
    conversions: litert-torch takes the graph, not a model to re-weight). Returns (INT8
    info, FP32 info), each with its ``seconds``."""
    t = time.perf_counter()
    info = emit_int8(quant, qp, path, batch, float_io=float_io)
    info["seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    info32 = emit(fp32_plain, fp32_path, batch)
    info32["seconds"] = round(time.perf_counter() - t, 2)
    return info, info32
