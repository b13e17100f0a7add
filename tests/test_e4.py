"""E4-style dynamic-kernel p4 layer: window rewrite, discovery, FP32 and INT8 artifacts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from eqdeploy.adapters.plain import discover_plain
from eqdeploy.adapters.unfold import rewrite_windows
from eqdeploy.harness.equivariance import equivariance_table
from eqdeploy.models.e4 import EXACT_SIZE, e4_p4cnn

aten = torch.ops.aten
N = EXACT_SIZE


def _np(fn):
    def run(x):
        with torch.no_grad():
            return fn(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    return run


def _calls(pm, target):
    return [n for n in pm.program.graph.nodes if n.op == "call_function" and n.target == target]


@pytest.fixture(scope="module")
def e4():
    from eqdeploy.datasets import load_mnist29

    model = e4_p4cnn()
    pm = discover_plain(model, torch.zeros(1, 1, N, N), "C4")
    probes = load_mnist29("test", size=N)[0][:24]
    return model, pm, probes


@pytest.fixture(scope="module")
def quantized(e4):
    from eqdeploy.dfq import run_dfq
    from eqdeploy.quantize.params import compute_qparams

    _, pm, _ = e4
    folded, report = run_dfq(pm)
    norm = (-0.1307 / 0.3081, (1 - 0.1307) / 0.3081)
    return folded, compute_qparams(folded, input_range=norm), report


@pytest.fixture(scope="module")
def int8_report(e4, tmp_path_factory):
    """One INT8 conversion to both targets (data-free ranges, MNIST digits as probes); it
    also writes and verifies the FP32 artifacts (``e4.fp32.onnx`` / ``.tflite``)."""
    from eqdeploy.convert import ConvertOptions, convert

    model, _, probes = e4
    d = tmp_path_factory.mktemp("e4_int8")
    torch.save(model.state_dict(), d / "e4.pt")
    np.savez(d / "digits.npz", inputs=probes)
    opts = ConvertOptions(targets=["onnx", "tflite"], outdir=d / "out",
                          input_shape=(1, 1, N, N), arch="eqdeploy.models.e4:e4_p4cnn",
                          group="C4", int8=True, probes=len(probes),
                          probe_inputs=d / "digits.npz", input_norm=([0.1307], [0.3081]),
                          float_io=False)
    return convert(d / "e4.pt", opts), d / "out"


def test_window_rewrite_leaves_4d_convs_and_one_mul(e4):
    _, pm, _ = e4
    targets = {n.target for n in pm.program.graph.nodes if n.op == "call_function"}
    assert aten.im2col.default not in targets and aten.sum.dim_IntList not in targets
    (mul,) = _calls(pm, aten.mul.Tensor)
    a, b = (x.meta["val"].shape for x in mul.args)
    assert len(a) == 4 and tuple(a)[1:] == tuple(b)[1:] == (216, 15, 15)  # no broadcast
    patch = next(x for x in mul.args if len(x.args) > 6 and x.args[6] == 24)  # depthwise
    w = pm.program.state_dict[pm.program.graph_signature.inputs_to_parameters[
        patch.args[1].name]]
    assert w.shape == (216, 1, 3, 3) and bool((w.reshape(216, 9).sum(1) == 1).all())
    kinds = [r["kind"] for r in pm.info["rewrites"]]
    assert kinds.count("im2col window -> one-hot convs + mul") == 1


def test_discovery_recovers_regular_fields_of_the_e4_output(e4):
    _, pm, _ = e4
    spec = pm.spec
    (mul,) = _calls(pm, aten.mul.Tensor)
    window_sum = next(iter(mul.users))  # the aggregation y(x, h)[c]
    mix = next(iter(window_sum.users))  # the E4 layer's output (after the 1x1 p4 mixing)
    assert "broken_tensors" not in pm.info
    for node, fields in ((window_sum, 6), (mix, 12)):
        lay = spec.tensors[node.name]
        assert lay.spatial and len(lay.fields) == fields
        assert {spec.representations[r].kind for _, r in lay.fields} == {"regular"}
        perm = spec.channel_perm(lay, spec.group.element("r1"))
        shift = perm.reshape(-1, 4) - np.arange(0, lay.channels, 4)[:, None]
        assert (shift == shift[0]).all() and sorted(shift[0]) == [0, 1, 2, 3]


def test_graph_matches_source_and_is_equivariant(e4):
    model, pm, probes = e4
    src, out = _np(model)(probes), _np(pm.module())(probes)
    assert np.abs(out - src).max() <= 1e-5 * np.abs(src).max()
    rows = equivariance_table(_np(pm.module()), pm.spec, probes)
    assert [r["element"] for r in rows] == ["r1", "r2", "r3"]
    assert max(r["rel_err_max"] for r in rows) <= 1e-5


class _SharedKernel(nn.Module):
    """Another window layout: one tanh-generated kernel for all channels, positions first."""

    def __init__(self) -> None:
        super().__init__()
        self.gen = nn.Conv2d(4, 9, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        k = torch.tanh(self.gen(x)).view(n, 9, h * w).permute(0, 2, 1).unsqueeze(2)
        p = F.unfold(x, 3, padding=1).view(n, c, 9, h * w).permute(0, 3, 1, 2)
        y = (p * k).sum(-1)  # (N, H*W, C)
        return y.permute(0, 2, 1).reshape(n, c, h, w) + F.unfold(x, 3).sum() * 0


def test_window_rewrite_handles_other_layouts():
    model = _SharedKernel().eval()
    x = torch.randn(2, 4, 9, 9)
    gm = torch.export.export(model, (x,)).module()
    info: dict = {}
    assert rewrite_windows(gm, info) == 1  # the bare unfold().sum() is left alone
    assert "gather conv 9->36" in info["rewrites"][0]["note"]
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-6)
    cols = [n for n in gm.graph.nodes if n.target == aten.im2col.default]
    assert len(cols) == 1 and next(iter(cols[0].users)).target == aten.sum.default


def _row(report, artifact):
    return next(v for v in report["verification"] if v.get("artifact") == artifact)


@pytest.mark.parametrize("artifact", ["e4.fp32.onnx", "e4.fp32.tflite"])
def test_fp32_artifacts_match_source_and_are_equivariant(artifact, int8_report):
    report, _ = int8_report
    row = _row(report, artifact)
    assert row["rel_err_vs_source"] <= 1e-4
    assert [r["element"] for r in row["equivariance"]] == ["r1", "r2", "r3"]
    assert max(r["rel_err_max"] for r in row["equivariance"]) <= 1e-4
    ops = next(a for a in report["artifacts"] if a["file"] == artifact)["ops"]
    assert {"Mul", "MUL"} & set(ops)
    assert not [o for o in ops if "col" in o.lower() or o in ("ReduceSum", "SUM")]


@pytest.mark.parametrize("artifact", ["e4.tflite", "e4.onnx", None])
def test_int8_is_bit_exact_equivariant_and_follows_the_simulation(artifact, int8_report):
    report, _ = int8_report
    row = _row(report, artifact) if artifact else next(
        v for v in report["verification"] if v["runtime"] == "torch INT8 simulation")
    assert [r["element"] for r in row["equivariance"]] == ["r1", "r2", "r3"]
    assert [r["changed"] for r in row["equivariance"]] == [0, 0, 0]
    assert row["top1_agreement_vs_source"] >= 0.9
    if artifact:
        assert row["max_steps_vs_simulation"] <= 1.0 + 1e-3


def test_int8_artifacts_run_integer_kernels(int8_report):
    from eqdeploy.targets.onnx_int8 import optimized_ops
    from eqdeploy.targets.tflite_int8 import float_tensors

    report, out = int8_report
    arts = {a["file"]: a for a in report["artifacts"]}
    assert {"MUL", "DEPTHWISE_CONV_2D", "CONV_2D"} <= set(arts["e4.tflite"]["ops"])
    assert float_tensors(out / "e4.tflite") == []  # int8 input and output too
    ort_ops = optimized_ops(out / "e4.onnx")
    assert {"QLinearMul", "QLinearConv"} <= set(ort_ops) and "Mul" not in ort_ops
    assert arts["e4.onnx"]["float_compute_ops"] == []


def test_patch_conv_keeps_its_input_grid_and_mul_range_is_data_free(quantized, e4):
    from eqdeploy.dfq.verify import taps
    from eqdeploy.quantize.params import is_selection

    folded, qp, _ = quantized
    gm = folded.program.module()
    (mul,) = [n for n in gm.graph.nodes if n.target == aten.mul.Tensor]
    patch = next(a for a in mul.args if is_selection(gm, a))
    assert qp.grid[patch.name] == qp.grid[patch.args[0].name]
    assert mul.name in qp.activations and qp.ranges_from == "bn-stats"
    (l1, h1), (l2, h2) = (qp.ranges[qp.grid[a.name]] for a in mul.args)
    lo, hi = qp.ranges[mul.name]
    ends = (l1 * l2, l1 * h2, h1 * l2, h1 * h2)
    assert (lo, hi) == (min(ends), max(ends))
    value = taps(folded, e4[2], {mul.name})[mul.name]
    assert np.mean((value < lo) | (value > hi)) < 1e-4  # the bound covers the products


def test_cle_stops_at_the_mul(quantized):
    folded, _, report = quantized
    (mul,) = _calls(folded, aten.mul.Tensor)
    before = {a.name for a in mul.args}
    after = next(iter(mul.users)).name
    pairs = report["passes"]["cle"]["pairs"]
    assert pairs and not [p for p in pairs if p["producer"] in before or p["consumer"] == after]


def test_simulated_mul_is_ort_qlinearmul_bit_for_bit():
    """``_int_mul`` against ORT's QLinearMul on every pair of int8 values."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from eqdeploy.quantize.simulate import _int_mul

    (sa, za), (sb, zb), (so, zo) = (0.0371, 3), (0.0193, -20), (0.0457, -4)
    init = [helper.make_tensor(k, t, [], [v]) for k, t, v in (
        ("sa", TensorProto.FLOAT, sa), ("za", TensorProto.INT8, za),
        ("sb", TensorProto.FLOAT, sb), ("zb", TensorProto.INT8, zb),
        ("so", TensorProto.FLOAT, so), ("zo", TensorProto.INT8, zo))]
    node = helper.make_node("QLinearMul", ["a", "sa", "za", "b", "sb", "zb", "so", "zo"],
                            ["y"], domain="com.microsoft")
    io = [helper.make_tensor_value_info(k, TensorProto.INT8, [256, 256]) for k in "aby"]
    graph = helper.make_graph([node], "m", io[:2], io[2:], init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    qa, qb = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij")
    got = sess.run(None, {"a": qa.astype(np.int8), "b": qb.astype(np.int8)})[0]
    a = torch.from_numpy(((qa - za) * sa).astype(np.float32))
    b = torch.from_numpy(((qb - zb) * sb).astype(np.float32))
    sim = torch.round(_int_mul(a.double(), b.double(), sa, sb, so, zo) / so).numpy() + zo
    assert onnx.checker.check_model(model) is None
    assert np.array_equal(sim.astype(np.int64), got.astype(np.int64))
