"""A DFQ stress model: a C4 e2cnn CNN whose per-tensor INT8 collapses without equalization.

conv 5x5 -> BN -> ReLU -> max pool -> conv 3x3 -> BN -> ReLU -> max pool -> conv 3x3 -> BN ->
ReLU -> group pooling -> spatial mean -> Linear head (29x29 inputs, aligned: rotations by 90
degrees act exactly). Its BatchNorm scales are spread over ``decades`` (three by default)
across fields and a fraction of fields carry large betas (``beta = gamma * U(2, 5)``), set
before the statistics settle on noise (``mobilenet.settle``), so consecutive folded layers get
reciprocal per-field ranges, the imbalance trained MobileNetV2-style nets show. The last conv's
imbalance sits in front of the group pooling: only equalization through the group max-pool and
the global mean into the head removes it.
"""

from __future__ import annotations

import torch
from torch import nn

from eqdeploy.adapters import e2cnn_compat

e2cnn_compat.install()

from e2cnn import gspaces  # noqa: E402
from e2cnn import nn as enn  # noqa: E402

SIZE = 29  # aligned input size (5x5 'same' conv, two 3x3 stride-2 pools with padding 1)


def _block(cin, cout, k: int) -> list[nn.Module]:
    return [enn.R2Conv(cin, cout, k, padding=k // 2, bias=False), enn.InnerBatchNorm(cout),
            enn.ReLU(cout)]


class StressC4(nn.Module):
    """C4-invariant CNN over regular fields with a torch Linear head after group pooling."""

    def __init__(self, channels: int = 1, classes: int = 10, widths=(6, 8, 12)) -> None:
        super().__init__()
        gs = gspaces.Rot2dOnR2(4)
        self.input_type = enn.FieldType(gs, channels * [gs.trivial_repr])
        f1, f2, f3 = (enn.FieldType(gs, w * [gs.regular_repr]) for w in widths)
        self.features = enn.SequentialModule(
            *_block(self.input_type, f1, 5), enn.PointwiseMaxPool(f1, 3, 2, padding=1),
            *_block(f1, f2, 3), enn.PointwiseMaxPool(f2, 3, 2, padding=1),
            *_block(f2, f3, 3))
        self.gpool = enn.GroupPooling(f3)
        self.head = nn.Linear(widths[-1], classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gpool(self.features(enn.GeometricTensor(x, self.input_type))).tensor
        return self.head(x.mean(dim=(2, 3)))


def stress_c4(decades: float = 3.0, high_bias: float = 0.2,
              beta_over_gamma: tuple[float, float] = (2.0, 5.0), seed: int = 0) -> StressC4:
    """The settled stress model (BN gammas over ``10**U(-decades/2, decades/2)`` per field; a
    ``high_bias`` fraction of fields with ``beta / gamma ~ U(*beta_over_gamma)``)."""
    from eqdeploy.models.mobilenet import settle

    torch.manual_seed(seed)
    return settle(StressC4(), (8, 1, SIZE, SIZE), imbalance=decades / 2, seed=seed,
                  high_bias=high_bias, high_bias_range=beta_over_gamma)
