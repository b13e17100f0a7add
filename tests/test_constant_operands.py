"""Constant operands that are not conv/linear weights (e2cnn's MaskModule ``x * mask``):
one int8 per-tensor grid over the constant's range, used by the simulation as by targets."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from eqdeploy.adapters.plain import discover_plain
from eqdeploy.dfq.fold import fold_batchnorm
from eqdeploy.quantize.params import compute_qparams
from eqdeploy.quantize.simulate import simulate_with


class _Masked(nn.Module):
    def __init__(self, size: int = 9) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        with torch.no_grad():  # rot90-symmetric filters: every channel invariant
            w = self.conv.weight
            w.copy_(sum(torch.rot90(w, k, (2, 3)) for k in range(4)) / 4)
        c = (size - 1) / 2
        yy, xx = np.mgrid[:size, :size]
        r = np.sqrt((yy - c) ** 2 + (xx - c) ** 2)
        mask = np.exp(-np.maximum(r - c * 0.6, 0) ** 2)  # 1 inside, soft edge: rot-invariant
        self.register_buffer("mask", torch.tensor(mask, dtype=torch.float32)[None, None])
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x)) * self.mask
        return self.fc(y.mean((2, 3)))


def test_mask_gets_its_own_grid_and_the_simulation_rounds_it():
    model = _Masked().eval()
    pm = fold_batchnorm(discover_plain(model, torch.randn(1, 1, 9, 9), "C4"))[0]
    x = np.random.default_rng(0).standard_normal((16, 1, 9, 9)).astype(np.float32)
    qp = compute_qparams(pm, calibration=x)
    (op, (scale, zp)), = qp.constants.items()
    mask = model.mask.double()
    assert np.isclose(scale, float(mask.max() - 0.0) / 255) and zp == -128  # [0, max] and 0
    sim = simulate_with(pm, qp)
    stored = [b for n, b in sim.gm.named_buffers() if n.startswith("_eqdeploy_int8_const_")]
    assert len(stored) == 1
    steps = stored[0].double() / scale
    assert torch.allclose(steps, steps.round(), atol=1e-6)  # on the int8 grid
    assert not torch.equal(stored[0].double(), mask)  # rounded, not the float mask
    assert float((stored[0].double() - mask).abs().max()) <= scale / 2 + 1e-7
    rot = np.rot90(x, 1, (2, 3)).copy()
    assert np.array_equal(sim.numpy(x), sim.numpy(rot))  # invariant, bit for bit
