"""escnn ResNet18-style reference models (D1, C4, D4, C8) end to end.

Cheap tests check the block structure, the settled BN statistics, the aligned input size
and that the source models are invariant under eqdeploy's pixel actions (for D1 this pins
escnn's flip axis to eqdeploy's: mirroring W). The slow ones save each model as a dill
pickle and convert it (C4, D4, C8) once to INT8 ONNX and TFLite (data-free defaults; the
FP32 artifacts are written and verified beside them): FP32 artifacts within 1e-4 of the source; INT8
artifacts with 0 changed outputs under every exact element (for C8 the 90-degree subgroup)
in both runtimes and within one output step of the torch simulation of the same parameters.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from eqdeploy.groups import Group, apply_pixel_action
from eqdeploy.models import escnn_resnet as R

RUNTIMES = ["onnxruntime", "ai-edge-litert"]


@pytest.fixture(scope="session")
def resnets():
    return {g: R.escnn_resnet18(g) for g in R.GROUPS}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


# --- cheap -------------------------------------------------------------------------------------
def test_block_structure_is_resnet18(resnets):
    from escnn import nn as enn

    m = resnets["C4"]
    blocks = list(m.layers)
    assert len(blocks) == sum(R.STAGES) == 8
    sizes = [b.out_type.size for b in blocks]
    assert sizes == [16, 16, 32, 32, 64, 64, 128, 128]  # 4 regular C4 fields, doubling
    assert [b.conv1.stride for b in blocks] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert [b.shortcut is not None for b in blocks] == [False, False, True, False] + [
        True, False, True, False]
    convs = [x for x in m.modules() if isinstance(x, enn.R2Conv)]
    assert len(convs) == 1 + 2 * 8 + 3  # stem, two per block, three projections
    assert all(t.representations[0].name == "regular" for t in (b.out_type for b in blocks))


def test_batch_norm_statistics_are_settled(resnets):
    bns = [x for x in resnets["D4"].modules() if isinstance(x, torch.nn.BatchNorm3d)]
    assert len(bns) == 1 + 2 * 8 + 3
    for bn in bns:
        assert not bn.training
        assert bn.running_mean.abs().max() > 1e-3 and (bn.running_var - 1).abs().max() > 1e-2


@pytest.mark.parametrize("group", R.GROUPS)
def test_source_is_invariant_under_every_exact_element(group, resnets):
    m = resnets[group]
    x = np.random.default_rng(1).standard_normal((3, 3, 33, 33)).astype(np.float32)
    with torch.no_grad():
        y = m(torch.from_numpy(x)).numpy()
        elements = Group(group).exact_elements
        assert len(elements) == {"D1": 1, "C4": 3, "D4": 7, "C8": 3}[group]
        for e in elements:
            gy = m(torch.from_numpy(apply_pixel_action(x, e))).numpy()
            assert _rel(gy, y) <= 1e-5, e.name
        other = m(torch.from_numpy(x[..., ::-1, :].copy())).numpy()  # mirror H
    if group == "D1":  # escnn's default flip is eqdeploy's (mirror W), not a mirror of H
        assert _rel(other, y) > 1e-2


@pytest.mark.parametrize("group", R.GROUPS)
def test_exported_filters_are_exactly_invariant(group, resnets):
    """escnn samples its bases with float trigonometry: its filters are equivariant only to
    ~1e-7, which INT8 rounding can turn into whole steps. The adapter makes every filter
    exactly invariant under the exact elements, moving it by no more than that noise."""
    from escnn import nn as enn

    from eqdeploy.adapters.field_types import exact_channel_perms, group_of
    from eqdeploy.adapters.geometric import _filter_action, plain_equivalent

    convs = [c for c in resnets[group].modules() if isinstance(c, enn.R2Conv)]
    before = after = 0
    for c in convs[:6]:  # stem, stage-1 blocks and the first projection
        w0, w = c.filter.detach(), plain_equivalent(c, "c").weight.detach()
        assert (w - w0).abs().max() <= 1e-6 * w0.abs().max()
        grp = group_of(c.in_type.gspace)
        p_in, p_out = exact_channel_perms(c.in_type, grp), exact_channel_perms(c.out_type, grp)
        for e in grp.elements:
            if e.exact:
                a, b = torch.from_numpy(p_in[e.name]), torch.from_numpy(p_out[e.name])
                before += not torch.equal(_filter_action(w0, e, a, b), w0)
                after += not torch.equal(_filter_action(w, e, a, b), w)
                assert (_filter_action(w0, e, a, b) - w0).abs().max() <= 1e-6 * w0.abs().max()
    assert before > 0 and after == 0


def test_symmetrize_leaves_a_non_equivariant_filter_alone():
    from eqdeploy.adapters.geometric import symmetrize

    grp = Group("C4")
    perm = {e.name: np.roll(np.arange(4), e.rotation) for e in grp.elements}
    w = torch.randn(4, 4, 3, 3)
    assert torch.equal(symmetrize(w, grp, perm, perm), w)


def test_exact_sizes_follow_the_lint(resnets):
    from eqdeploy.export import export_equivariant
    from eqdeploy.lint import lint_input_size

    n = R.EXACT_SIZES["C4"]
    plain = export_equivariant(resnets["C4"], torch.zeros(1, 3, n, n))
    gm, inp = plain.program.graph_module, plain.program.graph_signature.user_inputs[0]
    ok = lint_input_size(gm, inp, n, n)
    assert ok["exact"] and len(ok["strided_layers"]) == 6  # 3 x (3x3 conv + 1x1 projection)
    bad = lint_input_size(gm, inp, n + 2, n + 2)
    assert not bad["exact"] and bad["nearest_exact"] == [n, n + 8]  # n = 8m + 1


# --- end to end (slow) ---------------------------------------------------------------------------
# D1's flip is D4's too (and the cheap test above pins its axis): converted end to end are
# the groups that each add an action, C4 (rotations), D4 (flips with them), C8 (45 degrees)
E2E_GROUPS = ["C4", "D4", "C8"]


@pytest.fixture(scope="session", params=E2E_GROUPS)
def resnet_converted(request, tmp_path_factory, resnets):
    """One model as a dill pickle, converted once to INT8 ONNX + TFLite with the default
    data-free ranges; the conversion also writes and verifies the FP32 artifacts beside them."""
    import dill

    from eqdeploy.convert import ConvertOptions, convert

    group = request.param
    name = f"resnet18_{group.lower()}"
    n = R.EXACT_SIZES[group]
    d = tmp_path_factory.mktemp(name)
    path = d / f"{name}.pt"
    torch.save(resnets[group], path, pickle_module=dill)
    t = time.perf_counter()
    report = convert(path, ConvertOptions(targets=["onnx", "tflite"], int8=True,
                                          input_shape=(1, 3, n, n), outdir=d / "out"))
    return {"name": name, "group": group, "report": report, "dir": d / "out",
            "seconds": time.perf_counter() - t}


EXT = {"onnxruntime": ".onnx", "ai-edge-litert": ".tflite"}


def _row(conv: dict, runtime: str, precision: str = "int8") -> dict:
    if runtime not in EXT:
        return next(v for v in conv["report"]["verification"] if v["runtime"] == runtime)
    file = conv["name"] + (".fp32" if precision == "fp32" else "") + EXT[runtime]
    return next(v for v in conv["report"]["verification"]
                if v["runtime"] == runtime and v.get("artifact") == file)


def _exact(group: str) -> int:
    return len(Group(group).exact_elements)


@pytest.mark.slow
def test_model_converts_as_escnn_with_its_group(resnet_converted):
    report = resnet_converted["report"]
    assert report["model"]["framework"] == "escnn"
    assert report["model"]["group"] == resnet_converted["group"]
    assert report["lint"]["exact"]
    swapped = set(report["model"]["swapped_modules"].values())
    assert {"R2Conv", "InnerBatchNorm", "ReLU", "GroupPooling",
            "PointwiseAdaptiveAvgPool2D"} <= swapped


@pytest.mark.slow
@pytest.mark.parametrize("runtime", list(EXT))
def test_fp32_artifacts_match_the_source(runtime, resnet_converted):
    row = _row(resnet_converted, runtime, "fp32")
    assert row["rel_err_vs_source"] <= 1e-4, resnet_converted["name"]
    assert len(row["equivariance"]) == _exact(resnet_converted["group"])
    assert max(r["rel_err_max"] for r in row["equivariance"]) <= 1e-4
    assert row["top1_agreement_vs_source"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("runtime", [*EXT, "torch INT8 simulation"])
def test_int8_artifacts_are_bit_exact(runtime, resnet_converted):
    group = resnet_converted["group"]
    row = _row(resnet_converted, runtime)
    assert [r["element"] for r in row["equivariance"]] == \
        [e.name for e in Group(group).exact_elements]
    assert [r["changed"] for r in row["equivariance"]] == [0] * _exact(group)
    if runtime != "torch INT8 simulation":
        assert row["max_steps_vs_simulation"] <= 1.0 + 1e-3
    # untrained weights, noise probes, data-free ranges: loose, but catches a broken model
    # (measured with distilled ranges: 0.036-0.041 relative L2 error, top-1 0.94-1.0 on 16)
    assert row["rel_err_vs_source_l2"] <= 0.15, resnet_converted["name"]
    assert row["top1_agreement_vs_source"] >= 0.8


@pytest.mark.slow
def test_int8_artifacts_are_integer_with_shared_field_scales(resnet_converted):
    from eqdeploy.targets.tflite_int8 import float_tensors

    report, name = resnet_converted["report"], resnet_converted["name"]
    assert report["quantization"]["dfq"]["passes"]["fold"]["kept"] == []
    assert float_tensors(resnet_converted["dir"] / f"{name}.tflite") == []
    onnx_art = next(a for a in report["artifacts"]
                    if a["target"] == "onnx" and a["precision"] == "int8")
    assert onnx_art["float_compute_ops"] == []
    order = Group(resnet_converted["group"]).order
    weights = report["quantization"]["params"]["weights"]
    convs = [s for k, s in weights.items() if k.startswith("conv")]
    assert len(convs) == 1 + 2 * 8 + 3  # every conv: one scale per regular field
    for scales in convs:
        fields = np.asarray(scales).reshape(-1, order)
        assert (fields == fields[:, :1]).all()


@pytest.mark.slow
def test_int8_artifacts_are_at_most_027_of_fp32(resnet_converted):
    """~700k deployed weights: the fixed overhead (per-channel scales, zero points, the
    manifest) no longer dominates, so the INT8 files are <= 0.27x the FP32 files."""
    arts = [a for a in resnet_converted["report"]["artifacts"] if a["precision"] == "int8"]
    assert sorted(a["target"] for a in arts) == ["onnx", "tflite"]
    for a in arts:
        assert a["size_ratio_vs_fp32"] <= 0.27, (a["file"], a["size_ratio_vs_fp32"])
