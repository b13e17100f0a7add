"""Convert every reference model (FP32 and INT8, both targets) and tabulate the reports.

Times per stage, error of each runtime against the source, equivariance error and changed
probes per exact element, INT8 fidelity and sizes, with machine info, on held-out MNIST
digits as probes. Writes benchmarks/results/convert_reference.{json,md}.

    .venv/bin/python benchmarks/convert_reference.py
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from eqdeploy.convert import ConvertOptions, convert  # noqa: E402
from eqdeploy.datasets import load_mnist29  # noqa: E402
from eqdeploy.harness.sysinfo import system_info  # noqa: E402
from eqdeploy.models import reference as R  # noqa: E402

OUT = Path(__file__).parent / "results"


def run(name: str, int8: bool, tmp: Path) -> dict:
    n = R.EXACT_SIZES[name]
    ckpt = tmp / f"{name}.pt"
    torch.save(getattr(R, name)().state_dict(), ckpt)
    probes = tmp / "probes.npz"
    np.savez(probes, inputs=load_mnist29("test", size=n)[0][:64])
    t = time.perf_counter()
    report = convert(ckpt, ConvertOptions(
        targets=["onnx", "tflite"], outdir=tmp / ("int8" if int8 else "fp32"),
        input_shape=(1, 1, n, n), arch=f"eqdeploy.models.reference:{name}", int8=int8,
        probes=64, probe_inputs=probes, input_norm=([0.1307], [0.3081])))
    report["wall_seconds"] = round(time.perf_counter() - t, 1)
    return report


def main() -> None:
    results = {"machine": system_info(), "runs": []}
    lines = ["# Reference models: conversion and verification", "",
             "Probes: 64 held-out MNIST digits. Errors: relative; changed: probes whose output "
             "changed at all under the element (max over exact elements).", "",
             "| model | precision | runtime | vs source | top-1 vs source | equiv. error | "
             "changed | steps vs sim. |", "|---|---|---|---|---|---|---|---|"]
    timing = ["", "| model | precision | wall s | stage seconds | artifact bytes |",
              "|---|---|---|---|---|"]
    for name in ("c4_cnn", "c8_residual", "d4_cnn"):
        for int8 in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                rep = run(name, int8, Path(tmp))
            prec = "INT8" if int8 else "FP32"
            results["runs"].append({"model": name, "precision": prec, "report": rep})
            for v in rep["verification"]:
                eq = v["equivariance"]
                lines.append(
                    f"| {name} | {prec} | {v['runtime']} | {v['rel_err_vs_source']:.1e} | "
                    f"{v['top1_agreement_vs_source']:.3f} | "
                    f"{max(r['rel_err_max'] for r in eq):.1e} | "
                    f"{max(r['changed'] for r in eq)}/{eq[0]['probes']} | "
                    f"{v.get('max_steps_vs_simulation', '-')} |")
            stages = ", ".join(f"{k} {v}" for k, v in rep["timings_seconds"].items())
            arts = ", ".join(f"{a['target']} {a['bytes']} ({a['seconds']} s"
                             + (f", {a['size_ratio_vs_fp32']}x FP32" if int8 else "") + ")"
                             for a in rep["artifacts"])
            timing.append(f"| {name} | {prec} | {rep['wall_seconds']} | {stages} | {arts} |")
    m = results["machine"]
    lines += timing + ["", f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores, "
                       f"ISA {[k for k, v in m.get('isa', {}).items() if v]}", ""]
    OUT.mkdir(exist_ok=True)
    (OUT / "convert_reference.json").write_text(json.dumps(results, indent=1, default=str))
    (OUT / "convert_reference.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
