"""p4m (D4) group convolutions and a p4m ResNet in plain PyTorch, GrouPy style.

Group elements ``(f, r)`` act on the plane as ``rot90^r(flip_W^f(.))`` (flip along W, then
rotate: ``eqdeploy.groups``' convention), with product ``(f1, r1)(f2, r2) =
(f1 ^ f2, r1 + (-1)^f1 r2 mod 4)``; element ``j = 4 f + r`` in that order (flips outer).

- Lifting (``LiftP4M``): ``out[:, o*8 + j] = x * g_j.W[o]`` (correlation), where ``g.W`` is
  the filter flipped then rotated.
- Group conv (``P4MConv``): ``F[o, g, c, h] = g.W[o, c, g^-1 h]`` (the learned
  ``W[o, c, h]`` has one k x k kernel per input element), gathered by the index table
  ``g^-1 h`` and built each forward, so export constant-folds it.

Under an input transform u, field o's 8 channels move by the left regular action
(channel ``g`` <- ``u^-1 g``) while every map transforms spatially. ``FieldBatchNorm`` shares
statistics over each field's 8 channels. ``P4MResNet``: lifting conv, BN, ReLU, residual
``BasicBlock``s (two 3x3 p4m convs with BN; identity shortcut, or a 1x1 p4m conv + BN when
the width or stride changes), a max over each field's 8 channels (group pooling), global
average and a linear head. Exact input size 29 (the stride-2 block maps 29 -> 15 with
``(n + 2p - k) % 2 == 0``). Written for this project from the definitions (nothing copied).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from eqdeploy.models.plain_groupconv import FieldBatchNorm, _settle

ORDER = 8
ELEMENTS = [(f, r) for f in (0, 1) for r in range(4)]
EXACT_SIZES = {"p4m_resnet": 29}


def _mul(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    return a[0] ^ b[0], (a[1] + (-1) ** a[0] * b[1]) % 4


def _inv(a: tuple[int, int]) -> tuple[int, int]:
    return a if a[0] else (0, (-a[1]) % 4)


def inverse_times_table() -> torch.Tensor:
    """``index[g, h]`` = position of ``g^-1 h`` in ``ELEMENTS``."""
    pos = {e: i for i, e in enumerate(ELEMENTS)}
    return torch.tensor([[pos[_mul(_inv(g), h)] for h in ELEMENTS] for g in ELEMENTS])


def act(w: torch.Tensor, element: tuple[int, int]) -> torch.Tensor:
    """``rot90^r(flip_W^f(w))`` on the last two axes."""
    f, r = element
    return torch.rot90(torch.flip(w, dims=(-1,)) if f else w, r, dims=(-2, -1))


def transformed(w: torch.Tensor) -> torch.Tensor:
    """``(..., k, k)`` -> ``(8, ..., k, k)``: ``w`` under each element."""
    return torch.stack([act(w, e) for e in ELEMENTS])


class LiftP4M(nn.Module):
    """Z2 -> p4m: ``out[:, o*8 + j] = x * g_j.W[o]``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) / (cin * k * k) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.stride, self.padding = stride, padding

    def filter_bank(self) -> torch.Tensor:
        o, c, k, _ = self.weight.shape
        return transformed(self.weight).transpose(0, 1).reshape(o * ORDER, c, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.repeat_interleave(ORDER)
        return F.conv2d(x, self.filter_bank(), bias, self.stride, self.padding)


class P4MConv(nn.Module):
    """p4m -> p4m: ``F[o, g, c, h] = g.W[o, c, g^-1 h]``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0,
                 bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, ORDER, k, k)
                                   / (cin * ORDER * k * k) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.stride, self.padding = stride, padding
        self.register_buffer("index", inverse_times_table(), persistent=False)

    def filter_bank(self) -> torch.Tensor:
        o, c, _, k, _ = self.weight.shape
        gathered = self.weight[:, :, self.index]  # (O, C, 8g, 8h, k, k)
        bank = torch.stack([act(gathered[:, :, g], e) for g, e in enumerate(ELEMENTS)],
                           dim=1)  # (O, 8g, C, 8h, k, k)
        return bank.reshape(o * ORDER, c * ORDER, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.repeat_interleave(ORDER)
        return F.conv2d(x, self.filter_bank(), bias, self.stride, self.padding)


class BasicBlock(nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut(x))`` with p4m convs."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = P4MConv(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = FieldBatchNorm(cout, ORDER)
        self.conv2 = P4MConv(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = FieldBatchNorm(cout, ORDER)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(P4MConv(cin, cout, 1, stride, 0, bias=False),
                                          FieldBatchNorm(cout, ORDER))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class P4MResNet(nn.Module):
    """Lifting conv, p4m BasicBlocks, group max pooling, global average, linear head."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 3,
                 blocks: tuple[tuple[int, int], ...] = ((1, 1), (2, 2))) -> None:
        super().__init__()
        self.lift = LiftP4M(channels, width, 5, 1, 2)
        self.bn = FieldBatchNorm(width, ORDER)
        layers, cin = [], width
        for mult, stride in blocks:
            layers.append(BasicBlock(cin, mult * width, stride))
            cin = mult * width
        self.blocks = nn.Sequential(*layers)
        self.head = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(F.relu(self.bn(self.lift(x))))
        n, c, h, w = x.shape
        x = x.reshape(n, c // ORDER, ORDER, h, w).amax(dim=2)  # group max pooling
        return self.head(x.mean(dim=(2, 3)))


def p4m_resnet(seed: int = 0) -> P4MResNet:
    torch.manual_seed(seed)
    return _settle(P4MResNet(), EXACT_SIZES["p4m_resnet"], seed)
