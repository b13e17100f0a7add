"""An E4-style p4 layer (He, Jiang & Zhang, NeurIPS 2021) in plain PyTorch, from the equations.

Features are p4 feature maps laid out like ``plain_groupconv.P4CNN``: channel ``c*4 + h`` is
field c at rotation h, and a quarter turn r acts as ``(r.f)(x, h) = f(r^-1 x, h - 1)``.

The layer generates, at every location x and rotation h, a k x k spatial kernel from the
features at x alone (a two-layer 1x1 p4 group convolution, involution-style, shared by the
``Cg = C / groups`` fields of each channel group), and applies it to the neighbourhood with
the offsets rotated by h:

    kappa(x, h)[g, v] = sum_{c, h'} W2[g, v, c, h' - h] relu(BN(P4Conv1x1(f))(x, h'))[c] + b2[g, v]
    y(x, h)[c]        = sum_{v in k x k} kappa(x, h)[g(c), v] f(x + R_h v, h)[c]

(h' - h mod 4; v an offset in the k x k window; R_h the rotation by h quarter turns). Since
kappa is produced by a p4 group convolution, ``kappa(r.f)(x, h) = kappa(f)(r^-1 x, h - 1)``,
and ``R_h v`` turns with h, so ``y(r.f)(x, h) = y(f)(r^-1 x, h - 1)``: y is a regular C4
field per input field. A 1x1 p4 group convolution then mixes the channels (as involution
blocks do). Offsets are rotated by reindexing the generator's last filter bank
(``kappa_abs(x, h)[u] = kappa(x, h)[R_h^-1 u]``, built from the parameters each forward
like ``P4Conv.filter_bank``), so the data path is ``unfold`` + multiply + window sum.

``e4_p4cnn``: lifting conv -> BN/ReLU/max pool -> E4 layer -> BN/ReLU/max pool -> group
max -> global average -> linear. Exact input size 29 (like ``P4CNN``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from eqdeploy.models.plain_groupconv import GROUP_ORDER, FieldBatchNorm, LiftP4, P4Conv, _settle


class KernelBank(nn.Module):
    """1x1 p4 conv ``hidden`` fields -> ``groups * k * k`` kernel fields, output channel
    ``(g, h, i, j)``: the value for absolute offset (i, j) at rotation h (offsets turned by h)."""

    def __init__(self, hidden: int, groups: int, k: int) -> None:
        super().__init__()
        fan_in = hidden * GROUP_ORDER
        self.weight = nn.Parameter(torch.randn(groups, k, k, hidden, GROUP_ORDER)
                                   / fan_in ** 0.5)
        self.bias = nn.Parameter(torch.zeros(groups, k, k))
        g = torch.arange(GROUP_ORDER)
        self.register_buffer("index", (g[None, :] - g[:, None]) % GROUP_ORDER,
                             persistent=False)

    def filter_bank(self) -> tuple[torch.Tensor, torch.Tensor]:
        groups, k, _, hidden, _ = self.weight.shape
        shifted = self.weight[..., self.index]  # (G, k, k, C, 4h, 4h'): W2[..., h' - h]
        bank = torch.stack([torch.rot90(shifted[..., h, :], h, dims=(1, 2))
                            for h in range(GROUP_ORDER)], dim=1)  # (G, 4h, k, k, C, 4h')
        bias = torch.stack([torch.rot90(self.bias, h, dims=(1, 2))
                            for h in range(GROUP_ORDER)], dim=1)  # (G, 4h, k, k)
        return (bank.reshape(groups * GROUP_ORDER * k * k, hidden * GROUP_ORDER, 1, 1),
                bias.reshape(-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.filter_bank()
        return F.conv2d(x, weight, bias)


class E4Layer(nn.Module):
    """p4 -> p4 layer with input-generated, offset-rotated k x k kernels + 1x1 p4 mixing."""

    def __init__(self, cin: int, cout: int, k: int = 3, groups: int = 2, hidden: int = 4
                 ) -> None:
        super().__init__()
        if cin % groups:
            raise ValueError(f"{cin} fields do not split into {groups} groups")
        self.k, self.groups = k, groups
        self.reduce = P4Conv(cin, hidden, 1, 0)
        self.bn = FieldBatchNorm(hidden)
        self.kernel = KernelBank(hidden, groups, k)
        self.mix = P4Conv(cin, cout, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        k, g = self.k, self.groups
        kappa = self.kernel(F.relu(self.bn(self.reduce(x))))  # (N, G*4*k*k, H, W)
        patches = F.unfold(x, k, padding=k // 2)  # (N, C*4*k*k, H*W), channel (c, h, u)
        patches = patches.view(n, g, c // (g * GROUP_ORDER), GROUP_ORDER, k * k, h, w)
        kappa = kappa.view(n, g, 1, GROUP_ORDER, k * k, h, w)
        y = (patches * kappa).sum(dim=4)  # (N, G, Cg, 4, H, W)
        return self.mix(y.reshape(n, c, h, w))


class E4P4CNN(nn.Module):
    """Lifting p4 conv, one E4 layer, group max pooling, global average, linear head."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 6) -> None:
        super().__init__()
        self.lift = LiftP4(channels, width, 5, 2)
        self.bn1 = FieldBatchNorm(width)
        self.e4 = E4Layer(width, 2 * width, k=3, groups=2, hidden=4)
        self.bn2 = FieldBatchNorm(2 * width)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.lift(x))), 3, 2, padding=1)
        x = F.max_pool2d(F.relu(self.bn2(self.e4(x))), 3, 2, padding=1)
        n, c, h, w = x.shape
        x = x.reshape(n, c // GROUP_ORDER, GROUP_ORDER, h, w).amax(dim=2)  # group pooling
        return self.head(x.mean(dim=(2, 3)))


EXACT_SIZE = 29


def e4_p4cnn(seed: int = 0) -> E4P4CNN:
    """Seeded E4 classifier with settled BN statistics and non-zero biases (eval mode)."""
    torch.manual_seed(seed)
    model = E4P4CNN()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        model.e4.kernel.bias.uniform_(-0.1, 0.1, generator=gen)
    return _settle(model, EXACT_SIZE, seed)
