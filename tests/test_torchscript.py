"""TorchScript input (issue 6): traced e2cnn models and plain group convs convert with --group.

Each model is traced, saved and converted once: FP32 for c8_residual and d4_cnn, INT8 (slow)
for c4_cnn and the plain P4CNN, whose traced graphs read slice bounds from index buffers and
build filter banks with shape arithmetic (what torch's TS2EPConverter cannot export), and for
the rot-stack classifier, whose Conv3d layers are rewritten in the graph.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from eqdeploy.adapters.plain import discover_plain
from eqdeploy.adapters.torchscript import TorchScriptGraph, torchscript_to_module
from eqdeploy.errors import EqdeployError
from eqdeploy.harness.equivariance import equivariance_table
from eqdeploy.harness.runtime import sidecar_path
from eqdeploy.spec import SymmetrySpec

# name: (factory module, group, exact input size, precision of its one conversion)
MODELS = {"c4_cnn": ("reference", "C4", 29, "int8"), "c8_residual": ("reference", "C8", 33, "fp32"),
          "d4_cnn": ("reference", "D4", 29, "fp32"), "p4cnn": ("plain_groupconv", "C4", 29, "int8"),
          "rotstack_c4": ("plain_groupconv", "C4", 28, "int8")}
EXACT_ELEMENTS = {"C4": 3, "C8": 3, "D4": 7}  # non-identity elements checked bit for bit


def _np(fn):
    def run(x):
        with torch.no_grad():
            return fn(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()
    return run


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    """Each model traced in eval mode and saved with torch.jit.save (no model source)."""
    import importlib

    out = {}
    d = tmp_path_factory.mktemp("ts")
    for name, (module, _, n, _) in MODELS.items():
        model = getattr(importlib.import_module(f"eqdeploy.models.{module}"), name)().eval()
        path = d / f"{name}.ts"
        torch.jit.save(torch.jit.trace(model, torch.randn(1, 1, n, n)), str(path))
        out[name] = (model, path)
    return out


def _convert(traced, tmp_path_factory, name):
    from eqdeploy.convert import ConvertOptions, convert

    _, group, n, precision = MODELS[name]
    out = tmp_path_factory.mktemp(f"{name}_out")
    calib = None
    if name == "rotstack_c4":  # no BatchNorm: no data-free ranges, calibrate on noise
        calib = out / "calib.npz"
        np.savez(calib, calib=np.random.default_rng(7).standard_normal(
            (32, 1, n, n)).astype(np.float32))
    opts = ConvertOptions(group=group, targets=["onnx", "tflite"], outdir=out,
                          input_shape=(1, 1, n, n), probes=8, int8=precision == "int8",
                          calibration=calib)
    return convert(traced[name][1], opts), out


@pytest.fixture(scope="module")
def converted(traced, tmp_path_factory):
    return {name: _convert(traced, tmp_path_factory, name)
            for name in MODELS if MODELS[name][3] == "fp32"}


@pytest.fixture(scope="module")
def converted_int8(traced, tmp_path_factory):
    return {name: _convert(traced, tmp_path_factory, name)
            for name in MODELS if MODELS[name][3] == "int8"}


def _row(report, runtime):
    return next(v for v in report["verification"] if v["runtime"] == runtime)


def _check_report(report, outdir, name):
    group = MODELS[name][1]
    assert report["model"]["format"] == "torchscript"
    assert report["model"]["framework"] == "torchscript"
    assert report["model"]["group"] == group
    assert _row(report, "torch.export graph")["rel_err_vs_source"] <= 1e-5
    for art in report["artifacts"]:
        spec = SymmetrySpec.from_json(json.loads(
            sidecar_path(outdir / art["file"]).read_text())["symmetry"])
        assert spec.output_is_invariant(), art["file"]


@pytest.mark.parametrize("name", [n for n in MODELS if MODELS[n][3] == "fp32"])
@pytest.mark.parametrize("runtime", ["onnxruntime", "ai-edge-litert"])
def test_traced_fp32_matches_source(name, runtime, converted):
    report, outdir = converted[name]
    _check_report(report, outdir, name)
    row = _row(report, runtime)
    assert row["rel_err_vs_source"] <= 1e-4
    assert row["top1_agreement_vs_source"] == 1.0
    assert len(row["equivariance"]) == EXACT_ELEMENTS[MODELS[name][1]]
    assert max(r["rel_err_max"] for r in row["equivariance"]) <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in MODELS if MODELS[n][3] == "int8"])
@pytest.mark.parametrize("runtime", ["onnxruntime", "ai-edge-litert"])
def test_traced_int8_is_bit_exact(name, runtime, converted_int8):
    report, outdir = converted_int8[name]
    _check_report(report, outdir, name)
    row = _row(report, runtime)
    assert len(row["equivariance"]) == EXACT_ELEMENTS[MODELS[name][1]]
    assert [r["changed"] for r in row["equivariance"]] == [0] * len(row["equivariance"])
    assert row["max_steps_vs_simulation"] <= 1.0 + 1e-3
    assert row["rel_err_vs_source"] <= 0.2  # INT8 vs FP32 source, noise probes


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in MODELS if MODELS[n][3] == "int8"])
def test_traced_int8_is_fully_integer(name, converted_int8):
    """No module to swap in a TorchScript file: the rot-stack's (1, k, k) Conv3d layers are
    rewritten in the graph, so both artifacts run in integers."""
    from eqdeploy.targets.tflite_int8 import float_tensors

    report, outdir = converted_int8[name]
    assert float_tensors(outdir / f"{name}.tflite") == []
    onnx_art = next(a for a in report["artifacts"] if a["file"] == f"{name}.onnx")
    assert onnx_art["float_compute_ops"] == [] and "QLinearConv" in onnx_art["ort_ops"]
    if name == "rotstack_c4":
        kinds = {r["kind"] for r in report["model"]["rewrites"]}
        assert {"conv3d(1,k,k)->conv2d", "pool3d(1,k,k)->pool2d"} <= kinds


def _ops(gm) -> set[str]:
    return {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}


@pytest.mark.parametrize("name", ["c4_cnn", "p4cnn"])
def test_folded_graph_is_clean_with_a_dynamic_batch(name, traced):
    """Index-buffer slice bounds and filter banks are folded: no data-dependent scalars, no
    uninitialised tensors written by slices; the batch stays symbolic."""
    model, path = traced[name]
    n = MODELS[name][2]
    gm = torchscript_to_module(torch.jit.load(str(path)), torch.zeros(1, 1, n, n))
    ops = _ops(gm)
    assert not {o for o in ops if any(k in o for k in (
        "item", "local_scalar", "empty", "copy_", "slice", "index", "rot90", "stack"))}, ops
    assert "aten.conv2d.default" in ops
    x = torch.randn(3, 1, n, n)  # batch 3: not the traced batch
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-5, rtol=0)
    names = dict(gm.named_parameters())
    if name == "p4cnn":  # filter banks computed from parameters -> one folded parameter each
        assert sum(k.startswith("_folded_") and v.dim() == 4 for k, v in names.items()) == 3
    else:  # e2cnn eval-mode filters are buffers read as they are
        assert "features_0_filter" in names


class ScriptableP4(nn.Module):
    """A p4 lifting layer written to be scriptable: a loop builds the filter bank from the
    parameter (folded), an input-dependent ``if`` adds a missing batch axis (run per call)."""

    def __init__(self, width: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.order = 4
        self.weight = nn.Parameter(torch.randn(width, 1, 5, 5) * 0.2)
        self.bias = nn.Parameter(torch.randn(width) * 0.1)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        bank = []
        for g in range(self.order):
            bank.append(torch.rot90(self.weight, g, [2, 3]))
        w = torch.stack(bank, 1).reshape(-1, 1, 5, 5)  # channels (field, rotation)
        y = F.relu(F.conv2d(x, w, self.bias.repeat_interleave(self.order), padding=2))
        n, c, h, ww = y.shape
        y = y.reshape(n, c // self.order, self.order, h, ww).amax(2).mean((2, 3))
        return self.head(y)


def test_scripted_model_with_control_flow(tmp_path):
    torch.manual_seed(0)
    model = ScriptableP4().eval()
    path = tmp_path / "scripted.ts"
    torch.jit.save(torch.jit.script(model), str(path))
    pm = discover_plain(torch.jit.load(str(path)), torch.zeros(1, 1, 29, 29), "C4")
    probes = np.random.default_rng(1).standard_normal((4, 1, 29, 29)).astype(np.float32)
    src = _np(model)(probes)
    assert np.abs(_np(pm.module())(probes) - src).max() <= 1e-5 * np.abs(src).max()
    assert pm.spec.output_is_invariant()
    rows = equivariance_table(_np(pm.module()), pm.spec, probes)
    assert max(r["rel_err_max"] for r in rows) <= 1e-5


class _TwoInputs(nn.Module):
    def forward(self, x, y):
        return x + y


class _ValueBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 0):
            return x * 2.0
        return x


def _one_line_error(script, match: str, shape=(1, 1, 9, 9)) -> None:
    with pytest.raises(EqdeployError, match=match) as e:
        torchscript_to_module(script, torch.zeros(*shape))
    assert "\n" not in str(e.value) and e.value.fix


def test_unconvertible_torchscript_gives_one_line_errors():
    x = torch.zeros(1, 1, 9, 9)
    _one_line_error(torch.jit.trace(_TwoInputs(), (x, x)), "takes 2 inputs")
    _one_line_error(torch.jit.script(_ValueBranch()), "cannot export the TorchScript graph")
    bn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))  # traced in training mode
    _one_line_error(torch.jit.trace(bn.train(), torch.randn(2, 1, 9, 9)), "training mode")


def test_interpreter_keeps_parameter_names(traced):
    model, path = traced["d4_cnn"]
    module = TorchScriptGraph(torch.jit.load(str(path)))
    names = {k for k, _ in module.named_parameters()}
    assert {"head_1_weight", "head_1_bias"} <= names
    x = torch.randn(2, 1, 29, 29)
    with torch.no_grad():
        assert torch.equal(module(x), model(x))


class _InPlace(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2.0
        v = y[:, :1]
        v.relu_()  # writes into y: must stay in place (y is read below)
        z = (x + 1.0).relu_()  # nothing else sees x + 1: may run out of place
        return y + z


def test_inplace_ops_keep_their_aliasing():
    x = torch.randn(2, 3, 5, 5)
    module = TorchScriptGraph(torch.jit.trace(_InPlace(), x))
    gm = torchscript_to_module(torch.jit.trace(_InPlace(), x), x[:1])
    x = torch.randn(3, 3, 5, 5)
    with torch.no_grad():
        assert torch.equal(module(x), _InPlace()(x))
        assert torch.equal(gm(x), _InPlace()(x))
    assert "aten.relu.default" in _ops(gm)  # the second relu_ ran out of place
