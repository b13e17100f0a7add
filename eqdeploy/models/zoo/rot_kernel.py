"""A "rotate the kernel" CNN written the way blog and course tutorials write it.

Follows the tutorial pattern of a ``RotConv2d`` layer (one learned filter, applied in its
four ``torch.rot90`` rotations, responses stacked and max-pooled over orientations), as in
the many public rotation-equivariant CNN tutorials. Patterns it reproduces:

- ``torch.stack([F.conv2d(x, torch.rot90(w, k, dims=[-2, -1])) ...], dim=-1)``: the
  rotation stack on the *last* axis, ``(b, c, h, w, 4)``;
- the bias added after that 5-D stack: ``y + self.bias.view(1, -1, 1, 1, 1)``;
- orientation pooling ``y.max(dim=-1).values`` (a tuple op) in the hidden layers, per-channel
  ``nn.BatchNorm2d`` on the invariant maps, ``F.max_pool2d``;
- the last layer keeps its stack: global mean over H, W with ``keepdim=True``, then
  ``squeeze(2).squeeze(2)`` leaves ``(b, c, 4)`` with the rotations on the last axis, and an
  ``amax(-1)`` over them before the ``nn.Linear`` classifier.

Plain PyTorch: convert with ``--group C4``. Input 1x29x29 (pools 3/2/1: 29 -> 15 -> 8).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

SIZE = 29


class RotConv2d(nn.Module):
    """One filter bank in its four 90-degree rotations; output ``(b, out, h, w, 4)``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 padding: int = 1) -> None:
        super().__init__()
        self.padding = padding
        bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.base_weight = nn.Parameter(
            torch.empty(out_channels, in_channels, kernel_size, kernel_size).uniform_(-bound,
                                                                                      bound))
        self.bias = nn.Parameter(torch.empty(out_channels).uniform_(-bound, bound))

    @staticmethod
    def rotate_kernel(w: torch.Tensor, k: int) -> torch.Tensor:
        return torch.rot90(w, k, dims=[-2, -1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [F.conv2d(x, self.rotate_kernel(self.base_weight, k), padding=self.padding)
                 for k in range(4)]
        y = torch.stack(feats, dim=-1)
        return y + self.bias.view(1, -1, 1, 1, 1)


class RotKernelCNN(nn.Module):
    """Three rotated-kernel layers; orientation max-pooling in the first two, the last
    keeps the stack to the global pool and squeezes."""

    def __init__(self, n_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv1 = RotConv2d(1, width, kernel_size=5, padding=2)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = RotConv2d(width, 2 * width, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.conv3 = RotConv2d(2 * width, 2 * width, kernel_size=3, padding=1)
        self.fc = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x).max(dim=-1).values))
        x = F.max_pool2d(x, 3, 2, padding=1)
        x = F.relu(self.bn2(self.conv2(x).max(dim=-1).values))
        x = F.max_pool2d(x, 3, 2, padding=1)
        x = F.relu(self.conv3(x))
        x = x.mean(dim=(2, 3), keepdim=True).squeeze(2).squeeze(2)  # (b, c, 4)
        return self.fc(x.amax(-1))


def rot_kernel_cnn() -> RotKernelCNN:
    """Kernel-rotating tutorial CNN (seeded random weights)."""
    torch.manual_seed(51)
    return RotKernelCNN()
