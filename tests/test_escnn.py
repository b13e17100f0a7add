"""escnn models convert in the numpy-2 environment (lie_learn rebuilt by tools/install_escnn.sh)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from eqdeploy.adapters.field_types import framework_element, group_of, layout_of
from eqdeploy.export import export_equivariant
from eqdeploy.harness.equivariance import equivariance_table
from eqdeploy.spec import SymmetrySpec

with warnings.catch_warnings():  # escnn warns that the optional py3nj is missing
    warnings.simplefilter("ignore")
    from escnn import gspaces  # installed by tools/install_escnn.sh (tools/bootstrap.sh)
    from escnn import nn as enn


class Net(torch.nn.Module):
    def __init__(self, gs):
        super().__init__()
        self.inp = enn.FieldType(gs, [gs.trivial_repr])
        f = enn.FieldType(gs, 4 * [gs.regular_repr])
        self.body = enn.SequentialModule(
            enn.R2Conv(self.inp, f, 3, padding=1), enn.InnerBatchNorm(f), enn.ReLU(f),
            enn.PointwiseMaxPool2D(f, 3, 2, padding=1, ceil_mode=True),
            enn.R2Conv(f, f, 3, padding=1, padding_mode="circular"), enn.InnerBatchNorm(f),
            enn.ReLU(f), enn.GroupPooling(f))
        self.head = torch.nn.Linear(4, 5)

    def forward(self, x):
        y = self.body(enn.GeometricTensor(x, self.inp)).tensor
        return self.head(y.mean((2, 3)))


GSPACES = {"C4": lambda: gspaces.rot2dOnR2(4), "D4": lambda: gspaces.flipRot2dOnR2(4),
           "D1": lambda: gspaces.flip2dOnR2(), "C8": lambda: gspaces.rot2dOnR2(8)}


@pytest.mark.parametrize("name", sorted(GSPACES))
def test_escnn_group_and_actions_match_field_type_transform(name):
    gs = GSPACES[name]()
    group = group_of(gs)
    assert group.name == name
    ft = enn.FieldType(gs, [gs.regular_repr, gs.trivial_repr])
    reps: dict = {}
    lay = layout_of(ft, group, reps)
    spec = SymmetrySpec(group, reps, lay, lay)
    x = torch.randn(2, ft.size, 7, 7)
    for el in group.elements:
        if el.exact:
            ref = enn.GeometricTensor(x, ft).transform(framework_element(gs, el)).tensor
            assert np.allclose(spec.act(x.numpy(), lay, el), ref.numpy(), atol=1e-5), el.name


@pytest.mark.parametrize("name", ["C4", "D4"])
def test_escnn_model_exports_exactly_keeping_padding_mode_and_ceil_mode(name):
    torch.manual_seed(0)
    model = Net(GSPACES[name]()).eval()
    plain = export_equivariant(model, torch.zeros(1, 1, 15, 15))
    x = np.random.default_rng(0).standard_normal((4, 1, 15, 15)).astype(np.float32)
    with torch.no_grad():
        src = model(torch.from_numpy(x)).numpy()
        out = plain.module()(torch.from_numpy(x)).numpy()
    assert np.abs(out - src).max() <= 1e-5 * np.abs(src).max()
    rows = equivariance_table(lambda a: plain.module()(torch.from_numpy(a)).detach().numpy(),
                              plain.spec, x)
    assert max(r["rel_err_max"] for r in rows) <= 1e-5
    code = plain.program.graph_module.code
    assert "circular" in code or "aten.pad" in code  # padding_mode survived the export
    pools = [n for n in plain.program.graph.nodes if "max_pool2d" in str(n.target)]
    assert pools and pools[0].args[-1] is True  # ceil_mode survived
    assert plain.info["framework"] == "escnn"


def test_escnn_model_converts_to_tflite(tmp_path):
    import dill

    from eqdeploy.convert import ConvertOptions, convert

    torch.manual_seed(1)
    model = Net(GSPACES["D4"]()).eval()
    path = tmp_path / "escnn_d4.pt"
    torch.save(model, path, pickle_module=dill)
    report = convert(path, ConvertOptions(outdir=tmp_path / "out", input_shape=(1, 1, 15, 15)))
    lite = next(v for v in report["verification"] if v["runtime"] == "ai-edge-litert")
    assert report["model"]["framework"] == "escnn" and report["model"]["group"] == "D4"
    assert lite["rel_err_vs_source"] <= 1e-4
    assert len(lite["equivariance"]) == 7
    assert max(r["rel_err_max"] for r in lite["equivariance"]) <= 1e-5
