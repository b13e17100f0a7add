"""Plain-PyTorch reference group CNNs end to end: layer equations, discovery, FP32 and INT8.

P4CNN, the rot90-stacking C4 classifier, g-/gc-separable P4CNNs and a p4m ResNet are saved
as dill pickles and converted with ``--group`` (orbit discovery) to ONNX and TFLite, in FP32
and INT8: FP32 artifacts within 1e-4 of the source, INT8 artifacts with 0 changed outputs
under every exact group element in both runtimes and within one output step of the torch
simulation of the same parameters.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from eqdeploy.adapters.plain import regular_perms
from eqdeploy.groups import Group, apply_pixel_action
from eqdeploy.models import p4m as M
from eqdeploy.models import plain_groupconv as P
from eqdeploy.models import separable_gconv as S
from eqdeploy.spec import SymmetrySpec

MODELS = {  # name: (module, group)
    "p4cnn": (P, "C4"),
    "rotstack_c4": (P, "C4"),
    "g_p4cnn": (S, "C4"),
    "gc_p4cnn": (S, "C4"),
    "p4m_resnet": (M, "D4"),
}
RUNTIMES = ["onnxruntime", "ai-edge-litert"]


# --- layer equations (cheap) --------------------------------------------------------------------
def _rot(w: torch.Tensor, g: int) -> torch.Tensor:
    return torch.rot90(w, g, dims=(-2, -1))


def test_g_separable_bank_is_the_factorized_kernel():
    torch.manual_seed(1)
    m = S.GSepP4Conv(3, 2, 3, 1)
    bank = m.filter_bank().reshape(2, 4, 3, 4, 3, 3)
    for o in range(2):
        for g in range(4):
            for c in range(3):
                for h in range(4):
                    want = m.weight_h[o, c, (h - g) % 4] * _rot(m.weight_r2[o, c], g)
                    assert torch.equal(bank[o, g, c, h], want)


def test_gc_separable_is_depthwise_then_pointwise_of_the_factorized_kernel():
    torch.manual_seed(2)
    m = S.GCSepP4Conv(3, 5, 3, 1)
    with torch.no_grad():
        m.bias.uniform_(-1, 1)
    full = m.filter_bank().reshape(5, 4, 3, 4, 3, 3)
    for o, g, c, h in [(0, 0, 0, 0), (4, 1, 2, 3), (2, 3, 1, 0), (3, 2, 0, 1)]:
        want = m.weight_c[o, c] * m.weight_h[c, (h - g) % 4] * _rot(m.weight_r2[c], g)
        assert torch.allclose(full[o, g, c, h], want, atol=1e-7)
    x = torch.randn(2, 12, 9, 9)
    with torch.no_grad():
        ref = F.conv2d(x, m.filter_bank(), m.bias.repeat_interleave(4), padding=1)
        assert (m(x) - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_d4_index_table_is_the_group_law():
    table = M.inverse_times_table()
    assert sorted(table[0].tolist()) == list(range(8))
    assert table.diagonal().tolist() == [0] * 8  # g^-1 g = e
    # the pixel action composes as the product: act(act(w, b), a) == act(w, a b)
    w = torch.randn(5, 5)
    for a in M.ELEMENTS:
        for b in M.ELEMENTS:
            assert torch.equal(M.act(M.act(w, b), a), M.act(w, M._mul(a, b)))


@pytest.mark.parametrize("layer,group,cin", [
    (lambda: P.LiftP4(2, 3, 3, 1), "C4", 2), (lambda: P.P4Conv(2, 3, 3, 1), "C4", 8),
    (lambda: S.GSepP4Conv(2, 3, 3, 1), "C4", 8), (lambda: S.GCSepP4Conv(2, 3, 3, 1), "C4", 8),
    (lambda: M.LiftP4M(2, 3, 3, 1, 1), "D4", 2), (lambda: M.P4MConv(2, 3, 3, 1, 1), "D4", 16),
    (lambda: M.P4MConv(2, 3, 1, 2, 0), "D4", 16)])
def test_layers_act_by_the_canonical_regular_representation(layer, group, cin):
    """``layer(u.x) == u.layer(x)`` with each field's channels moved by the left regular
    action in ``Group.elements`` order (channel g <- u^-1 g): the layout discovery finds."""
    torch.manual_seed(3)
    m = layer()
    with torch.no_grad():
        m.bias.uniform_(-1, 1)
    grp = Group(group)
    lift = cin == 2
    x = np.random.default_rng(0).standard_normal((2, cin, 9, 9)).astype(np.float32)
    with torch.no_grad():
        y = m(torch.from_numpy(x)).numpy()
        reg = regular_perms(grp)
        for e in grp.exact_elements:
            xin = apply_pixel_action(x, e)
            if not lift:  # the input is itself a stack of regular fields
                perm = reg[(e.flip, e.rotation)]
                xin = xin.reshape(2, -1, grp.order, 9, 9)[:, :, perm].reshape(x.shape)
            got = m(torch.from_numpy(np.ascontiguousarray(xin))).numpy()
            perm = reg[(e.flip, e.rotation)]
            want = apply_pixel_action(y, e).reshape(2, -1, grp.order, *y.shape[-2:])
            want = want[:, :, perm].reshape(y.shape)
            assert np.abs(got - want).max() <= 1e-5 * np.abs(y).max(), e.name


# --- end to end --------------------------------------------------------------------------------
@pytest.fixture(scope="session", params=list(MODELS))
def converted(request, tmp_path_factory):
    """One model as a dill pickle, converted FP32 and INT8 to ONNX + TFLite (--group)."""
    import dill

    from eqdeploy.convert import ConvertOptions, convert

    name = request.param
    module, group = MODELS[name]
    n = module.EXACT_SIZES[name]
    d = tmp_path_factory.mktemp(name)
    path = d / f"{name}.pt"
    torch.save(getattr(module, name)(), path, pickle_module=dill)
    calib = None
    if name == "rotstack_c4":  # no BatchNorm: no data-free ranges, calibrate on noise
        calib = d / "calib.npz"
        rng = np.random.default_rng(7)
        np.savez(calib, calib=rng.standard_normal((64, 1, n, n)).astype(np.float32))
    out = {"name": name, "group": group}

    def run(int8: bool, outdir):
        opts = ConvertOptions(group=group, targets=["onnx", "tflite"], int8=int8,
                              input_shape=(1, 1, n, n), outdir=outdir, probes=16,
                              calibration=calib)
        t = time.perf_counter()
        report = convert(path, opts)
        return report, time.perf_counter() - t

    # one INT8 conversion writes and verifies the FP32 artifacts beside the INT8 ones
    out["int8"], out["int8_seconds"] = run(True, d / "out")
    out["fp32"], out["fp32_sidecar"] = out["int8"], d / "out" / f"{name}.fp32.onnx"
    out["int8_dir"] = d / "out"
    return out


def _row(report: dict, runtime: str, precision: str) -> dict:
    """The verification row of the ``precision`` artifact run by ``runtime`` (an INT8
    conversion names its FP32 counterparts ``<name>.fp32.<ext>``)."""
    fp32_suffix = precision == "fp32" and report["quantization"] is not None
    return next(v for v in report["verification"] if v["runtime"] == runtime
                and "artifact" in v and (".fp32." in v["artifact"]) == fp32_suffix)


def _exact(group: str) -> int:
    return len(Group(group).exact_elements)


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_fp32_artifacts_match_the_source(runtime, converted):
    row = _row(converted["fp32"], runtime, "fp32")
    assert row["rel_err_vs_source"] <= 1e-4, converted["name"]
    assert len(row["equivariance"]) == _exact(converted["group"])
    assert max(r["rel_err_max"] for r in row["equivariance"]) <= 1e-4
    assert row["top1_agreement_vs_source"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("runtime", RUNTIMES)
def test_int8_artifacts_are_bit_exact(runtime, converted):
    """Integer kernels: 0 changed outputs (the float torch simulation is not held to
    this: its fp32 accumulation order differs under the transform)."""
    row = _row(converted["int8"], runtime, "int8")
    assert len(row["equivariance"]) == _exact(converted["group"])
    assert [r["changed"] for r in row["equivariance"]] == [0] * _exact(converted["group"])
    assert row["max_steps_vs_simulation"] <= 1.0 + 1e-3
    # untrained weights, noise probes, data-free ranges: loose, but catches a broken model
    assert row["rel_err_vs_source"] <= 0.25, converted["name"]


@pytest.mark.slow
def test_int8_artifacts_are_integer_with_every_batch_norm_folded(converted):
    from eqdeploy.targets.tflite_int8 import float_tensors

    report, name = converted["int8"], converted["name"]
    assert report["quantization"]["dfq"]["passes"]["fold"]["kept"] == []
    onnx_art = next(a for a in report["artifacts"] if a["target"] == "onnx"
                    and a["precision"] == "int8")
    assert onnx_art["float_compute_ops"] == []
    # (p4m_resnet's residual adds: tflite_int8.tag_sources lets litert annotate them)
    assert float_tensors(converted["int8_dir"] / f"{name}.tflite") == []


@pytest.mark.slow
def test_discovered_fields_are_regular(converted):
    """The deployed spec (from discovery): every conv output is a stack of regular fields of
    |G| channels; the logits are invariant."""
    group = converted["group"]
    order = Group(group).order
    sym = SymmetrySpec.from_json(json.loads(
        Path(f"{converted['fp32_sidecar']}.eqdeploy.json").read_text())["symmetry"])
    reps = sym.representations
    convs = [t for t in sym.tensors if t.startswith("conv2d")]
    assert len(convs) >= 3
    for t in convs:
        lay = sym.tensors[t]
        assert {reps[r].kind for _, r in lay.fields} == {"regular"}, t
        assert {reps[r].size for _, r in lay.fields} == {order}, t
        assert [s for s, _ in lay.fields] == list(range(0, lay.channels, order)), t
    assert converted["fp32"]["model"]["discovery"]["group"] == group
    assert sym.output_is_invariant()


def _onnx_int8_weights(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Layer -> (integer weight values with the output channel first, scales), as stored
    in an INT8 ONNX (uint8 weights are the int8 grid shifted by their zero point)."""
    import onnx

    from eqdeploy.targets import onnx_int8 as T

    model = onnx.load(str(path))
    arrays = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    dq = {n.output[0].removesuffix(T.DQ_OUT_SUFFIX): n for n in model.graph.node
          if n.op_type == "DequantizeLinear" and n.input[0] in arrays}
    out = {}
    for layer, init in T.artifact_meta(path)["weights"].items():
        node = dq[init]
        q, zp = arrays[node.input[0]].astype(np.int64), arrays[node.input[2]].astype(np.int64)
        q = q - zp.reshape(-1, *([1] * (q.ndim - 1)))
        out[layer] = (q, np.atleast_1d(arrays[node.input[1]]).astype(np.float32))
    return out


def _tflite_int8_weights(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(integer weights with the quantized channel first, scales) of every per-channel
    quantized constant in a .tflite."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    graph = model.Subgraphs(0)
    out = []
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        q = t.Quantization()
        data = model.Buffers(t.Buffer()).DataAsNumpy()
        if q is None or q.ScaleLength() < 2 or t.Type() != schema.TensorType.INT8 or \
                isinstance(data, int):
            continue
        w = np.asarray(data).view(np.int8).reshape(t.ShapeAsNumpy()).astype(np.int64)
        out.append((np.moveaxis(w, q.QuantizedDimension(), 0),
                    np.asarray(q.ScaleAsNumpy(), np.float32)))
    return out


@pytest.mark.slow
def test_int8_weight_scales_are_one_per_field_in_both_artifacts(converted):
    """Read back from both INT8 artifacts: each weight's scales are equal inside every field
    of its output layout, strided fields included (the rot-stack's grouped convs order
    channels g*C + c), and each field's scale is its own range (some channel of the field
    reaches +-127): a per-tensor scale or fields read as channel ranges would fail."""
    name, outdir = converted["name"], converted["int8_dir"]
    report = converted["int8"]
    qp = {k: np.asarray(v, np.float32) for k, v in
          report["quantization"]["params"]["weights"].items()}
    tflite = _tflite_int8_weights(outdir / f"{name}.tflite")
    onnx_w = _onnx_int8_weights(outdir / f"{name}.onnx")
    strided = checked = 0
    for artifact in (f"{name}.onnx", f"{name}.tflite"):
        from eqdeploy.harness.runtime import read_spec

        spec = read_spec(outdir / artifact)
        for layer, want in qp.items():
            lay = spec.tensors.get(layer)
            if lay is None or lay.channels != len(want) or layer.startswith("linear"):
                continue
            stored = [onnx_w[layer]] if artifact.endswith(".onnx") else \
                [(q, s) for q, s in tflite if np.array_equal(s, want)]
            assert stored, (artifact, layer)
            for q, scales in stored:
                assert np.array_equal(scales, want), (artifact, layer)
                peak = np.abs(q).reshape(len(q), -1).max(1)
                for f in spec.field_channels(lay):
                    assert len(set(scales[f].tolist())) == 1, (artifact, layer, f)
                    assert peak[f].max() == 127, (artifact, layer, f)
                assert len(set(scales.tolist())) > 1, (artifact, layer)  # not per tensor
            strided += lay.strided
            checked += 1
    assert checked >= 6
    assert (strided > 0) == (name == "rotstack_c4")
