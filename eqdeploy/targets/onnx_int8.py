"""INT8 ONNX target: QDQ model from ``onnxruntime.quantization.quantize_static`` with forced params.

The FP32 ONNX model of the plain graph (as ``onnx_target.emit`` writes it; pass that file as
``fp32=`` to reuse it) is quantized by the stock ORT quantizer. Every number comes from the
conversion's ``QuantParams`` through ``extra_options["TensorQuantOverrides"]`` (activations
per tensor, conv/linear weights per output channel on axis 0); the calibration reader only
satisfies the API. Before quantizing, a spatial ReduceMean becomes GlobalAveragePool so ORT
runs it in integers. Findings and numbers: benchmarks/onnx_int8_notes.md.

Names: the dynamo exporter names ONNX values after FX nodes (``conv2d``, ``relu_1``...) except
the graph input/output (``input``/``output``, ``original_node_name`` metadata) and values a
lowering renamed (``aten.reshape`` -> ``view``); each ONNX node carries its FX node in the
``pkg.torch.onnx.fx_node`` metadata, so the map is read from there, not guessed.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from eqdeploy.export import PlainModel
from eqdeploy.normalize.source import unmapped
from eqdeploy.quantize.params import QuantParams
from eqdeploy.targets.onnx_target import fx_node_name
from eqdeploy.targets.static import static_names

ORIGINAL = "pkg.torch.onnx.original_node_name"
META_KEY = "eqdeploy.onnx_int8"  # metadata_props: settings and plain-graph -> ONNX names
INTEGER_CONV = {"QLinearConv", "ConvInteger"}
# ops that, left between a DequantizeLinear and a QuantizeLinear, compute in float: their
# summation order follows the memory layout, so a rotated input can flip a rounding
FLOAT_COMPUTE = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Mul", "ReduceMean",
                 "ReduceSum", "AveragePool", "GlobalAveragePool"}
Q_IN_SUFFIX = "_QuantizeLinear_Input"  # ORT renames a quantized graph output's producer value
DQ_OUT_SUFFIX = "_DequantizeLinear_Output"  # ORT's name for a dequantized initializer


@dataclass(frozen=True)
class OrtInt8Options:
    """Quantizer settings; the defaults give bit-exact equivariance in ORT on x86 without VNNI.

    ``weight_type="QUInt8"`` stores the *same* symmetric int8 weights shifted by 128 (zero
    point 128, scales unchanged) so ORT runs its u8u8 kernels, which widen to 16 bits before
    multiplying; its u8s8 kernels (``QInt8`` weights) pair products in saturating int16 on AVX2
    (``vpmaddubsw``), which makes results depend on the weight layout. ``reduce_range=True``
    (7-bit weights, qp adapted by ``adapt_qparams_for_ort``) avoids the saturation too, at
    the cost of one bit of weight precision and a different parameter set.
    """

    activation_type: str = "QUInt8"  # "QUInt8" | "QInt8" (same grid, zero point +128)
    weight_type: str = "QUInt8"  # "QUInt8" (zero point 128) | "QInt8" (zero point 0)
    reduce_range: bool = False  # 7-bit weights: qp must come from adapt_qparams_for_ort
    global_average_pool: bool = True  # ReduceMean over H,W -> GlobalAveragePool (integer)
    quantize_all_ops: bool = True  # False: ORT's default op list (ReduceMean stays float)


# --- names ------------------------------------------------------------------------------------
def onnx_value_names(model: onnx.ModelProto) -> dict[str, str]:
    """FX node name (of the exported static program) -> ONNX value holding its result."""
    names: dict[str, str] = {}
    for v in [*model.graph.input, *model.graph.output]:
        for p in v.metadata_props:
            if p.key == ORIGINAL:
                names[p.value] = v.name
    values = {o for n in model.graph.node for o in n.output}
    last: dict[str, str] = {}
    for n in model.graph.node:  # the last ONNX node lowered from an FX node holds its value
        fx = fx_node_name(n)
        if fx is not None and n.output:
            last[fx] = n.output[0]
    for fx, val in last.items():
        names.setdefault(fx, fx if fx in values else val)
    return names


def weight_initializers(model: onnx.ModelProto, names: dict[str, str],
                        layers: list[str]) -> dict[str, str]:
    """Conv/linear FX node -> its weight initializer in ``model``."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for layer in layers:
        node = producer.get(names.get(layer, ""))
        if node is None or node.op_type not in ("Conv", "Gemm", "MatMul") \
                or node.input[1] not in inits:
            raise ValueError(f"no ONNX Conv/Gemm with an initializer weight for {layer!r}")
        out[layer] = node.input[1]
    return out


def constant_initializers(model: onnx.ModelProto, names: dict[str, str], ops: list[str],
                          graph) -> dict[str, str]:
    """FX op with a constant operand (``QuantParams.constants``) -> that initializer, an
    input of the ONNX node holding the op's value."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for op in ops:
        node = producer.get(names.get(op, ""))
        found = [i for i in (node.input if node is not None else []) if i in inits]
        if not found:
            raise unmapped("onnx", graph, [op], "constant operand")
        out[op] = found[0]
    return out


# --- FP32 graph preparation -------------------------------------------------------------------
def _replace_spatial_mean(model: onnx.ModelProto) -> dict[str, str]:
    """ReduceMean over axes (2, 3) of a 4-D tensor -> GlobalAveragePool (+ Flatten if keepdims=0).

    ORT has an integer kernel for the latter (QLinearGlobalAveragePool: exact int32 sum, then
    one requantization) while a QDQ ReduceMean runs in float, where the summation order
    depends on the layout (and so on the group element). Returns {old value: value holding
    the mean (the tensor to carry the mean's quantization parameters)}.
    """
    consts = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t"):
            consts[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    inferred = onnx.shape_inference.infer_shapes(model)
    rank = {v.name: len(v.type.tensor_type.shape.dim)
            for v in [*inferred.graph.value_info, *inferred.graph.input]}
    renamed: dict[str, str] = {}
    nodes = list(model.graph.node)
    for n in nodes:
        if n.op_type != "ReduceMean" or rank.get(n.input[0]) != 4 or len(n.input) < 2 \
                or n.input[1] not in consts:
            continue
        if sorted(int(a) % 4 for a in np.ravel(consts[n.input[1]])) != [2, 3]:
            continue
        keep = next((a.i for a in n.attribute if a.name == "keepdims"), 1)
        out = n.output[0]
        pooled = out if keep else f"{out}__gap"
        new = [onnx.helper.make_node("GlobalAveragePool", [n.input[0]], [pooled],
                                     name=f"{n.name}__gap")]
        if not keep:
            new.append(onnx.helper.make_node("Flatten", [pooled], [out], axis=1,
                                             name=f"{n.name}__flatten"))
        for m in new:
            m.metadata_props.extend(n.metadata_props)
        i = list(model.graph.node).index(n)
        model.graph.node.remove(n)
        for k, m in enumerate(new):
            model.graph.node.insert(i + k, m)
        renamed[out] = pooled
    return renamed


# --- parameters -------------------------------------------------------------------------------
def adapt_qparams_for_ort(qp: QuantParams, reduce_range: bool) -> QuantParams:
    """The parameter set to force into every target when ORT runs 7-bit weights.

    ``reduce_range=True``: weights use [-63, 63] (scale = range / 63, i.e. qp's scales times
    127/63); activations unchanged. ``False`` returns ``qp`` itself.
    """
    if not reduce_range:
        return qp
    from dataclasses import replace

    weights = {k: np.asarray(v, np.float64) * (127.0 / 63.0) for k, v in qp.weights.items()}
    notes = [*qp.notes, "weights 7-bit ([-63, 63], scale = range / 63) for ORT reduce_range"]
    return replace(qp, weights=weights, notes=notes)


def _qtype(name: str):
    from onnxruntime.quantization import QuantType

    return {"QInt8": QuantType.QInt8, "QUInt8": QuantType.QUInt8}[name]


def _offset(type_name: str) -> int:
    """Zero-point offset from qp's int8 zero points to ``type_name``'s."""
    return 128 if type_name == "QUInt8" else 0


def build_overrides(qp: QuantParams, names: dict[str, str], weights: dict[str, str],
                    opts: OrtInt8Options, constants: dict[str, str] | None = None) -> dict:
    """``TensorQuantOverrides``: every float tensor its grid's params, weights per channel,
    constant operands (``constants``: op -> initializer) their own per-tensor params."""
    act_np = np.uint8 if opts.activation_type == "QUInt8" else np.int8
    w_np = np.uint8 if opts.weight_type == "QUInt8" else np.int8
    a_off, w_off = _offset(opts.activation_type), _offset(opts.weight_type)
    overrides: dict[str, list[dict]] = {}
    for fx, point in qp.grid.items():
        if fx not in names:
            continue
        scale, zp = qp.activations[point]
        overrides[names[fx]] = [{"scale": np.array(scale, np.float32),
                                 "zero_point": np.array(zp + a_off, dtype=act_np)}]
    for layer, init in weights.items():
        overrides[init] = [{"axis": 0, "scale": np.array(s, np.float32),
                            "zero_point": np.array(w_off, w_np)}
                           for s in np.asarray(qp.weights[layer], np.float64)]
    for op, init in (constants or {}).items():
        scale, zp = qp.constants[op]
        overrides[init] = [{"scale": np.array(scale, np.float32),
                            "zero_point": np.array(zp + a_off, dtype=act_np)}]
    return overrides


class _Reader:
    """Minimal CalibrationDataReader: a few inputs (the overrides decide every number)."""

    def __init__(self, name: str, batches: list[np.ndarray]) -> None:
        self.name, self.batches = name, list(batches)

    def get_next(self):
        return {self.name: self.batches.pop(0)} if self.batches else None

    def rewind(self):  # pragma: no cover - API completeness
        pass


def fp32_model(plain: PlainModel, batch: int = 1,
               fp32: str | Path | onnx.ModelProto | None = None
               ) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The FP32 ONNX model and plain node -> ONNX value.

    ``fp32``: a file ``onnx_target.emit(plain, fp32, batch)`` wrote, or the proto of
    ``onnx_target.reweighted`` (reused, saving the exporter's seconds); else the model is
    exported here the same way.
    """
    from eqdeploy.targets.onnx_target import export

    static = plain.static_program(batch)
    if fp32 is None:
        model = export(plain, batch).model_proto
    else:
        model = fp32 if isinstance(fp32, onnx.ModelProto) else onnx.load(str(fp32))
        dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        if not dims or dims[0] != batch:
            raise ValueError(f"the FP32 ONNX has input shape {dims}, expected batch {batch}")
    by_static = onnx_value_names(model)
    names = {p: by_static[s] for p, s in static_names(plain, static).items() if s in by_static}
    return model, names


def _check_reduce_range(plain: PlainModel, qp: QuantParams, layers: list[str]) -> None:
    from eqdeploy.dfq.graph import layers as plain_layers

    found = plain_layers(plain)
    for name in layers:
        w = found[name].weight.detach().double().numpy()
        s = np.asarray(qp.weights[name], np.float64).reshape(-1, *([1] * (w.ndim - 1)))
        if np.abs(np.round(w / s)).max() > 63:
            raise ValueError(f"reduce_range=True needs 7-bit weights but {name}'s scales give "
                             "8-bit values: pass adapt_qparams_for_ort(qp, True) (to every "
                             "target)")


def emit_int8(plain: PlainModel, qp: QuantParams, path: str | Path, batch: int = 1,
              reduce_range: bool | None = None, options: OrtInt8Options | None = None,
              fp32: str | Path | onnx.ModelProto | None = None, **kw) -> dict:
    """Write ``plain`` (BN folded) as a QDQ INT8 ONNX model carrying exactly ``qp``.

    Float input and output (QuantizeLinear after the input, DequantizeLinear before the
    output). ``kw`` sets fields of ``options``. With ``reduce_range=True`` pass
    ``adapt_qparams_for_ort(qp, True)`` here and to every other target. ``fp32``: the FP32
    artifact ``onnx_target.emit`` wrote for the same ``plain`` and ``batch``, to reuse.
    """
    from dataclasses import replace

    from onnxruntime.quantization import QuantFormat, quantize_static

    from eqdeploy.quantize.params import CONV, LINEAR
    from eqdeploy.targets.onnx_target import add_manifest

    opts = options or OrtInt8Options()
    if reduce_range is not None:
        kw["reduce_range"] = reduce_range
    if kw:
        opts = replace(opts, **kw)
    path = Path(path)
    t0 = time.perf_counter()
    layers = [n.name for n in plain.program.graph.nodes
              if n.op == "call_function" and n.target in (CONV, LINEAR)]
    if opts.reduce_range:
        _check_reduce_range(plain, qp, layers)
    model, names = fp32_model(plain, batch, fp32)
    if opts.global_average_pool:
        moved = _replace_spatial_mean(model)
        names = {k: moved.get(v, v) for k, v in names.items()}
    missing = sorted(set(qp.activations) - set(names))
    if missing:
        raise unmapped("onnx", plain.program.graph, missing, "tensor")
    weights = weight_initializers(model, names, layers)
    constants = constant_initializers(model, names, list(qp.constants), plain.program.graph)
    overrides = build_overrides(qp, names, weights, opts, constants)
    op_types = sorted({n.op_type for n in model.graph.node} - {"Constant", "Shape", "Cast"})
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    reader = _Reader(inp.name, [rng.standard_normal(shape).astype(np.float32)
                                for _ in range(2)])
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        src = Path(tmp) / "fp32.onnx"
        onnx.save_model(model, str(src))
        quantize_static(
            str(src), str(path), reader, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=op_types if opts.quantize_all_ops else None,
            activation_type=_qtype(opts.activation_type),
            weight_type=_qtype(opts.weight_type), per_channel=True,
            reduce_range=opts.reduce_range,
            extra_options={"TensorQuantOverrides": overrides,
                           "ActivationSymmetric": False, "WeightSymmetric": True,
                           "QDQDisableWeightAdjustForInt32Bias": True,
                           # data movement on the graph input (rot90 lifting) is quantized
                           "ForceQuantizeNoInputCheck": True,
                           # ORT drops a Relu whose input it quantized, assuming the output
                           # grid clips at 0; a Relu sharing its input's grid must stay
                           "QDQKeepRemovableActivations": True})
    q = onnx.load(str(path))
    for node in q.graph.node:  # exporter stack traces etc.: bytes, and local paths
        del node.metadata_props[:]
    del q.graph.value_info[:]
    short = shorten_names(q)
    names = {fx: short.get(v, v) for fx, v in names.items()}
    weights = {layer: short.get(f"{init}{DQ_OUT_SUFFIX}", init) for layer, init in weights.items()}
    add_manifest(q, plain.spec.dumps())
    meta = {"activation_type": opts.activation_type, "weight_type": opts.weight_type,
            "reduce_range": opts.reduce_range, "names": names, "weights": weights}
    for prop in list(q.metadata_props):
        if prop.key == META_KEY:
            q.metadata_props.remove(prop)
    entry = q.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    onnx.checker.check_model(q)
    onnx.save_model(q, str(path))
    return {"format": "onnx-qdq", **meta, "batch": batch,
            "ops": sorted({n.op_type for n in q.graph.node}),
            "bytes": path.stat().st_size, "seconds": round(time.perf_counter() - t0, 3)}


def shorten_names(model: onnx.ModelProto) -> dict[str, str]:
    """Rename every interior value and initializer ``t<i>`` and every node ``n<i>``, in place
    (ORT's QDQ names such as ``model.features.0.plain.weight_DequantizeLinear_Output`` are
    about 4% of a ResNet18's INT8 file). Graph inputs and outputs, and the value ORT renames
    a quantized output's producer to (``<output>_QuantizeLinear_Input``), keep their names.
    Returns {old: new}."""
    g = model.graph
    keep = {v.name for v in [*g.input, *g.output]}
    keep |= {f"{k}{Q_IN_SUFFIX}" for k in keep}
    new: dict[str, str] = {}

    def rename(name: str) -> str:
        if not name or name in keep:
            return name
        return new.setdefault(name, f"t{len(new)}")

    for init in g.initializer:
        init.name = rename(init.name)
    for i, node in enumerate(g.node):
        node.name = f"n{i}"
        node.input[:] = [rename(x) for x in node.input]
        node.output[:] = [rename(x) for x in node.output]
    return new


# --- reading an artifact back -----------------------------------------------------------------
def _init_arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}


def read_qparams(path: str | Path) -> dict:
    """Every scale / zero point in a QDQ model, as stored.

    ``activations``: {tensor: (scale, zero point, dtype)} from each QuantizeLinear (the
    tensor it quantizes; a graph output's ``_QuantizeLinear_Input`` suffix removed);
    ``weights``: {initializer: (scales, zero points, dtype)} from the DequantizeLinear of
    each quantized initializer (biases included, int32).
    """
    model = onnx.load(str(path))
    arrays = _init_arrays(model)
    acts, weights = {}, {}
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear":
            name = n.input[0]
            name = name[:-len(Q_IN_SUFFIX)] if name.endswith(Q_IN_SUFFIX) else name
            zp = arrays[n.input[2]]
            acts[name] = (float(arrays[n.input[1]]), int(zp), zp.dtype.name)
        elif n.op_type == "DequantizeLinear" and n.input[0] in arrays:
            zp = arrays[n.input[2]] if len(n.input) > 2 else np.zeros(1, np.int32)
            init = n.output[0]
            init = init[:-len(DQ_OUT_SUFFIX)] if init.endswith(DQ_OUT_SUFFIX) else init
            weights[init] = (np.atleast_1d(arrays[n.input[1]]).astype(np.float32),
                             np.atleast_1d(zp), zp.dtype.name)
    return {"activations": acts, "weights": weights}


def artifact_meta(path: str | Path) -> dict:
    """The settings and name maps ``emit_int8`` stored in the model."""
    model = onnx.load(str(path), load_external_data=False)
    for p in model.metadata_props:
        if p.key == META_KEY:
            return json.loads(p.value)
    raise ValueError(f"{path} was not written by emit_int8 (no {META_KEY} metadata)")


def _int8_zp(zp: np.ndarray, dtype: str) -> np.ndarray:
    """Zero point(s) on qp's int8 scale (uint8 storage is the int8 grid shifted by 128)."""
    return np.asarray(zp, np.int64) - (128 if dtype == "uint8" else 0)


def compare_qparams(path: str | Path, qp: QuantParams, spec=None) -> list[str]:
    """Mismatches between the parameters in the artifact and ``qp`` (empty: identical).

    Checks, in float32 as stored: every quant point of ``qp`` has a QuantizeLinear with its
    scale and zero point; every other quantized tensor carries its grid's parameters (or,
    if not a node of the plain graph, those of its producer's input); every conv/linear
    weight has ``qp``'s per-channel scales and a symmetric zero point, equal within each
    field when ``spec`` (the SymmetrySpec) is given.
    """
    meta, found = artifact_meta(path), read_qparams(path)
    names, weights = meta["names"], meta["weights"]
    acts = found["activations"]
    out = []
    checked = set()
    for fx, point in qp.grid.items():
        tensor = names.get(fx)
        if tensor is None or tensor not in acts:
            if fx in qp.activations:
                out.append(f"quant point {fx}: no QuantizeLinear in the artifact")
            continue
        scale, zp = qp.activations[point]
        got_s, got_z, dtype = acts[tensor]
        if np.float32(got_s) != np.float32(scale) or int(_int8_zp(got_z, dtype)) != zp:
            out.append(f"{fx} ({tensor}): scale {got_s!r} zp {got_z} ({dtype}), expected "
                       f"{np.float32(scale)!r} zp {zp}")
        checked.add(tensor)
    model = onnx.load(str(path))
    producer = {o: n for n in model.graph.node for o in n.output}
    for tensor, (got_s, got_z, _) in acts.items():
        if tensor in checked:
            continue
        node = producer.get(tensor + Q_IN_SUFFIX) or producer.get(tensor)
        src = node.input[0] if node is not None and node.input else None
        while src is not None and src not in acts and src in producer \
                and producer[src].op_type == "DequantizeLinear":  # back to the Q's input
            q = producer.get(producer[src].input[0])
            src = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else None
            if src is not None and src.endswith(Q_IN_SUFFIX):
                src = src[:-len(Q_IN_SUFFIX)]
        if src not in acts or acts[src][:2] != (got_s, got_z):
            out.append(f"{tensor}: parameters {got_s!r}/{got_z} not from qp")
    w_found = found["weights"]
    for layer, init in weights.items():
        if init not in w_found:
            out.append(f"weight {layer} ({init}): not quantized")
            continue
        scales, zps, dtype = w_found[init]
        want = np.asarray(qp.weights[layer], np.float64).astype(np.float32)
        if scales.shape != want.shape or not np.array_equal(scales, want):
            out.append(f"weight {layer} ({init}): scales differ from qp (max rel "
                       f"{float(np.max(np.abs(scales / want - 1))):.3g})")
        if np.any(_int8_zp(zps, dtype) != 0):
            out.append(f"weight {layer} ({init}): zero points {np.unique(zps)} ({dtype}) "
                       "are not symmetric")
        if spec is not None and spec.tensors.get(layer) is not None \
                and spec.tensors[layer].channels == len(scales):
            for f in spec.field_channels(spec.tensors[layer]):
                if len(set(scales[f].tolist())) != 1:
                    out.append(f"weight {layer}: scales differ inside the field of "
                               f"channels {f.tolist()}")
    return out


# --- running it -------------------------------------------------------------------------------
def session(path: str | Path, threads: int | None = 1, level: str = "ORT_ENABLE_ALL",
            optimized_path: str | Path | None = None):
    """An ORT CPU session (``level``: a ``GraphOptimizationLevel`` name)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    if threads:
        opts.intra_op_num_threads = threads
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def optimized_ops(path: str | Path, level: str = "ORT_ENABLE_EXTENDED") -> list[str]:
    """Op types of the graph ORT actually runs (``optimized_model_filepath``).

    ``ORT_ENABLE_EXTENDED`` shows the QDQ fusions (QLinearConv...); ``ORT_ENABLE_ALL`` adds
    the machine-specific layout transforms (NhwcMaxPool, NCHWc) on top of them.
    """
    with tempfile.TemporaryDirectory() as tmp:
        opt = Path(tmp) / "optimized.onnx"
        session(path, level=level, optimized_path=opt)
        return sorted({n.op_type for n in onnx.load(str(opt)).graph.node})


def float_compute_ops(path: str | Path) -> list[str]:
    """Arithmetic ops ORT left in float after its QDQ fusions (should be empty).

    Seen: with ``activation_type="QInt8"`` ORT's s8->u8 QDQ conversion gives up on a tensor
    with two consumers (a residual fork), and the convs around it and the Add run in float.
    """
    return float_ops_of(optimized_ops(path))


def float_ops_of(ops: list[str]) -> list[str]:
    """The arithmetic ops among ``ops`` (an optimized graph's op types) that run in float."""
    return sorted(FLOAT_COMPUTE & set(ops))


def runner(path: str | Path, threads: int | None = 1, level: str = "ORT_ENABLE_ALL"):
    """``f(x)`` for float batches ``(N, ...)`` (run one sample at a time at batch 1)."""
    sess = session(path, threads, level)
    inp = sess.get_inputs()[0]
    batch = int(inp.shape[0])

    def f(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        outs = []
        for i in range(0, len(x), batch):
            chunk = x[i:i + batch]
            n = len(chunk)
            if n < batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, 0)])
            outs.append(sess.run(None, {inp.name: chunk})[0][:n])
        return np.concatenate(outs)

    return f
