"""High-bias absorption (Nagel et al. 2019), with the shift shared by each field.

For a chain producer -> ReLU (-> max pool / group max-pool / mean / reshapes) -> consumer
with folded-BN statistics (beta, gamma) of the producer's output:
``c_i = max(0, beta_i - n |gamma_i|)`` (n = 3), taken as the minimum over each field;
``b1 -= c`` and ``b2 += W2 . c`` (W2 summed over the kernel; after group pooling column j
gets the shift of its field). Exact whenever the pre-activation stays >= c, except at the
borders of a zero-padded consumer: the padding stays 0 while the signal moved by -c, which
is the old network padded with c instead of 0. Given the assumption, that error is an exact,
input-independent map ``E = conv(ring_c, W2)`` (``ring_c``: c on the padding ring, 0 inside;
no stride or group changes that). An exact fix needs a pad value per channel, which neither
ONNX ``Pad`` nor TFLite ``PADV2`` has (one scalar per tensor). ``padded="exact"`` (the
default) lets the network pad with the shift itself, exactly: constant channels produced by
the producer carry it (``eqdeploy.dfq.constant_channels``), wherever producer and consumer
are ungrouped convs joined by ReLU / max pools. Elsewhere (a depthwise consumer), and with
``padded="measured"``, absorption is taken with the error measured and reported, by this
criterion, in the consumer's output:

    absorb  iff  sqrt(q(D_after)^2 + rms(E)^2) < q(D_before),
    q(D) = D / sqrt(12) * sqrt(mean_o sum_{j,k} W2[o, j, k]^2)

with D the per-tensor INT8 step of the producer's ReLU output (range ``[0, max_i(beta_i -
c_i + 6 gamma_i)] / 255``, the data-free range rule): absorption is taken where the rounding
noise it removes outweighs the border error it adds. ``padded="never"`` skips padded
consumers, ``"always"`` absorbs them regardless (what AIMET does).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from eqdeploy.dfq.chains import walk
from eqdeploy.dfq.constant_channels import add_constant_channels, fit_to_data, plan_for
from eqdeploy.dfq.graph import clone, expand, layers, set_stats, stats_of, unit_min
from eqdeploy.export import PlainModel

# ops the shift commutes with exactly (given pre-activation >= c; a shared shift per field)
_SHIFT_SAFE = {"aten.relu", "aten.relu_", "aten.max_pool2d", "aten.mean", "aten.amax",
               "aten.flatten", "aten.reshape", "aten.view", "aten._unsafe_view",
               "aten.squeeze", "aten.unsqueeze", "aten.clone", "aten.dropout",
               "aten.contiguous", "aten.alias", "aten.detach"}
PADDED_MODES = ("never", "measured", "exact", "always")
# chains that carry a positive constant channel unchanged (ReLU keeps it, a max pool pads -inf)
_CONSTANT_SAFE = {"aten.relu", "aten.relu_", "aten.max_pool2d", "aten.clone", "aten.dropout",
                  "aten.contiguous", "aten.alias", "aten.detach"}
RANGE_SIGMAS = 6.0  # the data-free activation range rule (mean + 6 std)


def _conv_args(pm: PlainModel, node: str) -> dict:
    n = next(x for x in pm.program.graph.nodes if x.name == node)
    a = list(n.args) + [None] * 7
    return {"stride": a[3] or 1, "padding": a[4] or 0, "dilation": a[5] or 1,
            "groups": int(a[6] or 1), "input_hw": tuple(int(s) for s in
                                                         n.args[0].meta["val"].shape[2:])}


def border_error(pm: PlainModel, consumer, shift_cols: torch.Tensor) -> torch.Tensor:
    """``E = conv(ring_c, W2)``: what absorbing ``shift_cols`` changes in the consumer's
    output (one sample), exactly, given the pre-activations stay above the shift."""
    a = _conv_args(pm, consumer.node)
    pad = a["padding"] if isinstance(a["padding"], (list, tuple)) else (a["padding"],) * 2
    ph, pw = (int(p) for p in pad)
    h, w = a["input_hw"]
    ring = shift_cols.double().reshape(1, -1, 1, 1).expand(1, len(shift_cols), h + 2 * ph,
                                                           w + 2 * pw).clone()
    ring[:, :, ph:ph + h, pw:pw + w] = 0
    return F.conv2d(ring, consumer.weight.detach().double(), None, a["stride"], 0,
                    a["dilation"], a["groups"])


def rounding_noise(consumer, step: float) -> float:
    """RMS output error of independent input rounding errors of step ``step``."""
    w = consumer.weight.detach().double().reshape(consumer.out_channels, -1)
    return step / math.sqrt(12.0) * float(torch.sqrt((w ** 2).sum(1).mean()))


def _padded_decision(pm, lk, mean, std, shift, per_unit) -> dict:
    """The measured-error criterion for a zero-padded consumer (see the module docstring)."""
    e = border_error(pm, lk.consumer, lk.columns(per_unit))
    step0 = float((mean + RANGE_SIGMAS * std).clamp(min=0).max()) / 255.0
    step1 = float((mean - shift + RANGE_SIGMAS * std).clamp(min=0).max()) / 255.0
    q0, q1 = rounding_noise(lk.consumer, step0), rounding_noise(lk.consumer, step1)
    e_rms, e_max = float(e.pow(2).mean().sqrt()), float(e.abs().max())
    return {"border_error_rms": e_rms, "border_error_max": e_max,
            "border_positions": int((e.abs().amax(1) > 0).sum()),
            "rounding_noise_before": q0, "rounding_noise_after": q1,
            "error_after": math.sqrt(q1 ** 2 + e_rms ** 2),
            "absorb": math.sqrt(q1 ** 2 + e_rms ** 2) < q0}


def _exact_possible(lk) -> bool:
    p, c = lk.producer, lk.consumer
    return (p.weight.dim() == 4 and p.groups == 1 and c.groups == 1 and lk.identity
            and set(lk.ops) <= _CONSTANT_SAFE)


def absorb_high_bias(pm: PlainModel, orbit_agnostic: bool = False, sigmas: float = 3.0,
                     padded: str = "exact", inputs=None) -> tuple[PlainModel, dict]:
    """Move the always-positive part of ReLU inputs into the next layer's bias."""
    if padded not in PADDED_MODES:
        raise ValueError(f"padded must be one of {PADDED_MODES}, not {padded!r}")
    work = clone(pm)
    found = layers(work)
    absorbed, skipped, plans = [], [], []
    chains, _ = walk(work, found, orbit_agnostic)
    for lk in chains:
        p, c = lk.producer, lk.consumer
        where = {"producer": p.node, "consumer": c.node}
        st = stats_of(work, p.node)
        reason = None
        is_padded = c.weight.dim() == 4 and any(int(v) for v in c.padding)
        if not lk.has_relu:
            reason = "no ReLU between the layers"
        elif not set(lk.ops) <= _SHIFT_SAFE:
            reason = f"shift does not commute with {sorted(set(lk.ops) - _SHIFT_SAFE)}"
        elif st is None:
            reason = "no BN statistics for the producer"
        elif is_padded and padded == "never":
            reason = "zero-padded consumer (absorbing would change border outputs)"
        elif p.bias is None or c.bias is None:
            reason = "a layer has no bias"
        if reason is not None:
            skipped.append({**where, "reason": reason})
            continue
        mean, std = st
        per_unit = unit_min(torch.clamp(mean - sigmas * std, min=0.0), lk.units)
        shift = expand(per_unit, lk.units, p.out_channels)
        if not bool((shift > 0).any()):
            continue
        entry = {**where, "channels": int((shift > 0).sum()), "max_shift": float(shift.max())}
        if lk.passes_group_pool:
            entry["through_group_pooling"] = True
        exact = False
        if is_padded:
            decision = _padded_decision(work, lk, mean, std, shift, per_unit)
            exact = padded == "exact" and _exact_possible(lk) \
                and decision["rounding_noise_after"] < decision["rounding_noise_before"]
            decision["method"] = "exact: constant channels" if exact else \
                "approximate: border error measured" if padded != "always" else "approximate"
            entry["padding"] = decision
            if padded in ("measured", "exact") and not exact and not decision["absorb"]:
                decision["method"] = "not absorbed"
                skipped.append({**entry, "reason": "zero-padded consumer: absorbing would not "
                                "shrink the INT8 step" if _exact_possible(lk) and padded ==
                                "exact" else "zero-padded consumer: the border error would "
                                "exceed the rounding noise it removes"})
                continue
        if exact:
            value = float((mean - shift + RANGE_SIGMAS * std).max())
            plans.append(plan_for(lk, per_unit, value))
            entry["padding"]["constant_channels"] = int(plans[-1].kernels.shape[1])
        with torch.no_grad():
            p.bias.sub_(shift.to(p.bias.dtype))
            if not exact:
                c.bias.add_(c.apply_in(lk.columns(per_unit)).to(c.bias.dtype))
        set_stats(work, p.node, mean - shift, std)
        absorbed.append(entry)
    work = add_constant_channels(work, plans)
    if inputs is not None:
        fit_to_data(work, inputs)
    return work, {"absorbed": absorbed, "skipped": skipped, "sigmas": sigmas,
                  "padded": padded}
