"""Separable p4 group convolutions (Knigge, Romero & Bekkers 2022), from the paper's equations.

A p4 -> p4 group convolution correlates the input with the filter bank
``F[o, g, c, h] = rot^g k[o, c, (h - g) mod 4]`` (``P4Conv``). The separable variants
factorize the kernel ``k(c_out, c_in, h, x)``:

- g-separable (``GSepP4Conv``): ``k = k_H(c_out, c_in, h) * k_R2(c_out, c_in, x)``, a
  group-axis kernel times a spatial kernel, so
  ``F[o, g, c, h] = k_H[o, c, (h - g) mod 4] * rot^g k_R2[o, c]``.
- gc-separable (``GCSepP4Conv``): also separable over channels,
  ``k = k_C(c_out, c_in) * k_H(c_in, h) * k_R2(c_in, x)``. As in the paper this runs as a
  depthwise group convolution (each input field to itself, ``groups`` = fields, with
  ``D[c, g, h] = k_H[c, (h - g) mod 4] * rot^g k_R2[c]``) followed by a pointwise channel
  mixing ``k_C`` shared over the group axis (a 1x1 conv with weight ``k_C kron I_4``).
  The composition equals the full group conv with the gc-separable kernel exactly.

Every bank is built in ``forward`` from the parameters (rot90, index gather, broadcasting
products), so export constant-folds it into plain ``conv2d`` weights. The lifting layer is
the ordinary ``LiftP4`` (its input has no group axis to separate). ``GP4CNN`` and ``GCP4CNN``
are ``P4CNN`` with these layers; exact input size 29, as for ``P4CNN``. Written for this
project from the definitions (nothing copied).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from eqdeploy.models.plain_groupconv import GROUP_ORDER, P4CNN, _rotations, _settle

EXACT_SIZES = {"g_p4cnn": 29, "gc_p4cnn": 29}


def _shift_index() -> torch.Tensor:
    """``index[g, h] = (h - g) mod 4``: the group slice feeding output rotation g."""
    g = torch.arange(GROUP_ORDER)
    return (g[None, :] - g[:, None]) % GROUP_ORDER


class GSepP4Conv(nn.Module):
    """g-separable p4 conv: ``F[o, g, c, h] = k_H[o, c, (h - g) mod 4] * rot^g k_R2[o, c]``."""

    def __init__(self, cin: int, cout: int, k: int, padding: int, bias: bool = True) -> None:
        super().__init__()
        self.weight_h = nn.Parameter(torch.randn(cout, cin, GROUP_ORDER)
                                     / (cin * GROUP_ORDER) ** 0.5)
        self.weight_r2 = nn.Parameter(torch.randn(cout, cin, k, k) / k)
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.padding = padding
        self.register_buffer("index", _shift_index(), persistent=False)

    def filter_bank(self) -> torch.Tensor:
        o, c, k, _ = self.weight_r2.shape
        kh = self.weight_h[:, :, self.index].transpose(1, 2)  # (O, 4g, C, 4h)
        rot = _rotations(self.weight_r2).transpose(0, 1)  # (O, 4g, C, k, k)
        bank = kh[..., None, None] * rot[:, :, :, None]  # (O, 4g, C, 4h, k, k)
        return bank.reshape(o * GROUP_ORDER, c * GROUP_ORDER, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.repeat_interleave(GROUP_ORDER)
        return F.conv2d(x, self.filter_bank(), bias, padding=self.padding)


class GCSepP4Conv(nn.Module):
    """gc-separable p4 conv: depthwise group conv (``k_H * k_R2`` per input field), then a
    pointwise ``k_C`` shared over the group axis."""

    def __init__(self, cin: int, cout: int, k: int, padding: int, bias: bool = True) -> None:
        super().__init__()
        self.weight_h = nn.Parameter(torch.randn(cin, GROUP_ORDER) / GROUP_ORDER ** 0.5)
        self.weight_r2 = nn.Parameter(torch.randn(cin, k, k) / k)
        self.weight_c = nn.Parameter(torch.randn(cout, cin) / cin ** 0.5)
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.padding = padding
        self.register_buffer("index", _shift_index(), persistent=False)
        self.register_buffer("eye", torch.eye(GROUP_ORDER), persistent=False)

    def depthwise_bank(self) -> torch.Tensor:
        """``(C*4, 4, k, k)`` for ``groups=C``: ``D[c, g, h] = k_H[c, (h-g)] rot^g k_R2[c]``."""
        c, k, _ = self.weight_r2.shape
        kh = self.weight_h[:, self.index]  # (C, 4g, 4h)
        rot = _rotations(self.weight_r2).transpose(0, 1)  # (C, 4g, k, k)
        bank = kh[..., None, None] * rot[:, :, None]  # (C, 4g, 4h, k, k)
        return bank.reshape(c * GROUP_ORDER, GROUP_ORDER, k, k)

    def pointwise_bank(self) -> torch.Tensor:
        """``(O*4, C*4, 1, 1)``: ``P[o*4 + g, c*4 + g'] = k_C[o, c] delta(g, g')``."""
        o, c = self.weight_c.shape
        bank = torch.einsum("oc,gh->ogch", self.weight_c, self.eye)
        return bank.reshape(o * GROUP_ORDER, c * GROUP_ORDER, 1, 1)

    def filter_bank(self) -> torch.Tensor:
        """The equivalent full p4 bank ``k_C[o, c] D[c, g, h]`` (for checks; not run)."""
        c, k = self.weight_r2.shape[0], self.weight_r2.shape[-1]
        dw = self.depthwise_bank().reshape(c, GROUP_ORDER, GROUP_ORDER, k, k)
        full = torch.einsum("oc,cghij->ogchij", self.weight_c, dw)
        return full.reshape(-1, c * GROUP_ORDER, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fields = self.weight_r2.shape[0]
        y = F.conv2d(x, self.depthwise_bank(), None, padding=self.padding, groups=fields)
        bias = None if self.bias is None else self.bias.repeat_interleave(GROUP_ORDER)
        return F.conv2d(y, self.pointwise_bank(), bias)


class GP4CNN(P4CNN):
    """P4CNN with g-separable p4 layers."""

    layer = GSepP4Conv


class GCP4CNN(P4CNN):
    """P4CNN with gc-separable p4 layers."""

    layer = GCSepP4Conv


def g_p4cnn(seed: int = 0) -> GP4CNN:
    torch.manual_seed(seed)
    return _settle(GP4CNN(), EXACT_SIZES["g_p4cnn"], seed)


def gc_p4cnn(seed: int = 0) -> GCP4CNN:
    torch.manual_seed(seed)
    return _settle(GCP4CNN(), EXACT_SIZES["gc_p4cnn"], seed)
