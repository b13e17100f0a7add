"""Check a pass kept its promises: equivariance at every tensor the SymmetrySpec describes.

``tap_equivariance``: for each exact element g and each tensor T with a permutation
layout, ``max ||T(g.x) - g.T(x)|| / ||T(x)||`` over probes; a wrong layout carry-over or a
field scaled channel by channel shows up here.
``interpolated_tap_error``: the same for a rotation without exact pixel action (45 degrees
in C8, 30 in C12), compared on the global average of each channel over a disc-masked
input (averaging commutes with rotation up to interpolation), so it measures whether the
channels of a field still transform into each other, which per-channel scaling breaks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from eqdeploy.export import PlainModel
from eqdeploy.groups import Element
from eqdeploy.harness.rotate import masked, rotate

__all__ = ["taps", "tap_equivariance", "disc_mask", "rotate", "interpolated_tap_error"]


class _Taps(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, names: set[str]) -> None:
        super().__init__(gm)
        self.names, self.values = names, {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.names and isinstance(out, torch.Tensor):
            self.values[n.name] = out.detach().numpy().copy()
        return out


def taps(pm: PlainModel, x: np.ndarray, names: set[str] | None = None) -> dict[str, np.ndarray]:
    """Values of the named tensors (default: all with a layout) for the batch ``x``."""
    names = set(pm.spec.tensors) if names is None else names
    it = _Taps(pm.module(), names)
    with torch.no_grad():
        it.run(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return it.values


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return float((np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1),
                                                             1e-30)).max())


def tap_equivariance(pm: PlainModel, probes: np.ndarray) -> dict[str, float]:
    """Worst relative error per tensor over the exact non-identity elements."""
    spec = pm.spec
    base = taps(pm, probes)
    worst: dict[str, float] = {}
    for g in spec.group.exact_elements:
        moved = taps(pm, spec.act(probes, spec.input, g))
        for name, val in base.items():
            lay = spec.tensors[name]
            if spec.channel_perm(lay, g) is None or val.ndim != (4 if lay.spatial else 2):
                continue
            err = _rel(moved[name], spec.act(val, lay, g))
            worst[name] = max(worst.get(name, 0.0), err)
    return worst


def disc_mask(x: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """``x`` zeroed outside the inscribed disc shrunk by ``margin`` pixels (the harness's
    mask, ``eqdeploy/harness/rotate.py``)."""
    return masked(x, 1.0 - 2.0 * margin / (min(x.shape[-2:]) - 1)).astype(np.float32)


def interpolated_tap_error(pm: PlainModel, probes: np.ndarray, element: Element,
                           names: set[str] | None = None) -> dict[str, float]:
    """Per tensor: mean over fields f of ``||avg T(R x)_f - (P avg T(x))_f|| / ||(P avg T(x))_f||``
    (norms over probes and the field's channels), R an interpolated rotation, P the
    layout's channel permutation, avg over space. Per field, so that one scale per field
    (block-aware equalization) leaves it unchanged exactly."""
    spec = pm.spec
    x = disc_mask(probes, margin=2.0)
    base = taps(pm, x, names)
    moved = taps(pm, rotate(x, element.degrees), names)
    out = {}
    for name, val in base.items():
        lay = spec.tensors[name]
        perm = spec.channel_perm(lay, element)
        if perm is None or val.ndim not in (2, 4):
            continue
        a = moved[name].mean(axis=(2, 3)) if val.ndim == 4 else moved[name]
        b = (val.mean(axis=(2, 3)) if val.ndim == 4 else val)[:, perm]
        errs = [np.linalg.norm(a[:, f] - b[:, f]) / max(np.linalg.norm(b[:, f]), 1e-30)
                for f in spec.field_channels(lay)]
        out[name] = float(np.mean(errs))
    return out
