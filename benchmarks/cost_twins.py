"""Hand-written plain twins of the benchmark's models: what a user would write without
e2cnn/escnn (Conv2d, BatchNorm2d, ReLU, pools, Linear), holding the same weights.

Plain torch only at import time: the bare-steps process imports this and nothing of
eqdeploy, e2cnn or escnn. ``twin_state`` (conversion host, with the equivariant library)
copies the weights: every ``R2Conv`` / ``InnerBatchNorm`` of the source through the
library's own ``.export()`` (expanded filters; per-field BN statistics repeated over the
field's channels), ``nn.Linear`` as is, matched to the twin's layers in registration order.
"""

from __future__ import annotations

import torch
from torch import nn


class C4CnnTwin(nn.Module):
    """``eqdeploy.models.reference.C4CNN`` (6 regular C4 fields -> 12), plain."""

    def __init__(self, width: int = 6, order: int = 4, classes: int = 10) -> None:
        super().__init__()
        c1, c2 = width * order, 2 * width * order
        self.order = order
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.MaxPool2d(3, 2, padding=1),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.MaxPool2d(3, 2, padding=1),
            nn.Conv2d(c2, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU())
        self.head = nn.Conv2d(2 * width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = x.unflatten(1, (-1, self.order)).amax(2)  # group pooling: max over each field
        return self.head(x).mean(dim=(2, 3))


class BlockTwin(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet18Twin(nn.Module):
    """``eqdeploy.models.escnn_resnet.EscnnResNet18`` (C4, 16-32-64-128 channels), plain."""

    def __init__(self, order: int = 4, channels: int = 3, classes: int = 10,
                 stem: int = 16) -> None:
        super().__init__()
        self.order = order
        self.stem = nn.Sequential(nn.Conv2d(channels, stem, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(stem), nn.ReLU())
        blocks, cur = [], stem
        for i, width in enumerate((stem, 2 * stem, 4 * stem, 8 * stem)):
            for j in range(2):
                blocks.append(BlockTwin(cur, width, 2 if i > 0 and j == 0 else 1))
                cur = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(cur // order, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(self.stem(x))
        y = y.unflatten(1, (-1, self.order)).amax(2)  # group pooling
        return self.head(torch.flatten(self.pool(y), 1))


TWINS = {"c4_cnn": C4CnnTwin, "resnet18_c4": ResNet18Twin}
PLAIN = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


def twin_state(source: nn.Module, twin: nn.Module) -> dict[str, torch.Tensor]:
    """The twin's state dict holding ``source``'s (eval-mode) weights."""
    plain = []
    for m in source.modules():
        kind = type(m).__name__
        if kind in ("R2Conv", "InnerBatchNorm"):
            plain.append(m.export())
        elif isinstance(m, nn.Linear):
            plain.append(m)
    mine = [m for m in twin.modules() if isinstance(m, PLAIN)]
    if len(plain) != len(mine):
        raise ValueError(f"the twin has {len(mine)} layers, the source {len(plain)}")
    for src, dst in zip(plain, mine, strict=True):
        if type(src) is not type(dst):
            raise ValueError(f"layer order differs: {type(src).__name__} vs {type(dst).__name__}")
        dst.load_state_dict(src.state_dict())
    return twin.state_dict()
