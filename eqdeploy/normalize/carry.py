"""Carry tensor layouts across a graph transform by matching the tensors' values.

A normalization rewrite renames, removes and inserts nodes; what it never does is change a
tensor's value. So the layout of every tensor of the old graph belongs to the new node
that computes the same values: both graphs run on one seeded input (batch 3, so no
constant is mistaken for an activation), and a new node takes the layout of the old node
whose output has its shape and values (within float rounding of the rewrites).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx

from eqdeploy.spec import Layout

BATCH = 3


class _Record(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.op in ("call_function", "placeholder") and isinstance(out, torch.Tensor) \
                and out.is_floating_point() and out.dim() >= 1 and out.shape[0] == BATCH:
            self.values[n.name] = out.detach().clone()  # in-place ops mutate it later
        return out


def activations(gm: fx.GraphModule, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every float tensor of ``gm`` that carries the batch, by node name, on input ``x``."""
    rec = _Record(gm)
    with torch.no_grad():
        rec.run(x)
    return rec.values


def _key(t: torch.Tensor) -> tuple:
    return tuple(t.shape)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = float(a.abs().max()) or 1.0
    return float((a - b).abs().max()) <= 1e-5 * scale


def match_values(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]
                 ) -> dict[str, str]:
    """new node -> an old node with the same values (first in graph order)."""
    by_shape: dict[tuple, list[str]] = {}
    for name, t in old.items():
        by_shape.setdefault(_key(t), []).append(name)
    out = {}
    for name, t in new.items():
        for cand in by_shape.get(_key(t), []):
            if _close(old[cand], t):
                out[name] = cand
                break
    return out


def example_input(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_normal((BATCH, *shape[1:])).astype(np.float32))


def carry_layouts(old_gm: fx.GraphModule, new_gm: fx.GraphModule,
                  layouts: dict[str, Layout], x: torch.Tensor) -> dict[str, Layout]:
    """Layouts of ``new_gm``'s tensors from ``layouts`` (keyed by ``old_gm`` node names)."""
    old, new = activations(old_gm, x), activations(new_gm, x)
    wanted = {k: v for k, v in old.items() if k in layouts}
    return {n: layouts[o] for n, o in match_values(wanted, new).items()}
