"""Orbit discovery on plain-PyTorch group convs, and its cross-check with e2cnn's layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eqdeploy.adapters.plain import (
    discover_plain,
    export_plain,
    match_channels,
    regular_perms,
)
from eqdeploy.errors import EqdeployError
from eqdeploy.export import export_equivariant
from eqdeploy.groups import Group
from eqdeploy.harness.equivariance import equivariance_table
from eqdeploy.models import p4m as M
from eqdeploy.models import plain_groupconv as P
from eqdeploy.models import separable_gconv as S
from eqdeploy.models.reference import EXACT_SIZES

# name: (module, group, conv2d and batch_norm nodes in the exported graph)
PLAIN = {"p4cnn": (P, "C4", 3, 3), "rotstack_c4": (P, "C4", 3, 0),
         "g_p4cnn": (S, "C4", 3, 3), "gc_p4cnn": (S, "C4", 5, 3),
         "p4m_resnet": (M, "D4", 6, 6)}
GROUPY = [n for n in PLAIN if n != "rotstack_c4"]  # filter banks built from parameters


def _np(fn):
    def run(x):
        with torch.no_grad():
            return fn(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    return run


@pytest.fixture(scope="module")
def plain_models():
    out = {}
    for name, (module, group, *_) in PLAIN.items():
        model = getattr(module, name)()
        n = module.EXACT_SIZES[name]
        out[name] = (model, discover_plain(model, torch.zeros(1, 1, n, n), group))
    return out


def _convs(pm):
    return [n for n in pm.program.graph.nodes
            if n.op == "call_function" and n.target == torch.ops.aten.conv2d.default]


@pytest.mark.parametrize("name", list(PLAIN))
def test_discovery_recovers_regular_fields(name, plain_models):
    _, pm = plain_models[name]
    spec = pm.spec
    reps = spec.representations
    order = spec.group.order
    assert spec.group.name == PLAIN[name][1]
    convs = _convs(pm)
    assert len(convs) == PLAIN[name][2]
    canonical = regular_perms(spec.group)
    # every conv output: regular fields of |G| channels each
    for c in convs:
        lay = spec.tensors[c.name]
        assert {reps[r].kind for _, r in lay.fields} == {"regular"}
        fields = np.stack(spec.field_channels(lay))  # (fields, |G|) channel indices
        assert fields.shape[1] == order
        assert sorted(fields.ravel().tolist()) == list(range(lay.channels))
        # the rot-stack's grouped convs order channels g*C + c: strided fields {c, C+c, ..}
        fields_c = lay.channels // order
        want = np.arange(lay.channels).reshape(order, fields_c).T if name == "rotstack_c4" \
            else np.arange(lay.channels).reshape(fields_c, order)
        assert lay.strided == (name == "rotstack_c4") and np.array_equal(fields, want)

        def local(e, fields=fields, lay=lay):  # position, within its field, of perm[f]
            perm = spec.channel_perm(lay, spec.group.element(e) if isinstance(e, str) else e)
            return np.stack([np.searchsorted(f, perm[f]) for f in fields])

        shift = local("r1")
        assert (shift == shift[0]).all() and sorted(shift[0]) == list(range(order))
        perm = spec.channel_perm(lay, spec.group.element("r1"))
        assert spec.channel_perm(lay, spec.group.element("r2")).tolist() == \
            perm[perm].tolist()
        if name in GROUPY:  # channel g of a field is element g: the left regular action
            for e in spec.group.elements:
                assert (local(e) == canonical[(e.flip, e.rotation)]).all(), (c.name, e.name)
        # GrouPy maps rotate with the input; stacked copies are only permuted
        assert lay.spatial == (name != "rotstack_c4")
    assert spec.output_is_invariant() and not spec.output.spatial
    assert {reps[r].kind for _, r in spec.input.fields} == {"trivial"}
    assert "broken_tensors" not in pm.info


@pytest.mark.parametrize("name", list(PLAIN))
def test_rewrites_give_plain_conv2d_with_constant_weights(name, plain_models):
    _, pm = plain_models[name]
    nodes = [n for n in pm.program.graph.nodes if n.op == "call_function"]
    targets = {str(n.target) for n in nodes}
    assert not [t for t in targets if "conv3d" in t or "convolution" in t], name
    # (1, k, k) 3D pools became 2D pools; no activation reads a reshape (it fuses into
    # the conv before it: LiteRT's quantizer left conv -> unflatten -> relu in float)
    assert not [t for t in targets if "pool3d" in t], name
    views = {torch.ops.aten.unflatten.int, torch.ops.aten.view.default,
             torch.ops.aten.reshape.default, torch.ops.aten.flatten.using_ints}
    assert not [n.name for n in nodes if n.target == torch.ops.aten.relu.default
                and n.args[0].target in views], name
    sig = pm.program.graph_signature
    for c in _convs(pm):
        w = c.args[1]
        assert w.op == "placeholder" and w.name in sig.inputs_to_parameters, (name, w)
    # field BatchNorm3d between reshapes became a 4D batch_norm right after its conv
    bns = [n for n in nodes if n.target == torch.ops.aten.batch_norm.default]
    assert len(bns) == PLAIN[name][3]
    for bn in bns:
        assert bn.meta["val"].dim() == 4 and bn.args[0].target == torch.ops.aten.conv2d.default
    if name in GROUPY:  # filter banks (rot90, flips, index gathers) were folded away
        data = {n.name for n in nodes}
        assert not [n for n in data if n.startswith(("rot90", "flip", "index", "stack",
                                                      "einsum", "mul"))]


@pytest.mark.parametrize("name", list(PLAIN))
def test_graph_matches_source_and_is_invariant(name, plain_models):
    model, pm = plain_models[name]
    n = PLAIN[name][0].EXACT_SIZES[name]
    probes = np.random.default_rng(3).standard_normal((6, 1, n, n)).astype(np.float32)
    src = _np(model)(probes)
    out = _np(pm.module())(probes)
    assert np.abs(out - src).max() <= 1e-5 * np.abs(src).max()
    rows = equivariance_table(_np(pm.module()), pm.spec, probes)
    assert [r["element"] for r in rows] == [e.name for e in pm.spec.group.exact_elements]
    assert max(r["rel_err_max"] for r in rows) <= 1e-5


def test_broken_layer_is_named():
    example = torch.zeros(1, 1, 29, 29)
    program, _ = export_plain(P.broken_p4cnn(), example)  # export once, discover twice
    with pytest.raises(EqdeployError) as err:
        discover_plain(program, example, "C4")
    msg = str(err.value)
    assert "module mix" in msg and "not equivariant under r1" in msg
    assert msg.startswith("tensor conv2d_2 ")  # the 1x1 conv's output, first broken tensor
    pm = discover_plain(program, example, "C4", allow_broken=True)
    broken = pm.info["broken_tensors"]
    assert next(iter(broken)) == "conv2d_2" and broken["conv2d_2"]["module"] == "mix"
    assert "conv2d_2" not in pm.spec.tensors and "conv2d_1" in pm.spec.tensors


@pytest.mark.parametrize("name", ["c4_cnn", "d4_cnn", "c8_residual"])
def test_discovered_layouts_equal_declared_e2cnn_layouts(name, reference_models):
    """The strongest true statement: for every tensor the e2cnn export declares, discovery
    finds the same field boundaries, kinds and sizes, and for *every* group element the
    same full channel permutation (not only up to relabeling: with generic weights the
    permutation with T(g.x) == g.T(x) is unique, and e2cnn's satisfies it). For C8 the
    45-degree perms are derived (canonical regular order) and still equal e2cnn's."""
    n = EXACT_SIZES[name]
    example = torch.zeros(1, 1, n, n)
    declared = export_equivariant(reference_models[name], example)
    found = discover_plain(declared.program, example, declared.spec.group.name)
    ds, fs = declared.spec, found.spec
    assert fs.group == ds.group
    assert set(fs.tensors) == set(ds.tensors)
    convs = {c.name for c in _convs(declared)}
    assert convs <= set(ds.tensors)
    for t, lay in ds.tensors.items():
        got = fs.tensors[t]
        assert fs.field_slices(got) == ds.field_slices(lay), t
        assert [fs.representations[r].kind for _, r in got.fields] == \
            [ds.representations[r].kind for _, r in lay.fields], t
        assert got.spatial == lay.spatial and got.channels == lay.channels
        for e in ds.group.elements:
            assert np.array_equal(fs.channel_perm(got, e), ds.channel_perm(lay, e)), (t, e)
    if name == "c8_residual":
        assert found.info["discovery"]["derived_elements"] == ["r1", "r3", "r5", "r7"]


def test_c8_falls_back_to_exact_subgroup_without_regular_fields(plain_models):
    """A C4 model claimed as C8: its 4-channel fields cannot be regular C8 fields, so the
    45-degree perms cannot be derived and the spec keeps the exact subgroup C4."""
    program = plain_models["p4cnn"][1].program
    pm = discover_plain(program, torch.zeros(1, 1, 29, 29), "C8")
    assert pm.spec.group.name == "C4" and "not a regular C8 field" in pm.info["group_reduced"]


def test_regular_perms_and_matching():
    reg = regular_perms(Group("D4"))
    assert sorted(reg) == [(f, k) for f in (0, 1) for k in range(4)]
    assert all(sorted(p) == list(range(8)) for p in reg.values())
    rng = np.random.default_rng(0)
    t = rng.standard_normal((3, 6, 5, 5)).astype(np.float32)
    perm = np.array([2, 0, 1, 5, 3, 4])
    assert match_channels(t[:, perm], t, 1e-4).perm.tolist() == perm.tolist()
    bad = t[:, perm].copy()
    bad[:, 4] += 0.5 * t[:, 0]
    m = match_channels(bad, t, 1e-4)
    assert m.perm is None and m.channel == 4


def test_torchscript_input(tmp_path, plain_models):
    """A traced + saved TorchScript file converts through TS2EPConverter (no model source)."""
    model, _ = plain_models["rotstack_c4"]
    x = torch.randn(2, 1, 28, 28)
    path = tmp_path / "rotstack.ts"
    torch.jit.save(torch.jit.trace(model, x), str(path))
    pm = discover_plain(torch.jit.load(str(path)), torch.zeros(1, 1, 28, 28), "C4")
    assert pm.info["framework"] == "torchscript"
    probes = np.random.default_rng(4).standard_normal((4, 1, 28, 28)).astype(np.float32)
    src = _np(model)(probes)
    assert np.abs(_np(pm.module())(probes) - src).max() <= 1e-5 * np.abs(src).max()
    assert max(r["rel_err_max"] for r in equivariance_table(_np(pm.module()), pm.spec,
                                                            probes)) <= 1e-5
    # no modules to swap: the (1, k, k) Conv3d layers are rewritten in the graph, and the
    # discovered conv outputs are regular fields, as from the module-level rewrite
    assert not [n for n in pm.program.graph.nodes if n.op == "call_function"
                and ("conv3d" in str(n.target) or "convolution" in str(n.target))]
    convs = _convs(pm)
    assert len(convs) == 3
    for c in convs:
        assert {pm.spec.representations[r].kind for _, r in pm.spec.tensors[c.name].fields} \
            == {"regular"}
    assert pm.spec.output_is_invariant()


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pool3d_over_stacked_copies_becomes_an_exact_pool2d(pool):
    """A (1, k, k) max/avg pool3d and a relu behind a reshape: rewritten, same outputs."""
    from eqdeploy.adapters.rewrites import activations_before_reshapes
    from eqdeploy.adapters.stacked import pool3d_to_pool2d

    class Net(torch.nn.Module):
        def forward(self, x):
            y = x.unflatten(1, (3, 4)).relu()
            if pool == "max":
                return torch.nn.functional.max_pool3d(y, (1, 3, 3), (1, 2, 2), (0, 1, 1))
            return torch.nn.functional.avg_pool3d(y, (1, 2, 2))

    x = torch.randn(2, 12, 9, 9)
    gm = torch.export.export(Net(), (x,)).module()
    assert pool3d_to_pool2d(gm) == 1 and activations_before_reshapes(gm) == 1
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert not [t for t in targets if "pool3d" in str(t)]
    assert targets.index(torch.ops.aten.relu.default) < targets.index(
        torch.ops.aten.unflatten.int)
    assert torch.equal(gm(x), Net()(x))


def test_functional_conv3d_over_stacked_copies_becomes_conv2d():
    """``F.conv3d`` with a (1, k, k) kernel (no module to swap): the graph-level rewrite."""
    from eqdeploy.adapters.stacked import stacked_conv3d_to_grouped

    w, b = torch.randn(5, 3, 1, 3, 3), torch.randn(5)

    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.conv3d(x, w, b, padding=(0, 1, 1))

    x = torch.randn(2, 3, 4, 9, 9)
    gm = torch.export.export(Net(), (x,)).module()
    assert len(stacked_conv3d_to_grouped(gm)) == 1
    targets = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"]
    assert "aten.conv2d.default" in targets and not [t for t in targets if "conv3d" in t]
    assert (gm(x) - Net()(x)).abs().max() <= 1e-5


def test_trivial_group_gives_every_tensor_its_channels():
    """``--group C1`` (a conventional CNN beside equivariant ones, as the real-data tables
    convert it): no generator moves anything, every tensor keeps its own channels."""
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 3)).eval()
    pm = discover_plain(model, torch.zeros(1, 1, 9, 9), "C1")
    assert pm.spec.group.name == "C1"
    convs = [n.name for n in pm.program.graph.nodes if n.target == torch.ops.aten.conv2d.default]
    assert pm.spec.tensors[convs[0]].channels == 6 and pm.spec.tensors[convs[0]].spatial
    assert pm.spec.output.channels == 3 and not pm.spec.output.spatial
