"""Interpolated rotations (45, 30, 22.5 degrees): FP32 vs INT8 at every group element, and
block-aware vs orbit-agnostic DFQ on those errors.

Each model is converted once per DFQ mode with ``eqdeploy convert --int8 --target all``
(ranges calibrated on the 512 bundled MNIST calibration digits, or with ``--data-free`` the
default distilled data-free ranges; held-out MNIST digits as probes, input normalization
given): the
report's rows give, per element, the relative equivariance error of the source, of each
FP32 artifact and of each INT8 artifact (interpolated elements: bilinear rotation inside
the inscribed disc; exact ones: error and changed outputs), the INT8/FP32 ratio and the
top-1 agreement of f(x) and f(g.x). Models: the equivariant MobileNetV2 over C8/C12/C16
(random weights, BN gammas spread over 10**U(-1, 1) as in trained nets) and the reference
residual net over C8 (trained on rotated MNIST) and C16 (random). Writes
benchmarks/results/interpolated.json and .md (``interpolated_data_free.*`` with
``--data-free``) with machine info.

    PYTHONPATH=. .venv/bin/python benchmarks/interpolated.py [--data-free] [--probes 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import dill
import numpy as np
import torch

from eqdeploy.convert import ConvertOptions, convert
from eqdeploy.datasets import load_mnist29
from eqdeploy.dfq import DfqOptions, equalize, fold_batchnorm
from eqdeploy.dfq.verify import interpolated_tap_error
from eqdeploy.export import export_equivariant
from eqdeploy.harness.sysinfo import system_info
from eqdeploy.models import mobilenet as M
from eqdeploy.models import reference as R

OUT = Path(__file__).parent / "results"
SIZE = 33
NORM = ([0.1307], [0.3081])
MODELS = {
    "mobilenet_c8": lambda: M.eq_mobilenet("C8", SIZE, imbalance=1.0),
    "mobilenet_c12": lambda: M.eq_mobilenet("C12", SIZE, imbalance=1.0),
    "mobilenet_c16": lambda: M.eq_mobilenet("C16", SIZE, imbalance=1.0),
    "c8_residual": R.c8_residual,
    "c16_residual": R.c16_residual,
}
MODES = {"block-aware": DfqOptions(), "orbit-agnostic": DfqOptions(orbit_agnostic=True)}


def _digits(n: int) -> np.ndarray:
    return load_mnist29("test", size=SIZE)[0][:n]  # normalized, background padding


def _field_structure(model, probes: np.ndarray) -> dict[str, float]:
    """Worst per-field interpolated error at an intermediate tensor after CLE (FP32: the
    logits are the same function either way; the fields inside are not), block-aware and
    orbit-agnostic, next to the folded graph's own."""
    pm = export_equivariant(model, torch.zeros(1, 1, SIZE, SIZE))
    folded, _ = fold_batchnorm(pm)
    r1 = pm.spec.group.element("r1")
    base = interpolated_tap_error(folded, probes, r1)
    out = {"folded": max(base.values())}
    for mode, agnostic in (("block-aware", False), ("orbit-agnostic", True)):
        errs = interpolated_tap_error(equalize(folded, agnostic)[0], probes, r1)
        out[mode] = max(errs.values())
        out[f"{mode} increase"] = max(errs[k] - base[k] for k in errs)
    return out


def _elements(v: dict) -> dict[str, dict]:
    return {r["element"]: r for r in [*v["equivariance"], *v.get("interpolated", [])]}


def _summarize(name: str, mode: str, report: dict, seconds: float) -> dict:
    """Per element: source, FP32 and INT8 per target; worst cases."""
    arts = {a["file"]: a for a in report["artifacts"]}
    source = report["verification"][0]
    per = {}
    for el, r in sorted(_elements(source).items(), key=lambda kv: kv[1]["degrees"]):
        per[el] = {"degrees": r["degrees"], "exact": r["exact"],
                   "source": {"rel_err_max": r["rel_err_max"], "rel_err_mean": r["rel_err_mean"]}}
    for v in report["verification"]:
        a = arts.get(v.get("artifact"))
        if a is None:
            continue
        for el, r in _elements(v).items():
            cell = {"rel_err_max": r["rel_err_max"], "rel_err_mean": r["rel_err_mean"]}
            for k in ("changed", "top1_agreement", "ratio_vs_fp32"):
                if r.get(k) is not None:
                    cell[k] = r[k]
            per[el][f"{a['precision']} {a['target']}"] = cell
    int8 = [v for v in report["verification"] if arts.get(v.get("artifact"), {})
            .get("precision") == "int8"]
    interp = [r for v in int8 for r in v["interpolated"]]
    return {
        "model": name, "group": report["model"]["group"], "dfq": mode, "seconds": round(seconds, 1),
        "elements": per,
        "int8_top1_vs_source": min(v["top1_agreement_vs_source"] for v in int8),
        "int8_exact_changed_max": max((r["changed"] for v in int8 for r in v["equivariance"]),
                                      default=None),
        "int8_exact_err_max": max((r["rel_err_max"] for v in int8 for r in v["equivariance"]),
                                  default=None),
        "int8_interp_err_max": max(r["rel_err_max"] for r in interp),
        "ratio_max": max(r["ratio_vs_fp32"] for r in interp),
        "rotation_top1_min": min(r["top1_agreement"] for r in interp),
    }


def run(names: list[str], n_probes: int, data_free: bool) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        probes = Path(tmp) / "digits.npz"
        np.savez(probes, inputs=_digits(n_probes))
        calib = None if data_free else Path(tmp) / "calib.npz"
        if calib is not None:
            np.savez(calib, inputs=load_mnist29("calib", size=SIZE)[0])
        for name in names:
            path = Path(tmp) / f"{name}.pt"
            model = MODELS[name]()
            torch.save(model, path, pickle_module=dill)
            fields = _field_structure(model, _digits(8))
            print(f"{name:14} CLE field structure (FP32, r1): {fields}", flush=True)
            for mode, dfq in MODES.items():
                opts = ConvertOptions(targets=["onnx", "tflite"], outdir=Path(tmp) / name / mode,
                                      input_shape=(1, 1, SIZE, SIZE), int8=True, probes=n_probes,
                                      probe_inputs=probes, input_norm=NORM, dfq=dfq,
                                      calibration=calib)
                t0 = time.perf_counter()
                report = convert(path, opts)
                row = _summarize(name, mode, report, time.perf_counter() - t0)
                row["cle_field_error"] = {"folded": fields["folded"], mode: fields[mode],
                                          "increase": fields[f"{mode} increase"]}
                results.append(row)
                print(f"{name:14} {mode:15} INT8 interp. err {row['int8_interp_err_max']:.3f} "
                      f"x{row['ratio_max']:.3f} FP32, rotation top-1 {row['rotation_top1_min']:.2f}"
                      f", exact changed {row['int8_exact_changed_max']} "
                      f"({row['seconds']} s)", flush=True)
    return results


def _e(v) -> str:
    return "-" if v is None else f"{v:.3g}"


def markdown(results: list[dict], machine: dict, n_probes: int, data_free: bool) -> str:
    ranges = ("default data-free (distilled) ranges" if data_free else
              "ranges calibrated on the 512 bundled MNIST calibration digits")
    lines = ["# Interpolated rotations: FP32 vs INT8 per group element", "",
             f"Machine: {machine.get('cpu_model')}, {machine.get('cores')} cores; "
             f"{n_probes} held-out MNIST digits (33x33, normalized) as probes; "
             f"`eqdeploy convert --int8 --target all` with {ranges}. Command: `PYTHONPATH=. "
             f"python benchmarks/interpolated.py{' --data-free' if data_free else ''}`.", "",
             "Interpolated elements: bilinear rotation about the grid centre, inputs masked "
             "to the inscribed disc before and after rotating; relative logit error "
             "`||f(g.x) - f(x)|| / ||f(x)||` max (mean) over probes; ratio = INT8 max / FP32 "
             "max (same target, same probes); top-1 = f(x) and f(g.x) agree. Exact elements: "
             "error max and probes whose output changed at all. CLE field error: "
             "`dfq.verify.interpolated_tap_error` at r1 on the FP32 graph, worst over "
             "intermediate tensors of the mean over fields of the channel-averaged error "
             "(equalization leaves the logits' function unchanged; this shows whether the "
             "fields inside still rotate into each other).", "",
             "## Summary (worst over elements and both targets)", "",
             "| model | group | DFQ | INT8 top-1 vs FP32 | INT8 interp. error max | INT8/FP32 "
             "max | rotation top-1 min | exact: error max, changed max | CLE field error "
             "(FP32, r1): folded -> after CLE, worst increase at a tensor |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['model']} | {r['group']} | {r['dfq']} | "
                     f"{r['int8_top1_vs_source']:.3f} | {_e(r['int8_interp_err_max'])} | "
                     f"{r['ratio_max']:.3f} | {r['rotation_top1_min']:.3f} | "
                     f"{_e(r['int8_exact_err_max'])}, {r['int8_exact_changed_max']} | "
                     f"{_e(r['cle_field_error']['folded'])} -> "
                     f"{_e(r['cle_field_error'][r['dfq']])}, "
                     f"+{_e(r['cle_field_error']['increase'])} |")
    for r in results:
        cols = [k for k in next(iter(r["elements"].values())) if " " in k]
        lines += ["", f"## {r['model']} ({r['group']}), {r['dfq']} DFQ", "",
                  "| element | degrees | source | " + " | ".join(cols) + " |",
                  "|---|---|---|" + "---|" * len(cols)]
        for el, e in r["elements"].items():
            cells = []
            for c in cols:
                x = e.get(c)
                if x is None:
                    cells.append("-")
                elif e["exact"]:
                    cells.append(f"{_e(x['rel_err_max'])} ({x.get('changed')} changed)")
                else:
                    cells.append(f"{_e(x['rel_err_max'])} ({_e(x['rel_err_mean'])})"
                                 + (f" x{x['ratio_vs_fp32']:.3f}" if "ratio_vs_fp32" in x else "")
                                 + f", top-1 {x.get('top1_agreement', 0):.2f}")
            src = e["source"]
            lines.append(f"| {el} | {e['degrees']:g} | {_e(src['rel_err_max'])} "
                         f"({_e(src['rel_err_mean'])}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=int, default=32)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--data-free", action="store_true",
                    help="default data-free ranges instead of the MNIST calibration digits")
    args = ap.parse_args()
    names = args.models.split(",")
    results = run(names, args.probes, args.data_free)
    machine = system_info()
    OUT.mkdir(exist_ok=True)
    stem = "interpolated_data_free" if args.data_free else "interpolated"
    (OUT / f"{stem}.json").write_text(json.dumps(
        {"machine": machine, "probes": args.probes, "data_free": args.data_free,
         "results": results}, indent=1))
    (OUT / f"{stem}.md").write_text(markdown(results, machine, args.probes, args.data_free))
    print(f"wrote {OUT / f'{stem}.md'}")


if __name__ == "__main__":
    main()
