"""Fail-fast lowering check: the converters' own registries decide, and a graph of ops in
``KNOWN_LOWERABLE`` skips the decompositions only because both converters lower every one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from eqdeploy.errors import EqdeployError
from eqdeploy.normalize.support import (
    KNOWN_LOWERABLE,
    _call_nodes,
    check_support,
    onnx_unlowerable,
    tflite_unlowerable,
)


class EveryKnownOp(nn.Module):
    """One node per op of ``KNOWN_LOWERABLE``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        y = F.relu(y) + F.hardtanh(y, 0.0, 6.0) - torch.sigmoid(y) * torch.tanh(y) / 2.0
        y = torch.cat([F.max_pool2d(y, 2), F.avg_pool2d(y, 2)], 1)
        s = torch.stack([y, y], -1).amax(-1)
        s = s.permute(0, 1, 3, 2).reshape(1, 8, 16).view(1, 8, 4, 4).flatten(1)
        s = s.unsqueeze(-1).squeeze(-1)[:, :32].clone()
        s = s.view(1, 8, 2, 2).mean([2, 3])
        return self.fc(s[:, :4])


class GlobalMaxPool(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_max_pool2d(F.relu(x), 1)


def _program(model: nn.Module) -> torch.export.ExportedProgram:
    return torch.export.export(model.eval(), (torch.randn(1, 2, 8, 8),))


def test_both_converters_lower_every_known_op():
    program = _program(EveryKnownOp())
    assert {n.target for n in _call_nodes(program)} == KNOWN_LOWERABLE
    assert onnx_unlowerable(program) == []
    assert tflite_unlowerable(program) == []
    assert check_support(program, ["onnx", "tflite"]) == {
        "onnx": "ok (known ops)", "tflite": "ok (known ops)"}


def test_an_op_one_converter_cannot_lower_is_named_with_the_other_target():
    program = _program(GlobalMaxPool())
    assert check_support(program, ["onnx"]) == {"onnx": "ok"}  # asked the registry
    with pytest.raises(EqdeployError) as e:
        check_support(program, ["onnx", "tflite"])
    msg = str(e.value)
    assert "tflite converter cannot lower aten.adaptive_max_pool2d" in msg
    assert "--target onnx can lower it" in msg


def test_the_check_leaves_the_program_as_it_was():
    """litert-torch's decompositions retarget the ``view`` nodes of the program given."""
    program = _program(EveryKnownOp())
    before = [(n.name, n.target) for n in program.graph.nodes]
    tflite_unlowerable(program)
    onnx_unlowerable(program)
    assert [(n.name, n.target) for n in program.graph.nodes] == before


@torch.library.custom_op("eqdeploy_test::wobble", mutates_args=())
def wobble(x: torch.Tensor) -> torch.Tensor:
    """An op neither converter knows (a user's custom kernel)."""
    return x * torch.sigmoid(x).round()


@wobble.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class CustomOp(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return wobble(F.relu(x))


def test_a_custom_op_stops_with_the_node_and_the_source_line():
    with pytest.raises(EqdeployError) as e:
        check_support(_program(CustomOp()), ["onnx", "tflite"])
    msg = str(e.value)
    assert "converter cannot lower eqdeploy_test.wobble" in msg
    assert "test_lowering_check.py:" in msg and "wobble(F.relu(x))" in msg
    assert "--target" not in msg  # neither converter can: no other target to suggest
    assert "\n" not in msg
