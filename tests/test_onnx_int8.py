"""INT8 QDQ ONNX target: forced parameters, integer kernels, bit-exact equivariance, fidelity."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from eqdeploy.targets import onnx_int8 as T  # noqa: E402

PROBES = 64


def _probes(n: int, count: int = PROBES, seed: int = 1) -> np.ndarray:
    """Real inputs: held-out MNIST digits (seed 1) or calibration digits (seed 0)."""
    from eqdeploy.datasets import load_mnist29

    x, _ = load_mnist29("calib" if seed == 0 else "test", size=n)
    return x[:count]


def runtime_simulation(folded, qp, x: np.ndarray) -> np.ndarray:
    """``simulate_with`` plus what integer runtimes also do: int32 biases on the grid
    input scale x weight scale (float32 product, as ORT computes it) and average pools
    rounded back onto their input's grid."""
    import torch

    from eqdeploy.dfq.graph import clone, layers
    from eqdeploy.quantize.simulate import _fake_quant, simulate_with

    work = clone(folded)
    for name, layer in layers(work).items():
        if layer.bias is None:
            continue
        s_in = np.float32(qp.act_for(layer.input)[0])
        bs = torch.as_tensor((s_in * np.asarray(qp.weights[name], np.float32)).astype(np.float64))
        with torch.no_grad():
            layer.bias.copy_((torch.round(layer.bias.double() / bs) * bs).to(layer.bias.dtype))
    sim = simulate_with(work, qp)
    gm = sim.gm
    pools = (torch.ops.aten.avg_pool2d.default, torch.ops.aten.adaptive_avg_pool2d.default)
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in pools:
            scale, zp = qp.act_for(node.name)
            with gm.graph.inserting_after(node):
                fq = gm.graph.call_function(_fake_quant, (node, scale, zp))
            node.replace_all_uses_with(fq, delete_user_cb=lambda u, fq=fq: u is not fq)
    gm.recompile()
    return sim.numpy(x)


@pytest.fixture(scope="module")
def int8(reference_models, tmp_path_factory):
    """Per reference model: (folded PlainModel, qp, path of the default INT8 artifact)."""
    import torch

    from eqdeploy.dfq import run_dfq
    from eqdeploy.export import export_equivariant
    from eqdeploy.models.reference import EXACT_SIZES
    from eqdeploy.quantize.params import compute_qparams
    from eqdeploy.targets.onnx_target import emit

    out = {}
    d = tmp_path_factory.mktemp("onnx_int8")
    for name, model in reference_models.items():
        n = EXACT_SIZES[name]
        folded, _ = run_dfq(export_equivariant(model, torch.zeros(1, 1, n, n)))
        cal = _probes(n, 128, seed=0)
        qp = compute_qparams(folded, calibration=cal)
        path, fp32 = d / f"{name}.onnx", d / f"{name}.fp32.onnx"
        emit(folded, fp32, 1)
        info = T.emit_int8(folded, qp, path, fp32=fp32)
        out[name] = (folded, qp, path, info)
    return out


MODELS = ["c4_cnn", "c8_residual", "d4_cnn"]


@pytest.mark.parametrize("name", MODELS)
def test_parameters_in_artifact_are_qp(int8, name):
    folded, qp, path, _ = int8[name]
    assert T.compare_qparams(path, qp, folded.spec) == []
    found = T.read_qparams(path)
    meta = T.artifact_meta(path)
    for layer, init in meta["weights"].items():
        scales, zps, dtype = found["weights"][init]
        np.testing.assert_array_equal(scales, np.asarray(qp.weights[layer], np.float32))
        assert set((zps.astype(int) - (128 if dtype == "uint8" else 0)).tolist()) == {0}
        lay = folded.spec.tensors.get(layer)
        if lay is not None and lay.channels == len(scales):
            for a, b in folded.spec.field_slices(lay):
                assert len(set(scales[a:b].tolist())) == 1, (layer, a, b)
    for point, (scale, zp) in qp.activations.items():
        s, z, dtype = found["activations"][meta["names"][point]]
        assert np.float32(s) == np.float32(scale)
        assert z - (128 if dtype == "uint8" else 0) == zp


def test_compare_reports_a_changed_parameter(int8):
    from dataclasses import replace

    folded, qp, path, _ = int8["c4_cnn"]
    point = next(p for p in qp.activations if p != "x")
    scale, zp = qp.activations[point]
    layer = next(iter(qp.weights))
    w = np.array(qp.weights[layer], np.float64)
    w[0] *= 1.001
    bad = replace(qp, activations={**qp.activations, point: (scale, zp + 1)},
                  weights={**qp.weights, layer: w})
    found = T.compare_qparams(path, bad, folded.spec)
    assert any(m.startswith(f"{point} ") for m in found)
    assert any(m.startswith(f"weight {layer} ") for m in found)


@pytest.mark.parametrize("name", MODELS)
def test_ort_runs_integer_kernels(int8, name):
    ops = T.optimized_ops(int8[name][2])
    assert T.INTEGER_CONV & set(ops), ops
    assert not T.FLOAT_COMPUTE & set(ops), ops  # no float Conv / Add / mean left


def test_float_ops_are_reported(int8, tmp_path):
    """s8 activations: ORT leaves the residual block's convs and Add in float (the source of
    the changed outputs seen before on C8 with reduce_range)."""
    folded, qp, path, _ = int8["c8_residual"]
    adapted = T.adapt_qparams_for_ort(qp, True)
    s8 = tmp_path / "s8.onnx"
    T.emit_int8(folded, adapted, s8, activation_type="QInt8", weight_type="QInt8",
                reduce_range=True, fp32=path.with_suffix(".fp32.onnx"))
    assert T.compare_qparams(s8, adapted, folded.spec) == []
    assert {"Add", "Conv"} <= set(T.float_compute_ops(s8))


@pytest.mark.parametrize("name", MODELS)
def test_bit_exact_equivariance_and_fidelity(int8, name):
    from eqdeploy.harness.equivariance import equivariance_table
    from eqdeploy.models.reference import EXACT_SIZES
    from eqdeploy.quantize.simulate import simulate_with

    folded, qp, path, _ = int8[name]
    x = _probes(EXACT_SIZES[name])
    f = T.runner(path)
    rows = equivariance_table(f, folded.spec, x)
    assert rows and {r["element"]: r["changed"] for r in rows} == {r["element"]: 0
                                                                     for r in rows}
    y = f(x)
    out_scale = qp.act_for(list(qp.grid)[-1])[0]
    steps = np.abs(y - runtime_simulation(folded, qp, x)) / out_scale
    assert steps.max() <= 1.0 + 1e-3
    steps_plain = np.abs(y - simulate_with(folded, qp).numpy(x)) / out_scale
    assert steps_plain.max() <= 3.0 + 1e-3  # no bias / avg-pool rounding in simulate_with
    fp32 = path.with_suffix(".fp32.onnx")
    xt = _probes(EXACT_SIZES[name], 256)  # top-1 on enough digits that one flip is 0.4 %
    assert (f(xt).argmax(1) == T.runner(fp32)(xt).argmax(1)).mean() >= 0.97
    assert path.stat().st_size <= 0.45 * fp32.stat().st_size


def test_u8s8_kernels_break_exactness(int8, tmp_path):
    """The measurement can fail: 8-bit int8 weights saturate ORT's u8s8 kernels on AVX2."""
    import platform

    from eqdeploy.harness.equivariance import equivariance_table
    from eqdeploy.models.reference import EXACT_SIZES

    folded, qp, _, _ = int8["c4_cnn"]
    path = tmp_path / "s8.onnx"
    T.emit_int8(folded, qp, path, weight_type="QInt8", fp32=int8["c4_cnn"][2].with_suffix(
        ".fp32.onnx"))
    assert T.compare_qparams(path, qp, folded.spec) == []
    rows = equivariance_table(T.runner(path), folded.spec, _probes(EXACT_SIZES["c4_cnn"]))
    changed = sum(r["changed"] for r in rows)
    if platform.machine().lower() in ("x86_64", "amd64") and not _has_vnni():
        assert changed > 0
    else:  # VNNI / arm: no int16 saturation, nothing to show
        assert changed >= 0


def _has_vnni() -> bool:
    from pathlib import Path

    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return True
    return "vnni" in flags


def test_reduce_range_needs_adapted_params(int8, tmp_path):
    folded, qp, _, _ = int8["c8_residual"]
    with pytest.raises(ValueError, match="adapt_qparams_for_ort"):
        T.emit_int8(folded, qp, tmp_path / "rr.onnx", reduce_range=True, weight_type="QInt8")
    adapted = T.adapt_qparams_for_ort(qp, True)
    for k, v in qp.weights.items():
        np.testing.assert_allclose(adapted.weights[k], np.asarray(v) * 127 / 63)
    assert adapted.activations == qp.activations
    assert T.adapt_qparams_for_ort(qp, False) is qp


def test_s8_weights_on_request_are_verified_and_reported(tmp_path):
    """``--ort-weights s8``: the same int8 weights with zero point 0 (ORT's u8s8 kernels),
    the kernel and why in the report; verified like every artifact (exact where the CPU has
    VNNI); s8 without an ONNX target is refused up front, writing nothing."""
    import json
    from pathlib import Path

    from click.testing import CliRunner

    from eqdeploy.cli import main
    from eqdeploy.datasets import MNIST29

    example = Path(__file__).resolve().parents[1] / "examples" / "c4_cnn.pt"
    args = ["convert", str(example), "--arch", "eqdeploy.models.reference:c4_cnn",
            "--input-shape", "1,1,29,29", "--int8", "--calibration", str(MNIST29),
            "--probes", str(MNIST29), "--input-norm", "0.1307:0.3081", "--ort-weights", "s8"]
    refused = CliRunner().invoke(main, [*args, "--target", "tflite", "-o", str(tmp_path / "no")])
    assert refused.exit_code == 2, refused.output
    assert "--ort-weights applies to the ONNX artifact" in refused.output
    assert not (tmp_path / "no").exists()
    res = CliRunner().invoke(main, [*args, "--target", "onnx", "-o", str(tmp_path / "s8")])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "s8" / "c4_cnn.report.json").read_text())
    art = next(a for a in report["artifacts"] if a["file"] == "c4_cnn.onnx")
    assert art["weight_type"] == "QInt8" and art["ort_weight_kernel"] == "u8s8"
    assert "VNNI" in art["ort_weight_kernel_why"]
    assert T.artifact_meta(tmp_path / "s8" / "c4_cnn.onnx")["weight_type"] == "QInt8"
    assert "u8s8 kernels" in (tmp_path / "s8" / "c4_cnn.report.md").read_text()
    row = next(v for v in report["verification"] if v.get("artifact") == "c4_cnn.onnx")
    if _has_vnni():
        assert [r["changed"] for r in row["equivariance"]] == [0, 0, 0]
    assert row["top1_agreement_vs_source"] >= 0.9


def _initializers(path) -> dict[str, np.ndarray]:
    import onnx

    model = onnx.load(str(path))
    return {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}


def test_one_export_serves_the_fp32_counterpart_and_the_int8_artifact(reference_models,
                                                                       tmp_path):
    """DFQ changes values, not ops: the INT8 ONNX made from the FP32 counterpart's export
    with the DFQ graph's parameters is the INT8 ONNX of its own export, to the byte of every
    initializer; the counterpart is the BN-folded graph's own export."""
    import torch

    from eqdeploy.dfq import run_dfq_with_reference
    from eqdeploy.export import export_equivariant
    from eqdeploy.quantize.params import compute_qparams
    from eqdeploy.targets import onnx_target

    plain = export_equivariant(reference_models["c4_cnn"], torch.zeros(1, 1, 29, 29))
    run = run_dfq_with_reference(plain)
    qp = compute_qparams(run.model, calibration=_probes(29, 32, seed=0))
    shared, shared32 = tmp_path / "shared.onnx", tmp_path / "shared.fp32.onnx"
    info, _ = onnx_target.emit_pair(run.model, qp, shared, run.folded, shared32)
    assert info["fp32_export_shared"] is True
    own, own32 = tmp_path / "own.onnx", tmp_path / "own.fp32.onnx"
    T.emit_int8(run.model, qp, own)
    onnx_target.emit(run.folded, own32)
    for a, b in ((shared, own), (shared32, own32)):
        x, y = _initializers(a), _initializers(b)
        assert x.keys() == y.keys()
        assert all(x[k].dtype == y[k].dtype and np.array_equal(x[k], y[k]) for k in x)
    # the DFQ moved the weights: the INT8 model does not carry the counterpart's
    moved = [k for k, v in run.model.program.state_dict.items()
             if not torch.equal(v, run.folded.program.state_dict[k])]
    assert moved and all(not np.array_equal(_initializers(shared32)[k],
                                            run.model.program.state_dict[k].detach().numpy())
                         for k in moved)


def test_reweighting_refuses_other_graphs_and_computed_constants(reference_models):
    """No re-weighting across different ops, or when a float initializer is not a parameter
    (a constant the exporter computed from one would stay stale)."""
    import torch

    from eqdeploy.dfq import run_dfq_with_reference
    from eqdeploy.export import export_equivariant
    from eqdeploy.targets import onnx_target

    plain = export_equivariant(reference_models["c4_cnn"], torch.zeros(1, 1, 29, 29))
    run = run_dfq_with_reference(plain)
    program = onnx_target.export(run.folded)
    assert onnx_target.reweighted(program, run.folded, plain) is None  # BN still there
    name = next(k for k in program.model.graph.initializers if k.endswith("weight"))
    program.model.graph.initializers[name].name = "folded_constant"
    assert onnx_target.reweighted(program, run.folded, run.model) is None
