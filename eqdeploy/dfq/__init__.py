"""Block-aware data-free quantization: fold -> ReLU6 -> equalize -> absorb -> bias correction.

Each pass is a function ``PlainModel -> (PlainModel, report)`` that leaves its input
untouched; ``run_dfq`` chains the enabled ones (the CLI's ``--no-dfq``, ``--no-cle``,
``--no-absorb``, ``--no-bias-correction``, ``--orbit-agnostic``). Maths: DESIGN.md section 4
and the docstrings of ``equalize``, ``absorb`` and ``bias_correction``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import NamedTuple

import numpy as np

from eqdeploy.dfq.absorb import absorb_high_bias
from eqdeploy.dfq.bias_correction import correct_bias
from eqdeploy.dfq.equalize import equalize
from eqdeploy.dfq.fold import fold_batchnorm, replace_relu6
from eqdeploy.export import PlainModel

__all__ = ["DfqOptions", "DfqRun", "run_dfq", "run_dfq_with_reference", "fold_batchnorm",
           "replace_relu6", "equalize", "absorb_high_bias", "correct_bias"]


@dataclass
class DfqOptions:
    """Switches of the DFQ stage (defaults: everything on, block-aware)."""

    enabled: bool = True
    fold: bool = True
    relu6_to_relu: bool = True
    cle: bool = True
    absorb: bool = True
    bias_correction: bool = True
    orbit_agnostic: bool = False
    weights: str = "per_channel"  # the INT8 weight scheme bias correction anticipates
    cle_tolerance: float = 1e-6
    cle_max_sweeps: int = 100
    absorb_sigmas: float = 3.0
    absorb_padded: str = "exact"  # zero-padded consumers: never | measured | exact | always


class DfqRun(NamedTuple):
    """What ``run_dfq_with_reference`` returns."""

    model: PlainModel  # after every enabled pass: the graph to quantize
    report: dict
    reference: PlainModel  # before bias correction: the FP32 function INT8 must reproduce
    folded: PlainModel  # after BN folding only: the source's FP32 function, same ops


def run_dfq(pm: PlainModel, options: DfqOptions | None = None,
            inputs: np.ndarray | None = None) -> tuple[PlainModel, dict]:
    """Run the enabled passes in order; the report has one section per pass. ``inputs``
    (calibration or distilled inputs), when given, make bias correction empirical and set the
    constants of exact absorption to their tensors' measured maxima."""
    run = run_dfq_with_reference(pm, options, inputs)
    return run.model, run.report


def run_dfq_with_reference(pm: PlainModel, options: DfqOptions | None = None,
                           inputs: np.ndarray | None = None
                           ) -> DfqRun:
    """``run_dfq`` plus the graph before bias correction: the FP32 function the INT8 model
    must reproduce (folding, CLE and absorption keep it; bias correction moves FP32 biases
    on purpose), with the same node names, for per-layer comparisons; and the graph right
    after BN folding (the FP32 counterpart of an INT8 artifact: the source's function with
    the INT8 graph's ops unless ReLU6 was replaced)."""
    opt = options or DfqOptions()
    report: dict = {"options": asdict(opt), "passes": {}}
    if not opt.enabled:
        return DfqRun(pm, report, pm, pm)
    steps = [
        ("fold", opt.fold, lambda m: fold_batchnorm(m)),
        ("relu6_to_relu", opt.relu6_to_relu, lambda m: replace_relu6(m)),
        ("cle", opt.cle, lambda m: equalize(m, opt.orbit_agnostic, opt.cle_tolerance,
                                            opt.cle_max_sweeps)),
        ("absorb", opt.absorb, lambda m: absorb_high_bias(m, opt.orbit_agnostic,
                                                          opt.absorb_sigmas, opt.absorb_padded,
                                                          inputs)),
        ("bias_correction", opt.bias_correction,
         lambda m: correct_bias(m, opt.weights, opt.orbit_agnostic, inputs)),
    ]
    reference = folded = pm
    for name, on, fn in steps:
        if name == "bias_correction":
            reference = pm
        if not on:
            report["passes"][name] = {"skipped": "disabled"}
            continue
        t0 = time.perf_counter()
        pm, rep = fn(pm)
        rep["seconds"] = round(time.perf_counter() - t0, 3)
        report["passes"][name] = rep
        if name == "fold":
            folded = pm
    return DfqRun(pm, report, reference, folded)
