"""What every zoo model shares: the digits it is trained, warmed and probed on.

``digit_images`` lays the bundled normalized 29x29 MNIST digits out for a model's input
(centred on a normalized-background canvas, repeated over the channels: 1x29x29 as they
are, 3x33x33 for the wide ResNets). ``measure_batchnorm`` measures every BatchNorm layer's
running statistics on the unlabelled ``calib`` digits laid out so (``warm_images``; smooth
random images, spatially correlated unlike white noise, for an input no digit fits), as
training on them leaves them; ``train.train_on_digits`` ends with it. ``warm_batchnorm``
gives an untrained model (``build(name, trained=False)``) random affine BatchNorm parameters
away from 1 and 0 and those statistics. Statistics from other images than the probes'
(the bundled ``test`` digits) make a data-free conversion (ranges distilled from them)
quantize for the wrong distribution.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def smooth_images(shape: tuple[int, ...], generator: torch.Generator,
                  cell: int = 4) -> torch.Tensor:
    """Random images of ``shape`` (N, C, H, W): noise on a coarse grid (one value per
    ``cell`` pixels), bilinearly upsampled, plus a per-image offset and contrast."""
    n, c, h, w = shape
    coarse = torch.randn(n, c, h // cell + 2, w // cell + 2, generator=generator)
    x = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=True)
    gain = torch.rand(n, 1, 1, 1, generator=generator) + 0.5
    offset = torch.randn(n, 1, 1, 1, generator=generator) * 0.3
    return x * gain + offset


def digit_images(digits: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """Normalized 1x29x29 ``digits`` laid out as (C, H, W) ``shape`` inputs: centred on a
    normalized-background canvas of H x W (H, W >= 29, same parity), repeated over the C
    channels; ``None`` where a 29x29 digit does not fit."""
    from eqdeploy.datasets import BACKGROUND, BASE_SIZE

    c, h, w = shape
    if min(h, w) < BASE_SIZE or (h - BASE_SIZE) % 2 or (w - BASE_SIZE) % 2:
        return None
    ph, pw = (h - BASE_SIZE) // 2, (w - BASE_SIZE) // 2
    x = F.pad(digits, (pw, pw, ph, ph), value=float(BACKGROUND))
    return x.expand(-1, c, -1, -1).contiguous()


def warm_images(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Images to warm BatchNorm on: the bundled ``calib`` MNIST digits laid out for the
    input (``digit_images``), else ``smooth_images``."""
    import numpy as np

    from eqdeploy.datasets import MNIST29

    with np.load(MNIST29) as data:
        digits = digit_images(torch.from_numpy(data["calib"]), tuple(shape[1:]))
    if digits is None:
        return smooth_images(shape, generator)
    pick = torch.randperm(len(digits), generator=generator)[:shape[0]]
    return digits[pick]


def measure_batchnorm(model: nn.Module, shape: tuple[int, ...], seed: int = 0,
                      batches: int = 4, generator: torch.Generator | None = None
                      ) -> nn.Module:
    """Running statistics of every BatchNorm layer measured afresh over ``batches`` batches
    of ``warm_images`` of ``shape`` (affine parameters kept; images drawn with ``generator``,
    else one seeded with ``seed``); returns ``model`` in eval mode."""
    gen = generator or torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the warm-up batches
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(warm_images(shape, gen))
    return model.eval()


def warm_batchnorm(model: nn.Module, shape: tuple[int, ...], seed: int = 0,
                   batches: int = 4) -> nn.Module:
    """Random affine parameters and running statistics from ``batches`` batches of
    ``warm_images`` of ``shape`` in every BatchNorm layer (torch, e2cnn/escnn InnerBatchNorm,
    GrouPy-style BatchNorm3d); returns ``model`` in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            with torch.no_grad():
                m.weight.uniform_(0.6, 1.4, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
    return measure_batchnorm(model, shape, batches=batches, generator=gen)
