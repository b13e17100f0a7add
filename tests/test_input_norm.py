"""Input normalization read from the model when --input-norm is not given."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from eqdeploy.input_norm import from_attributes, from_graph


class _Normalize:  # torchvision.transforms.Normalize's interface, without torchvision
    def __init__(self, mean, std) -> None:
        self.mean, self.std = mean, std


class _SelfNormalizing(nn.Module):
    def __init__(self, mean: float, std: float, divide: bool = True) -> None:
        super().__init__()
        self.register_buffer("mean", torch.full((1, 3, 1, 1), mean))
        self.register_buffer("std", torch.full((1, 3, 1, 1), std))
        self.divide = divide
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        x = x - self.mean
        x = x / self.std if self.divide else x * (1.0 / self.std)
        return self.conv(x)


def _unlifted(model: nn.Module):
    return torch.export.export(model.eval(), (torch.zeros(1, 3, 9, 9),)).module()


def test_attributes_are_read_in_order():
    m = nn.Identity()
    assert from_attributes(m) is None
    m.transform = _Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    (mean, std), where = from_attributes(m)
    assert mean == [0.485, 0.456, 0.406] and std == pytest.approx([0.229, 0.224, 0.225])
    assert "transform" in where
    m.input_mean, m.input_std = torch.tensor([0.5]), torch.tensor([0.25])
    assert from_attributes(m) == (([0.5], [0.25]), "model attributes input_mean/input_std")
    m.input_std = torch.tensor([0.0])  # invalid: falls through to the transform
    assert "transform" in from_attributes(m)[1]


@pytest.mark.parametrize("mean,divide,expect_std", [(0.45, True, 1.0), (0.45, False, 1.0),
                                                    (127.5, True, 1 / 255)])
def test_a_model_that_normalizes_itself_takes_raw_pixels(mean, divide, expect_std):
    (m, s), where = from_graph(_unlifted(_SelfNormalizing(mean, 0.25, divide)))
    assert m == [0.0] and s == [pytest.approx(expect_std)]
    assert where.startswith("graph")


def test_a_plain_conv_implies_nothing():
    assert from_graph(_unlifted(nn.Sequential(nn.Conv2d(3, 4, 3)))) is None


def test_convert_uses_the_model_attributes(tmp_path):
    import dill

    from eqdeploy.convert import ConvertOptions, convert
    from eqdeploy.models.reference import c4_cnn

    model = c4_cnn()
    model.input_mean, model.input_std = [0.1307], [0.3081]
    path = tmp_path / "c4.pt"
    torch.save(model, path, pickle_module=dill)
    report = convert(path, ConvertOptions(targets=["onnx"], outdir=tmp_path / "out",
                                          input_shape=(1, 1, 29, 29), int8=True))
    norm = report["model"]["input_norm"]
    assert norm == {"mean": [0.1307], "std": [0.3081],
                    "from": "model attributes input_mean/input_std"}
    params = report["quantization"]["params"]["activations"]
    lo, hi = params["x"]["range"]  # the input's INT8 range: pixels 0..1, normalized
    assert lo == pytest.approx(-0.1307 / 0.3081) and hi == pytest.approx(0.8693 / 0.3081)
    assert report["probes"]["note"].startswith("seeded uniform-noise pixels, normalized")
    assert np.isfinite(report["verification"][-1]["rel_err_vs_source"])
