"""Cross-layer equalization (Nagel et al. 2019), one scale per field.

For a chain ``y = W2 f(W1 x + b1) + b2`` with f commuting with a positive scale per unit
(ReLU, max/avg pools, group max-pooling, global mean, reshapes: ``eqdeploy.dfq.chains``),
``r1_i = max|W1[i, ...]|`` and ``r2_j = max|W2[:, j, ...]|``; per unit u (a field of the
producer's output; one channel in the orbit-agnostic mode) ``R1_u = max_{i in u} r1_i`` and
``R2_u = max r2_j`` over the consumer's columns j fed by u (after group pooling: the pooled
channel of the field), and

    s_u = sqrt(R1_u * R2_u) / R2_u;   W1[i] /= s_u,  b1[i] /= s_u,  W2[:, j] *= s_u.

For a triplet conv -> M -> conv whose middle layer M maps each unit only to itself (a
depthwise conv, or an equivariant depthwise conv grouped by fields):

    S12 = R1 / cbrt(R1 R2 R3),   S23 = cbrt(R1 R2 R3) / R3

(R2 over M's rows of the unit), after which all three ranges equal ``cbrt(R1 R2 R3)``.
Links and triplets are swept until ``max |s - 1| < tolerance`` or ``max_sweeps``.
Every channel of a field gets the same scale, so field types (and equivariance) survive;
the orbit-agnostic mode scales channels one by one, as AIMET does.
"""

from __future__ import annotations

import numpy as np
import torch

from eqdeploy.dfq.chains import Link, walk
from eqdeploy.dfq.graph import (
    Layer,
    clone,
    expand,
    layers,
    same_units,
    set_stats,
    stats_of,
    unit_max,
)
from eqdeploy.export import PlainModel


def range_ratio(r: torch.Tensor) -> float:
    """min/max of per-channel ranges (1 = balanced, near 0 = one channel dwarfs another)."""
    top = float(r.max())
    return float(r.min()) / top if top > 0 else 1.0


def _rescale_stats(pm: PlainModel, node: str, s: torch.Tensor) -> None:
    st = stats_of(pm, node)
    if st is not None:
        set_stats(pm, node, st[0] / s, st[1] / s)


def _apply(pm: PlainModel, lk: Link, s: torch.Tensor) -> None:
    """Divide the producer's unit u by ``s_u``, multiply the consumer's columns fed by u."""
    s32 = s.to(lk.producer.weight.dtype)
    per_channel = expand(s32, lk.units, lk.producer.out_channels)
    lk.producer.scale_out(1.0 / per_channel)
    lk.consumer.scale_in(lk.columns(s32))
    _rescale_stats(pm, lk.producer.node, expand(s, lk.units, lk.producer.out_channels))


def column_max(lk: Link, r: torch.Tensor) -> torch.Tensor:
    """Per unit, the max of a per-column quantity of the consumer (0 for unread units)."""
    idx = torch.as_tensor(lk.column_unit, dtype=torch.long)
    return torch.zeros(len(lk.units), dtype=r.dtype).scatter_reduce(0, idx, r, "amax")


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    ok = (num > 0) & (den > 0)
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)),
                       torch.ones_like(num))


def pair_scales(r1: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """``s = sqrt(r1 r2) / r2`` per unit (1 where a range is zero)."""
    return torch.sqrt(_safe_ratio(r1, r2))


def triplet_scales(r1: torch.Tensor, r2: torch.Tensor, r3: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(S12, S23)`` of the depthwise triplet formula (ones where a range is zero)."""
    c = torch.pow(r1 * r2 * r3, 1.0 / 3.0)
    return _safe_ratio(r1, c), _safe_ratio(c, r3)


def _unit_aligned(mid: Layer, slices: list[np.ndarray]) -> bool:
    """Does ``mid`` map every unit only to the same unit (groups nested in units)?"""
    if mid.in_channels != mid.out_channels or mid.groups == 1:
        return False
    cpg = mid.in_channels // mid.groups
    # a unit holds every channel of each conv group it touches
    return all(len(idx) == cpg * len(np.unique(idx // cpg)) for idx in slices)


def _items(found_links: list[Link]) -> list[tuple]:
    """Pairs and triplets to sweep (a triplet: two identity links around a unit-aligned
    depthwise layer)."""
    by_producer = {lk.producer.node: lk for lk in found_links}
    items, used = [], set()
    for name, lk in by_producer.items():
        if name in used:
            continue
        mid = lk.consumer
        nxt = by_producer.get(mid.node)
        if nxt is not None and mid.node not in used and lk.identity and nxt.identity \
                and same_units(nxt.units, lk.units) and _unit_aligned(mid, lk.units):
            items.append(("triplet", lk, nxt))
            used.update({name, mid.node})
        else:
            items.append(("pair", lk, None))
            used.add(name)
    return items


def equalize(pm: PlainModel, orbit_agnostic: bool = False, tolerance: float = 1e-6,
             max_sweeps: int = 100) -> tuple[PlainModel, dict]:
    """Cross-layer equalization of every conv->conv / conv->depthwise->conv chain."""
    work = clone(pm)
    found = layers(work)
    found_links, stops = walk(work, found, orbit_agnostic)
    items = _items(found_links)
    touched = sorted({lay.node for _, a, b in items
                      for lay in (a.producer, a.consumer, *((b.consumer,) if b else ()))})
    before = {n: found[n].out_ranges() for n in touched}
    sweeps, delta = 0, 0.0
    for sweeps in range(1, max_sweeps + 1):  # noqa: B007 - reported below
        delta = 0.0
        for kind, a, b in items:
            r1 = unit_max(a.producer.out_ranges().double(), a.units)
            if kind == "pair":
                s = pair_scales(r1, column_max(a, a.consumer.in_ranges().double()))
                _apply(work, a, s)
                delta = max(delta, float((s - 1).abs().max()))
                continue
            mid = a.consumer
            r2 = unit_max(mid.out_ranges().double(), a.units)
            r3 = column_max(b, b.consumer.in_ranges().double())
            s12, s23 = triplet_scales(r1, r2, r3)
            _apply(work, a, s12)
            _apply(work, b, s23)
            delta = max(delta, float((s12 - 1).abs().max()), float((s23 - 1).abs().max()))
        if delta < tolerance:
            break
    paired = {a.producer.node for _, a, _ in items} | {b.producer.node for _, _, b in items if b}
    ratios = {n: {"before": round(range_ratio(before[n]), 6),
                  "after": round(range_ratio(found[n].out_ranges()), 6)} for n in touched}
    report = {
        "mode": "orbit-agnostic" if orbit_agnostic else "block-aware",
        "pairs": [{"producer": a.producer.node, "consumer": a.consumer.node, "ops": a.ops,
                   **({"through_group_pooling": True} if a.passes_group_pool else {})}
                  for k, a, _ in items if k == "pair"],
        "triplets": [{"layers": [a.producer.node, a.consumer.node, b.consumer.node]}
                     for k, a, b in items if k == "triplet"],
        "chain_ends": [st for st in stops if st["producer"] not in paired],
        "sweeps": sweeps if items else 0,
        "converged": bool(delta < tolerance),
        "final_max_scale_change": delta,
        "range_ratio": ratios,
    }
    return work, report
