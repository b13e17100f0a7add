"""Interpolated action of any group element on an image grid: rotation, mask (numpy only).

Only multiples of 90 degrees and the axis flips act exactly on a square pixel grid; every
other rotation (45, 30, 22.5 degrees) is applied here by **bilinear interpolation about the
grid centre** ``((H - 1) / 2, (W - 1) / 2)``, zeros outside the grid. Bilinear because it is
what the runtimes' and torch's own resamplers do (``F.grid_sample``, ``align_corners=True``;
a test holds the two within 1e-5) and it never overshoots; its smoothing is part of every
interpolated error and is the same for the FP32 and the INT8 model, which is why the gate
is their ratio at the same element. A D_N element mirrors W first (exact), then rotates,
in the order and direction of :func:`eqdeploy.groups.apply_pixel_action`; at a multiple of
90 degrees cos/sin are snapped to 0/+-1, so the interpolated path gives ``rot90`` bit for
bit.

The circular mask is the disc of radius ``mask_radius * (min(H, W) - 1) / 2`` about the
centre (``mask_radius`` is the SymmetrySpec's, 1.0 = the inscribed disc through the centres
of the edge pixels, so every sample of a rotated disc pixel lies inside the grid). It is
applied to a probe before *and* after rotating, so ``f(x)`` and ``f(g.x)`` see the same
disc and nothing that the rotation moved in from the corners. Outside the disc a probe is
filled with its own mean over the disc's outermost one-pixel ring (per channel; the same
value for x and g.x), so an image's background stays background: a zero fill drew a ring
the model never saw (trained C8 net on MNIST digits at 45 degrees: top-1 agreement of f(x)
and f(g.x) 0.80 with a zero fill, 0.92 with this fill, 0.92 rotating the unmasked digit).
Feature-map outputs are compared inside the disc of the same relative radius on their own
grid (zero outside: nothing there is compared).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from eqdeploy.errors import EqdeployError
from eqdeploy.groups import Element

METHOD = "bilinear"


def _snap(v: float) -> float:
    """cos/sin of a multiple of 90 degrees exactly (0, 1, -1), so integer samples stay exact."""
    r = round(v)
    return float(r) if abs(v - r) < 1e-12 else v


@lru_cache(maxsize=128)
def _sampling(h: int, w: int, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    """Flat source indices (4, H*W) and bilinear weights (4, H*W) of a rotation by ``degrees``.

    Output pixel (y, x) (centred) samples the input at ``R(-theta) (y, x)``:
    ``y_s = cos t * y + sin t * x``, ``x_s = -sin t * y + cos t * x``; at 90 degrees that is
    ``out[i, j] = in[j, W - 1 - i]``, which is ``np.rot90(in)``.
    """
    t = math.radians(degrees)
    c, s = _snap(math.cos(t)), _snap(math.sin(t))
    cy, cx = (h - 1) / 2, (w - 1) / 2
    yy, xx = np.meshgrid(np.arange(h) - cy, np.arange(w) - cx, indexing="ij")
    sy, sx = c * yy + s * xx + cy, -s * yy + c * xx + cx
    y0, x0 = np.floor(sy), np.floor(sx)
    fy, fx = sy - y0, sx - x0
    idx, wts = [], []
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yi, xi = y0 + dy, x0 + dx
            inside = (yi >= 0) & (yi < h) & (xi >= 0) & (xi < w)
            idx.append(np.where(inside, yi * w + xi, 0).astype(np.int64).ravel())
            wts.append(np.where(inside, wy * wx, 0.0).ravel())
    idx_a, wts_a = np.stack(idx), np.stack(wts)
    idx_a.setflags(write=False)
    wts_a.setflags(write=False)
    return idx_a, wts_a


def rotate(x: np.ndarray, degrees: float, flip: bool = False) -> np.ndarray:
    """Rotate the last two axes of ``x`` by ``degrees`` about the grid centre (bilinear,
    zeros outside); with ``flip`` mirror W first. Same dtype as ``x``."""
    if flip:
        x = x[..., ::-1]
    h, w = x.shape[-2:]
    idx, wts = _sampling(int(h), int(w), float(degrees) % 360.0)
    flat = np.ascontiguousarray(x).reshape(*x.shape[:-2], h * w).astype(np.float64)
    out = sum(flat[..., idx[k]] * wts[k] for k in range(4))
    return out.reshape(x.shape).astype(x.dtype)


def rotate_element(x: np.ndarray, element: Element) -> np.ndarray:
    """The spatial part of ``element`` by interpolation (exact elements included)."""
    return rotate(x, element.degrees, flip=bool(element.flip))


@lru_cache(maxsize=32)
def disc_mask(h: int, w: int, mask_radius: float = 1.0) -> np.ndarray:
    """Boolean (H, W) disc about the grid centre, radius ``mask_radius * (min(H, W) - 1) / 2``."""
    if not (math.isfinite(mask_radius) and mask_radius > 0):
        raise EqdeployError(f"mask radius {mask_radius!r} is not a positive number",
                            "use a fraction of the inscribed disc, e.g. 1.0")
    r = mask_radius * (min(h, w) - 1) / 2
    yy, xx = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    mask = yy ** 2 + xx ** 2 <= r * r + 1e-9
    mask.setflags(write=False)
    return mask


def masked(x: np.ndarray, mask_radius: float, fill: np.ndarray | float = 0.0) -> np.ndarray:
    """``x`` with every pixel outside the disc set to ``fill`` (last two axes; ``fill``
    broadcasts against ``x[..., :1, :1]``)."""
    return np.where(disc_mask(*x.shape[-2:], mask_radius), x, fill).astype(x.dtype)


def ring_fill(x: np.ndarray, mask_radius: float) -> np.ndarray:
    """Mean of ``x`` over the disc's outermost one-pixel ring, shape ``x.shape[:-2] + (1, 1)``
    (the whole disc when it is too small to have a ring)."""
    h, w = x.shape[-2:]
    disc = disc_mask(h, w, mask_radius)
    r = mask_radius * (min(h, w) - 1) / 2
    ring = disc & ~disc_mask(h, w, mask_radius * (r - 1) / r) if r > 1 else disc
    ring = ring if ring.any() else disc
    return x[..., ring].mean(axis=-1)[..., None, None].astype(x.dtype)
