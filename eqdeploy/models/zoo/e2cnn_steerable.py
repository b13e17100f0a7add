"""Steerable CNNs written the way e2cnn's tutorial notebook writes them.

Follows ``examples/model.ipynb`` of QUVA-Lab/e2cnn (the rotated-MNIST ``C8SteerableCNN``),
with fewer fields per layer so a conversion stays fast. Patterns it reproduces:

- ``MaskModule(in_type, 29, margin=1)`` on the input, ``R2Conv`` / ``InnerBatchNorm`` /
  ``ReLU(inplace=True)`` blocks in ``SequentialModule``s, ``PointwiseAvgPoolAntialiased``
  (sigma 0.66) for the strided pools and a final stride-1 one without padding that pools
  the last 5x5 map to 1x1, ``GroupPooling``, then the user's torch head
  ``Linear -> BatchNorm1d -> ELU(inplace=True) -> Linear`` on ``x.reshape(x.shape[0], -1)``.
- ``c16_steerable``: the same network over C16 with the global pooling written as people
  do when they drop the antialiased pool: ``F.adaptive_max_pool2d(x, 1)`` on the tensor
  after group pooling, ``torch.flatten`` and one ``Linear``.

The module imports e2cnn as a user's file would (no eqdeploy import): on numpy 2 e2cnn
needs eqdeploy's patches before it builds a basis, which loading through eqdeploy applies.
Input 1x29x29 (the notebook's padded MNIST size; every strided stage is exactly aligned).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from e2cnn import gspaces, nn

SIZE = 29


def _block(in_type, out_type, kernel_size: int, padding: int) -> nn.SequentialModule:
    return nn.SequentialModule(
        nn.R2Conv(in_type, out_type, kernel_size=kernel_size, padding=padding, bias=False),
        nn.InnerBatchNorm(out_type),
        nn.ReLU(out_type, inplace=True),
    )


class C8SteerableCNN(torch.nn.Module):
    """The notebook's six-block C8 steerable CNN for 29x29 digits (fields per block
    ``widths``; the notebook uses 24, 48, 48, 96, 96, 64)."""

    def __init__(self, n_classes: int = 10, widths=(2, 3, 3, 4, 4, 4), rotations: int = 8
                 ) -> None:
        super().__init__()
        self.r2_act = gspaces.Rot2dOnR2(N=rotations)
        in_type = nn.FieldType(self.r2_act, [self.r2_act.trivial_repr])
        self.input_type = in_type

        def regular(n: int) -> nn.FieldType:
            return nn.FieldType(self.r2_act, n * [self.r2_act.regular_repr])

        out_type = regular(widths[0])
        self.block1 = nn.SequentialModule(
            nn.MaskModule(in_type, SIZE, margin=1),
            nn.R2Conv(in_type, out_type, kernel_size=7, padding=1, bias=False),
            nn.InnerBatchNorm(out_type),
            nn.ReLU(out_type, inplace=True),
        )
        self.block2 = _block(self.block1.out_type, regular(widths[1]), 5, 2)
        self.pool1 = nn.SequentialModule(
            nn.PointwiseAvgPoolAntialiased(self.block2.out_type, sigma=0.66, stride=2))
        self.block3 = _block(self.block2.out_type, regular(widths[2]), 5, 2)
        self.block4 = _block(self.block3.out_type, regular(widths[3]), 5, 2)
        self.pool2 = nn.SequentialModule(
            nn.PointwiseAvgPoolAntialiased(self.block4.out_type, sigma=0.66, stride=2))
        self.block5 = _block(self.block4.out_type, regular(widths[4]), 5, 2)
        self.block6 = _block(self.block5.out_type, regular(widths[5]), 5, 1)
        self.pool3 = nn.PointwiseAvgPoolAntialiased(self.block6.out_type, sigma=0.66, stride=1,
                                                    padding=0)
        self.gpool = nn.GroupPooling(self.block6.out_type)
        c = self.gpool.out_type.size
        self.fully_net = torch.nn.Sequential(
            torch.nn.Linear(c, 32),
            torch.nn.BatchNorm1d(32),
            torch.nn.ELU(inplace=True),
            torch.nn.Linear(32, n_classes),
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - the notebook's name
        x = nn.GeometricTensor(input, self.input_type)
        x = self.block1(x)
        x = self.block2(x)
        x = self.pool1(x)
        x = self.block3(x)
        x = self.block4(x)
        x = self.pool2(x)
        x = self.block5(x)
        x = self.block6(x)
        x = self.pool3(x)
        x = self.gpool(x)
        x = x.tensor
        return self.fully_net(x.reshape(x.shape[0], -1))


class C16SteerableCNN(torch.nn.Module):
    """C16 variant: four blocks, one antialiased strided pool, group pooling, then a global
    ``F.adaptive_max_pool2d`` and a linear classifier (on one invariant per field of the last
    block: 8; with 2, trained, it separated the digits at 31% and its decisions nearly
    tied)."""

    def __init__(self, n_classes: int = 10, widths=(1, 2, 2, 8)) -> None:
        super().__init__()
        self.r2_act = gspaces.Rot2dOnR2(N=16)
        self.input_type = nn.FieldType(self.r2_act, [self.r2_act.trivial_repr])

        def regular(n: int) -> nn.FieldType:
            return nn.FieldType(self.r2_act, n * [self.r2_act.regular_repr])

        self.block1 = nn.SequentialModule(
            nn.MaskModule(self.input_type, SIZE, margin=1),
            nn.R2Conv(self.input_type, regular(widths[0]), kernel_size=7, padding=3,
                      bias=False),
            nn.InnerBatchNorm(regular(widths[0])),
            nn.ReLU(regular(widths[0]), inplace=True),
        )
        self.block2 = _block(self.block1.out_type, regular(widths[1]), 5, 2)
        self.pool1 = nn.PointwiseAvgPoolAntialiased(self.block2.out_type, sigma=0.66, stride=2)
        self.block3 = _block(self.block2.out_type, regular(widths[2]), 5, 2)
        self.block4 = _block(self.block3.out_type, regular(widths[3]), 3, 1)
        self.gpool = nn.GroupPooling(self.block4.out_type)
        self.fc = torch.nn.Linear(self.gpool.out_type.size, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.GeometricTensor(x, self.input_type)
        x = self.pool1(self.block2(self.block1(x)))
        x = self.gpool(self.block4(self.block3(x)))
        x = F.adaptive_max_pool2d(x.tensor, 1)
        return self.fc(torch.flatten(x, 1))


def c8_steerable() -> C8SteerableCNN:
    """The notebook's C8 steerable CNN (seeded random weights)."""
    torch.manual_seed(11)
    return C8SteerableCNN()


def c16_steerable() -> C16SteerableCNN:
    """C16 steerable CNN with a global adaptive max pool (seeded random weights)."""
    torch.manual_seed(12)
    return C16SteerableCNN()
