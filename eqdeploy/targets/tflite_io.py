"""Float I/O for a fully-integer .tflite: QUANTIZE in front, DEQUANTIZE behind.

litert-torch folds the PT2E graph's input quantize / output dequantize into int8 model I/O
and has no option to keep them. TensorFlow's ``modify_model_interface`` tool only goes the
other way (float -> int8 I/O), so this does the inverse with the same means: the flatbuffer
schema's generated object API shipped with ai-edge-litert. The interior of the graph, and
therefore every integer result, is untouched; the added ops use the tensors' own parameters.
"""

from __future__ import annotations

from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.tools import flatbuffer_utils

INTEGER_IO = (schema.TensorType.INT8, schema.TensorType.UINT8)


def _opcode(model: schema.ModelT, builtin: int, version: int) -> int:
    for i, code in enumerate(model.operatorCodes):
        if max(code.builtinCode, code.deprecatedBuiltinCode) == builtin:
            return i
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode = builtin, min(builtin, 127)
    code.version = version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _float_twin(graph: schema.SubGraphT, index: int, empty_buffer: int) -> int:
    src = graph.tensors[index]
    twin = schema.TensorT()
    twin.shape, twin.shapeSignature = src.shape, src.shapeSignature
    twin.type, twin.buffer = schema.TensorType.FLOAT32, empty_buffer
    twin.name = (src.name or b"io") + b"_float"
    graph.tensors.append(twin)
    return len(graph.tensors) - 1


def _op(opcode: int, src: int, dst: int, options_type: int, options) -> schema.OperatorT:
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = opcode, [src], [dst]
    op.builtinOptionsType, op.builtinOptions = options_type, options
    return op


def with_float_io(content: bytes) -> bytes:
    """``content`` with every int8/uint8 model input and output given a float32 interface."""
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
    empty = next(i for i, b in enumerate(model.buffers) if b.data is None or len(b.data) == 0)
    quantize = _opcode(model, schema.BuiltinOperator.QUANTIZE, 1)
    dequantize = _opcode(model, schema.BuiltinOperator.DEQUANTIZE, 2)
    remap: dict[int, int] = {}
    for graph in model.subgraphs:
        front, back = [], []
        for pos, idx in enumerate(graph.inputs):
            if graph.tensors[idx].type in INTEGER_IO:
                twin = _float_twin(graph, idx, empty)
                front.append(_op(quantize, twin, idx, schema.BuiltinOptions.QuantizeOptions,
                                 schema.QuantizeOptionsT()))
                graph.inputs[pos] = remap[idx] = twin
        for pos, idx in enumerate(graph.outputs):
            if graph.tensors[idx].type in INTEGER_IO:
                twin = _float_twin(graph, idx, empty)
                back.append(_op(dequantize, idx, twin,
                                schema.BuiltinOptions.DequantizeOptions,
                                schema.DequantizeOptionsT()))
                graph.outputs[pos] = remap[idx] = twin
        graph.operators = front + list(graph.operators) + back
    for sig in model.signatureDefs or []:
        for t in [*(sig.inputs or []), *(sig.outputs or [])]:
            t.tensorIndex = remap.get(t.tensorIndex, t.tensorIndex)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
