"""Small reference models built with e2cnn: the shapes users deploy, kept fast for tests.

- ``c4_cnn``: C4 regular fields, two stride-2 max pools, group pooling, 1x1 invariant head.
- ``c8_residual``: C8 with a residual block and a torch ``Linear`` head after group pooling;
  ``c16_residual``: the same net over C16 (22.5-degree steps; random weights).
- ``d4_cnn``: D4 (rotations and flips), antialiasing-free strided conv, group pooling.
- ``c4_flat_head``: C4 features read by a Linear over every group channel (no pooling):
  logits without a group action, for ``--tap`` (random weights).
Aligned (exact) input sizes: 29 for ``c4_cnn``, ``d4_cnn``, ``c4_flat_head``; 33 for
``c8_residual``, ``c16_residual``.
Factories take no required arguments so they work with ``--arch module:factory``.

Trained weights: each factory loads ``weights/<name>.pt`` (an eval-mode state_dict from
``tools/train_reference.py``: a few epochs on rotated MNIST, see ``calibration/README.md``)
when present; ``pretrained=False`` or a missing file gives the seeded random initialisation
with BN statistics settled on noise (``settle_batchnorm``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from eqdeploy.adapters import e2cnn_compat
from eqdeploy.errors import EqdeployError

e2cnn_compat.install()

from e2cnn import gspaces  # noqa: E402
from e2cnn import nn as enn  # noqa: E402


def _block(cin, cout, k, padding, stride=1):
    return [enn.R2Conv(cin, cout, k, padding=padding, stride=stride, bias=False),
            enn.InnerBatchNorm(cout), enn.ReLU(cout, inplace=True)]


class C4CNN(nn.Module):
    """C4-invariant classifier for 1-channel images (e.g. rotated MNIST at 29x29)."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 6) -> None:
        super().__init__()
        gs = gspaces.Rot2dOnR2(4)
        self.input_type = enn.FieldType(gs, channels * [gs.trivial_repr])
        f1 = enn.FieldType(gs, width * [gs.regular_repr])
        f2 = enn.FieldType(gs, 2 * width * [gs.regular_repr])
        self.features = enn.SequentialModule(
            *_block(self.input_type, f1, 5, 2),
            enn.PointwiseMaxPool(f1, 3, 2, padding=1),
            *_block(f1, f2, 3, 1),
            enn.PointwiseMaxPool(f2, 3, 2, padding=1),
            *_block(f2, f2, 3, 1),
        )
        self.gpool = enn.GroupPooling(f2)
        pooled = self.gpool.out_type
        self.head = enn.R2Conv(pooled, enn.FieldType(gs, classes * [gs.trivial_repr]), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = enn.GeometricTensor(x, self.input_type)
        x = self.gpool(self.features(x))
        return self.head(x).tensor.mean(dim=(2, 3))


class C8Residual(nn.Module):
    """C_N net (C8 by default) with a residual block (user-written add) and a torch Linear
    head (33x33)."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 4,
                 rotations: int = 8) -> None:
        super().__init__()
        gs = gspaces.Rot2dOnR2(rotations)
        self.input_type = enn.FieldType(gs, channels * [gs.trivial_repr])
        f = enn.FieldType(gs, width * [gs.regular_repr])
        self.stem = enn.SequentialModule(*_block(self.input_type, f, 5, 2))
        self.down = enn.SequentialModule(*_block(f, f, 3, 1, stride=2))
        self.res = enn.SequentialModule(*_block(f, f, 3, 1)[:2], enn.ReLU(f),
                                        enn.R2Conv(f, f, 3, padding=1, bias=False),
                                        enn.InnerBatchNorm(f))
        self.relu = enn.ReLU(f)
        self.pool = enn.PointwiseMaxPool(f, 3, 2, padding=1, ceil_mode=True)
        self.gpool = enn.GroupPooling(f)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = enn.GeometricTensor(x, self.input_type)
        x = self.down(self.stem(x))
        x = self.relu(x + self.res(x))
        x = self.gpool(self.pool(x)).tensor
        return self.head(torch.flatten(x.mean(dim=(2, 3), keepdim=True), 1))


class D4CNN(nn.Module):
    """D4-invariant classifier (rotations and mirror images), 29x29 inputs."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 4) -> None:
        super().__init__()
        gs = gspaces.FlipRot2dOnR2(4)
        self.input_type = enn.FieldType(gs, channels * [gs.trivial_repr])
        f1 = enn.FieldType(gs, width * [gs.regular_repr])
        f2 = enn.FieldType(gs, 2 * width * [gs.regular_repr])
        self.features = enn.SequentialModule(
            *_block(self.input_type, f1, 5, 2),
            *_block(f1, f2, 3, 1, stride=2),
            enn.PointwiseAvgPool(f2, 3, 2, padding=1),
            *_block(f2, f2, 3, 1),
            enn.GroupPooling(f2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(enn.GeometricTensor(x, self.input_type)).tensor
        return self.head(x.mean(dim=(2, 3), keepdim=True))


class C4FlatHead(nn.Module):
    """C4 features read by a Linear over every group channel (no group pooling): the logits
    have no group action, so equivariance is verified at ``--tap features`` (29x29)."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 4) -> None:
        super().__init__()
        gs = gspaces.Rot2dOnR2(4)
        self.input_type = enn.FieldType(gs, channels * [gs.trivial_repr])
        f = enn.FieldType(gs, width * [gs.regular_repr])
        self.features = enn.SequentialModule(
            *_block(self.input_type, f, 5, 2),
            enn.PointwiseMaxPool(f, 3, 2, padding=1),
            *_block(f, f, 3, 1),
        )
        self.head = nn.Linear(f.size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(enn.GeometricTensor(x, self.input_type)).tensor
        return self.head(x.mean(dim=(2, 3)))


def settle_batchnorm(model: nn.Module, shape: tuple[int, ...], batches: int = 4,
                     seed: int = 0) -> nn.Module:
    """Give BN layers non-trivial running statistics (as after training), then eval()."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average
            with torch.no_grad():
                if m.affine:
                    m.weight.uniform_(0.5, 1.5, generator=gen)
                    m.bias.uniform_(-0.2, 0.2, generator=gen)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(*shape, generator=gen) + 0.5)
    return model.eval()


class C16Residual(C8Residual):
    """``C8Residual`` over C16."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 4) -> None:
        super().__init__(channels, classes, width, rotations=16)


EXACT_SIZES = {"c4_cnn": 29, "c8_residual": 33, "d4_cnn": 29, "c4_flat_head": 29,
               "c16_residual": 33}
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def _build(cls: type[nn.Module], name: str, seed: int, pretrained: bool) -> nn.Module:
    """Trained weights from ``weights/<name>.pt`` when present, else settled random init."""
    torch.manual_seed(seed)
    model = cls()
    path = WEIGHTS_DIR / f"{name}.pt"
    if not (pretrained and path.is_file()):
        n = EXACT_SIZES[name]
        return settle_batchnorm(model, (8, 1, n, n))
    # e2cnn R2Conv keeps its expanded filter as a buffer only in eval mode: the file is an
    # eval-mode state_dict, so switch to eval() before the strict load.
    model.eval()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except Exception as e:  # unreadable or mismatched file: a one-line error
        raise EqdeployError(f"cannot load trained weights {path} for {name} "
                            f"({str(e).splitlines()[0]})",
                            "delete the file to use random weights, or regenerate it with "
                            "python tools/train_reference.py") from None
    return model


def c4_cnn(pretrained: bool = True) -> C4CNN:
    """C4 reference model, trained on rotated MNIST (29x29) when its weights are bundled."""
    return _build(C4CNN, "c4_cnn", 0, pretrained)


def c8_residual(pretrained: bool = True) -> C8Residual:
    """C8 residual reference model, trained on rotated MNIST (33x33) when bundled."""
    return _build(C8Residual, "c8_residual", 1, pretrained)


def c16_residual(pretrained: bool = False) -> C16Residual:
    """C16 variant of ``c8_residual`` (random weights, BN settled on noise)."""
    return _build(C16Residual, "c16_residual", 4, pretrained)


def c4_flat_head(pretrained: bool = False) -> C4FlatHead:
    """C4 features + a head over all group channels (random weights; for ``--tap``)."""
    return _build(C4FlatHead, "c4_flat_head", 3, pretrained)


def d4_cnn(pretrained: bool = True) -> D4CNN:
    """D4 reference model, trained on rotated MNIST (29x29) when its weights are bundled."""
    return _build(D4CNN, "d4_cnn", 2, pretrained)
