"""Channel matching for orbit discovery: which axes of a tensor the group moves, and how.

A probed tensor ``T`` of shape ``(N, *axes)`` is read through a ``View``: two adjacent
axes are its spatial axes (``pair``), rotated/flipped by the pixel action when the view
``moves`` them, else only samples; every other non-batch axis is a *channel axis*, and the
channel axes are flattened in C order into one channel index. So ``(N, C, H, W)`` has
channel ``c``; ``(N, C, G, H, W)`` and ``(N, C, H, W, G)`` (a rotation stack on the last
axis) have channel ``c*G + g``; a tensor without spatial extent (``(N, C, G)`` after a
``squeeze()``, ``(N, C)`` after global pooling) is read with no pair, all axes channels.
``candidate_views`` lists the views to try, most natural first; discovery keeps the first
under which a channel permutation maps ``T(g.x)`` onto ``g.T(x)`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eqdeploy.groups import Element, apply_pixel_action

MATCH_COLUMNS = 4096  # samples per channel used to propose the assignment
MAX_FLAT_CHANNELS = 4096  # largest tensor read with every axis a channel axis


@dataclass(frozen=True)
class View:
    """Channel axes + optional spatial pair of a ``(N, *axes)`` tensor (axes >= 1)."""

    ndim: int
    pair: tuple[int, int] | None
    moves: bool  # does the pixel action move the pair's entries?

    @property
    def channel_axes(self) -> tuple[int, ...]:
        return tuple(a for a in range(1, self.ndim) if self.pair is None or a not in self.pair)

    def channels(self, shape: tuple[int, ...]) -> int:
        return int(np.prod([shape[a] for a in self.channel_axes], dtype=np.int64))

    def canon(self, t: np.ndarray) -> np.ndarray:
        """``t`` as ``(N, channels, H, W)`` (pair last) or ``(N, channels)`` (no pair)."""
        if self.pair is None:
            return t.reshape(t.shape[0], -1)
        m = np.moveaxis(t, self.pair, (-2, -1))
        return m.reshape(m.shape[0], -1, *m.shape[-2:])

    def is_channel_first(self, shape: tuple[int, ...]) -> bool:
        """Is the channel index the tensor's axis 1 (a 2D ``(N, C)`` or 4D ``(N, C, H, W)``
        tensor read the usual way), so that spec layouts can describe it?"""
        if self.ndim == 2:
            return True
        if self.ndim != 4:
            return False
        return self.pair == (2, 3) or (self.pair is None and shape[2] == shape[3] == 1)

    def spatial(self) -> bool:
        return self.pair is not None and self.moves

    def to_json(self, shape: tuple[int, ...]) -> dict:
        return {"shape": [None, *shape[1:]], "channel_axes": list(self.channel_axes),
                "spatial_axes": None if self.pair is None else list(self.pair),
                "spatial_action": self.spatial()}


def candidate_views(shape: tuple[int, ...], element: Element) -> list[View]:
    """Views of a ``shape`` tensor under which ``element`` may act, most natural first:
    adjacent axis pairs from the last (moved, then as samples), then every axis a channel."""
    ndim = len(shape)
    q = element.quarter_turns or 0
    out = []
    for a in range(ndim - 2, 0, -1):
        pair = (a, a + 1)
        if q % 2 == 0 or shape[a] == shape[a + 1]:
            out.append(View(ndim, pair, True))
        out.append(View(ndim, pair, False))
    if int(np.prod(shape[1:], dtype=np.int64)) <= MAX_FLAT_CHANNELS:
        out.append(View(ndim, None, False))
    return out


def reference(base: np.ndarray, view: View, element: Element) -> np.ndarray:
    """``g`` applied to the canonical form of a tensor without its channel permutation."""
    c = view.canon(base)
    return apply_pixel_action(c, element) if view.spatial() else c


@dataclass
class Match:
    perm: np.ndarray | None
    err: float  # worst relative error of the best assignment
    channel: int  # channel with the worst error
    ties: int  # channels with an exactly indistinguishable partner


def as_channels(t: np.ndarray) -> np.ndarray:
    c = t.shape[1]
    return np.moveaxis(t, 1, 0).reshape(c, -1).astype(np.float64)


def _scale(a: np.ndarray, b: np.ndarray) -> float:
    return max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)), 1e-30)


def exact(moved: np.ndarray, ref: np.ndarray, perm: np.ndarray, tol: float) -> bool:
    return float(np.abs(moved - ref[:, perm]).max(initial=0.0)) <= tol * _scale(moved, ref)


def norms_compatible(moved: np.ndarray, ref: np.ndarray, tol: float) -> bool:
    """A necessary condition for a channel permutation within ``tol``: the sorted
    per-channel norms agree within ``sqrt(samples) * tol * scale`` (O(C) instead of the
    O(C^2) assignment, so hopeless views are skipped cheaply)."""
    a, b = as_channels(moved), as_channels(ref)
    if a.shape != b.shape:
        return False
    bound = np.sqrt(a.shape[1]) * tol * _scale(a, b) * (1 + 1e-9)
    na, nb = np.sort(np.linalg.norm(a, axis=1)), np.sort(np.linalg.norm(b, axis=1))
    return bool(np.abs(na - nb).max(initial=0.0) <= bound)


def match_channels(moved: np.ndarray, ref: np.ndarray, tol: float) -> Match:
    """The permutation pi with ``moved[:, j] == ref[:, pi[j]]`` within ``tol`` (relative to
    the largest magnitude), or ``perm=None`` with the best assignment's error."""
    a, b = as_channels(moved), as_channels(ref)
    c = a.shape[0]
    scale = _scale(a, b)
    atol = tol * scale
    ident = np.abs(a - b).max(axis=1, initial=0.0)
    if ident.max(initial=0.0) <= atol:
        return Match(np.arange(c), float(ident.max(initial=0.0)) / scale, 0, 0)
    cols = a.shape[1]
    sel = np.linspace(0, cols - 1, min(cols, MATCH_COLUMNS)).round().astype(np.int64)
    sa, sb = a[:, sel], b[:, sel]
    dist = (sa ** 2).sum(1)[:, None] + (sb ** 2).sum(1)[None, :] - 2.0 * sa @ sb.T
    dist = np.maximum(dist, 0.0) / (len(sel) * scale * scale)
    tie_eps = (tol * tol) * 1e-3
    ties = int(((dist < tie_eps).sum(1) > 1).sum())
    pi = dist.argmin(1)
    if len(set(pi.tolist())) != c or ties:
        from scipy.optimize import linear_sum_assignment

        # prefer the identity among (numerically) exact ties: dead or duplicate channels
        cost = np.where(dist < tie_eps, 0.0, dist) + tie_eps * (1 - np.eye(c))
        _, pi = linear_sum_assignment(cost)
    err = np.abs(a - b[pi]).max(axis=1) / scale
    worst = int(err.argmax())
    ok = float(err[worst]) <= tol
    return Match(pi if ok else None, float(err[worst]), worst, ties)
