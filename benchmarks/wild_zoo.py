"""The wild zoo (issue 11): every zoo model saved as its users save it, converted with the CLI.

For each model of ``eqdeploy.models.zoo.ZOO``: build it (its committed weights, trained
briefly on the bundled MNIST digits by ``python -m eqdeploy.models.zoo.train``), save it
the way its registry entry says (dill / pickle whole model, state dict + ``--arch``,
TorchScript + ``--group``) and run, in a fresh process,

    python -m eqdeploy.cli convert MODEL.pt <its flags> --int8 --target all ...

(64 probes: the held-out bundled MNIST test digits; ``--calibration``: the bundled unlabelled
digits; both laid out for the model's input). The INT8
conversion also writes and verifies the FP32 artifacts. Per model and format: FP32 error vs
the source; INT8 ONNX Runtime and LiteRT: probes whose integer output changed under every
exact element, top-1 agreement with the FP32 source, fully integer or not (TFLite ops
with a float32 output; ORT float compute ops after its QDQ fusions), INT8/FP32 size,
conversion seconds.
A failing conversion is recorded with the first line of its error (and whether it was a
traceback rather than eqdeploy's one-line error); then each target is converted to INT8
alone (which target fails) and FP32 to both (the FP32 columns). Writes
benchmarks/results/wild_zoo.{md,json} with the machine's description.

    TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python benchmarks/wild_zoo.py [--only NAME[,NAME]]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from eqdeploy.harness.sysinfo import system_info
from eqdeploy.models.zoo import ZOO, ZooModel, build
from eqdeploy.models.zoo.save import convert_argv, save_as_user

OUT = Path(__file__).parent / "results"
FORMATS = {"onnx": "onnxruntime", "tflite": "ai-edge-litert"}
# ORT ops that compute in float when left between DequantizeLinear and QuantizeLinear; the
# report's float_compute_ops covers the linear ones, these are the transcendental ones
FLOAT_ACTIVATIONS = {"Elu", "Sigmoid", "Tanh", "Softplus", "Exp", "Erf", "HardSigmoid"}


def first_error_line(stderr: str) -> tuple[str, bool]:
    """The failure's first line and whether it came as a traceback (not a one-line error)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error: ")]
    if errors:
        return errors[-1][len("Error: "):].strip(), False
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Traceback (most recent call")]
    if starts:
        tail = lines[starts[-1] + 1:]
        first = next((ln for ln in tail if not ln.startswith((" ", "\t"))), tail[-1])
        return first.strip(), True
    return (lines[-1].strip() if lines else "no output"), False


def run_cli(argv: list[str]) -> tuple[dict | None, float, dict | None]:
    """Run ``python -m eqdeploy.cli`` in a fresh process: (report, seconds, error)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH")]))}
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "eqdeploy.cli", *argv], env=env,
                          capture_output=True, text=True)
    seconds = round(time.perf_counter() - t, 1)
    if proc.returncode:
        line, traceback = first_error_line(proc.stderr)
        return None, seconds, {"error": line, "traceback": traceback, "exit": proc.returncode}
    outdir = Path(argv[argv.index("-o") + 1])
    report = json.loads((outdir / f"{Path(argv[1]).stem}.report.json").read_text())
    return report, seconds, None


def _row(report: dict, artifact: str) -> dict | None:
    return next((v for v in report["verification"] if v.get("artifact") == artifact), None)


def _artifact(report: dict, file: str) -> dict | None:
    return next((a for a in report["artifacts"] if a["file"] == file), None)


def fp32_columns(report: dict, stem: str) -> dict:
    """FP32 error vs source and equivariance error per format written."""
    out = {}
    for ext in FORMATS:
        row = _row(report, f"{stem}.{ext}")
        if row is not None:
            out[ext] = {"rel_err_vs_source": row["rel_err_vs_source"],
                        "equivariance_error_max": max(
                            (r["rel_err_max"] for r in row["equivariance"]), default=None)}
    return out


def int8_columns(report: dict, name: str) -> dict:
    """Per INT8 format: changed outputs per exact element, top-1 vs FP32, integer or not."""
    out = {}
    for ext in FORMATS:
        row, art = _row(report, f"{name}.{ext}"), _artifact(report, f"{name}.{ext}")
        if row is None:
            continue
        if ext == "tflite":
            floats = list(art["float_ops"] if "float_ops" in art
                          else art.get("float_tensors") or [])
        else:
            floats = list(art.get("float_compute_ops") or []) + sorted(
                FLOAT_ACTIVATIONS & set(art.get("ort_ops") or []))
        out[ext] = {"changed": {r["element"]: r["changed"] for r in row["equivariance"]},
                    "probes": report["probes"]["count"],
                    "top1_vs_fp32": row["top1_agreement_vs_source"],
                    "rel_err_vs_source": row["rel_err_vs_source"],
                    "steps_vs_simulation": row.get("max_steps_vs_simulation"),
                    "float": floats, "fully_integer": not floats,
                    "size_ratio_vs_fp32": art.get("size_ratio_vs_fp32"),
                    "emit_seconds": art.get("seconds")}
    return out


def run_model(entry: ZooModel, d: Path) -> dict:
    t = time.perf_counter()
    path, file_args = save_as_user(entry, build(entry.name), d)
    res = {"source": entry.source, "framework": entry.framework, "group": entry.group,
           "input": list(entry.input_shape), "saved_as": entry.save, "flags": file_args,
           "patterns": list(entry.patterns), "build_save_seconds":
               round(time.perf_counter() - t, 1), "errors": {}}
    report, secs, err = run_cli(convert_argv(entry, path, file_args, d / "int8"))
    res["convert_seconds"] = secs
    if report is not None:
        res["fp32"] = fp32_columns(report, f"{entry.name}.fp32")
        res["int8"] = int8_columns(report, entry.name)
        res["timings_seconds"] = report["timings_seconds"]
        return res
    res["errors"]["INT8 --target all"] = err
    res["int8"] = {}
    for ext in FORMATS:  # which target fails, and what the other one gives
        rep, secs, err = run_cli(convert_argv(entry, path, file_args, d / f"int8_{ext}",
                                              target=ext))
        res[f"convert_seconds_int8_{ext}"] = secs
        if rep is None:
            res["errors"][f"INT8 --target {ext}"] = err
        else:
            res["int8"].update(int8_columns(rep, entry.name))
    rep, secs, err = run_cli(convert_argv(entry, path, file_args, d / "fp32", int8=False))
    res["convert_seconds_fp32"] = secs
    if rep is None:
        res["errors"]["FP32 --target all"] = err
        res["fp32"] = {}
    else:
        res["fp32"] = fp32_columns(rep, entry.name)
    return res


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _cells(res: dict) -> list[str]:
    fp32 = " / ".join(_fmt((res["fp32"].get(x) or {}).get("rel_err_vs_source"), ".1e")
                      for x in FORMATS)
    cells = [fp32]
    for key, spec in (("changed", ""), ("top1_vs_fp32", ".3f"), ("fully_integer", ""),
                      ("size_ratio_vs_fp32", ".2f")):
        vals = []
        for ext in FORMATS:
            r = res["int8"].get(ext)
            if r is None:
                vals.append("fail")
            elif key == "changed":
                vals.append(f"{max(r['changed'].values(), default=0)}/{r['probes']}"
                            if r["changed"] else "none")
            elif key == "fully_integer":
                vals.append("yes" if r[key] else "no")
            else:
                vals.append(_fmt(r[key], spec))
        cells.append(" / ".join(vals))
    return cells


def markdown(results: dict) -> str:
    m = results["machine"]
    isa = [k for k, v in (m.get("isa") or {}).items() if v]
    lines = [
        "# Wild zoo: models written the way public sources write them, converted with the CLI",
        "", f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores (shared), ISA {isa}; "
        f"{m.get('os')}; Python {m.get('python')}, numpy {m.get('numpy')}, torch "
        f"{results['torch']}.", "",
        "Each model (`eqdeploy/models/zoo/`, committed weights from 30 seeded epochs on "
        "448 bundled MNIST digits: `python -m eqdeploy.models.zoo.train`) is saved as its "
        "users save it and converted in a fresh process with "
        "`python -m eqdeploy.cli convert MODEL.pt <flags> --int8 --target all --num-probes 64` "
        "`--input-norm 0.1307:0.3081`, the 512 unlabelled digits as `--calibration` and the "
        "64 held-out digits as probes (1x29x29 models: `calibration/mnist29.npz`; 3x33x33: "
        "the same digits padded and repeated over the channels, `<name>.digits.npz`). "
        "Regenerate: `python benchmarks/wild_zoo.py`.", "",
        "Pairs are ONNX Runtime / LiteRT. *FP32 err*: max |artifact - source| / max |source|. "
        "*INT8 changed*: probes whose integer output changed at all under the worst exact "
        "element. *top-1*: INT8 vs the FP32 source. *integer*: no TFLite op computing in "
        "float32; no float compute op left by ORT. *size*: INT8 / FP32 bytes. *s*: wall time "
        "of the `--target all` INT8 conversion (all attempts when it failed). `fail`: that "
        "INT8 target did not convert (errors below).", "",
        "| model | style | G | saved as | FP32 err | INT8 changed | INT8 top-1 | integer | "
        "size | s |", "|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, res in results["models"].items():
        secs = res["convert_seconds"] + sum(v for k, v in res.items()
                                            if k.startswith("convert_seconds_"))
        lines.append(f"| {name} | {res['framework']} | {res['group']} | {res['saved_as']} | "
                     + " | ".join(_cells(res)) + f" | {secs:.0f} |")
        for attempt, err in res["errors"].items():
            kind = "traceback" if err["traceback"] else "one-line error"
            notes.append(f"- **{name}**, {attempt} ({kind}): `{err['error']}`")
        for ext, r in res["int8"].items():
            if r["float"]:
                notes.append(f"- {name}: INT8 {ext} computes in float: "
                             + ", ".join(f"`{op}`" for op in r["float"]))
    lines += ["", "Failures and float ops (an ELU has no integer kernel in ORT; litert-torch "
              "lowers it to SELECT/EXP/SUB, of which EXP and SUB stay float):", ""] \
        + (notes or ["- none"])
    lines += ["", "Patterns per model:", ""] + [
        f"- {n}: {r['source']}; " + ", ".join(f"`{p}`" for p in r["patterns"])
        for n, r in results["models"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated zoo model names")
    args = ap.parse_args()
    names = list(ZOO) if not args.only else args.only.split(",")
    unknown = set(names) - set(ZOO)
    if unknown:
        ap.error(f"unknown model(s) {sorted(unknown)}; known: {list(ZOO)}")
    OUT.mkdir(exist_ok=True)
    json_path = OUT / "wild_zoo.json"
    results = {"machine": system_info(), "torch": torch.__version__, "models": {}}
    if args.only and json_path.exists():  # a subset re-run updates the previous results
        results["models"] = json.loads(json_path.read_text()).get("models", {})
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            res = run_model(ZOO[name], Path(tmp))
        results["models"][name] = res
        status = "; ".join(f"{k}: {v['error'][:120]}" for k, v in res["errors"].items()) or "ok"
        print(f"{name}: {status} [{time.perf_counter() - t:.0f} s]", file=sys.stderr, flush=True)
        json_path.write_text(json.dumps(results, indent=1))  # partial results survive a crash
    results["models"] = {n: results["models"][n] for n in ZOO if n in results["models"]}
    json_path.write_text(json.dumps(results, indent=1))
    (OUT / "wild_zoo.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
