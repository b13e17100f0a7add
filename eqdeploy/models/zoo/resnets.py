"""P4 ResNets written the way torchvision's and kuangliu/pytorch-cifar's ResNets are written,
on GrouPy-style P4 layers (``eqdeploy.models.zoo.groupy``).

Follows torchvision ``resnet.py`` (``BasicBlock``: ``self.relu = nn.ReLU(inplace=True)``,
``out += identity``) and kuangliu/pytorch-cifar (``BasicBlock`` with ``self.shortcut``,
``PreActBlock`` with ``hasattr(self, 'shortcut')``), with every ``Conv2d`` a P4 group conv
and every ``BatchNorm2d`` a ``BatchNorm3d`` over the 5-D group maps, as people port them.

- ``p4_resnet_inplace``: a torchvision block (``nn.ReLU(inplace=True)``, ``out += identity``
  with a projection) and a pytorch-cifar block written in place
  (``F.relu(..., inplace=True)``, ``out.add_(self.shortcut(x))``).
- ``p4_preact_resnet``: pre-activation blocks: an identity shortcut (the add has no weight
  layer of its own on that side), BatchNorm applied to a residual sum (the next block's
  ``bn1``, and the final ``bn``), so those BatchNorms cannot fold into a conv.
- ``p4_silu_resnet``: ``nn.SiLU`` activations, a sigmoid gate ``out * torch.sigmoid(...)``
  and identity shortcuts.

Plain PyTorch: convert with ``--group C4``. Input 1x29x29 (stride-2 stages: 29 -> 15 -> 8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from eqdeploy.models.zoo.groupy import P4ConvP4, P4ConvZ2

SIZE = 29


def _head(x: torch.Tensor, fc: nn.Linear) -> torch.Tensor:
    """Group max, global average, classifier (the same in the three models)."""
    x = x.max(dim=2)[0]
    return fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class TorchvisionBlock(nn.Module):
    """torchvision ``BasicBlock`` on P4 maps: in-place ReLU module, ``out += identity``."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = P4ConvP4(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = P4ConvP4(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class CifarBlock(nn.Module):
    """pytorch-cifar ``BasicBlock`` written in place: ``F.relu(inplace=True)``, ``add_``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = P4ConvP4(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = P4ConvP4(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                P4ConvP4(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm3d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out.add_(self.shortcut(x))
        return F.relu(out, inplace=True)


class InplaceResNet(nn.Module):
    def __init__(self, n_classes: int = 10, width: int = 6) -> None:
        super().__init__()
        self.conv1 = P4ConvZ2(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        down = nn.Sequential(P4ConvP4(width, 2 * width, 1, stride=2, bias=False),
                             nn.BatchNorm3d(2 * width))
        self.layer1 = TorchvisionBlock(width, 2 * width, stride=2, downsample=down)
        self.layer2 = CifarBlock(2 * width, 2 * width, stride=2)
        self.fc = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return _head(self.layer2(self.layer1(x)), self.fc)


class PreActBlock(nn.Module):
    """pytorch-cifar ``PreActBlock``: BN -> ReLU -> conv twice; identity shortcut unless the
    shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm3d(in_planes)
        self.conv1 = P4ConvP4(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv2 = P4ConvP4(planes, planes, 3, padding=1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                P4ConvP4(in_planes, planes, 1, stride=stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        out += shortcut
        return out


class PreActResNet(nn.Module):
    def __init__(self, n_classes: int = 10, width: int = 6) -> None:
        super().__init__()
        self.conv1 = P4ConvZ2(1, width, 3, padding=1, bias=False)
        self.layer1 = PreActBlock(width, width, stride=1)
        self.layer2 = PreActBlock(width, 2 * width, stride=2)
        self.layer3 = PreActBlock(2 * width, 2 * width, stride=2)
        self.bn = nn.BatchNorm3d(2 * width)
        self.fc = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.relu(self.bn(out))
        return _head(out, self.fc)


class GatedSiLUBlock(nn.Module):
    """conv -> BN -> SiLU -> conv -> BN, a sigmoid gate from a 1x1 P4 conv, identity add."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.conv1 = P4ConvP4(planes, planes, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.act = nn.SiLU()
        self.conv2 = P4ConvP4(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.gate = P4ConvP4(planes, planes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out * torch.sigmoid(self.gate(out))
        return F.silu(out + x)


class SiLUResNet(nn.Module):
    def __init__(self, n_classes: int = 10, width: int = 6) -> None:
        super().__init__()
        self.conv1 = P4ConvZ2(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.block1 = GatedSiLUBlock(width)
        self.down = P4ConvP4(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(2 * width)
        self.block2 = GatedSiLUBlock(2 * width)
        self.fc = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.bn1(self.conv1(x)))
        x = self.block1(x)
        x = F.silu(self.bn2(self.down(x)))
        x = self.block2(F.max_pool2d(x.flatten(1, 2), 3, 2, 1).unflatten(1, (-1, 4)))
        return _head(x, self.fc)


def p4_resnet_inplace() -> InplaceResNet:
    """P4 ResNet with in-place residual adds and ReLUs (seeded random weights)."""
    torch.manual_seed(61)
    return InplaceResNet()


def p4_preact_resnet() -> PreActResNet:
    """P4 pre-activation ResNet: identity shortcut, BN after residual sums."""
    torch.manual_seed(62)
    return PreActResNet()


def p4_silu_resnet() -> SiLUResNet:
    """P4 ResNet with SiLU, a sigmoid gate and identity shortcuts."""
    torch.manual_seed(63)
    return SiLUResNet()
