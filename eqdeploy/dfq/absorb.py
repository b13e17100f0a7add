"""High-bias absorption (Nagel et al. 2019), with the shift shared by each field.

For a link producer -> ReLU (-> max pool / mean) -> consumer with folded-BN statistics
(beta, gamma) of the producer's output: ``c_i = max(0, beta_i - n |gamma_i|)`` (n = 3),
taken as the minimum over each field; ``b1 -= c`` and ``b2 += W2 . c`` (W2 summed over the
kernel). Exact whenever the pre-activation stays >= c, except at the borders of a
zero-padded consumer (padding stays 0 while the signal moved by -c): such consumers are
skipped unless ``padded=True`` (what AIMET does).
"""

from __future__ import annotations

import torch

from eqdeploy.dfq.graph import clone, expand, layers, links, set_stats, stats_of, unit_min, units
from eqdeploy.export import PlainModel

# ops the shift commutes with exactly (given pre-activation >= c)
_SHIFT_SAFE = {"aten.relu", "aten.relu_", "aten.max_pool2d", "aten.mean", "aten.flatten",
               "aten.clone", "aten.dropout", "aten.contiguous", "aten.alias", "aten.detach"}


def absorb_high_bias(pm: PlainModel, orbit_agnostic: bool = False, sigmas: float = 3.0,
                     padded: bool = False) -> tuple[PlainModel, dict]:
    """Move the always-positive part of ReLU inputs into the next layer's bias."""
    work = clone(pm)
    found = layers(work)
    absorbed, skipped = [], []
    for lk in links(work, found):
        p, c = lk.producer, lk.consumer
        where = {"producer": p.node, "consumer": c.node}
        st = stats_of(work, p.node)
        reason = None
        if not lk.has_relu:
            reason = "no ReLU between the layers"
        elif not set(lk.ops) <= _SHIFT_SAFE:
            reason = f"shift does not commute with {sorted(set(lk.ops) - _SHIFT_SAFE)}"
        elif st is None:
            reason = "no BN statistics for the producer"
        elif any(int(v) for v in c.padding) and not padded:
            reason = "zero-padded consumer (absorbing would change border outputs)"
        elif p.bias is None or c.bias is None:
            reason = "a layer has no bias"
        sl = units(work, p.node, p.out_channels, orbit_agnostic)
        if reason is None and sl is None:
            reason = "no field layout for the linking tensor"
        if reason is not None:
            skipped.append({**where, "reason": reason})
            continue
        mean, std = st
        shift = torch.clamp(mean - sigmas * std, min=0.0)
        shift = expand(unit_min(shift, sl), sl, p.out_channels)
        if not bool((shift > 0).any()):
            continue
        with torch.no_grad():
            p.bias.sub_(shift.to(p.bias.dtype))
            c.bias.add_(c.apply_in(shift).to(c.bias.dtype))
        set_stats(work, p.node, mean - shift, std)
        absorbed.append({**where, "channels": int((shift > 0).sum()),
                         "max_shift": float(shift.max())})
    return work, {"absorbed": absorbed, "skipped": skipped, "sigmas": sigmas}
