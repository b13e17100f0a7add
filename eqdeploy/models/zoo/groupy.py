"""P4 and P4M group CNNs written the way GrouPy's PyTorch ports write them.

Follows the layer API of tscohen/GrouPy (``P4ConvZ2``, ``P4ConvP4``, ``P4MConvZ2``,
``P4MConvP4M``, ``plane_group_spatial_max_pooling``) as its PyTorch ports (e.g.
adambielski/GrouPy) implement it; our own code, from the definition
``F[o, g, c, h] = g . W[o, c, g^-1 h]``. Patterns it reproduces:

- a 5-D weight ``(out, in, in_stabilizer, k, k)`` and a numpy index table built once in
  ``__init__``; every forward gathers the filter bank by advanced indexing
  (``w[:, :, i0, i1, i2]``), permutes and views it to ``(out*G, in*G_in, k, k)``;
- the input viewed to 4-D, ``F.conv2d``, the output viewed to 5-D ``(b, out, G, h, w)``
  and the bias added after that reshape: ``y + bias.view(1, out, 1, 1, 1)``;
- ``nn.BatchNorm3d`` on the 5-D maps (statistics shared by the G copies of a field);
- spatial pooling that views to 4-D, pools and views back to 5-D;
- group pooling as ``x.view(b, c, g, h, w).max(dim=2)[0]`` (``p4cnn``) and as
  ``x, _ = torch.max(x, 2)`` (``p4mcnn``), each a tuple op followed by ``getitem``;
- ``p4mcnn`` ends with ``nn.AdaptiveMaxPool2d(1)``.

Plain PyTorch: convert with ``--group C4`` / ``--group D4`` (layouts discovered).
Input 1x29x29 (both stride-2 pools see odd sizes: 29 -> 15 -> 8).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

SIZE = 29


def _p4_elements() -> list[tuple[int, int]]:
    return [(0, r) for r in range(4)]


def _p4m_elements() -> list[tuple[int, int]]:
    return [(m, r) for m in range(2) for r in range(4)]


def _compose(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    """(m, r): mirror m then rotate r; (m1, r1)(m2, r2) = (m1 ^ m2, r1 + (-1)^m1 r2)."""
    return a[0] ^ b[0], (a[1] + (-b[1] if a[0] else b[1])) % 4


def _inverse(a: tuple[int, int]) -> tuple[int, int]:
    return a if a[0] else (0, (-a[1]) % 4)


def _spatial(grid: np.ndarray, g: tuple[int, int]) -> np.ndarray:
    """The pixel action of ``g`` on a (k, k) array: mirror (last axis), then rotate."""
    return np.rot90(grid[:, ::-1] if g[0] else grid, g[1])


def make_indices(elements_out: list[tuple[int, int]], elements_in: list[tuple[int, int]],
                 ksize: int) -> np.ndarray:
    """Index table ``(G_out, G_in, k, k, 3)``: for output element g and input stabilizer
    index h, where ``g . W`` reads ``W[:, :, g^-1 h, u, v]``."""
    u, v = np.meshgrid(np.arange(ksize), np.arange(ksize), indexing="ij")
    table = np.zeros((len(elements_out), len(elements_in), ksize, ksize, 3), dtype=np.int64)
    for i, g in enumerate(elements_out):
        su, sv = _spatial(u, g), _spatial(v, g)
        for j, h in enumerate(elements_in):
            source = _compose(_inverse(g), h) if len(elements_in) > 1 else h
            table[i, j, ..., 0] = elements_in.index(source)
            table[i, j, ..., 1] = su
            table[i, j, ..., 2] = sv
    return table


def trans_filter(w: torch.Tensor, inds: np.ndarray) -> torch.Tensor:
    """The filter bank ``(out, G_out, in, G_in, k, k)`` gathered from ``w`` by ``inds``."""
    flat = inds.reshape(-1, 3)
    gathered = w[:, :, flat[:, 0].tolist(), flat[:, 1].tolist(), flat[:, 2].tolist()]
    gathered = gathered.view(w.size(0), w.size(1), *inds.shape[:4])
    return gathered.permute(0, 2, 1, 3, 4, 5).contiguous()


class SplitGConv2D(nn.Module):
    """Group convolution by filter-bank gathering; 4-D or 5-D input, 5-D output."""

    input_stabilizer_size = 1
    output_stabilizer_size = 4

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 stride: int = 1, padding: int = 0, bias: bool = True) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.ksize, self.stride, self.padding = kernel_size, stride, padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels,
                                               self.input_stabilizer_size, kernel_size,
                                               kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()
        self.inds = self.make_transformation_indices()

    def reset_parameters(self) -> None:
        stdv = 1.0 / math.sqrt(self.in_channels * self.ksize * self.ksize)
        self.weight.data.uniform_(-stdv, stdv)
        if self.bias is not None:
            self.bias.data.uniform_(-stdv, stdv)

    def make_transformation_indices(self) -> np.ndarray:
        raise NotImplementedError

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - GrouPy's name
        tw = trans_filter(self.weight, self.inds)
        tw = tw.view(self.out_channels * self.output_stabilizer_size,
                     self.in_channels * self.input_stabilizer_size, self.ksize, self.ksize)
        input_shape = input.size()
        input = input.view(input_shape[0], self.in_channels * self.input_stabilizer_size,
                           input_shape[-2], input_shape[-1])
        y = F.conv2d(input, weight=tw, bias=None, stride=self.stride, padding=self.padding)
        batch_size, _, ny_out, nx_out = y.size()
        y = y.view(batch_size, self.out_channels, self.output_stabilizer_size, ny_out, nx_out)
        if self.bias is not None:
            bias = self.bias.view(1, self.out_channels, 1, 1, 1)
            y = y + bias
        return y


class P4ConvZ2(SplitGConv2D):
    input_stabilizer_size, output_stabilizer_size = 1, 4

    def make_transformation_indices(self) -> np.ndarray:
        return make_indices(_p4_elements(), [(0, 0)], self.ksize)


class P4ConvP4(SplitGConv2D):
    input_stabilizer_size, output_stabilizer_size = 4, 4

    def make_transformation_indices(self) -> np.ndarray:
        return make_indices(_p4_elements(), _p4_elements(), self.ksize)


class P4MConvZ2(SplitGConv2D):
    input_stabilizer_size, output_stabilizer_size = 1, 8

    def make_transformation_indices(self) -> np.ndarray:
        return make_indices(_p4m_elements(), [(0, 0)], self.ksize)


class P4MConvP4M(SplitGConv2D):
    input_stabilizer_size, output_stabilizer_size = 8, 8

    def make_transformation_indices(self) -> np.ndarray:
        return make_indices(_p4m_elements(), _p4m_elements(), self.ksize)


def plane_group_spatial_max_pooling(x: torch.Tensor, ksize: int, stride: int | None = None,
                                    pad: int = 0) -> torch.Tensor:
    """Max pooling of every plane of a 5-D group feature map."""
    xs = x.size()
    x = x.view(xs[0], xs[1] * xs[2], xs[3], xs[4])
    x = F.max_pool2d(input=x, kernel_size=ksize, stride=stride, padding=pad)
    return x.view(xs[0], xs[1], xs[2], x.size()[2], x.size()[3])


class P4CNN(nn.Module):
    """Four P4 convs with BatchNorm3d, two spatial pools, ``view(...).max(dim=2)[0]`` group
    pooling, global average and a linear classifier."""

    def __init__(self, n_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv1 = P4ConvZ2(1, width, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = P4ConvP4(width, width, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = P4ConvP4(width, 2 * width, kernel_size=3, padding=1)
        self.bn3 = nn.BatchNorm3d(2 * width)
        self.conv4 = P4ConvP4(2 * width, 2 * width, kernel_size=3, padding=1)
        self.bn4 = nn.BatchNorm3d(2 * width)
        self.fc = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = plane_group_spatial_max_pooling(x, 3, 2, pad=1)
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.relu(self.bn4(self.conv4(x)))
        x = plane_group_spatial_max_pooling(x, 3, 2, pad=1)
        b, c, g, h, w = x.size()
        x = x.view(b, c, g, h, w).max(dim=2)[0]
        x = F.avg_pool2d(x, x.size()[2:])
        return self.fc(x.view(b, -1))


class P4MCNN(nn.Module):
    """Three P4M convs with BatchNorm3d, one spatial pool, ``torch.max(x, 2)`` group
    pooling, ``nn.AdaptiveMaxPool2d(1)`` and a linear classifier."""

    def __init__(self, n_classes: int = 10, width: int = 4) -> None:
        super().__init__()
        self.conv1 = P4MConvZ2(1, width, kernel_size=5, padding=2)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = P4MConvP4M(width, 2 * width, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm3d(2 * width)
        self.conv3 = P4MConvP4M(2 * width, 2 * width, kernel_size=3, padding=1)
        self.bn3 = nn.BatchNorm3d(2 * width)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = plane_group_spatial_max_pooling(x, 3, 2, pad=1)
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x, _ = torch.max(x, 2)
        x = self.pool(x)
        return self.fc(torch.flatten(x, 1))


def p4cnn() -> P4CNN:
    """GrouPy-style P4CNN (seeded random weights)."""
    torch.manual_seed(41)
    return P4CNN()


def p4mcnn() -> P4MCNN:
    """GrouPy-style P4M CNN (seeded random weights)."""
    torch.manual_seed(42)
    return P4MCNN()
