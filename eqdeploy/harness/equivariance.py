"""Equivariance of any ``f: (N, ...) -> (N, ...)`` under the exact elements of a spec's group.

For each exact element g: relative error ``||f(g.x) - rho_out(g) f(x)|| / ||f(x)||`` per
probe (max, mean), the number of probes whose output changed at all (bit-exactness), and
for classifiers the top-1 agreement across the orbit. numpy only.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from eqdeploy.spec import SymmetrySpec


def _per_sample_norm(a: np.ndarray) -> np.ndarray:
    return np.sqrt((a.astype(np.float64).reshape(len(a), -1) ** 2).sum(1))


def relative_error(y: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-sample ``||y - ref|| / ||ref||`` (guarded against zero reference)."""
    return _per_sample_norm(y - ref) / np.maximum(_per_sample_norm(ref), 1e-30)


def equivariance_table(f: Callable[[np.ndarray], np.ndarray], spec: SymmetrySpec,
                       probes: np.ndarray, f_probes: np.ndarray | None = None,
                       raw: Callable[[np.ndarray], np.ndarray] | None = None) -> list[dict]:
    """One row per exact non-identity element (none if the output has no exact action).

    ``f`` gives float outputs for the error; ``raw`` (default ``f``) gives the outputs whose
    exact equality is counted (an INT8 artifact's integer outputs).
    """
    if spec.group.exact_elements and \
            spec.channel_perm(spec.output, spec.group.exact_elements[0]) is None:
        return []
    raw = raw or f
    y = f(probes) if f_probes is None else f_probes
    y_raw = raw(probes)
    classifier = not spec.output.spatial and y.ndim == 2 and y.shape[1] > 1
    rows = []
    for g in spec.group.exact_elements:
        gx = spec.act(probes, spec.input, g)
        y_g = f(gx)
        expect = spec.act(y, spec.output, g)
        err = relative_error(y_g, expect)
        changed = raw(gx) != spec.act(y_raw, spec.output, g)
        row = {
            "element": g.name,
            "degrees": g.degrees,
            "exact": True,
            "rel_err_max": float(err.max()),
            "rel_err_mean": float(err.mean()),
            "changed": int(changed.reshape(len(changed), -1).any(1).sum()),
            "probes": len(probes),
        }
        if classifier:
            row["top1_agreement"] = float((y_g.argmax(1) == expect.argmax(1)).mean())
        rows.append(row)
    return rows


def summarize(rows: list[dict]) -> dict:
    """Worst case over elements."""
    if not rows:
        return {"rel_err_max": 0.0, "changed_max": 0}
    return {"rel_err_max": max(r["rel_err_max"] for r in rows),
            "changed_max": max(r["changed"] for r in rows)}
