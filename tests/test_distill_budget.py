"""The budgeted distillation prototype: identical to distill_inputs without a budget, and each
budget (settled ranges, seconds, memory) stops or shrinks it as documented."""

from __future__ import annotations

import numpy as np
import pytest

from eqdeploy.datasets import MNIST_MEAN, MNIST_STD

INPUT_RANGE = (-MNIST_MEAN / MNIST_STD, (1 - MNIST_MEAN) / MNIST_STD)
SHAPE = (1, 1, 29, 29)


@pytest.fixture(scope="module")
def plain():
    import torch

    from eqdeploy.export import export_equivariant
    from eqdeploy.models import reference as R

    return export_equivariant(R.c4_cnn(), torch.zeros(SHAPE))


def test_without_a_budget_it_is_distill_inputs(plain):
    from eqdeploy.quantize.distill import distill_inputs
    from eqdeploy.quantize.distill_budget import distill_budgeted

    info: dict = {}
    x = distill_budgeted(plain, SHAPE, INPUT_RANGE, n=4, steps=6, seed=1, info=info)
    assert np.array_equal(x, distill_inputs(plain, SHAPE, INPUT_RANGE, n=4, steps=6, seed=1))
    assert info["steps"] == 6 and info["stopped_by"] == "steps"
    assert info["bn_loss_end"] < info["bn_loss_start"]


def test_settle_rule_stops_at_the_first_check_that_passes(plain):
    from eqdeploy.quantize.distill_budget import distill_budgeted

    loose, strict = {}, {}
    distill_budgeted(plain, SHAPE, INPUT_RANGE, n=4, steps=12, settle_tol=10.0, window=3,
                     info=loose)
    distill_budgeted(plain, SHAPE, INPUT_RANGE, n=4, steps=12, settle_tol=0.0, window=3,
                     info=strict)
    assert loose["steps"] == 3 and loose["stopped_by"].startswith("ranges settled")
    assert strict["steps"] == 12 and strict["stopped_by"] == "steps"  # ranges keep moving


def test_time_budget_stops_before_the_first_update(plain):
    from eqdeploy.quantize.distill import distill_inputs
    from eqdeploy.quantize.distill_budget import distill_budgeted

    info: dict = {}
    x = distill_budgeted(plain, SHAPE, INPUT_RANGE, n=4, steps=6, seconds=0.0, info=info)
    assert info["steps"] == 0 and info["stopped_by"].startswith("time budget")
    assert np.array_equal(x, distill_inputs(plain, SHAPE, INPUT_RANGE, n=4, steps=0))


def test_memory_bound_caps_the_batch(plain):
    import torch
    from torch import fx

    from eqdeploy.quantize.distill_budget import activation_bytes_per_input, distill_budgeted

    per_input = activation_bytes_per_input(plain)
    seen = []

    class Sizes(fx.Interpreter):  # what the graph really computes for one input
        def run_node(self, n):
            out = super().run_node(n)
            if n.op == "call_function" and isinstance(out, torch.Tensor) and out.dim() > 1:
                seen.append(out.nbytes)
            return out

    Sizes(plain.program.module()).run(torch.zeros(SHAPE))
    assert per_input == sum(seen) > 0
    info: dict = {}
    x = distill_budgeted(plain, SHAPE, INPUT_RANGE, n=16, steps=1,
                         max_input_bytes=int(2.5 * per_input), info=info)
    assert x.shape[0] == info["n"] == 2 and info["n_requested"] == 16
