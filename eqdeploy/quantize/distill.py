"""Distilled calibration inputs: data-free INT8 ranges that see the real activation tails.

ZeroQ-style (Cai et al. 2020, "ZeroQ: A Novel Zero Shot Quantization Framework"): a small
batch of synthetic inputs ``x`` (started from seeded noise inside the input range) is
optimized so that at every eval-mode batch norm of the FP32 graph the per-channel batch mean
and std of the BN input match the stored running statistics,

    L(x) = sum_BN mean_c [ ((mu_c(x) - mu_c) / s_c)^2 + (sigma_c(x) / s_c - 1)^2 ],
    s_c = sqrt(running_var_c + eps),

plus, when the output is ``(N, K)`` logits, ``label_weight`` times the cross-entropy to the
assigned labels ``i % K`` (as in DeepInversion, Yin et al. 2020: confident, class-like inputs
reach the logit and deep-feature ranges that pure BN matching misses), minimized by Adam with
``x`` projected back into the input range after each step. The batch is then
used as calibration data (min/max ranges, ``compute_qparams(..., calibration=x)``). Unlike
propagating ``mean +- k std`` analytically, the network itself produces the activations, so
heavy tails (a residual add whose max is ~20 std of its BN statistics) appear in the ranges.
Input statistics are not matched: BN layers after the first conv already constrain them.

Exact group elements (quarter turns, flips) only permute channels and pixels of every
activation, so augmenting the batch with its orbit leaves per-tensor min/max and the field-
shared BN statistics unchanged: the orbit is not used.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
from torch import fx

from eqdeploy.errors import EqdeployError
from eqdeploy.fx_attrs import attr_tensor

aten = torch.ops.aten
BATCH_NORMS = {aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default,
               aten.native_batch_norm.default}

__all__ = ["bn_targets", "distill_inputs", "has_batchnorm"]


def _bn_args(n: fx.Node) -> tuple:
    """(input, running_mean, running_var, eps, training) of a batch-norm node."""
    a = list(n.args)
    if n.target == aten._native_batch_norm_legit_no_training.default:
        return a[0], a[3], a[4], float(a[6]), False
    return a[0], a[3], a[4], float(a[7]), bool(a[5])


def bn_targets(gm: fx.GraphModule) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Eval-mode BN nodes -> (running mean, running std incl. eps) of their input."""
    out = {}
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target not in BATCH_NORMS:
            continue
        _, mean_n, var_n, eps, training = _bn_args(n)
        mean, var = attr_tensor(gm, mean_n), attr_tensor(gm, var_n)
        if training or mean is None or var is None:
            continue
        out[n.name] = (mean.float(), torch.sqrt(var.float() + eps))
    return out


def has_batchnorm(pm) -> bool:
    """Whether ``pm`` (before BN folding) has eval-mode BN statistics to distill from."""
    return bool(bn_targets(pm.module()))


def _probe(gm: fx.GraphModule, names: set[str]) -> fx.GraphModule:
    """A copy of ``gm`` returning the inputs of the BN nodes ``names`` (graph order)."""
    probe = copy.deepcopy(gm)
    graph = probe.graph
    taps = [n.args[0] for n in graph.nodes if n.name in names]
    result = next(n for n in graph.nodes if n.op == "output").args[0]
    taps.append(result[0] if isinstance(result, (tuple, list)) else result)  # the output
    for n in list(graph.nodes):
        if n.op == "call_module" and n.target == "_guards_fn":
            graph.erase_node(n)
    out = next(n for n in graph.nodes if n.op == "output")
    out.args = (tuple(taps),)
    graph._codegen = fx.graph.CodeGen()  # plain tuple out (no pytree spec of the export)
    graph.eliminate_dead_code()
    probe.recompile()
    for p in probe.parameters():
        p.requires_grad_(False)
    return probe.eval()


def distill_inputs(pm, shape: tuple[int, ...], input_range: tuple[float, float] | None = None,
                   n: int = 16, steps: int = 50, lr: float = 0.2, seed: int = 0,
                   label_weight: float = 0.3, info: dict | None = None,
                   on_step=None) -> np.ndarray:
    """``n`` synthetic float32 inputs whose BN batch statistics match the stored ones.

    ``pm``: the ``PlainModel`` *before* BN folding (its graph still has the batch norms).
    ``shape``: one input's shape, ``(C, H, W)`` or ``(1, C, H, W)``. ``input_range``: the
    normalized input's exact range (projected onto after every step); ``None`` leaves it free.
    ``label_weight``: weight of the cross-entropy to labels ``i % K`` when the output is
    ``(N, K)`` logits (ignored otherwise). ``info``, if given, receives the loss before and
    after, the seconds taken and the settings. ``on_step(step, steps, bn_loss)`` is called
    after every step (progress display). Runs on one torch thread (restored after), so
    the result is deterministic for a given ``seed``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: faster on a busy machine, and thread-count-free
    try:
        return _distill(pm, shape, input_range, n, steps, lr, seed, label_weight, info,
                        on_step or (lambda step, total, loss: None))
    finally:
        torch.set_num_threads(threads)


def _distill(pm, shape, input_range, n, steps, lr, seed, label_weight, info, on_step
             ) -> np.ndarray:
    t0 = time.perf_counter()
    gm = pm.module()
    targets = bn_targets(gm)
    if not targets:
        raise EqdeployError("the model has no eval-mode batch norm to distill inputs from",
                            "pass calibration inputs, or use the analytical BN ranges")
    shape = tuple(int(s) for s in shape)[-3:]
    probe = _probe(gm, set(targets))
    stats = list(targets.values())  # graph order, as the probe returns its taps
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn((n, *shape), generator=gen)
    if input_range is not None:  # noise spread over the whole range
        lo, hi = float(input_range[0]), float(input_range[1])
        x = ((hi + lo) / 2 + (hi - lo) / 2 * torch.tanh(x)).clamp(lo, hi)
    x.requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    losses = []
    for _ in range(steps + 1):
        opt.zero_grad(set_to_none=True)
        *taps, out = probe(x)
        bn_loss = _bn_loss(taps, stats)
        losses.append(float(bn_loss.detach()))
        on_step(len(losses) - 1, steps, losses[-1])
        if len(losses) > steps:  # the last pass only measures
            break
        loss = bn_loss
        if label_weight and out.dim() == 2 and out.shape[1] > 1:
            labels = torch.arange(n) % out.shape[1]
            loss = loss + label_weight * torch.nn.functional.cross_entropy(out, labels)
        loss.backward()
        opt.step()
        if input_range is not None:
            with torch.no_grad():
                x.clamp_(lo, hi)
    if info is not None:
        info.update({"method": "distilled (BN statistics matched, ZeroQ-style)", "n": n,
                     "steps": steps, "lr": lr, "seed": seed, "label_weight": label_weight,
                     "bn_layers": len(stats), "bn_loss_start": losses[0],
                     "bn_loss_end": losses[-1],
                     "seconds": round(time.perf_counter() - t0, 3)})
    return x.detach().numpy().astype(np.float32)


def _bn_loss(taps, stats) -> torch.Tensor:
    """Sum over BN layers of the mean squared (normalized) mean and std mismatch."""
    loss = torch.zeros(())
    for z, (mu, sd) in zip(taps, stats, strict=True):
        dims = [0, *range(2, z.dim())]
        m = z.mean(dims)
        s = torch.sqrt(torch.clamp((z * z).mean(dims) - m * m, min=0) + 1e-8)
        loss = loss + (((m - mu) / sd) ** 2 + (s / sd - 1) ** 2).mean()
    return loss
