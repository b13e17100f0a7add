"""A kernel-rotating C4 CNN written the way tutorials write it (our own code).

Each layer correlates its input with its kernel rotated by 0, 90, 180 and 270 degrees
(``torch.rot90`` of the weight) and stacks the four responses on a new *last* axis:
``(N, C, H, W, 4)``. Under ``rot90(x)`` every response map rotates and the stack shifts
cyclically, so a max over the last axis ("orientation pooling") gives rotation-equivariant
maps with plain channels. ``KernelRotCNN``:

- ``conv1``, ``conv2``: rotated kernels, orientation max, ReLU, 2x2 max pooling;
- ``conv3``: rotated kernels, responses kept on the last axis, ReLU;
- ``mix``: a ``Conv3d`` with a ``(1, 1, 1)`` kernel shared by the four rotations (a 1x1
  conv per rotation, which commutes with rotating the maps);
- a global spatial mean (``keepdim``), ``squeeze()`` -> ``(N, C, 4)``, max over the last
  axis -> invariant features, a linear head.

``bias_after_reshape=True`` writes ``conv3`` the other common way: one conv2d with the
four rotated kernels concatenated (no bias), viewed as ``(N, C, 4, H, W)`` and given its
bias after the reshape, ``y + bias.view(1, C, 1, 1, 1)``; the rotation axis is then axis 2.

Exact input size: 28 (the 2x2 pools see 28 -> 14 -> 7).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

ROTATIONS = 4
EXACT_SIZE = 28


def rotated_responses(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``(N, O, H, W, 4)``: ``x`` correlated with ``conv``'s kernel rotated k times."""
    return torch.stack([F.conv2d(x, torch.rot90(conv.weight, k, (2, 3)), conv.bias,
                                 padding=conv.padding) for k in range(ROTATIONS)], dim=-1)


class KernelRotCNN(nn.Module):
    """Rotated-kernel layers, rotation stack on the last axis, squeeze, max over it."""

    def __init__(self, width: int = 8, classes: int = 10, bias_after_reshape: bool = False
                 ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 5, padding=2)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1,
                               bias=not bias_after_reshape)
        self.bias3 = nn.Parameter(0.1 * torch.randn(2 * width)) if bias_after_reshape \
            else None
        self.mix = nn.Conv3d(2 * width, 4 * width, 1)
        self.head = nn.Linear(4 * width, classes)

    def _conv3(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias3 is None:
            return rotated_responses(x, self.conv3)  # (N, C, H, W, 4)
        w = torch.stack([torch.rot90(self.conv3.weight, k, (2, 3)) for k in range(ROTATIONS)],
                        dim=1)  # (O, 4, C, k, k)
        y = F.conv2d(x, w.flatten(0, 1), padding=1)
        n, _, h, w_ = y.shape
        y = y.view(n, -1, ROTATIONS, h, w_)
        return y + self.bias3.view(1, -1, 1, 1, 1)  # (N, C, 4, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(rotated_responses(x, self.conv1).amax(dim=-1)), 2)
        x = F.max_pool2d(F.relu(rotated_responses(x, self.conv2).amax(dim=-1)), 2)
        y = F.relu(self._conv3(x))
        y = F.relu(self.mix(y))
        spatial = (2, 3) if self.bias3 is None else (3, 4)
        y = y.mean(dim=spatial, keepdim=True).squeeze()  # (N, C, 4)
        return self.head(y.max(dim=-1)[0])


def kernel_rot_cnn(seed: int = 0, bias_after_reshape: bool = False) -> KernelRotCNN:
    torch.manual_seed(seed)
    return KernelRotCNN(bias_after_reshape=bias_after_reshape).eval()
