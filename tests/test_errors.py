"""Bad input: one line naming the cause and the fix, non-zero exit, nothing left on disk."""

from __future__ import annotations

import dill
import pytest
import torch
from click.testing import CliRunner

from eqdeploy.adapters import e2cnn_compat
from eqdeploy.cli import main
from eqdeploy.errors import EqdeployError
from eqdeploy.export import export_equivariant

e2cnn_compat.install()
from e2cnn import gspaces  # noqa: E402
from e2cnn import nn as enn  # noqa: E402


class Wrap(torch.nn.Module):
    def __init__(self, in_type, body, head=None):
        super().__init__()
        self.in_type, self.body, self.head = in_type, body, head

    def forward(self, x):
        y = self.body(enn.GeometricTensor(x, self.in_type)).tensor
        return self.head(y) if self.head is not None else y.mean((2, 3))


def _types(n=4, fields=2):
    gs = gspaces.Rot2dOnR2(n)
    return gs, enn.FieldType(gs, [gs.trivial_repr]), enn.FieldType(gs, fields * [gs.regular_repr])


def _unsupported_models():
    gs, ti, tr = _types()
    irr = enn.FieldType(gs, [gs.irrep(1)] * 2)
    yield "NormNonLinearity", "body.1", Wrap(ti, enn.SequentialModule(
        enn.R2Conv(ti, irr, 3), enn.NormNonLinearity(irr)))
    yield "NormBatchNorm", "body.1", Wrap(ti, enn.SequentialModule(
        enn.R2Conv(ti, irr, 3), enn.NormBatchNorm(irr)))
    yield "InnerBatchNorm", "body.1", Wrap(ti, enn.SequentialModule(
        enn.R2Conv(ti, tr, 3), enn.InnerBatchNorm(tr, track_running_stats=False)))


@pytest.mark.parametrize("cls,path,model", list(_unsupported_models()),
                         ids=lambda v: v if isinstance(v, str) else "")
def test_unsupported_module_named_with_path_and_fix(cls, path, model):
    with pytest.raises(EqdeployError) as err:
        export_equivariant(model.eval(), torch.zeros(1, 1, 9, 9))
    msg = str(err.value)
    assert cls in msg and f"'{path}'" in msg and " -- " in msg and "\n" not in msg


def _convert(args):
    return CliRunner().invoke(main, ["convert", *args])


def test_misaligned_input_size_names_layer_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    res = _convert(["examples/c4_cnn.pt", "--arch", "eqdeploy.models.reference:c4_cnn",
                    "--input-shape", "1,1,32,32", "-o", str(out)])
    assert res.exit_code == 2  # bad usage: the input size does not fit the model
    assert "misaligned at layer features.3" in res.output and "29, 33" in res.output
    assert not out.exists() or not list(out.iterdir())


def test_non_equivariant_model_is_refused(tmp_path):
    _, ti, tr = _types()
    # a plain conv head on group channels breaks invariance
    model = Wrap(ti, enn.SequentialModule(enn.R2Conv(ti, tr, 3, padding=1), enn.ReLU(tr)),
                 torch.nn.Sequential(torch.nn.Conv2d(tr.size, 4, 3), torch.nn.Flatten(),
                                     torch.nn.LazyLinear(3)))
    with torch.no_grad():
        model(torch.zeros(1, 1, 9, 9))
    path = tmp_path / "broken.pt"
    torch.save(model.eval(), path, pickle_module=dill)
    out = tmp_path / "out"
    res = _convert([str(path), "--input-shape", "1,1,9,9", "-o", str(out)])
    assert res.exit_code == 1, res.output
    assert "not equivariant" in res.output
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.parametrize("args,match", [
    (["nope.pt"], "does not exist"),
    (["examples/c4_cnn.pt"], "state-dict checkpoint"),
    (["examples/c4_cnn.pt", "--arch", "eqdeploy.models.reference:c4_cnn", "--group", "D4"],
     "does not match the model's group C4"),
    (["examples/c4_cnn.pt", "--arch", "eqdeploy.models.reference:c4_cnn",
      "--input-shape", "1,3,29,29"], "fails on an input of shape (1, 3, 29, 29)"),
])
def test_cli_errors_are_one_line(args, match, tmp_path):
    res = _convert([*args, "-o", str(tmp_path / "o")])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and match in lines[0], res.output
