"""Prototype (not wired into ``convert``): ``distill_inputs`` with a budget.

The same optimization as ``eqdeploy.quantize.distill`` (same seed, same steps, the same
inputs bit for bit when no budget stops it), plus three ways to stop before ``steps``:

- ``settle_tol``: the ranges settled. Every ``window`` steps, the min and max of every BN
  input and of the output over the batch (what the activation scales are made of) are
  compared with the previous check; when none moved by more than ``settle_tol`` times its
  tensor's range, the ranges have settled and the loop stops;
- ``seconds``: a wall-time budget, checked after each step;
- ``max_input_bytes``: caps the batch ``n`` so that ``n`` times the bytes one input's
  activations take (every graph tensor, from the exported shapes) stays under the bound,
  which bounds the backward pass's memory.

``on_step(step, x, bn_loss)`` is called before every update (and after the last one), for
benchmarks that follow the trajectory. ``info`` says which budget stopped it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np
import torch

from eqdeploy.errors import EqdeployError
from eqdeploy.quantize.distill import _bn_loss, _probe, bn_targets

__all__ = ["activation_bytes_per_input", "distill_budgeted"]


def activation_bytes_per_input(pm) -> int:
    """Bytes of every tensor the graph computes for one input (its exported shapes, the
    batch dimension dropped)."""
    total = 0
    for node in pm.program.graph.nodes:
        val = node.meta.get("val") if node.op == "call_function" else None
        if isinstance(val, torch.Tensor) and val.dim() > 1:
            total += math.prod(int(s) for s in val.shape[1:]) * val.element_size()
    return total


def distill_budgeted(pm, shape: tuple[int, ...], input_range: tuple[float, float] | None = None,
                     n: int = 16, steps: int = 50, lr: float = 0.2, seed: int = 0,
                     label_weight: float = 0.3, settle_tol: float | None = None,
                     window: int = 5, seconds: float | None = None,
                     max_input_bytes: int | None = None,
                     on_step: Callable[[int, torch.Tensor, float], None] | None = None,
                     info: dict | None = None) -> np.ndarray:
    """``distill_inputs`` with budgets (see the module docstring); one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(pm, shape, input_range, n, steps, lr, seed, label_weight, settle_tol,
                    window, seconds, max_input_bytes, on_step, info)
    finally:
        torch.set_num_threads(threads)


def _ranges(taps: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack([torch.stack([t.detach().min(), t.detach().max()]) for t in taps])


def _run(pm, shape, input_range, n, steps, lr, seed, label_weight, settle_tol, window,
         seconds, max_input_bytes, on_step, info) -> np.ndarray:
    t0 = time.perf_counter()
    gm = pm.module()
    targets = bn_targets(gm)
    if not targets:
        raise EqdeployError("the model has no eval-mode batch norm to distill inputs from",
                            "pass calibration inputs, or use the analytical BN ranges")
    per_input = activation_bytes_per_input(pm)
    requested = n
    if max_input_bytes is not None:
        n = max(1, min(n, int(max_input_bytes // max(per_input, 1))))
    shape = tuple(int(s) for s in shape)[-3:]
    probe = _probe(gm, set(targets))
    stats = list(targets.values())
    gen = torch.Generator().manual_seed(int(seed))
    x = torch.randn((n, *shape), generator=gen)
    if input_range is not None:
        lo, hi = float(input_range[0]), float(input_range[1])
        x = ((hi + lo) / 2 + (hi - lo) / 2 * torch.tanh(x)).clamp(lo, hi)
    x.requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    losses, stopped, last = [], "steps", None
    done = 0
    for step in range(steps + 1):
        opt.zero_grad(set_to_none=True)
        *taps, out = probe(x)
        bn_loss = _bn_loss(taps, stats)
        losses.append(float(bn_loss.detach()))
        if on_step is not None:
            on_step(step, x.detach(), losses[-1])
        if settle_tol is not None and step % window == 0:
            now = _ranges([*taps, out])
            if last is not None:
                span = (now[:, 1] - now[:, 0]).clamp(min=1e-12)
                moved = ((now - last).abs().max(1).values / span).max()
                if float(moved) <= settle_tol:
                    stopped = f"ranges settled (moved <= {settle_tol:g} of their span)"
                    break
            last = now
        if step == steps:
            break
        if seconds is not None and time.perf_counter() - t0 > seconds:
            stopped = f"time budget {seconds:g} s"
            break
        loss = bn_loss
        if label_weight and out.dim() == 2 and out.shape[1] > 1:
            labels = torch.arange(n) % out.shape[1]
            loss = loss + label_weight * torch.nn.functional.cross_entropy(out, labels)
        loss.backward()
        opt.step()
        done += 1
        if input_range is not None:
            with torch.no_grad():
                x.clamp_(lo, hi)
    if info is not None:
        info.update({"n": n, "n_requested": requested, "steps": done, "max_steps": steps,
                     "stopped_by": stopped, "bn_loss_start": losses[0],
                     "bn_loss_end": losses[-1], "activation_bytes_per_input": per_input,
                     "seconds": round(time.perf_counter() - t0, 3)})
    return x.detach().numpy().astype(np.float32)
