"""Loading gaps of issue 11: e2cnn flip-group models from files, and the modules of the zoo.

The e2cnn numpy-2 patches must be in place before anything touches e2cnn: unpickling a
whole flip-group model, an ``--arch`` factory building one, framework detection walking its
modules (which hashes e2cnn's basis expansions). The end-to-end checks run the CLI in a
fresh process, where nothing has patched e2cnn yet, on a D4 wide ResNet saved as a dill
pickle and as a state dict. The adapter checks compare each newly swapped module
(``MaskModule``, ``RestrictionModule``, ``DisentangleModule``) with the library's own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from eqdeploy.errors import EqdeployError
from eqdeploy.groups import Group
from eqdeploy.models.zoo import ZOO, build
from eqdeploy.models.zoo.save import save_as_user

ROOT = Path(__file__).resolve().parents[1]


def _fresh_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def wrn_d4():
    return build("wrn_d4")


def test_patch_waits_for_e2cnn_and_applies_on_its_import(tmp_path):
    code = ("import sys\n"
            "from eqdeploy.adapters import e2cnn_compat\n"
            "e2cnn_compat.install_on_import()\n"
            "assert 'e2cnn' not in sys.modules\n"
            "import e2cnn.kernels.utils as u\n"
            "print(getattr(u, '_eqdeploy_patched', False))\n")
    proc = _fresh_python(["-c", code], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "True"


@pytest.mark.parametrize(
    "how", [pytest.param("dill", marks=pytest.mark.slow), "state_dict"]  # one in quick runs
)
def test_d4_e2cnn_model_loads_and_converts_fp32_in_a_fresh_process(how, wrn_d4, tmp_path):
    """Issue 11 item 4: both failed with ``'numpy.ndarray' object has no attribute
    'tostring'`` in e2cnn's basis ``__hash__``."""
    entry = ZOO["wrn_d4"]
    path, args = save_as_user(entry, wrn_d4, tmp_path, how=how)
    assert ("--arch" in args) == (how == "state_dict")
    proc = _fresh_python(["-m", "eqdeploy.cli", "convert", str(path), *args, "--target", "onnx",
                          "-o", str(tmp_path / "out")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "out" / "wrn_d4.report.json").read_text())
    assert report["model"]["framework"] == "e2cnn" and report["model"]["group"] == "D4"
    # a dill pickle of this model also unpickles with plain pickle (dill's reconstructors
    # are importable), so the loader names the first pickler that read it
    formats = ("state_dict+arch",) if how == "state_dict" else ("pickle", "dill")
    assert report["model"]["format"] in formats
    onnx = next(v for v in report["verification"] if v.get("artifact") == "wrn_d4.onnx")
    assert onnx["rel_err_vs_source"] <= 1e-4
    assert [r["element"] for r in onnx["equivariance"]] == \
        [e.name for e in Group("D4").exact_elements]
    assert max(r["rel_err_max"] for r in onnx["equivariance"]) <= 1e-4



def test_mask_module_becomes_a_fixed_multiply():
    from e2cnn import gspaces
    from e2cnn import nn as enn

    from eqdeploy.adapters.geometric import FixedMask, plain_equivalent

    gs = gspaces.Rot2dOnR2(8)
    ft = enn.FieldType(gs, 3 * [gs.trivial_repr])
    mask = enn.MaskModule(ft, 29, margin=1)
    plain = plain_equivalent(mask, "block1.0")
    assert isinstance(plain, FixedMask)
    x = torch.randn(2, 3, 29, 29)
    assert torch.equal(plain(x), mask(enn.GeometricTensor(x, ft)).tensor)
    m = plain.mask[0, 0].numpy()
    for k in (1, 2, 3):  # the mask is exactly symmetric: INT8 rounding keeps it so
        assert np.array_equal(np.rot90(m, k), m)
    assert np.array_equal(m[:, ::-1], m) and m.min() < 0.01 and m.max() == 1.0


def _disentangle_case():
    from e2cnn import gspaces
    from e2cnn import nn as enn
    from e2cnn.group import change_basis, directsum

    gs = gspaces.FlipRot2dOnR2(4)
    g = gs.fibergroup
    base = directsum([g.irrep(1, 1), g.irrep(0, 0), g.irrep(1, 0)])
    permuted = change_basis(base, np.eye(4)[[3, 0, 2, 1]], "permuted")
    ft = enn.FieldType(gs, [gs.regular_repr, permuted, gs.regular_repr, permuted])
    return ft, enn.DisentangleModule(ft)


def test_disentangle_module_with_a_permutation_basis_becomes_a_channel_permutation():
    from e2cnn import nn as enn

    from eqdeploy.adapters.geometric import ChannelPermutation, plain_equivalent

    ft, module = _disentangle_case()
    plain = plain_equivalent(module, "restrict1.1")
    assert isinstance(plain, ChannelPermutation)
    assert plain.index.tolist() != list(range(ft.size))
    x = torch.randn(2, ft.size, 5, 5)
    assert torch.equal(plain(x), module(enn.GeometricTensor(x, ft)).tensor)


def test_disentangle_module_that_mixes_channels_is_a_one_line_error():
    from eqdeploy.adapters.geometric import plain_equivalent

    ft, module = _disentangle_case()
    name = next(n for n, _ in module.named_buffers() if n.startswith("change_of_basis_perm"))
    rot = torch.tensor([[0.6, -0.8], [0.8, 0.6]])
    cob = getattr(module, name).clone()
    cob[:2, :2] = rot  # as a change of basis that is not a permutation would be
    setattr(module, name, cob)
    with pytest.raises(EqdeployError, match=r"DisentangleModule at 'restrict1\.1'.*not a "
                                            r"permutation.*drop the DisentangleModule") as e:
        plain_equivalent(module, "restrict1.1")
    assert "\n" not in str(e.value)


def test_restricted_wide_resnet_converts_as_its_subgroup():
    """e2wrn D8 -> D4: the RestrictionModule and DisentangleModule become identities, the
    model's group is D4, and the D8 fields are read through D4 (``D8:regular``: two orbits
    of 8 channels), consistent with e2cnn's own restricted representation."""
    from eqdeploy.export import export_equivariant

    model = build("wrn_d8_d4")
    plain = export_equivariant(model, torch.zeros(1, 3, 33, 33))
    spec = plain.spec
    assert spec.group.name == "D4"
    assert {"RestrictionModule", "DisentangleModule"} <= \
        set(plain.info["swapped_modules"].values())
    d8 = spec.representations["D8:regular"]
    assert d8.size == 16 and d8.kind == "other" and d8.perms is not None
    assert spec.representations["regular"].size == 8
    assert spec.representations["regular"].kind == "regular"
    # the D8 regular representation read at D4's (f, k) is D8's at (f, 2k)
    rep = next(iter(model.layer1.children())).conv1.in_type.representations[0]
    for e in Group("D4").elements:
        m = np.asarray(rep((e.flip, 2 * e.rotation)))
        assert tuple(m.round().argmax(1)) == d8.perms[e.name]
    x = torch.randn(2, 3, 33, 33)
    with torch.no_grad():
        assert torch.allclose(plain(x), model(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("pool", ["PointwiseAvgPoolAntialiased", "PointwiseMaxPoolAntialiased"])
def test_antialiased_pools_equal_the_library_modules(pool):
    from e2cnn import gspaces
    from e2cnn import nn as enn

    from eqdeploy.adapters.geometric import plain_equivalent

    gs = gspaces.Rot2dOnR2(8)
    ft = enn.FieldType(gs, 2 * [gs.regular_repr])
    x = torch.randn(2, ft.size, 13, 13)
    for kw in ({"sigma": 0.66, "stride": 2}, {"sigma": 0.66, "stride": 1, "padding": 0}):
        if pool == "PointwiseMaxPoolAntialiased":
            kw = {**kw, "kernel_size": 3}
        module = getattr(enn, pool)(ft, **kw).eval()
        with torch.no_grad():
            want = module(enn.GeometricTensor(x, ft)).tensor
            got = plain_equivalent(module, "pool")(x)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6, rtol=0), kw


def test_reshuffle_module_becomes_a_channel_permutation():
    from e2cnn import gspaces
    from e2cnn import nn as enn

    from eqdeploy.adapters.geometric import ChannelPermutation, plain_equivalent

    gs = gspaces.Rot2dOnR2(4)
    ft = enn.FieldType(gs, [gs.regular_repr, gs.trivial_repr, gs.regular_repr])
    module = enn.ReshuffleModule(ft, [2, 0, 1])
    plain = plain_equivalent(module, "shuffle")
    assert isinstance(plain, ChannelPermutation)
    x = torch.randn(2, ft.size, 5, 5)
    assert torch.equal(plain(x), module(enn.GeometricTensor(x, ft)).tensor)
