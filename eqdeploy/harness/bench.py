"""``eqdeploy bench``: latency, equivariance and fidelity of one artifact, as a report dict.

numpy + one runtime only (no torch): this runs on the device. The report's JSON schema
(``eqdeploy.bench`` version 1) is documented in ``eqdeploy/report/bench_schema.md``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
from pathlib import Path

import numpy as np

from eqdeploy import __version__
from eqdeploy.errors import EqdeployError
from eqdeploy.harness.equivariance import (
    equivariance_table,
    interpolated_elements,
    interpolated_summary,
    interpolated_table,
    last_call_cache,
    relative_error,
    summarize,
)
from eqdeploy.harness.latency import time_runs, timed
from eqdeploy.harness.measurable import check_outputs, check_probes_move, check_rows
from eqdeploy.harness.probes import Probes, load_probes
from eqdeploy.harness.rotate import METHOD
from eqdeploy.harness.runtime import Runner, open_artifact, read_spec
from eqdeploy.harness.sysinfo import peak_rss_bytes, system_info
from eqdeploy.spec import SymmetrySpec

SCHEMA = "eqdeploy.bench"
SCHEMA_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _is_classifier(spec: SymmetrySpec, y: np.ndarray) -> bool:
    return not spec.output.spatial and y.ndim == 2 and y.shape[1] > 1


def _check_layouts(spec: SymmetrySpec, runner: Runner, y: np.ndarray) -> None:
    expect = [("input", spec.input.channels, runner.input_shape),
              ("output", spec.output.channels, y.shape)]
    for what, channels, shape in expect:
        if len(shape) < 2 or shape[1] != channels:
            raise EqdeployError(f"{runner.path}: the symmetry manifest gives the {what} "
                                f"{channels} channels but the artifact's {what} has shape "
                                f"{tuple(shape)}",
                                "the sidecar belongs to another model; re-run 'eqdeploy convert'")


def _interpolated(spec: SymmetrySpec, f, probes: Probes, where: str) -> dict:
    """Every element without an exact pixel action, applied by interpolation (labelled)."""
    elements = [e.name for e in interpolated_elements(spec)]
    out = {"method": METHOD, "mask_radius": spec.mask_radius, "elements": elements,
           "reference": None, "rows": [], "summary": None, "note": None}
    if not elements:
        out["note"] = f"group {spec.group.name} has no element without an exact pixel action"
        return out
    ref = probes.interp_reference
    rows = interpolated_table(f, spec, probes.inputs, reference=ref, where=where)
    out["rows"], out["summary"] = rows, interpolated_summary(rows)
    if ref is None:
        out["note"] = ("the probe file has no FP32 reference errors (written by 'eqdeploy "
                       "convert'): ratio to FP32 not measured")
    else:
        out["reference"] = "FP32 artifact's errors on these probes, stored by convert"
    return out


def _equivariance(spec: SymmetrySpec, f, raw, probes: Probes, y: np.ndarray,
                  integer_out: str | None, where: str) -> dict:
    group = spec.group
    skipped = [e.name for e in group.elements if not e.exact]
    out = {"compared_on": f"{integer_out} outputs" if integer_out else "float outputs",
           "output_action": "invariant" if spec.output_is_invariant() else "equivariant",
           "interpolated_elements_skipped": skipped, "rows": [], "summary": None,
           "interpolated": None, "note": None}
    if spec.channel_perm(spec.output, group.elements[0]) is None:
        out["note"] = ("the output layout has non-permutation fields (irreps, or no known "
                       "action: see the convert report's tap): no exact channel "
                       "action to compare against; equivariance not measured")
        return out
    out["interpolated"] = _interpolated(spec, f, probes, where)
    out["interpolated_elements_skipped"] = []
    rows = equivariance_table(f, spec, probes.inputs, f_probes=y, raw=raw)
    out["rows"] = rows
    if rows:
        agree = [r["top1_agreement"] for r in rows if "top1_agreement" in r]
        out["summary"] = {**summarize(rows),
                          "rel_err_mean": float(np.mean([r["rel_err_mean"] for r in rows])),
                          "top1_agreement_min": min(agree) if agree else None}
    else:
        out["note"] = f"group {group.name} has no non-identity element with an exact action"
    return out


def _fidelity(y: np.ndarray, ref: np.ndarray, runner: Runner, classifier: bool,
              where: str) -> dict:
    if ref.shape != y.shape:
        raise EqdeployError(f"{where}: 'reference' has shape {ref.shape} but the artifact "
                            f"outputs {y.shape}", "store the FP32 source model's outputs")
    diff = np.abs(y.astype(np.float64) - ref)
    fid = {"max_abs_error": float(diff.max()), "mean_abs_error": float(diff.mean()),
           "rel_err_max": float(relative_error(y, ref).max()),
           "rel_err_mean": float(relative_error(y, ref).mean()),
           "max_abs_error_steps": None, "top1_agreement": None}
    if runner.output_qparams is not None:
        fid["max_abs_error_steps"] = float(diff.max() / runner.output_qparams[0])
    if classifier:
        fid["top1_agreement"] = float((y.argmax(1) == ref.argmax(1)).mean())
    return fid


def run_bench(artifact: str | Path, runs: int = 100, warmup: int = 10, threads: int | None = None,
              probes_path: str | Path | None = None, labels_path: str | Path | None = None
              ) -> dict:
    """Benchmark ``artifact`` on this machine and return the report dict."""
    artifact = Path(artifact)
    if runs < 1 or warmup < 0:
        raise EqdeployError(f"--runs {runs} / --warmup {warmup} out of range",
                            "use --runs >= 1 and --warmup >= 0")
    if threads is not None and threads < 1:
        raise EqdeployError(f"--threads {threads} out of range", "use --threads >= 1 or omit it")
    _, import_ms = timed(lambda: _import_runtime(artifact.suffix))
    runner, init_ms = timed(lambda: open_artifact(artifact, threads))
    spec = read_spec(artifact, runner)
    probes = load_probes(artifact, runner.input_shape, probes_path, labels_path)

    # latency: one run = one invoke of one batch of probe inputs, already in the input dtype
    xb = probes.inputs[:runner.batch]
    if len(xb) < runner.batch:
        xb = np.concatenate([xb, np.repeat(xb[-1:], runner.batch - len(xb), 0)])
    xb = runner.quantize_input(xb)
    _, first_ms = timed(lambda: runner.run_raw(xb))
    latency = {"runtime_import_ms": import_ms, "init_ms": init_ms, "first_ms": first_ms,
               "batch": runner.batch,
               **time_runs(lambda: runner.run_raw(xb), runs, warmup)}

    integer_out = runner.output_dtype if runner.output_dtype != "float32" else None
    integer_io = integer_out is not None or runner.input_dtype != "float32"
    if integer_io:
        raw = last_call_cache(lambda x: runner.run_raw(runner.quantize_input(x)))

        def f(x):
            return runner.dequantize_output(raw(x))
    else:
        f, raw = last_call_cache(runner.run), None
    y = f(probes.inputs)
    _check_layouts(spec, runner, y)
    check_outputs(y, artifact.name)
    check_probes_move(spec, probes.inputs)
    classifier = _is_classifier(spec, y)
    equiv = _equivariance(spec, f, raw, probes, y, integer_out, str(artifact))
    check_rows(equiv["rows"], artifact.name)

    fidelity = None
    if probes.reference is not None:
        fidelity = _fidelity(y, probes.reference, runner, classifier, probes.path)
    accuracy = None
    if probes.labels is not None:
        if not classifier:
            raise EqdeployError("labels were given but the artifact's output is not a vector "
                                f"of class scores (shape {y.shape})", "drop --labels")
        accuracy = {"top1": float((y.argmax(1) == probes.labels).mean()),
                    "reference_top1": None, "count": int(len(probes.labels))}
        if probes.reference is not None:
            accuracy["reference_top1"] = float(
                (probes.reference.argmax(1) == probes.labels).mean())

    size = artifact.stat().st_size
    return {
        "schema": SCHEMA,
        "version": SCHEMA_VERSION,
        "eqdeploy_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "artifact": {
            "path": str(artifact), "name": artifact.name, "format": artifact.suffix.lstrip("."),
            "size_bytes": size, "sha256": sha256_file(artifact),
            "input_shape": list(runner.input_shape), "input_dtype": runner.input_dtype,
            "output_shape": [runner.batch, *y.shape[1:]], "output_dtype": runner.output_dtype,
            "integer_io": integer_io,
            "input_quantization": _qp(runner.input_qparams),
            "output_quantization": _qp(runner.output_qparams),
        },
        "runtime": {"name": runner.runtime, "version": runner.runtime_version,
                    "threads": threads},
        "system": system_info(),
        "symmetry": {"group": spec.group.name, "order": spec.group.order,
                     "exact_elements": [e.name for e in spec.group.exact_elements]},
        "probes": probes.describe(),
        "latency": latency,
        "equivariance": equiv,
        "fidelity": fidelity,
        "accuracy": accuracy,
        "memory": {"peak_rss_bytes": peak_rss_bytes()},
        "plots": None,
    }


def _import_runtime(suffix: str) -> None:
    """Import the runtime first, so ``init_ms`` is the model's load time alone."""
    names = {".tflite": ("ai_edge_litert.interpreter", "tflite_runtime.interpreter"),
             ".onnx": ("onnxruntime",)}.get(suffix, ())
    for name in names:
        try:
            importlib.import_module(name)
            return
        except ImportError:
            continue  # open_artifact names the missing runtime


def _qp(q: tuple[float, int] | None) -> dict | None:
    return None if q is None else {"scale": q[0], "zero_point": q[1]}
