"""Per-model verification table for the reference zoo (issue 6): one INT8 conversion each.

Every model is saved the way a user would save it (a dill pickle of the whole module, or a
traced TorchScript file) and converted once with ``eqdeploy.convert.convert`` to ONNX and
TFLite with ``int8=True``; that conversion also writes and verifies the FP32 artifacts
``<name>.fp32.<ext>``, so one run gives both precisions. Per model: the source and group,
the input size, the fields found (declared by e2cnn/escnn or discovered with ``group=``),
FP32 error vs the source and equivariance error, INT8 changed outputs under every exact
group element (ORT / LiteRT), INT8 top-1 agreement with the source, INT8 distance to the
torch simulation in output steps, whether both INT8 artifacts are fully integer, the INT8/FP32
size ratio and the conversion wall time. The trained e2cnn reference models are probed with
64 held-out MNIST digits; the others with seeded noise (the ``convert`` default, 16 probes).
A failing conversion is recorded with its one-line error (and, for the FP32 columns, an
FP32-only conversion is run instead). Writes benchmarks/results/reference_zoo.{json,md}.

    TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python benchmarks/reference_zoo.py [--only NAME[,NAME]]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from eqdeploy.convert import ConvertOptions, convert  # noqa: E402
from eqdeploy.datasets import load_mnist29  # noqa: E402
from eqdeploy.harness.sysinfo import system_info  # noqa: E402

OUT = Path(__file__).parent / "results"
MNIST_NORM = ([0.1307], [0.3081])
MNIST_PROBES = 64
RUNTIMES = {"onnx": "onnxruntime", "tflite": "ai-edge-litert"}


@dataclass
class Case:
    """One zoo entry: how to build it, save it and convert it."""

    name: str  # file stem (and row key)
    label: str  # what the table shows
    source: str  # framework + file format
    group: str
    size: int
    factory: Callable[[], torch.nn.Module]
    save: str = "dill"  # "dill" | "torchscript"
    discover: bool = True  # pass group= (plain torch / TorchScript); else fields are declared
    mnist: bool = False  # trained on MNIST: real digits as probes, MNIST input norm
    noise_calibration: bool = False  # no BatchNorm: calibrate on noise (no data-free ranges)
    tap: str | None = None
    channels: int = 1  # input channels (escnn ResNets take RGB)


def _factory(module: str, name: str, **kw) -> Callable[[], torch.nn.Module]:
    return lambda: getattr(importlib.import_module(f"eqdeploy.models.{module}"), name)(**kw)


def cases() -> tuple[list[Case], list[str]]:
    """The zoo; plus notes on what was skipped."""
    from eqdeploy.models import e4, p4m, plain_groupconv, reference, separable_gconv

    plain = "plain PyTorch (dill)"
    zoo = [
        Case("rotstack_c4", "rotstack_c4", plain, "C4", plain_groupconv.EXACT_SIZES["rotstack_c4"],
             _factory("plain_groupconv", "rotstack_c4"), noise_calibration=True),
        Case("p4cnn", "p4cnn", plain, "C4", plain_groupconv.EXACT_SIZES["p4cnn"],
             _factory("plain_groupconv", "p4cnn")),
        Case("g_p4cnn", "g_p4cnn", plain, "C4", separable_gconv.EXACT_SIZES["g_p4cnn"],
             _factory("separable_gconv", "g_p4cnn")),
        Case("gc_p4cnn", "gc_p4cnn", plain, "C4", separable_gconv.EXACT_SIZES["gc_p4cnn"],
             _factory("separable_gconv", "gc_p4cnn")),
        Case("p4m_resnet", "p4m_resnet", plain, "D4", p4m.EXACT_SIZES["p4m_resnet"],
             _factory("p4m", "p4m_resnet")),
        Case("e4_p4cnn", "e4_p4cnn", plain, "C4", e4.EXACT_SIZE, _factory("e4", "e4_p4cnn")),
    ]
    for name, group in (("c4_cnn", "C4"), ("c8_residual", "C8"), ("d4_cnn", "D4")):
        n = reference.EXACT_SIZES[name]
        zoo.append(Case(name, name, "e2cnn (dill)", group, n, _factory("reference", name),
                        discover=False, mnist=True))
    for name, group in (("c4_cnn", "C4"), ("c8_residual", "C8"), ("d4_cnn", "D4")):
        n = reference.EXACT_SIZES[name]
        zoo.append(Case(f"{name}_ts", f"{name} (traced)", "e2cnn TorchScript (traced)", group,
                        n, _factory("reference", name), save="torchscript", mnist=True))
    zoo.append(Case("c4_flat_head", "c4_flat_head (--tap features)", "e2cnn (dill)", "C4",
                    reference.EXACT_SIZES["c4_flat_head"], _factory("reference", "c4_flat_head"),
                    discover=False, tap="features"))
    notes = []
    try:
        from eqdeploy.models import escnn_resnet
    except Exception as e:  # noqa: BLE001 - another worker's module may not be there yet
        notes.append(f"escnn ResNet18 models skipped: eqdeploy.models.escnn_resnet does not "
                     f"import ({type(e).__name__}: {_one_line(e)})")
    else:
        for group in escnn_resnet.GROUPS:
            name = f"resnet18_{group.lower()}"
            zoo.append(Case(name, name, "escnn (dill)", group, escnn_resnet.EXACT_SIZES[group],
                            _factory("escnn_resnet", name), discover=False, channels=3))
    return zoo, notes


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:300]


def _save(case: Case, model: torch.nn.Module, d: Path) -> Path:
    if case.save == "torchscript":
        path = d / f"{case.name}.pt"
        x = torch.randn(1, case.channels, case.size, case.size)
        with torch.no_grad():
            torch.jit.save(torch.jit.trace(model.eval(), x), str(path))
        return path
    import dill

    path = d / f"{case.name}.pt"
    torch.save(model, path, pickle_module=dill)
    return path


def _options(case: Case, d: Path, outdir: Path, int8: bool) -> ConvertOptions:
    kw: dict = {}
    if case.mnist:
        probes_file = d / "digits.npz"
        if not probes_file.exists():
            digits = load_mnist29("test", size=case.size)[0][:MNIST_PROBES]
            np.savez(probes_file, inputs=digits)
        kw.update(probe_inputs=probes_file, probes=MNIST_PROBES, input_norm=MNIST_NORM)
    if case.noise_calibration:
        calib = d / "calib.npz"
        rng = np.random.default_rng(7)
        np.savez(calib, calib=rng.standard_normal((64, case.channels, case.size, case.size))
                 .astype(np.float32))
        kw["calibration"] = calib
    return ConvertOptions(targets=["onnx", "tflite"], int8=int8, outdir=outdir,
                          input_shape=(1, case.channels, case.size, case.size),
                          group=case.group if case.discover else None, tap=case.tap, **kw)


def _field_summary(sidecar: Path) -> dict:
    """Fields over the deployed spec's intermediate tensors, by representation kind."""
    from eqdeploy.spec import SymmetrySpec

    sym = SymmetrySpec.from_json(json.loads(sidecar.read_text())["symmetry"])
    reps = sym.representations
    kinds: dict[str, int] = {}
    for lay in sym.tensors.values():
        for _, rep in lay.fields:
            kinds[reps[rep].kind] = kinds.get(reps[rep].kind, 0) + 1
    out_kinds = sorted({reps[r].kind for _, r in sym.output.fields})
    return {"tensors": len(sym.tensors), "fields_by_kind": kinds,
            "regular_fields": kinds.get("regular", 0), "output_kinds": out_kinds}


def _row(report: dict, artifact: str) -> dict | None:
    return next((v for v in report["verification"] if v.get("artifact") == artifact), None)


def _art(report: dict, file: str) -> dict | None:
    return next((a for a in report["artifacts"] if a["file"] == file), None)


def _changed(row: dict | None) -> int | None:
    if row is None or not row["equivariance"]:
        return None
    return max(r["changed"] for r in row["equivariance"])


def _equiv_err(row: dict | None) -> float | None:
    if row is None or not row["equivariance"]:
        return None
    return max(r["rel_err_max"] for r in row["equivariance"])


def summarize(report: dict, stem: str, int8: bool) -> dict:
    """The table's numbers for one conversion (``stem``: artifact file stem), per target it
    wrote."""
    fp32 = f"{stem}.fp32" if int8 else stem
    res: dict = {"fp32": {}, "int8": {}}
    for ext, runtime in RUNTIMES.items():
        r32 = _row(report, f"{fp32}.{ext}")
        if r32 is None:
            continue
        res["fp32"][ext] = {
            "runtime": runtime, "rel_err_vs_source": r32["rel_err_vs_source"],
            "equivariance_error_max": _equiv_err(r32),
            "top1_agreement_vs_source": r32["top1_agreement_vs_source"],
            "bytes": _art(report, f"{fp32}.{ext}")["bytes"]}
        if not int8:
            continue
        r8, a8 = _row(report, f"{stem}.{ext}"), _art(report, f"{stem}.{ext}")
        res["int8"][ext] = {
            "runtime": runtime, "changed": {r["element"]: r["changed"]
                                            for r in r8["equivariance"]},
            "changed_max": _changed(r8), "probes": report["probes"]["count"],
            "equivariance_error_max": _equiv_err(r8),
            "rel_err_vs_source": r8["rel_err_vs_source"],
            "top1_agreement_vs_source": r8["top1_agreement_vs_source"],
            "max_steps_vs_simulation": r8["max_steps_vs_simulation"],
            "bytes": a8["bytes"], "size_ratio_vs_fp32": a8["size_ratio_vs_fp32"],
            "float_ops": a8.get("float_tensors" if ext == "tflite" else "float_compute_ops")}
        tap8 = _row(report, f"{stem}.tap.{ext}")
        if tap8 is not None:
            tap32 = _row(report, f"{stem}.tap.fp32.{ext}")
            res["int8"][ext]["tap"] = {
                "tap": tap8["tap"], "changed": {r["element"]: r["changed"]
                                                for r in tap8["equivariance"]},
                "changed_max": _changed(tap8), "max_steps_vs_simulation":
                    tap8["max_steps_vs_simulation"],
                "fp32_equivariance_error_max": _equiv_err(tap32)}
    return res


def _attempt(path: Path, options: ConvertOptions, errors: dict, key: str) -> dict | None:
    try:
        return convert(path, options)
    except Exception as e:  # noqa: BLE001 - recorded in the table, the run goes on
        errors[key] = f"{type(e).__name__}: {_one_line(e)}"
        return None


def _conversions(case: Case, path: Path, d: Path, entry: dict) -> list[tuple[dict, bool, Path]]:
    """The one INT8 conversion to both targets; if it fails, INT8 to each target alone, and
    FP32 to the targets whose INT8 failed. Returns (report, int8, outdir)s; errors in entry."""
    errors: dict = {}
    t = time.perf_counter()
    report = _attempt(path, _options(case, d, d / "int8", int8=True), errors, "INT8")
    if report is not None:
        entry["convert_seconds"] = round(time.perf_counter() - t, 1)
        return [(report, True, d / "int8")]
    done, failed = [], []
    for target in RUNTIMES:  # which target failed, and what the other one gives
        out = d / f"int8_{target}"
        opts = dataclasses.replace(_options(case, d, out, int8=True), targets=[target])
        rep = _attempt(path, opts, errors, f"INT8 {target} alone")
        if rep is not None:
            done.append((rep, True, out))
        else:
            failed.append(target)
    if failed:  # the FP32 columns of the targets whose INT8 conversion failed
        opts = dataclasses.replace(_options(case, d, d / "fp32", int8=False), targets=failed)
        rep = _attempt(path, opts, errors, f"FP32 {', '.join(failed)}")
        if rep is not None:
            done.append((rep, False, d / "fp32"))
    entry["errors"] = errors
    entry["convert_seconds_all_attempts"] = round(time.perf_counter() - t, 1)
    return done


def run_case(case: Case) -> dict:
    entry = {"label": case.label, "source": case.source, "group": case.group,
             "input": [1, case.channels, case.size, case.size],
             "probes": f"{MNIST_PROBES} MNIST digits" if case.mnist else "16 seeded noise",
             "calibration": "64 noise inputs" if case.noise_calibration else
             "data-free (default)", "tap": case.tap}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        path = _save(case, case.factory().eval(), d)
        entry["build_save_seconds"] = round(time.perf_counter() - t, 1)
        done = _conversions(case, path, d, entry)
        if not done:
            return entry
        entry.update({"fp32": {}, "int8": {}})
        for report, int8, _ in done:
            part = summarize(report, case.name, int8)
            entry["fp32"].update(part["fp32"])
            entry["int8"].update(part["int8"])
        report, int8, outdir = done[0]
        ext = next(iter(entry["fp32"]))
        fp32 = outdir / (f"{case.name}.fp32.{ext}" if int8 else f"{case.name}.{ext}")
        entry["fields"] = _field_summary(Path(f"{fp32}.eqdeploy.json"))
        entry["fields"]["how"] = "discovered" if "discovery" in report["model"] else "declared"
        entry["framework"] = report["model"].get("framework")
        entry["output_action"] = report["model"].get("output_action")
        if entry["int8"]:
            entry["fully_integer"] = all(r["float_ops"] == [] for r in entry["int8"].values())
        sim = next((v for v in report["verification"]
                    if v["runtime"] == "torch INT8 simulation"), None)
        if sim is not None:
            entry["simulation_top1_vs_source"] = sim["top1_agreement_vs_source"]
        entry["timings_seconds"] = report["timings_seconds"]
    return entry


def _fmt(x, spec: str = ".1e") -> str:
    return "n/a" if x is None else format(x, spec)


def _pair(entry: dict, prec: str, key: str, spec: str = ".1e") -> str:
    d = entry.get(prec) or {}
    vals = [(d.get(ext) or {}).get(key) for ext in RUNTIMES]
    if all(v is None for v in vals):
        return "n/a"
    return " / ".join(_fmt(v, spec) for v in vals)


def _int8_changed(entry: dict) -> str:
    d = entry.get("int8")
    if not d:
        return "n/a"
    parts = []
    for ext in RUNTIMES:
        r = d.get(ext)
        if r is None:
            parts.append("n/a")
        elif r.get("tap"):
            parts.append(f"{_fmt(r['tap']['changed_max'], 'd')} (tap)")
        else:
            parts.append(_fmt(r["changed_max"], "d"))
    return " / ".join(parts) + f" of {next(iter(d.values()))['probes']}"


def _size(shape: list[int]) -> str:
    return f"{shape[1]}x{shape[2]}x{shape[3]}"


def _fp32_equiv(entry: dict) -> str:
    taps = [((entry.get("int8") or {}).get(ext) or {}).get("tap") for ext in RUNTIMES]
    if all(taps):
        return " / ".join(_fmt(t["fp32_equivariance_error_max"]) for t in taps) + " (tap)"
    return _pair(entry, "fp32", "equivariance_error_max")


def _telling(names: list[str]) -> str:
    """A float op name that says what it is (a pooling layer before a conv's bias)."""
    return next((n for n in names if "pool" in n.lower()), names[-1])


def _simulation_note(models: dict) -> str:
    """Whether INT8 top-1 below 1 comes from the parameters (the simulation agrees)."""
    off = [e["label"] for e in models.values() if e.get("int8") and any(
        r["top1_agreement_vs_source"] != e.get("simulation_top1_vs_source")
        for r in e["int8"].values())]
    if not off:
        return ("- INT8 top-1 vs source equals that of the torch simulation of the same "
                "parameters for every model: top-1 below 1 on random-weight models probed "
                "with noise is quantization error on near-tied logits, not a deployment error.")
    return f"- INT8 top-1 differs from the torch simulation's for: {', '.join(off)}."


def markdown(results: dict) -> str:
    m = results["machine"]
    isa = [k for k, v in m.get("isa", {}).items() if v]
    lines = [
        "# Reference zoo: one INT8 conversion per model, verified in ONNX Runtime and LiteRT", "",
        f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores (shared), ISA {isa}; "
        f"torch {results['torch']}; {m.get('python')}.", "",
        "Each model is saved as a user would (whole-module dill pickle, or a traced "
        "TorchScript file) and converted once: `convert(path, ConvertOptions(targets=[\"onnx\", "
        "\"tflite\"], int8=True, ...))`, which also writes and verifies the FP32 artifacts. "
        "Plain PyTorch and TorchScript models get `group=` (fields discovered by probing); "
        "e2cnn/escnn models declare their fields. Trained e2cnn models are probed with 64 "
        "held-out MNIST digits, the others (random weights) with 16 seeded noise inputs.", "",
        "Columns: pairs are ONNX Runtime / LiteRT. *FP32 err* = max |artifact - source| / "
        "max |source|; *FP32 equiv.* = max relative equivariance error over the exact group "
        "elements; *INT8 changed* = probes whose integer output changed at all under the "
        "worst exact element (0 = bit-exact); *steps vs sim.* = max distance from the torch "
        "simulation of the same INT8 parameters, in output quantization steps; *integer* = "
        "no float tensor in the TFLite and no float compute op in the ONNX; *size* = INT8 / "
        "FP32 bytes (ONNX / TFLite).", "",
        "| model | source | G | input | fields | FP32 err | FP32 equiv. | INT8 changed | "
        "INT8 top-1 vs source | steps vs sim. | integer | size | convert s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    failures = []
    for e in results["models"].values():
        f = e.get("fields")
        fields = "n/a" if not f else \
            f"{f['regular_fields']} regular in {f['tensors']} tensors ({f['how']})"
        integer = "n/a" if "fully_integer" not in e else ("yes" if e["fully_integer"] else "no")
        if "fully_integer" in e and len(e["int8"]) < len(RUNTIMES):
            integer += " (" + ", ".join(RUNTIMES[x] for x in e["int8"]) + " only)"
        secs = _fmt(e.get("convert_seconds"), ".0f")
        if "convert_seconds_all_attempts" in e:
            secs = f"{e['convert_seconds_all_attempts']:.0f} (all attempts)"
        lines.append(
            f"| {e['label']} | {e['source']} | {e['group']} | {_size(e['input'])} | {fields} | "
            f"{_pair(e, 'fp32', 'rel_err_vs_source')} | "
            f"{_fp32_equiv(e)} | {_int8_changed(e)} | "
            f"{_pair(e, 'int8', 'top1_agreement_vs_source', '.3f')} | "
            f"{_pair(e, 'int8', 'max_steps_vs_simulation', '.2f')} | {integer} | "
            f"{_pair(e, 'int8', 'size_ratio_vs_fp32', '.2f')} | {secs} |")
        for attempt, err in e.get("errors", {}).items():
            failures.append(f"- **{e['label']}** failed ({attempt} conversion): {err}")
        if e.get("errors"):
            kept = [RUNTIMES[x] for x in e.get("int8") or {}]
            fp32_only = [RUNTIMES[x] for x in e.get("fp32") or {} if x not in (e["int8"] or {})]
            failures.append(f"  - {e['label']}: " + "; ".join(filter(None, [
                kept and f"INT8 columns from the {', '.join(kept)} INT8 conversion alone",
                fp32_only and f"{', '.join(fp32_only)} FP32 columns from an FP32-only "
                f"conversion", not (kept or fp32_only) and "no conversion succeeded"])))
        for ext, r in (e.get("int8") or {}).items():
            if r["float_ops"]:
                failures.append(f"  - {e['label']}: the INT8 {ext} keeps {len(r['float_ops'])} "
                                f"float {'tensors' if ext == 'tflite' else 'compute ops'}, "
                                f"e.g. `{_telling(r['float_ops'])}`")
        taps = {ext: ((e.get("int8") or {}).get(ext) or {}).get("tap") for ext in RUNTIMES}
        if taps["onnx"] and taps["tflite"]:
            on, tf = taps["onnx"], taps["tflite"]
            failures.append(
                f"- {e['label']}: the logits read every group channel, so the main artifacts "
                f"have no output action (no equivariance rows); the `{on['tap']}` tap "
                f"artifacts cut from the same INT8 graph carry the proof: changed per element "
                f"{on['changed']} (ORT) / {tf['changed']} (LiteRT), steps vs sim. "
                f"{on['max_steps_vs_simulation']} / {tf['max_steps_vs_simulation']}; the "
                f"columns marked (tap) are theirs")
    failures.append(_simulation_note(results["models"]))
    if failures or results["notes"]:
        lines += ["", "Notes and failures:", ""] + failures + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="comma-separated model names (file stems) to run")
    args = ap.parse_args()
    zoo, notes = cases()
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {c.name for c in zoo}
        if unknown:
            ap.error(f"unknown model(s) {sorted(unknown)}; known: {[c.name for c in zoo]}")
        zoo = [c for c in zoo if c.name in wanted]
    OUT.mkdir(exist_ok=True)
    json_path = OUT / "reference_zoo.json"
    results = {"machine": system_info(), "torch": torch.__version__, "notes": notes,
               "models": {}}
    if args.only and json_path.exists():  # a subset re-run updates the previous results
        old = json.loads(json_path.read_text())
        results["models"] = old.get("models", {})
    t0 = time.perf_counter()
    for case in zoo:
        t = time.perf_counter()
        entry = run_case(case)
        results["models"][case.name] = entry
        status = "; ".join(f"{k}: {v}" for k, v in entry.get("errors", {}).items()) \
            or f"ok ({entry.get('convert_seconds')} s)"
        print(f"{case.name}: {status} [{time.perf_counter() - t:.0f} s]", file=sys.stderr,
              flush=True)
        json_path.write_text(json.dumps(results, indent=1))  # partial results survive a crash
    results["last_run"] = {"only": args.only, "seconds": round(time.perf_counter() - t0, 1)}
    json_path.write_text(json.dumps(results, indent=1))
    (OUT / "reference_zoo.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
