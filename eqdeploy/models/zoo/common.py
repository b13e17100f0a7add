"""What every zoo model shares: BatchNorm statistics warmed on the data it is used on.

The zoo models have random weights; ``warm_batchnorm`` gives their BatchNorm layers the
kind of running statistics training leaves behind (non-trivial means and variances, affine
parameters away from 1 and 0), measured on the images the model is converted and probed
with, as training on them would: MNIST digits for 1x29x29 models (the bundled set's
``calib`` split; the conversions probe with its ``test`` split), smooth random images
(spatially correlated, unlike white noise) otherwise. Statistics from other images than
the probes' make a data-free conversion quantize for the wrong distribution.
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


def warm_images(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Images to warm BatchNorm on: normalized MNIST digits for (N, 1, 29, 29), else
    ``smooth_images``."""
    if tuple(shape[1:]) != (1, 29, 29):
        return smooth_images(shape, generator)
    import numpy as np

    from eqdeploy.datasets import MNIST29

    digits = torch.from_numpy(np.load(MNIST29)["calib"])
    pick = torch.randperm(len(digits), generator=generator)[:shape[0]]
    return digits[pick]


def warm_batchnorm(model: nn.Module, shape: tuple[int, ...], seed: int = 0,
                   batches: int = 4) -> nn.Module:
    """Random affine parameters and running statistics from ``batches`` batches of
    ``warm_images`` of ``shape`` in every BatchNorm layer (torch, e2cnn/escnn InnerBatchNorm,
    GrouPy-style BatchNorm3d); returns ``model`` in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the warm-up batches
            m.reset_running_stats()
            if m.affine:
                with torch.no_grad():
                    m.weight.uniform_(0.6, 1.4, generator=gen)
                    m.bias.uniform_(-0.2, 0.2, generator=gen)
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(warm_images(shape, gen))
    return model.eval()
