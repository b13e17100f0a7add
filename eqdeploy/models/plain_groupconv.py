"""Group-equivariant CNNs written in plain PyTorch (no e2cnn/escnn), from the papers' equations.

Their channel layouts are not declared anywhere: ``eqdeploy.adapters.plain.discover_plain``
finds them by probing. Written for this project from the definitions (nothing copied).

- ``RotStackC4``: the rot90-stacking classifier. The input is stacked with its three
  rotations along a group axis ``(N, C, 4, H, W)``; every layer is a ``Conv3d`` with a
  ``(1, k, k)`` kernel, i.e. one 2D filter bank shared by the four copies, then ReLU and
  ``(1, 2, 2)`` max pooling; a max over the copies makes the features invariant, and a
  global average and a linear layer give the logits. Under ``rot90(x)`` the copies are
  cyclically shifted (the feature maps themselves do not rotate).
- ``P4CNN``: GrouPy-style p4 group convolutions (Cohen & Welling 2016). A lifting layer
  correlates the image with the four rotations of each filter, ``F[o, g] = rot^g W[o]``;
  a p4 -> p4 layer with learned ``W[o, c, h]`` uses the filter bank
  ``F[o, g, c, h] = rot^g W[o, c, (h - g) mod 4]``, built each forward by ``torch.rot90``
  and an index gather over the group axis. Channels are ordered ``(field, rotation)``, so
  rot90 of the input rotates every feature map and shifts each field's 4 channels
  cyclically. BatchNorm shares its statistics over each field (as GrouPy's 3D BN does),
  spatial max pooling, a max over the group axis, global average, linear head.
  ``P4CNN.layer`` is the p4 -> p4 layer class: the separable variants in
  ``eqdeploy.models.separable_gconv`` replace it.
- ``broken_p4cnn``: a P4CNN with one extra random 1x1 conv mixing all channels after the
  second layer: not equivariant, for the discovery's error path.

Exact (aligned) input sizes: 29 for ``P4CNN`` (its stride-2 pools see 29 -> 15 -> 8, each
with ``(n + 2p - k) % s == 0``); any square size for ``RotStackC4`` (its feature maps never
rotate; 28 in ``EXACT_SIZES``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

GROUP_ORDER = 4


class RotStackC4(nn.Module):
    """rot90-stacking C4-invariant classifier with shared Conv3d (1, k, k) layers."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(channels, width, (1, 5, 5), padding=(0, 2, 2))
        self.conv2 = nn.Conv3d(width, 2 * width, (1, 3, 3), padding=(0, 1, 1))
        self.conv3 = nn.Conv3d(2 * width, 2 * width, (1, 3, 3), padding=(0, 1, 1))
        self.pool = nn.MaxPool3d((1, 2, 2))
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(GROUP_ORDER)], dim=2)
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = F.relu(self.conv3(x))
        x = x.amax(dim=2)  # max over the copies: invariant features
        return self.head(x.mean(dim=(2, 3)))


def _rotations(w: torch.Tensor) -> torch.Tensor:
    """``(..., k, k)`` -> ``(4, ..., k, k)``: the filter rotated by 0..3 quarter turns."""
    return torch.stack([torch.rot90(w, g, dims=(-2, -1)) for g in range(GROUP_ORDER)])


class LiftP4(nn.Module):
    """Z2 -> p4 group convolution: ``out[:, o*4 + g] = x * rot^g W[o]`` (correlation)."""

    def __init__(self, cin: int, cout: int, k: int, padding: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k) / (cin * k * k) ** 0.5)
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.padding = padding

    def filter_bank(self) -> torch.Tensor:
        bank = _rotations(self.weight)  # (4, O, C, k, k)
        o, c, k = self.weight.shape[0], self.weight.shape[1], self.weight.shape[-1]
        return bank.transpose(0, 1).reshape(o * GROUP_ORDER, c, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.repeat_interleave(GROUP_ORDER)
        return F.conv2d(x, self.filter_bank(), bias, padding=self.padding)


class P4Conv(nn.Module):
    """p4 -> p4 group convolution with ``F[o, g, c, h] = rot^g W[o, c, (h - g) mod 4]``."""

    def __init__(self, cin: int, cout: int, k: int, padding: int, bias: bool = True) -> None:
        super().__init__()
        fan_in = cin * GROUP_ORDER * k * k
        self.weight = nn.Parameter(torch.randn(cout, cin, GROUP_ORDER, k, k) / fan_in ** 0.5)
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.padding = padding
        g = torch.arange(GROUP_ORDER)
        # index[g, h] = (h - g) mod 4: which group slice of W feeds output rotation g
        self.register_buffer("index", (g[None, :] - g[:, None]) % GROUP_ORDER,
                             persistent=False)

    def filter_bank(self) -> torch.Tensor:
        o, c, _, k, _ = self.weight.shape
        shifted = self.weight[:, :, self.index]  # (O, C, 4g, 4h, k, k), gathered by index
        rotated = torch.stack([torch.rot90(shifted[:, :, g], g, dims=(-2, -1))
                               for g in range(GROUP_ORDER)], dim=1)  # (O, 4g, C, 4h, k, k)
        return rotated.reshape(o * GROUP_ORDER, c * GROUP_ORDER, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.repeat_interleave(GROUP_ORDER)
        return F.conv2d(x, self.filter_bank(), bias, padding=self.padding)


class FieldBatchNorm(nn.Module):
    """BatchNorm with one statistic per field (shared by its ``order`` group channels)."""

    def __init__(self, fields: int, order: int = GROUP_ORDER) -> None:
        super().__init__()
        self.bn = nn.BatchNorm3d(fields)
        self.order = order

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        return self.bn(x.reshape(n, c // self.order, self.order, h, w)).reshape(n, c, h, w)


class P4CNN(nn.Module):
    """GrouPy-style P4CNN: lifting layer, p4 layers, group max pooling, linear head."""

    layer: type[nn.Module] = P4Conv  # the p4 -> p4 layer: (cin, cout, k, padding)

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 6,
                 broken: bool = False) -> None:
        super().__init__()
        self.lift = LiftP4(channels, width, 5, 2)
        self.bn1 = FieldBatchNorm(width)
        self.conv2 = self.layer(width, 2 * width, 3, 1)
        self.bn2 = FieldBatchNorm(2 * width)
        c2 = 2 * width * GROUP_ORDER
        # a plain 1x1 conv across all group channels: breaks equivariance on purpose
        self.mix = nn.Conv2d(c2, c2, 1) if broken else None
        self.conv3 = self.layer(2 * width, 2 * width, 3, 1)
        self.bn3 = FieldBatchNorm(2 * width)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.lift(x))), 3, 2, padding=1)
        x = F.relu(self.bn2(self.conv2(x)))
        if self.mix is not None:
            x = self.mix(x)
        x = F.max_pool2d(x, 3, 2, padding=1)
        x = F.relu(self.bn3(self.conv3(x)))
        n, c, h, w = x.shape
        x = x.reshape(n, c // GROUP_ORDER, GROUP_ORDER, h, w).amax(dim=2)  # group pooling
        return self.head(x.mean(dim=(2, 3)))


EXACT_SIZES = {"rotstack_c4": 28, "p4cnn": 29, "broken_p4cnn": 29}


def _settle(model: nn.Module, size: int, seed: int, channels: int = 1) -> nn.Module:
    """Non-trivial BN statistics and biases (as after training), then eval()."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = None
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
            bias = getattr(m, "bias", None)
            if hasattr(m, "filter_bank") and isinstance(bias, torch.Tensor):
                bias.uniform_(-0.1, 0.1, generator=gen)
        model.train()
        for _ in range(3):
            model(torch.randn(8, channels, size, size, generator=gen) + 0.5)
    return model.eval()


def rotstack_c4(seed: int = 0) -> RotStackC4:
    torch.manual_seed(seed)
    return RotStackC4().eval()


def p4cnn(seed: int = 0) -> P4CNN:
    torch.manual_seed(seed)
    return _settle(P4CNN(), EXACT_SIZES["p4cnn"], seed)


def broken_p4cnn(seed: int = 0) -> P4CNN:
    torch.manual_seed(seed)
    return _settle(P4CNN(broken=True), EXACT_SIZES["broken_p4cnn"], seed)
