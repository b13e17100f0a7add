"""The benchmark's models: the project's reference models at the widths the tables compare,
plus the plain CNNs the tables need as baselines (written here, plain PyTorch).

- ``PlainCNN``: the conventional CNN of table 1, ``RotStackC4`` without the stacking (the same
  layers, so the same parameter count).
- ``PlainC4Twin``: ``C4CNN`` hand-written as a plain CNN (Conv2d/BatchNorm2d/ReLU/MaxPool2d,
  group pooling as reshape + amax), loaded with the e2cnn model's expanded filters: the same
  graph converted the stock way, for the latency table's export tax.
- ``stock_export``: what a user does without eqdeploy: every e2cnn module replaced by its own
  ``.export()`` (plain torch), the model's forward unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from eqdeploy.models import mobilenet, plain_groupconv, reference, separable_gconv


class PlainCNN(nn.Module):
    """Conventional CNN with ``RotStackC4``'s layers (5x5, 3x3, 3x3 convs, 2x2 max pools)."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, width, 5, padding=2)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv3(x))
        return self.head(x.mean(dim=(2, 3)))


class PlainC4Twin(nn.Module):
    """``reference.C4CNN`` written by hand in plain torch (4 channels per regular field)."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 6) -> None:
        super().__init__()
        c1, c2 = 4 * width, 8 * width
        self.features = nn.Sequential(
            nn.Conv2d(channels, c1, 5, padding=2, bias=False), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.MaxPool2d(3, 2, padding=1),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.MaxPool2d(3, 2, padding=1),
            nn.Conv2d(c2, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU())
        self.head = nn.Conv2d(2 * width, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        n, c, h, w = x.shape
        x = x.reshape(n, c // 4, 4, h, w).amax(dim=2)  # group pooling
        return self.head(x).mean(dim=(2, 3))


def plain_c4_twin(model: reference.C4CNN) -> PlainC4Twin:
    """The twin of a trained ``C4CNN``, with its expanded filters and BN statistics."""
    width = model.features.out_type.size // 8
    twin = PlainC4Twin(width=width, classes=model.head.out_type.size)
    twin.features.load_state_dict(model.features.export().state_dict())
    twin.head.load_state_dict(model.head.export().state_dict())
    return twin.eval()


class _Exported(nn.Module):
    """An e2cnn module's own ``.export()``, taking and returning a GeometricTensor."""

    def __init__(self, module) -> None:
        super().__init__()
        self.body = module.export()
        self.out_type = module.out_type

    def forward(self, x):
        from e2cnn import nn as enn

        return enn.GeometricTensor(self.body(x.tensor), self.out_type)


def stock_export(model: nn.Module) -> nn.Module:
    """Swap every outermost e2cnn module of ``model`` (in place) for its ``.export()``."""
    from e2cnn import nn as enn

    def swap(parent: nn.Module) -> None:
        for name, child in parent.named_children():
            if isinstance(child, enn.EquivariantModule):
                setattr(parent, name, _Exported(child))
            else:
                swap(child)

    swap(model)
    return model.eval()  # the exported modules are created in train mode


@dataclass(frozen=True)
class ModelDef:
    """One benchmark model: how to build it and what eqdeploy needs to convert it."""

    key: str
    label: str
    build: Callable[[], nn.Module]
    group: str | None  # for plain-torch models: ``--group`` (layouts discovered)
    framework: str  # "e2cnn" | "torch" | "escnn"
    symmetry: str  # the group the model is built for (C1 = none)
    # convert with --allow-misaligned: C1 has no rotations to keep exact, and the rot-stack
    # net's pools never see a rotated feature map (its copies are permuted, not rotated)
    allow_misaligned: bool = False


MODELS: dict[str, ModelDef] = {m.key: m for m in [
    ModelDef("plain_cnn", "plain CNN", lambda: PlainCNN(width=10), "C1", "torch", "C1", True),
    ModelDef("rotstack_c4", "rot90-stack C4", lambda: plain_groupconv.RotStackC4(width=10),
             "C4", "torch", "C4", True),
    ModelDef("e2cnn_c4", "e2cnn C4 CNN", lambda: reference.C4CNN(width=6), None, "e2cnn", "C4"),
    ModelDef("e2cnn_c8", "e2cnn C8 residual CNN", lambda: reference.C8Residual(width=6), None,
             "e2cnn", "C8"),
    ModelDef("mnv2_plain", "MobileNetV2 (conventional)", lambda: mobilenet.MobileNetV2(), "C1",
             "torch", "C1", True),
    ModelDef("mnv2_c4", "Eq-MobileNetV2 C4", lambda: mobilenet.EqMobileNetV2("C4"), None,
             "e2cnn", "C4"),
    ModelDef("mnv2_c8", "Eq-MobileNetV2 C8", lambda: mobilenet.EqMobileNetV2("C8"), None,
             "e2cnn", "C8"),
    ModelDef("mnv2_c12", "Eq-MobileNetV2 C12", lambda: mobilenet.EqMobileNetV2("C12"), None,
             "e2cnn", "C12"),
    ModelDef("p4cnn", "P4CNN", lambda: plain_groupconv.P4CNN(width=6), "C4", "torch", "C4"),
    ModelDef("g_p4cnn", "g-separable P4CNN", lambda: separable_gconv.GP4CNN(width=6), "C4",
             "torch", "C4"),
    ModelDef("gc_p4cnn", "gc-separable P4CNN", lambda: separable_gconv.GCP4CNN(width=6), "C4",
             "torch", "C4"),
]}


def escnn_resnet18(group: str = "C4") -> ModelDef:
    """The escnn ResNet18 reference (cost table only: 3-channel input, not trained here)."""
    def build() -> nn.Module:
        from eqdeploy.models import escnn_resnet

        return getattr(escnn_resnet, f"resnet18_{group.lower()}")()

    return ModelDef(f"resnet18_{group.lower()}", f"escnn ResNet18 {group}", build, None,
                    "escnn", group)
