"""Equivariance of any ``f: (N, ...) -> (N, ...)`` under every element of a spec's group.

For each exact element g: relative error ``||f(g.x) - rho_out(g) f(x)|| / ||f(x)||`` per
probe (max, mean), the number of probes whose output changed at all (bit-exactness), and
for classifiers the top-1 agreement across the orbit (``equivariance_table``).

For each element without an exact pixel action (45, 30, 22.5 degrees...): the same relative
error with g applied by interpolation inside the spec's circular mask
(``eqdeploy/harness/rotate.py``), top-1 agreement between f(x) and f(g.x) for classifiers,
and, given the rows of an FP32 reference on the same probes, the ratio to its error
(``interpolated_table``). No changed-output count there: interpolation moves every output.
A measurement that cannot be made (no pixel inside the mask, a probe constant inside it,
NaN, an output that is zero) raises, never reports 0. numpy only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from eqdeploy.errors import EqdeployError
from eqdeploy.groups import Element
from eqdeploy.harness.rotate import METHOD, disc_mask, masked, ring_fill, rotate_element
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
    exact equality is counted (an INT8 artifact's integer outputs). Each rotated batch runs
    once through ``f`` and, if given, once through ``raw`` (wrap both around one cached
    call, ``last_call_cache``, when ``f`` decodes ``raw``).
    """
    if spec.group.exact_elements and \
            spec.channel_perm(spec.output, spec.group.exact_elements[0]) is None:
        return []
    y = f(probes) if f_probes is None else f_probes
    y_raw = y if raw is None else raw(probes)
    classifier = not spec.output.spatial and y.ndim == 2 and y.shape[1] > 1
    rows = []
    for g in spec.group.exact_elements:
        gx = spec.act(probes, spec.input, g)
        y_g = f(gx)
        expect = spec.act(y, spec.output, g)
        err = relative_error(y_g, expect)
        changed = (y_g if raw is None else raw(gx)) != spec.act(y_raw, spec.output, g)
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


def last_call_cache(fn: Callable[[np.ndarray], np.ndarray]
                    ) -> Callable[[np.ndarray], np.ndarray]:
    """``fn`` remembering its output for the last input object (a table asks the float and
    the raw outputs of one g.x: with both built on this, the artifact runs once)."""
    last: list = [None, None]

    def wrapped(x: np.ndarray) -> np.ndarray:
        if last[0] is not x:
            last[0], last[1] = x, fn(x)
        return last[1]

    return wrapped


def summarize(rows: list[dict]) -> dict:
    """Worst case over elements."""
    if not rows:
        return {"rel_err_max": 0.0, "changed_max": 0}
    return {"rel_err_max": max(r["rel_err_max"] for r in rows),
            "changed_max": max(r["changed"] for r in rows)}


# --- interpolated elements ---------------------------------------------------------------
NPZ_ELEMENTS = "interp_elements"  # probe-file keys of the FP32 reference's per-probe errors
NPZ_ERRORS = "interp_reference_err"


def interpolated_elements(spec: SymmetrySpec) -> list[Element]:
    """Elements without an exact pixel action, in group order."""
    return [e for e in spec.group.elements if not e.exact]


@dataclass(frozen=True)
class InterpolatedInputs:
    """The masked probes ``M x`` and, per element, ``M g(M x)`` (interpolated; outside the
    disc each probe keeps its ring fill, ``rotate.ring_fill``)."""

    elements: tuple[Element, ...]
    masked: np.ndarray
    rotated: tuple[np.ndarray, ...]


_INPUT_CACHE: dict[tuple, InterpolatedInputs] = {}


def _cannot(what: str, fix: str) -> EqdeployError:
    return EqdeployError(f"the interpolated equivariance cannot be measured: {what}", fix)


def interpolated_inputs(spec: SymmetrySpec, probes: np.ndarray,
                        elements: list[Element] | None = None) -> InterpolatedInputs:
    """Masked and rotated probes (cached on the probes' bytes: every runtime sees the same)."""
    elements = interpolated_elements(spec) if elements is None else elements
    key = (hashlib.sha1(np.ascontiguousarray(probes).tobytes()).hexdigest(), probes.shape,
           str(probes.dtype), spec.group.name, tuple(e.name for e in elements),
           spec.mask_radius, spec.input.fields)
    if key in _INPUT_CACHE:
        return _INPUT_CACHE[key]
    if not spec.input.spatial or probes.ndim != 4:
        raise _cannot(f"the input has shape {probes.shape}, not (N, C, H, W)",
                      "interpolated rotations need image inputs")
    mask = disc_mask(*probes.shape[-2:], spec.mask_radius)
    if not mask.any():
        raise _cannot(f"the mask (radius {spec.mask_radius}) covers no pixel of the "
                      f"{probes.shape[-2]}x{probes.shape[-1]} input", "use a larger mask radius")
    fill = ring_fill(probes, spec.mask_radius)
    x = masked(probes, spec.mask_radius, fill)
    inside = probes[..., mask].reshape(len(probes), -1)
    flat = np.flatnonzero(np.ptp(inside, axis=1) == 0)
    if len(flat):
        raise _cannot(f"probe {int(flat[0])} is constant inside the mask (rotating it "
                      "changes nothing)", "use probes with content, e.g. --probes FILE")
    rotated = []
    for g in elements:
        perm = spec.channel_perm(spec.input, g)
        if perm is None:
            raise _cannot("the input layout has no channel permutation for "
                          f"{g.name}", "the input must be trivial or permutation fields")
        rotated.append(np.ascontiguousarray(
            masked(rotate_element(x, g), spec.mask_radius, fill)[:, perm]))
    out = InterpolatedInputs(tuple(elements), x, tuple(rotated))
    if len(_INPUT_CACHE) >= 4:
        _INPUT_CACHE.pop(next(iter(_INPUT_CACHE)))
    _INPUT_CACHE[key] = out
    return out


def _finite(y: np.ndarray, where: str) -> np.ndarray:
    if not np.isfinite(y).all():
        raise _cannot(f"{where} returned NaN or inf", "check the model and its inputs")
    return y


def _output_action(spec: SymmetrySpec, y: np.ndarray, g: Element) -> np.ndarray:
    """rho_out(g) y, the spatial part interpolated (not masked before rotating: outside the
    disc f(Mx) is the model's own response, what the border samples need)."""
    perm = spec.channel_perm(spec.output, g)
    if spec.output.spatial:
        y = masked(rotate_element(y, g), spec.mask_radius)
    return y[:, perm]


def interpolated_table(f: Callable[[np.ndarray], np.ndarray], spec: SymmetrySpec,
                       probes: np.ndarray, reference: list[dict] | None = None,
                       elements: list[Element] | None = None, where: str = "the model"
                       ) -> list[dict]:
    """One row per interpolated element (``elements`` overrides which; none if the group has
    none or the output has no permutation action). ``reference``: rows of the FP32 model on
    the same probes; adds its errors and ``ratio_vs_fp32`` (this max / its max)."""
    elements = interpolated_elements(spec) if elements is None else elements
    if not elements or spec.channel_perm(spec.output, elements[0]) is None:
        return []
    inp = interpolated_inputs(spec, probes, elements)
    y = _finite(f(inp.masked), where)
    classifier = not spec.output.spatial and y.ndim == 2 and y.shape[1] > 1
    ref = {r["element"]: r for r in reference or []}
    rows = []
    for g, gx in zip(inp.elements, inp.rotated, strict=True):
        y_g = _finite(f(gx), where)
        if spec.output.spatial:
            y_g = masked(y_g, spec.mask_radius)
        expect = _output_action(spec, y, g)
        norms = _per_sample_norm(expect)
        if not norms.all():
            raise _cannot(f"{where} gives probe {int(np.argmin(norms))} an output that is "
                          f"zero{' inside the mask' if spec.output.spatial else ''}",
                          "use probes with content (--probes FILE) or a larger mask radius")
        err = _per_sample_norm(y_g - expect) / norms
        row = {"element": g.name, "degrees": g.degrees, "exact": g.exact, "interpolated": True,
               "method": METHOD, "mask_radius": spec.mask_radius,
               "rel_err_max": float(err.max()), "rel_err_mean": float(err.mean()),
               "probes": len(probes), "per_probe": [float(e) for e in err]}
        if classifier:
            row["top1_agreement"] = float((y_g.argmax(1) == expect.argmax(1)).mean())
        if g.name in ref:
            row.update(compare_to_fp32(row, ref[g.name]))
        rows.append(row)
    return rows


def compare_to_fp32(row: dict, fp32: dict) -> dict:
    """The FP32 reference's errors at the same element and the ratio (None when the FP32
    error is 0: nothing to divide by, so the ratio is not measured)."""
    ref_max = fp32["rel_err_max"]
    return {"fp32_rel_err_max": ref_max, "fp32_rel_err_mean": fp32["rel_err_mean"],
            "ratio_vs_fp32": row["rel_err_max"] / ref_max if ref_max > 0 else None}


def interpolated_summary(rows: list[dict]) -> dict | None:
    """Worst case over interpolated rows (None without rows)."""
    if not rows:
        return None
    ratios = [r.get("ratio_vs_fp32") for r in rows]
    agree = [r["top1_agreement"] for r in rows if "top1_agreement" in r]
    return {"rel_err_max": max(r["rel_err_max"] for r in rows),
            "rel_err_mean": float(np.mean([r["rel_err_mean"] for r in rows])),
            "ratio_vs_fp32_max": None if None in ratios else max(ratios),
            "top1_agreement_min": min(agree) if agree else None}


def reference_npz(rows: list[dict]) -> dict[str, np.ndarray]:
    """A reference's per-probe errors for a probe file (``bench`` divides by them)."""
    if not rows:
        return {}
    return {NPZ_ELEMENTS: np.array([r["element"] for r in rows]),
            NPZ_ERRORS: np.array([r["per_probe"] for r in rows], np.float64)}


def reference_rows(arrays: dict[str, np.ndarray], n_probes: int, where: str
                   ) -> list[dict] | None:
    """Rows of the FP32 reference stored in a probe file, None if it has none."""
    if NPZ_ELEMENTS not in arrays or NPZ_ERRORS not in arrays:
        return None
    names, err = arrays[NPZ_ELEMENTS], arrays[NPZ_ERRORS]
    if err.shape != (len(names), n_probes) or not np.isfinite(err).all():
        raise EqdeployError(f"{where}: '{NPZ_ERRORS}' has shape {err.shape}, expected "
                            f"({len(names)}, {n_probes}) finite errors",
                            "re-run 'eqdeploy convert' to rewrite the probe file")
    return [{"element": str(n), "rel_err_max": float(e.max()), "rel_err_mean": float(e.mean())}
            for n, e in zip(names, err, strict=True)]
