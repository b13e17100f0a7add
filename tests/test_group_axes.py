"""Group actions on any axis (issue 11): strided field layouts, discovery through views,
--tap past a non-equivariant head, and group-axis rewrites that keep the model's cost.

The kernel-rotating CNN (``eqdeploy.models.kernel_rot``) keeps its rotation stack on the
last axis, squeezes it to ``(N, C, 4)`` and takes a max over it; its variant adds a bias
after a 5D view. Each converts (FP32, both targets) without ``--allow-broken``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from eqdeploy.adapters.plain import discover_plain, export_plain, regular_perms
from eqdeploy.errors import EqdeployError
from eqdeploy.groups import Group, apply_pixel_action
from eqdeploy.harness.equivariance import equivariance_table
from eqdeploy.models import kernel_rot as K
from eqdeploy.models import plain_groupconv as P
from eqdeploy.spec import Layout, Representation, SymmetrySpec

N = K.EXACT_SIZE
ORDER = 4


def _np(fn):
    def run(x):
        with torch.no_grad():
            return fn(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    return run


def _regular_c4() -> dict[str, Representation]:
    g = Group("C4")
    reg = regular_perms(g)
    perms = {e.name: tuple(int(i) for i in reg[(e.flip, e.rotation)]) for e in g.elements}
    return {"regular": Representation("regular", ORDER, "regular", perms)}


def _g_major(fields: int) -> Layout:
    """``fields`` regular C4 fields on channels ``g*fields + c`` (a grouped conv's)."""
    order = tuple(g * fields + c for c in range(fields) for g in range(ORDER))
    return Layout(tuple((ORDER * c, "regular") for c in range(fields)), ORDER * fields,
                  True, order)


# --- strided layouts ---------------------------------------------------------------------------
def test_strided_layout_acts_as_the_stacked_copies_shift():
    """On ``(N, G*C, H, W)`` in g-major order, r^k rotates the maps and moves copy g to
    g + k: ``channel_perm`` of the strided layout must say exactly that."""
    group = Group("C4")
    lay = _g_major(3)
    spec = SymmetrySpec(group, _regular_c4(), lay, lay, {"t": lay})
    spec.validate()
    assert [f.tolist() for f in spec.field_channels(lay)] == [[0, 3, 6, 9], [1, 4, 7, 10],
                                                              [2, 5, 8, 11]]
    with pytest.raises(ValueError, match="field_channels"):
        spec.field_slices(lay)
    x = np.random.default_rng(0).standard_normal((2, 12, 5, 5))
    copies = x.reshape(2, ORDER, 3, 5, 5)
    for e in group.elements:
        k = e.rotation
        want = apply_pixel_action(np.roll(copies, k, axis=1).reshape(x.shape), e)
        assert np.array_equal(spec.act(x, lay, e), want), e.name


def test_manifest_v3_only_for_strided_layouts_and_v2_still_read():
    reps = _regular_c4()
    contiguous = Layout(((0, "regular"), (4, "regular")), 8)
    plain = SymmetrySpec(Group("C4"), reps, contiguous, contiguous, {"t": contiguous})
    assert plain.to_json()["version"] == 2 and "order" not in plain.to_json()["tensors"]["t"]
    strided = SymmetrySpec(Group("C4"), reps, contiguous, contiguous, {"t": _g_major(2)})
    text = strided.dumps()
    assert strided.to_json()["version"] == 3
    again = SymmetrySpec.loads(text)
    assert again.tensors["t"] == _g_major(2) and again.tensors["t"].strided
    assert SymmetrySpec.from_json(plain.to_json()).tensors["t"] == contiguous
    bad = strided.to_json()
    bad["tensors"]["t"]["order"] = [0] * 8
    with pytest.raises(EqdeployError, match="not a permutation"):
        SymmetrySpec.from_json(bad).validate()


def test_field_consumers_share_scales_per_strided_field():
    """Weight scales and DFQ units take one value per *strided* field: channels o, O+o,
    2O+o, 3O+o share one (the max of their ranges), different fields keep their own."""
    from eqdeploy.dfq.graph import expand, unit_max
    from eqdeploy.quantize.params import weight_scales

    lay = _g_major(3)
    spec = SymmetrySpec(Group("C4"), _regular_c4(), lay, lay)
    fields = spec.field_channels(lay)
    ranges = torch.arange(1, 13, dtype=torch.float64)  # channel c has range c + 1
    w = ranges.reshape(12, 1, 1, 1)
    scales = weight_scales(w, True, fields) * 127
    assert scales.tolist() == [10, 11, 12] * 4  # field c: max of channels c, 3+c, 6+c, 9+c
    per_field = unit_max(ranges, fields)
    assert per_field.tolist() == [10, 11, 12]
    assert expand(per_field, fields, 12).tolist() == scales.tolist()


# --- discovery through views -------------------------------------------------------------------
@pytest.fixture(scope="module")
def kernel_rot():
    out = {}
    for bias in (False, True):
        model = K.kernel_rot_cnn(bias_after_reshape=bias)
        out[bias] = (model, discover_plain(model, torch.zeros(1, 1, N, N), "C4"))
    return out


@pytest.mark.parametrize("bias", [False, True])
def test_kernel_rotating_cnn_discovered_without_allow_broken(bias, kernel_rot):
    """The rotation stack on the last axis (or axis 2 in the variant), and (N, C, 4) after
    the squeeze: the group moves the stack axis; every tensor gets its action."""
    model, pm = kernel_rot[bias]
    disc = pm.info["discovery"]
    assert "broken_tensors" not in pm.info
    stacked = disc["stacked_layouts"]
    # the squeezed (N, C, 4) (a reshape once normalized)
    squeezed = next(v for v in stacked.values() if v["shape"] == [None, 32, ORDER])
    assert squeezed["spatial_axes"] is None
    assert squeezed["channel_axes"] == [1, 2] and "order" not in squeezed  # c*4 + g
    if not bias:  # (N, C, H, W, 4): spatial axes 2, 3 rotate, the last axis is a channel axis
        five_d = [v for v in stacked.values() if len(v["shape"]) == 5
                  and v["shape"][-1] == ORDER]
        assert five_d and all(v["spatial_axes"] == [2, 3] and v["channel_axes"] == [1, 4]
                              and v["spatial_action"] for v in five_d)
    # the merged rotated-kernel convs: one tensor, regular fields strided over k*O + o (the
    # variant's conv3, written c*4 + k, reordered g-major for the grouped Conv3d after it)
    nodes = [n for n in pm.program.graph.nodes if n.op == "call_function"]
    convs = [n for n in nodes if n.target == torch.ops.aten.conv2d.default]
    assert len(convs) == 4
    for c in convs:
        lay = pm.spec.tensors[c.name]
        kinds = {pm.spec.representations[r].kind for _, r in lay.fields}
        assert kinds == {"regular"} and lay.strided, c.name
    between = nodes[nodes.index(convs[2]) + 1:nodes.index(convs[3])]
    assert [str(n.target) for n in between] == ["aten.relu.default"]  # no transpose left
    assert pm.spec.output_is_invariant() and pm.spec.tensors[convs[0].name].spatial
    probes = np.random.default_rng(1).standard_normal((6, 1, N, N)).astype(np.float32)
    src = _np(model)(probes)
    assert np.abs(_np(pm.module())(probes) - src).max() <= 1e-5 * np.abs(src).max()
    rows = equivariance_table(_np(pm.module()), pm.spec, probes)
    assert len(rows) == 3 and max(r["rel_err_max"] for r in rows) <= 1e-5


def test_without_views_the_squeezed_stack_has_no_channel_permutation(kernel_rot):
    """What discovery faced before: (N, C, 4) read with channel axis 1 only is not moved
    by any channel permutation (the shift is on the last axis)."""
    from eqdeploy.adapters.matching import View, match_channels

    model, _ = kernel_rot[False]
    x = np.random.default_rng(2).standard_normal((4, 1, N, N)).astype(np.float32)
    captured = {}

    def hook(_, __, out):
        captured.setdefault("y", []).append(out.detach().numpy())

    h = model.mix.register_forward_hook(hook)
    _np(model)(x)
    _np(model)(np.rot90(x, 1, (2, 3)).copy())
    h.remove()
    base, moved = (np.maximum(y, 0).mean((2, 3)) for y in captured["y"])  # (N, C, 4)
    assert match_channels(moved, base, 1e-4).perm is None  # channel axis 1 alone
    view = View(3, None, False)
    perm = match_channels(view.canon(moved), view.canon(base), 1e-4).perm
    assert perm is not None and perm.reshape(-1, ORDER).tolist()[0] == [3, 0, 1, 2]


@pytest.mark.parametrize(
    "bias", [pytest.param(False, marks=pytest.mark.slow), True]  # the biased one in quick runs
)
def test_kernel_rotating_cnn_converts_in_both_targets(bias, kernel_rot, tmp_path):
    """FP32 in both targets; the bias variant as INT8 TFLite (its FP32 twin beside it),
    which stopped with 'no weight scales for layer add' before the bias was folded."""
    import dill

    from eqdeploy.convert import ConvertOptions, convert
    from eqdeploy.targets.tflite_int8 import float_tensors

    model, _ = kernel_rot[bias]
    path = tmp_path / "kr.pt"
    torch.save(model, path, pickle_module=dill)
    calib = tmp_path / "calib.npz"  # no BatchNorm: ranges from noise inputs
    np.savez(calib, calib=np.random.default_rng(7).standard_normal(
        (32, 1, N, N)).astype(np.float32))
    report = convert(path, ConvertOptions(
        group="C4", targets=["tflite"] if bias else ["onnx", "tflite"], int8=bias,
        calibration=calib if bias else None, input_shape=(1, 1, N, N),
        outdir=tmp_path / "o", probes=8))
    rows = [v for v in report["verification"] if "artifact" in v]
    assert len(rows) == 2
    for row in rows:
        assert len(row["equivariance"]) == 3
        if row["artifact"] == "kr.tflite" and bias:  # INT8: integer kernels, bit-exact
            assert [r["changed"] for r in row["equivariance"]] == [0, 0, 0]
            assert row["max_steps_vs_simulation"] <= 1.0 + 1e-3
            assert row["top1_agreement_vs_source"] >= 0.75
            continue
        assert row["rel_err_vs_source"] <= 1e-5, row["artifact"]
        assert max(r["rel_err_max"] for r in row["equivariance"]) <= 1e-5
        assert row["top1_agreement_vs_source"] == 1.0
    if bias:
        assert float_tensors(tmp_path / "o" / "kr.tflite") == []
    kinds = {r["kind"] for r in report["model"]["rewrites"]}
    assert "squeeze() -> squeeze(dims)" in kinds  # batch 1 keeps its batch axis
    assert ("bias add folded into conv" in kinds) == bias


# --- --tap past a head that is not equivariant -------------------------------------------------
class FlatHeadP4(nn.Module):
    """P4 features, then a Linear over every group channel (no group pooling)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(P.LiftP4(1, 4, 5, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                                      P.P4Conv(4, 4, 3, 1), nn.ReLU())
        self.head = nn.Linear(4 * ORDER, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


@pytest.fixture(scope="module")
def flat_head(tmp_path_factory):
    import dill

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("flat") / "flat.pt"
    torch.save(FlatHeadP4().eval(), path, pickle_module=dill)
    return path


def test_discovery_stops_at_the_head_without_tap(flat_head):
    from eqdeploy.load import load_model

    model = load_model(flat_head, None).module
    with pytest.raises(EqdeployError, match=r"tensor linear .*module head.*not equivariant"):
        discover_plain(model, torch.zeros(1, 1, 29, 29), "C4")
    pm = discover_plain(model, torch.zeros(1, 1, 29, 29), "C4", tap="features")
    assert pm.info["discovery"]["not_equivariant_after_tap"] == ["linear"]
    assert "linear" not in pm.spec.tensors


def test_tap_converts_a_model_whose_head_is_not_equivariant(flat_head, tmp_path):
    from eqdeploy.convert import ConvertOptions, convert
    from eqdeploy.harness.runtime import read_spec

    report = convert(flat_head, ConvertOptions(group="C4", targets=["onnx"], tap="features",
                                               input_shape=(1, 1, 29, 29), outdir=tmp_path))
    assert report["model"]["output_action"].startswith("none")
    tap_row = next(v for v in report["verification"] if v.get("artifact") == "flat.tap.onnx")
    assert tap_row["rel_err_vs_source"] <= 1e-5
    assert max(r["rel_err_max"] for r in tap_row["equivariance"]) <= 1e-5
    spec = read_spec(tmp_path / "flat.tap.onnx")
    assert spec.output.spatial and spec.output.channels == 4 * ORDER
    assert {spec.representations[r].kind for _, r in spec.output.fields} == {"regular"}


# --- rewrites that keep the cost ---------------------------------------------------------------
class Stacked(nn.Module):
    """Conv3d and a pool3d over a stacked group axis at ``axis`` (2 or 4)."""

    def __init__(self, axis: int) -> None:
        super().__init__()
        k = (1, 3, 3) if axis == 2 else (3, 3, 1)
        pad = (0, 1, 1) if axis == 2 else (1, 1, 0)
        self.axis = axis
        self.conv1 = nn.Conv3d(2, 6, k, padding=pad)
        self.conv2 = nn.Conv3d(6, 5, k, padding=pad, bias=False)
        self.pool = nn.MaxPool3d(tuple(2 if s == 3 else 1 for s in k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.stack([torch.rot90(x, k, (2, 3)) for k in range(ORDER)], dim=self.axis)
        return self.conv2(self.pool(F.relu(self.conv1(x))))


@pytest.mark.parametrize("axis", [2, 4])
def test_conv3d_over_a_group_axis_becomes_one_grouped_conv2d(axis):
    """Same outputs (<= 1e-5 relative), the Conv3d's multiply-adds exactly, the 2D kernel
    stored once per copy, and no transpose left between the per-copy layers."""
    torch.manual_seed(axis)
    model = Stacked(axis).eval()
    example = torch.zeros(1, 2, 12, 12)
    program, info = export_plain(model, example)
    convs = [n for n in program.graph.nodes if n.op == "call_function"
             and n.target == torch.ops.aten.conv2d.default]
    assert [c.args[6] for c in convs] == [ORDER, ORDER]  # groups=G
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not [t for t in ops if "conv3d" in t or "pool3d" in t]
    nodes = list(program.graph.nodes)
    between = nodes[nodes.index(convs[0]) + 1:nodes.index(convs[1])]
    assert [str(n.target) for n in between if n.op == "call_function"] == [
        "aten.relu.default", "aten.max_pool2d.default"]
    assert info["deployed_multiply_adds"] == info["source_multiply_adds"] > 0
    conv_weights = model.conv1.weight.numel() + model.conv2.weight.numel()
    assert info["deployed_parameters"] == ORDER * (conv_weights + model.conv1.bias.numel())
    x = torch.randn(3, 2, 12, 12)
    with torch.no_grad():
        src, out = model(x), program.module()(x)
    assert (out - src).abs().max() <= 1e-5 * src.abs().max()


def test_rotstack_costs_its_conv3d_multiply_adds():
    """rot-stack C4: G^2 x the Conv3d weights and G x its multiply-adds as a block-diagonal
    conv; as grouped convs, G x the weights (one copy per group) and exactly its cost."""
    model = P.rotstack_c4()
    _, info = export_plain(model, torch.zeros(1, 1, 28, 28))
    conv_params = sum(p.numel() for n, p in model.named_parameters() if n.startswith("conv"))
    head = sum(p.numel() for p in model.head.parameters())
    assert info["deployed_parameters"] == ORDER * conv_params + head
    assert info["deployed_multiply_adds"] == info["source_multiply_adds"]
    conv3d_macs = sum(c.out_channels * c.in_channels * int(np.prod(c.kernel_size)) * ORDER
                      * s * s for c, s in ((model.conv1, 28), (model.conv2, 14),
                                           (model.conv3, 7)))
    head_macs = model.head.in_features * model.head.out_features
    assert info["deployed_multiply_adds"] == conv3d_macs + head_macs


class _Rotated(nn.Module):  # 3 convs of one input (rotated kernels), stacked on the last axis
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x):
        return torch.stack([F.conv2d(x, torch.rot90(self.conv.weight, k, (2, 3)),
                                     self.conv.bias, padding=1) for k in range(3)], dim=-1)


class _BiasAfterView(nn.Module):  # a per-field bias after a 5D view; one that varies in W
    def __init__(self, varies: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 12, 3, padding=1, bias=False)
        shape = (1, 3, 1, 1, 6) if varies else (1, 3, 1, 1, 1)
        self.bias = nn.Parameter(torch.randn(shape))

    def forward(self, x):
        y = self.conv(x)
        return y.view(y.shape[0], 3, 4, *y.shape[2:]) + self.bias


class _Shuffled(nn.Module):  # conv -> relu -> c-major copies read g-major
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 12, 3, padding=1)

    def forward(self, x):
        y = F.relu(self.conv(x))
        return y.view(y.shape[0], 3, 4, *y.shape[2:]).permute(0, 2, 1, 3, 4).flatten(1, 2)


class _Squeezed(nn.Module):
    def forward(self, x):
        return x.mean((2, 3), keepdim=True).unsqueeze(-1).squeeze()


@pytest.mark.parametrize("net,rewrite,count", [
    (_Rotated(), "merge_stacked_convs", 1), (_BiasAfterView(False), "fold_bias_adds", 1),
    (_BiasAfterView(True), "fold_bias_adds", 0), (_Shuffled(), "shuffles_into_convs", 1),
    (_Squeezed(), "explicit_squeezes", 1)])
def test_each_rewrite_is_exact(net, rewrite, count):
    """Each graph rewrite alone: the count it reports, the op it removes, and identical
    outputs before and after (batch 1 included: ``squeeze()`` keeps the batch axis)."""
    from eqdeploy.adapters import rewrites, stacked

    fn = getattr(stacked, rewrite, None) or getattr(rewrites, rewrite)
    torch.manual_seed(0)
    net = net.eval()
    x = torch.randn(2, 2, 6, 6)
    gm = torch.export.export(net, (x,), dynamic_shapes=(
        {0: torch.export.Dim("batch", min=1, max=64)},)).module()
    rewrites.fold_constants(gm)  # the rotated kernels become constants, as in export_plain
    stacked.fill_vals(gm)
    gone = {"merge_stacked_convs": "aten.stack.default", "fold_bias_adds": "aten.add.Tensor",
            "shuffles_into_convs": "aten.permute.default",
            "explicit_squeezes": "aten.squeeze.default"}[rewrite]
    assert fn(gm) == count
    ops = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
    assert (gone in ops) == (count == 0)
    with torch.no_grad():
        for batch in (x, x[:1]):
            want = net(batch)
            if rewrite == "explicit_squeezes" and len(batch) == 1:
                want = want[None]  # the source drops its batch axis at batch 1
            got = gm(batch)
            assert got.shape == want.shape
            assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_keepdim_reduction_runs_before_the_views():
    """A global mean of a rotation stack viewed 5D ``(N, C, H, W, G)`` runs on the 4D map
    (an integer GlobalAveragePool in ORT, not a float 5D ReduceMean); same outputs."""
    from eqdeploy.adapters import stacked

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(2, 12, 3, padding=1)

        def forward(self, x):
            y = self.conv(x).unflatten(1, (ORDER, 3)).permute(0, 2, 3, 4, 1)
            return y.mean((2, 3), keepdim=True).amax(-1, keepdim=True)

    torch.manual_seed(0)
    net, x = Net().eval(), torch.randn(2, 2, 6, 6)
    gm = torch.export.export(net, (x,)).module()
    # the mean moves before the permute and the unflatten, the amax over G before the permute
    assert stacked.reductions_before_views(gm) == 3
    reduce_inputs = [n.args[0].target for n in gm.graph.nodes
                     if n.target in (torch.ops.aten.mean.dim, torch.ops.aten.amax.default)]
    assert torch.ops.aten.conv2d.default in reduce_inputs
    with torch.no_grad():
        assert (gm(x) - net(x)).abs().max() <= 1e-6 * net(x).abs().max()
