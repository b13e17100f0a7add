"""DFQ where the imbalance is: equalization through group pooling into the head, exact
absorption next to zero padding, the per-layer INT8 report, and the stress model rescued in
both runtimes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from eqdeploy.dfq import DfqOptions, run_dfq
from eqdeploy.dfq.absorb import absorb_high_bias, border_error
from eqdeploy.dfq.chains import walk
from eqdeploy.dfq.equalize import equalize
from eqdeploy.dfq.fold import fold_batchnorm
from eqdeploy.dfq.graph import layers
from eqdeploy.dfq.verify import tap_equivariance
from eqdeploy.export import export_equivariant
from eqdeploy.harness.equivariance import equivariance_table, summarize
from eqdeploy.models import mobilenet as M
from eqdeploy.models.stress import SIZE, stress_c4
from eqdeploy.quantize.explain import explain
from eqdeploy.quantize.params import activation_qparams, compute_qparams
from eqdeploy.quantize.ranges import MSE_FACTORS, choose, quant_mse
from eqdeploy.quantize.simulate import fidelity, simulate_with
from eqdeploy.spec import Layout, Representation


def _noise(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, 1, SIZE, SIZE)) + 0.5).astype(
        np.float32)


def _out(pm, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return pm(torch.from_numpy(x)).numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def stress():
    """The stress model exported and BN-folded (built once)."""
    pm = export_equivariant(stress_c4(), torch.randn(1, 1, SIZE, SIZE))
    return pm, fold_batchnorm(pm)[0]


# --- equalization through group pooling -----------------------------------------------------
def _pooled_head(fields: int = 3, size: int = 4):
    """conv(1 -> fields*size, 1x1) -> ReLU -> group max-pool -> mean -> Linear(fields -> 2)."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, fields * size, 1)
            self.head = nn.Linear(fields, 2)

        def forward(self, x):
            y = torch.relu(self.conv(x))
            y = y.reshape(y.shape[0], fields, size, *y.shape[2:]).amax(2)
            return self.head(y.mean(dim=(2, 3)))

    net = Net().eval()
    with torch.no_grad():
        net.conv.weight.copy_(torch.tensor([8.0, 4.0, 2.0, 1.0, 0.5, 0.25, 1.0, 0.1, 3.0, 1.5,
                                            0.75, 0.2][: fields * size]).reshape(-1, 1, 1, 1))
        net.head.weight.copy_(torch.tensor([[0.5, 2.0, 1.0], [-0.25, 1.0, -4.0]]))
    pm = M.export_conventional(net, torch.randn(1, 1, 5, 5))
    pm.spec.representations["quad"] = Representation("quad", size, "regular",
                                                     {"r0": tuple(range(size))})
    lay = Layout(tuple((i * size, "quad") for i in range(fields)), fields * size)
    for name, old in list(pm.spec.tensors.items()):
        if old.channels == fields * size:
            pm.spec.tensors[name] = lay
    return pm


def test_scales_through_group_pooling_hand_computed():
    """One scale per field: s_f = sqrt(R1_f / R2_f), R1_f the field's largest row range of
    the conv, R2_f the head's column range of the pooled channel f."""
    pm = _pooled_head()
    new, rep = equalize(pm)
    assert rep["pairs"] == [{"producer": "conv2d", "consumer": "linear", "through_group_pooling":
                             True, "ops": ["aten.relu", "aten.reshape", "aten.amax",
                                           "aten.mean"]}]
    r1 = torch.tensor([8.0, 1.0, 3.0])
    r2 = torch.tensor([0.5, 2.0, 4.0])
    s = torch.sqrt(r1 / r2)
    w1 = layers(pm)["conv2d"].weight.flatten()
    torch.testing.assert_close(layers(new)["conv2d"].weight.flatten(), w1 / s.repeat_interleave(4))
    torch.testing.assert_close(layers(new)["linear"].weight,
                               layers(pm)["linear"].weight * s.reshape(1, 3))
    x = np.random.default_rng(0).random((4, 1, 5, 5)).astype(np.float32)
    assert _rel(_out(new, x), _out(pm, x)) <= 1e-5


def test_chains_through_pools_and_flatten_into_a_linear():
    """avg pool and a flatten of a 3x3 map: column j of the head reads channel j // 9."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                        nn.Linear(4 * 9, 2)).eval()
    with torch.no_grad():
        net[0].weight.mul_(torch.tensor([10.0, 1.0, 0.1, 3.0]).reshape(4, 1, 1, 1))
    pm = M.export_conventional(net, torch.randn(1, 1, 8, 8))
    (link,), _ = walk(pm)
    assert link.consumer.node == "linear" and not link.identity
    assert link.column_unit.tolist() == [u for u in range(4) for _ in range(9)]
    before = layers(pm)
    r1 = before["conv2d"].out_ranges()
    r2 = before["linear"].weight.detach().abs().reshape(2, 4, 9).amax(dim=(0, 2))
    s = torch.sqrt(r1 / r2)  # one pair: converged after one sweep
    new, rep = equalize(pm)
    torch.testing.assert_close(layers(new)["conv2d"].weight,
                               before["conv2d"].weight / s.reshape(4, 1, 1, 1))
    torch.testing.assert_close(layers(new)["linear"].weight,
                               before["linear"].weight * s.repeat_interleave(9).reshape(1, 36))
    x = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    assert _rel(_out(new, x), _out(pm, x)) <= 1e-5


def test_group_pooling_chain_keeps_function_and_equivariance(stress):
    pm, folded = stress
    new, rep = equalize(folded)
    head = [p for p in rep["pairs"] if p.get("through_group_pooling")]
    assert [(p["producer"], p["consumer"]) for p in head] == [("conv2d_2", "linear")]
    ratio = rep["range_ratio"]["conv2d_2"]
    assert ratio["after"] >= 10 * ratio["before"], ratio  # measured 0.0046 -> 0.066
    x = _noise(8, 3)
    assert _rel(_out(new, x), _out(pm, x)) <= 1e-5
    eq0 = summarize(equivariance_table(lambda a: _out(folded, a), folded.spec, x[:3]))
    eq1 = summarize(equivariance_table(lambda a: _out(new, a), new.spec, x[:3]))
    assert eq1["rel_err_max"] <= 10 * eq0["rel_err_max"] + 1e-6
    taps0, taps1 = tap_equivariance(folded, x[:2]), tap_equivariance(new, x[:2])
    assert set(taps1) == set(taps0) and len(taps1) >= 5
    assert max(taps1.values()) <= 10 * max(taps0.values()) + 1e-6


def test_orbit_agnostic_refuses_group_pooling(stress):
    _, folded = stress
    _, rep = equalize(folded, orbit_agnostic=True)
    assert "linear" not in {p["consumer"] for p in rep["pairs"]}
    end = next(e for e in rep["chain_ends"] if e["producer"] == "conv2d_2")
    assert end["op"] == "aten.amax" and "group pooling" in end["reason"], end
    chains, _ = walk(folded, orbit_agnostic=False)
    assert any(c.consumer.node == "linear" and c.passes_group_pool for c in chains)


# --- absorption next to zero padding ---------------------------------------------------------
def _padded_pair():
    """1x1 conv -> BN -> ReLU -> 3x3 zero-padded conv on inputs in [0, 1]: pre-activations stay
    within beta +- sqrt(3) gamma, so absorption's only error is the border's."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 3, 3, padding=1))
    x = torch.rand(16, 1, 9, 9)
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.2, 0.5, 1.0, 2.0]))
        net[1].bias.copy_(torch.tensor([1.0, 3.0, 8.0, 0.1]))
        z = net[0](x)
        net[1].running_mean.copy_(z.mean((0, 2, 3)))
        net[1].running_var.copy_(z.var((0, 2, 3), unbiased=False))
    return M.export_conventional(net.eval(), torch.randn(1, 1, 9, 9)), x.numpy()


def test_padded_absorption_exact_and_its_measured_cost():
    pm, x = _padded_pair()
    folded, _ = fold_batchnorm(pm)
    exact, rep = absorb_high_bias(folded, padded="exact")
    entry = rep["absorbed"][0]
    assert entry["padding"]["method"] == "exact: constant channels"
    assert entry["padding"]["constant_channels"] >= 1
    assert _rel(_out(exact, x), _out(pm, x)) <= 1e-5  # borders included
    assert float(layers(exact)["conv2d"].bias[:4].min()) < float(layers(folded)["conv2d"]
                                                                 .bias.min())
    # 'always' absorbs into the bias: the border moves by exactly E = conv(ring_c, W2)
    approx, rep_a = absorb_high_bias(folded, padded="always")
    moved = _out(approx, x) - _out(pm, x)
    e = border_error(folded, layers(folded)["conv2d_1"],
                     torch.tensor([0.0] * 4).index_put_(
                         (torch.arange(4),), torch.clamp(
                             torch.tensor(folded.info["bn_stats"]["conv2d"]["mean"])
                             - 3 * torch.tensor(folded.info["bn_stats"]["conv2d"]["std"]), 0)))
    np.testing.assert_allclose(moved, np.broadcast_to(e.numpy(), moved.shape), atol=1e-4)
    assert float(np.abs(moved).max()) > 0.1  # what the exact path avoids
    cost = rep_a["absorbed"][0]["padding"]
    assert math.isclose(cost["border_error_max"], float(np.abs(e).max()), rel_tol=1e-6)
    never, rep_n = absorb_high_bias(folded, padded="never")
    assert not rep_n["absorbed"] and "zero-padded" in rep_n["skipped"][0]["reason"]


def test_exact_absorption_keeps_stress_model_and_its_equivariance():
    """Half the fields with beta = gamma * U(4, 6): the first pair is absorbed exactly
    through constant channels, the last through group pooling into the head."""
    pm = export_equivariant(stress_c4(high_bias=0.5, beta_over_gamma=(4.0, 6.0)),
                            torch.randn(1, 1, SIZE, SIZE))
    folded, _ = fold_batchnorm(pm)
    cle, _ = equalize(folded)
    new, rep = absorb_high_bias(cle, padded="exact", inputs=_noise(16, 4))
    methods = [a.get("padding", {}).get("method") for a in rep["absorbed"]]
    assert "exact: constant channels" in methods
    assert any(a.get("through_group_pooling") for a in rep["absorbed"])
    assert all(s["padding"]["rounding_noise_after"] >= s["padding"]["rounding_noise_before"]
               for s in rep["skipped"] if "padding" in s)  # the stated criterion
    x = _noise(8, 5)
    # exact at the borders; inside, exact where the pre-activation stays >= beta - 3 gamma
    # (noise dips below it at ~0.1 % of positions: measured 3.6e-5)
    err = _rel(_out(new, x), _out(pm, x))
    approx, _ = absorb_high_bias(cle, padded="always")
    assert err <= 1e-3 and _rel(_out(approx, x), _out(pm, x)) >= 30 * err
    new.spec.validate()
    taps0, taps1 = tap_equivariance(folded, x[:2]), tap_equivariance(new, x[:2])
    assert max(taps1.values()) <= 10 * max(taps0.values()) + 1e-6


# --- range selection and the per-layer report -------------------------------------------------
def test_mse_range_is_measured_and_never_worse_than_minmax():
    rng = np.random.default_rng(0)
    heavy = rng.standard_t(2, 50000)
    lo, hi = float(heavy.min()), float(heavy.max())
    c_lo, c_hi = choose(heavy, lo, hi, "mse")
    assert c_hi < hi and c_lo > lo  # heavy tails: clipping pays (measured 0.92 x the range)
    assert quant_mse(heavy, c_lo, c_hi) < 0.95 * quant_mse(heavy, lo, hi)  # measured 0.90
    grid = [quant_mse(heavy, f * lo, f * hi) for f in MSE_FACTORS]
    assert math.isclose(quant_mse(heavy, c_lo, c_hi), min(grid))  # the argmin, not a guess
    relu = np.maximum(rng.standard_normal(50000), 0)
    r_lo, r_hi = choose(relu, 0.0, float(relu.max()), "mse")
    assert r_lo == 0.0 and quant_mse(relu, r_lo, r_hi) <= quant_mse(relu, 0.0, relu.max())
    dense = rng.uniform(0, 1, 20000)
    assert choose(dense, 0.0, float(dense.max()), "mse")[1] >= 0.96 * dense.max()
    p_lo, p_hi = choose(heavy, lo, hi, "percentile")
    assert np.mean((heavy < p_lo) | (heavy > p_hi)) <= 2.5e-4


def test_per_layer_report_names_the_tensor_that_loses_the_signal(stress):
    """A parameter set built with one bad tensor (its range 300x too wide): the report must
    name it as the largest loss and the lowest local SQNR, with its SQNR far below its
    input's, and measure every other tensor."""
    _, folded = stress
    cal = _noise(32, 6)
    qp = compute_qparams(folded, per_channel=True, calibration=cal)
    lo, hi = qp.ranges["relu_1"]
    qp.activations["relu_1"] = activation_qparams(lo, 300 * hi)
    qp.ranges["relu_1"] = (lo, 300 * hi)
    rep = explain(folded, qp, _noise(16, 7), sensitivity=True)
    rows = {r["tensor"]: r for r in rep["rows"]}
    assert set(rows) == {"x", "relu", "relu_1", "relu_2", "mean", "linear"}
    assert rep["largest_drop"]["tensor"] == "relu_1"
    assert rep["lowest_local_sqnr"]["tensor"] == "relu_1"
    assert rows["relu_1"]["sqnr_db"] < rows["relu"]["sqnr_db"] - 20
    assert rows["relu_1"]["collapsed_fields"], "a 300x range leaves small fields < 1 step"
    assert rows["relu_1"]["alone_output_sqnr_db"] == min(r["alone_output_sqnr_db"]
                                                         for r in rows.values())
    assert all(r["sqnr_db"] is not None and math.isfinite(r["sqnr_db"]) for r in rows.values())
    assert len(rep["weights"]) == 4 and rep["unmeasured"] == []


def test_dfq_rescues_per_tensor_int8_in_simulation(stress):
    """Per-tensor weights and activations on 512 inputs (both runtimes are checked against
    the same simulation below): block-aware DFQ >= 0.90 and >= 0.30 above no DFQ."""
    pm, folded = stress
    cal, x = _noise(64, 8), torch.from_numpy(_noise(512, 9))
    naive = simulate_with(folded, compute_qparams(folded, per_channel=False, calibration=cal))
    dfq, _ = run_dfq(pm, DfqOptions(weights="per_tensor"), inputs=cal)
    sim = simulate_with(dfq, compute_qparams(dfq, per_channel=False, calibration=cal))
    f_naive, f_dfq = fidelity(pm, naive, x), fidelity(pm, sim, x)
    # benchmark (1024 inputs, calibrated): 0.53 -> 0.965
    assert f_dfq["top1_agreement"] >= 0.90, f_dfq
    assert f_dfq["top1_agreement"] >= f_naive["top1_agreement"] + 0.30, (f_naive, f_dfq)


# --- the stress model converted: both runtimes ------------------------------------------------
MODES = ("calibrated", "data-free")


@pytest.fixture(scope="module")
def stress_converted(tmp_path_factory):
    """The stress model to per-tensor INT8 ONNX + TFLite, once calibrated (64 noise inputs)
    and once data-free (the default: inputs distilled from the BN statistics), verified on
    512 held-out noise probes."""
    from eqdeploy.convert import ConvertOptions, convert

    d = tmp_path_factory.mktemp("stress")
    torch.save(stress_c4().state_dict(), d / "stress.pt")
    np.savez(d / "probes.npz", inputs=_noise(512, 11))
    np.savez(d / "calib.npz", calib=_noise(64, 12))
    reports = {}
    for mode in MODES:
        opts = ConvertOptions(targets=["onnx", "tflite"], outdir=d / mode,
                              input_shape=(1, 1, SIZE, SIZE),
                              arch="eqdeploy.models.stress:stress_c4", int8=True,
                              per_tensor=True, probes=512, probe_inputs=d / "probes.npz",
                              calibration=d / "calib.npz" if mode == "calibrated" else None,
                              dfq=DfqOptions(weights="per_tensor"))
        reports[mode] = convert(d / "stress.pt", opts)
    return reports, d


def _no_dfq_top1(pm, mode: str, d) -> float:
    """Per-tensor INT8 without DFQ (BN folded only), with the ranges the conversion uses."""
    from eqdeploy.quantize.distill import distill_inputs

    cal = _noise(64, 12) if mode == "calibrated" else distill_inputs(
        pm, (1, 1, SIZE, SIZE), None, seed=0)
    folded, _ = fold_batchnorm(pm)
    sim = simulate_with(folded, compute_qparams(folded, per_channel=False, calibration=cal))
    x = np.load(d / "probes.npz")["inputs"]
    return float((sim.numpy(x).argmax(1) == _out(pm, x).argmax(1)).mean())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("runtime", ["onnxruntime", "ai-edge-litert"])
def test_stress_model_rescued_in_both_runtimes(stress_converted, stress, mode, runtime):
    reports, d = stress_converted
    rep = reports[mode]
    row = next(v for v in rep["verification"] if v["runtime"] == runtime
               and v["artifact"].endswith((".onnx", ".tflite")) and ".fp32." not in v["artifact"])
    assert [r["changed"] for r in row["equivariance"]] == [0, 0, 0], row["equivariance"]
    assert all(r["probes"] == 512 for r in row["equivariance"])
    assert row["max_steps_vs_simulation"] <= 1.0 + 1e-3
    naive = _no_dfq_top1(stress[0], mode, d)
    # measured (512 probes, both runtimes): calibrated 0.56 -> 0.957, data-free 0.56 -> 0.928
    assert row["top1_agreement_vs_source"] >= 0.90, (mode, row["top1_agreement_vs_source"])
    assert row["top1_agreement_vs_source"] >= naive + 0.30, (mode, naive)
    params = rep["quantization"]["params"]["scheme"]
    assert "per tensor" in params["weights"]
    assert params["ranges_from"] == ("calibration" if mode == "calibrated" else "distilled")


def test_stress_report_has_the_per_layer_table(stress_converted):
    reports, d = stress_converted
    per_layer = reports["calibrated"]["quantization"]["per_layer"]
    names = [r["tensor"] for r in per_layer["rows"]]
    assert names == ["x", "relu", "relu_1", "relu_2", "mean", "linear"]
    assert per_layer["lowest_sqnr"]["tensor"] in names and per_layer["unmeasured"] == []
    dfq = reports["calibrated"]["quantization"]["dfq"]["passes"]
    assert any(p.get("through_group_pooling") for p in dfq["cle"]["pairs"])
    assert dfq["bias_correction"]["expectation"].startswith("measured")
    md = (d / "calibrated" / "stress.report.md").read_text()
    assert "## Per-layer INT8 error" in md and "Lowest SQNR" in md
