"""Equivariant ResNet18-style classifiers built with escnn over D1, C4, D4 and C8.

Written for this project from He et al. 2016 (ResNet18: a stem conv, four stages of two
BasicBlocks ``[2, 2, 2, 2]``, widths ``w, 2w, 4w, 8w``, stride 2 at the start of stages 2-4,
a 1x1 conv + BN projection shortcut where stride or width changes) with every conv an
escnn ``R2Conv`` between regular fields, ``InnerBatchNorm`` and ``ReLU`` on regular fields
(Weiler & Cesa 2019). ``GroupPooling`` (max over each field's channels) makes the features
invariant before a global average pool and a torch ``Linear`` head, so the logits are
invariant. The stem is CIFAR-style (3x3, stride 1, no max pool) to keep small inputs cheap.

Groups: ``D1`` = ``flip2dOnR2()`` (mirror about the vertical axis, i.e. the image's W axis
is reversed, which is eqdeploy's flip), ``C4`` = ``rot2dOnR2(4)``, ``D4`` =
``flipRot2dOnR2(4)``, ``C8`` = ``rot2dOnR2(8)`` (its 45-degree elements act on pixels by
interpolation; the exact ones are the 90-degree subgroup).

Exact (aligned) input sizes: every stride-2 layer (3x3 conv with padding 1, 1x1 projection
with padding 0) needs an odd input, so ``n, (n+1)/2, (n+3)/4`` must all be odd:
``n = 8m + 1`` (17, 25, 33, ..., 65, ...); ``EXACT_SIZES`` names the size the tests use.
Factories take no required arguments (they work with ``--arch module:factory``).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

with warnings.catch_warnings():  # escnn warns that the optional py3nj is missing
    warnings.simplefilter("ignore")
    from escnn import gspaces
    from escnn import nn as enn

GROUPS = ("D1", "C4", "D4", "C8")
STAGES = (2, 2, 2, 2)  # ResNet18
EXACT_SIZES = {g: 33 for g in GROUPS}  # 33 -> 33 -> 17 -> 9 -> 5 through the stages
STEM_CHANNELS = 16  # default width: 16 // |G| regular fields, so 16-32-64-128 channels


def gspace_of(group: str):
    """The escnn gspace for a group name (D1, C4, D4, C8, or any C<N> / D<N>)."""
    kind, n = group[0].upper(), int(group[1:])
    if kind == "C":
        return gspaces.rot2dOnR2(n)
    if kind == "D" and n == 1:
        return gspaces.flip2dOnR2()  # default axis pi/2: mirrors W
    if kind == "D":
        return gspaces.flipRot2dOnR2(n)
    raise ValueError(f"unknown group {group!r}")


def _conv(cin, cout, k: int, stride: int = 1) -> enn.R2Conv:
    return enn.R2Conv(cin, cout, k, padding=k // 2, stride=stride, bias=False)


class BasicBlock(enn.EquivariantModule):
    """``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))`` on regular fields."""

    def __init__(self, in_type, out_type, stride: int = 1) -> None:
        super().__init__()
        self.in_type, self.out_type = in_type, out_type
        self.conv1 = _conv(in_type, out_type, 3, stride)
        self.bn1 = enn.InnerBatchNorm(out_type)
        self.relu1 = enn.ReLU(out_type, inplace=True)
        self.conv2 = _conv(out_type, out_type, 3)
        self.bn2 = enn.InnerBatchNorm(out_type)
        self.shortcut = None
        if stride != 1 or in_type != out_type:
            self.shortcut = enn.SequentialModule(_conv(in_type, out_type, 1, stride),
                                                 enn.InnerBatchNorm(out_type))
        self.relu2 = enn.ReLU(out_type, inplace=True)

    def forward(self, x: enn.GeometricTensor) -> enn.GeometricTensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        skip = x if self.shortcut is None else self.shortcut(x)
        return self.relu2(y + skip)

    def evaluate_output_shape(self, input_shape):
        return self.conv1.evaluate_output_shape(input_shape)


class EscnnResNet18(nn.Module):
    """ResNet18-style classifier with regular fields, group pooling and a Linear head."""

    def __init__(self, group: str = "C4", width: int | None = None, channels: int = 3,
                 classes: int = 10) -> None:
        super().__init__()
        gs = gspace_of(group)
        self.group = group
        width = width or max(1, STEM_CHANNELS // gs.fibergroup.order())
        self.input_type = enn.FieldType(gs, channels * [gs.trivial_repr])
        types = [enn.FieldType(gs, width * m * [gs.regular_repr]) for m in (1, 2, 4, 8)]
        self.stem = enn.SequentialModule(_conv(self.input_type, types[0], 3),
                                         enn.InnerBatchNorm(types[0]),
                                         enn.ReLU(types[0], inplace=True))
        blocks, cur = [], types[0]
        for i, (ft, depth) in enumerate(zip(types, STAGES, strict=True)):
            for j in range(depth):
                blocks.append(BasicBlock(cur, ft, stride=2 if i > 0 and j == 0 else 1))
                cur = ft
        self.layers = enn.SequentialModule(*blocks)
        self.gpool = enn.GroupPooling(cur)
        self.pool = enn.PointwiseAdaptiveAvgPool2D(self.gpool.out_type, 1)
        self.head = nn.Linear(self.gpool.out_type.size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(self.stem(enn.GeometricTensor(x, self.input_type)))
        y = self.pool(self.gpool(y)).tensor
        return self.head(torch.flatten(y, 1))


def settle(model: nn.Module, size: int, seed: int, batches: int = 3) -> nn.Module:
    """Non-trivial BN affine parameters and running statistics (as after training), eval()."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.momentum = None  # cumulative average over the settling batches
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
        model.train()
        channels = model.input_type.size
        for _ in range(batches):
            model(torch.randn(8, channels, size, size, generator=gen) + 0.5)
    return model.eval()


def escnn_resnet18(group: str = "C4", width: int | None = None, seed: int = 0,
                   classes: int = 10) -> EscnnResNet18:
    """A seeded, BN-settled, eval-mode ResNet18 over ``group`` (D1, C4, D4 or C8).

    ``width``: regular fields in the first stage (doubling per stage); default
    ``16 // |G|``, i.e. 16, 32, 64, 128 channels per stage whatever the group."""
    if group not in GROUPS:
        raise ValueError(f"group {group!r} is not one of {GROUPS}")
    torch.manual_seed(seed)
    return settle(EscnnResNet18(group, width, classes=classes), EXACT_SIZES[group], seed)


def resnet18_d1() -> EscnnResNet18:
    return escnn_resnet18("D1")


def resnet18_c4() -> EscnnResNet18:
    return escnn_resnet18("C4")


def resnet18_d4() -> EscnnResNet18:
    return escnn_resnet18("D4")


def resnet18_c8() -> EscnnResNet18:
    return escnn_resnet18("C8")
