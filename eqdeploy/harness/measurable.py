"""A verification that could not measure is a failure, never "error 0" (numpy only).

Checked for every verification row (``convert``) and every bench (``bench``, ``verify``):
the probes must move under the group (an input every exact element leaves unchanged, such
as a constant or 1-pixel image, compares nothing); the outputs must be finite and must vary
(a model that gives one output for every probe is trivially "invariant"); the measured
errors must be finite.
"""

from __future__ import annotations

import numpy as np

from eqdeploy.errors import CheckFailed, EqdeployError
from eqdeploy.spec import SymmetrySpec


def check_probes_move(spec: SymmetrySpec, probes: np.ndarray) -> None:
    """Refuse probes that every exact non-identity element maps to themselves."""
    elements = spec.group.exact_elements
    if not elements or spec.channel_perm(spec.input, elements[0]) is None:
        return  # nothing is compared at all: the rows say so (there are none)
    if all(np.array_equal(spec.act(probes, spec.input, g), probes) for g in elements):
        raise EqdeployError(f"every exact element of {spec.group.name} leaves the {len(probes)} "
                            f"probe input(s) of shape {tuple(probes.shape[1:])} unchanged "
                            "(constant or 1-pixel images): the equivariance check would "
                            "compare nothing", "give probes with spatial structure (--probes) "
                            "at the model's real input size (--input-shape)")


def check_outputs(y: np.ndarray, who: str) -> None:
    """Finite outputs that differ between probes (or, for one probe, between entries)."""
    y = np.asarray(y)
    bad = ~np.isfinite(y.reshape(len(y), -1)).all(1) if y.size else np.zeros(0, bool)
    if bad.any():
        raise CheckFailed(f"{who} gives NaN or inf outputs on {int(bad.sum())} of {len(y)} "
                          "probes: nothing can be measured",
                          "check the model and its input normalization (--input-norm)")
    if y.size > 1 and (y.min() == y.max() or (len(y) > 1 and (y == y[:1]).all())):
        what = f"the value {y.flat[0]:g} everywhere" if y.min() == y.max() else \
            f"the same output for all {len(y)} probes"
        raise CheckFailed(f"{who} gives {what}: a constant model is trivially equivariant, so "
                          "nothing was measured", "check the model, its weights and the input "
                          "normalization (--input-norm), or pass real --probes")


def check_rows(rows: list[dict], who: str) -> None:
    """Every measured error finite."""
    for r in rows:
        for key in ("rel_err_max", "rel_err_mean"):
            if key in r and not np.isfinite(r[key]):
                raise CheckFailed(f"{who}: the equivariance error under {r['element']} is "
                                  f"{r[key]}: nothing was measured",
                                  "check the model's outputs for NaN or inf")
