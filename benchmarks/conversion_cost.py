"""What an eqdeploy INT8 ``--target all`` conversion costs against the bare converter steps.

For the bundled example (``examples/c4_cnn.pt``, the README command) and the escnn ResNet18
reference (C4, 33 px, state dict + ``--arch``, data-free distilled ranges): eqdeploy's
``convert`` command vs the stock steps on a hand-written plain twin holding the same weights
(``cost_twins.py``: torch.export once, torch.onnx.export FP32, litert_torch.convert FP32, ORT
quantize_static QDQ per channel, litert-torch PT2E INT8; the same four artifacts eqdeploy
writes), repetitions alternated (ABBA) in one run, every repetition a fresh process
(``cost_child.py``) so imports and peak RSS are honest. Per run: wall (spawn to reap), CPU
(user + sys of the process and its children, from ``wait4``), peak RSS, import wall/CPU
(outermost imports, timed where they happen), each stage's wall/CPU, a ledger of every call
of the big converter functions and eqdeploy's stage functions, and a sampled profile.
The bare side calibrates on 16 inputs (stock PT2E's histogram observers cost ~0.1 s CPU per
calibration input); eqdeploy calibrates as the README says (512 digits) for the example and
distills 16 inputs for the ResNet.

    nice .venv/bin/python benchmarks/conversion_cost.py [--reps 3] [--resnet-reps 2]

Writes benchmarks/results/conversion_cost.{json,md} with machine info and load averages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
PY = sys.executable
BARE_CALIBRATION = 16


# --- preparation ---------------------------------------------------------------------------------
def prepare(work: Path, models: list[str]) -> dict:
    """Checkpoints for eqdeploy, twin state dicts and calibration inputs for the bare side."""
    import cost_twins
    import numpy as np
    import torch

    from eqdeploy.load import load_model

    specs = {}
    for name in models:
        if name == "c4_cnn":
            ckpt = ROOT / "examples" / "c4_cnn.pt"
            source = load_model(ckpt, "eqdeploy.models.reference:c4_cnn").module
            chw = (1, 29, 29)
            calib = np.load(ROOT / "calibration" / "mnist29.npz")["calib"][:BARE_CALIBRATION]
            args = ["convert", str(ckpt), "--arch", "eqdeploy.models.reference:c4_cnn",
                    "--input-shape", "1,1,29,29", "--int8", "--target", "all",
                    "--input-norm", "0.1307:0.3081",
                    "--calibration", str(ROOT / "calibration" / "mnist29.npz"),
                    "--probes", str(ROOT / "calibration" / "mnist29.npz")]
        elif name == "resnet18_c4":
            from eqdeploy.models.escnn_resnet import escnn_resnet18

            source = escnn_resnet18("C4")
            ckpt = work / "resnet18_c4.pt"
            torch.save(source.state_dict(), ckpt)
            chw = (3, 33, 33)
            calib = np.random.default_rng(0).standard_normal(
                (BARE_CALIBRATION, *chw)).astype(np.float32)
            args = ["convert", str(ckpt), "--arch", "eqdeploy.models.escnn_resnet:resnet18_c4",
                    "--input-shape", "1,3,33,33", "--int8", "--target", "all"]
        else:
            raise SystemExit(f"unknown model {name}")
        source.eval()
        twin = cost_twins.TWINS[name]().eval()
        twin.load_state_dict(cost_twins.twin_state(source, twin))
        x = torch.from_numpy(np.random.default_rng(1).standard_normal((4, *chw)).astype(
            np.float32))
        with torch.no_grad():
            y = source(x)
            y = y.tensor if hasattr(y, "tensor") else y
            err = float((twin(x) - y).abs().max() / y.abs().max())
        if not err <= 1e-5:
            raise SystemExit(f"{name}: the twin differs from the source by {err:.2e}")
        state = work / f"{name}.twin.pt"
        torch.save(twin.state_dict(), state)
        np.save(work / f"{name}.calib.npy", calib)
        specs[name] = {"eqdeploy_args": args, "twin_state": str(state),
                       "calib": str(work / f"{name}.calib.npy"), "chw": list(chw),
                       "twin_vs_source_rel_err": err,
                       "twin_layers": sum(1 for m in twin.modules()
                                          if isinstance(m, cost_twins.PLAIN))}
    return specs


# --- one measured run ----------------------------------------------------------------------------
def run_child(side: str, name: str, spec: dict, work: Path, tag: str) -> dict:
    out = work / f"out-{name}-{side}-{tag}"
    result = work / f"{name}-{side}-{tag}.json"
    if side == "eqdeploy":
        cmd = [PY, str(HERE / "cost_child.py"), "eqdeploy", str(result), "--",
               *spec["eqdeploy_args"], "-o", str(out)]
    else:
        cmd = [PY, str(HERE / "cost_child.py"), "bare", str(result), name, spec["twin_state"],
               spec["calib"], str(out), ",".join(str(v) for v in spec["chw"])]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    load_before = os.getloadavg()
    log = (work / f"{name}-{side}-{tag}.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    data = json.loads(result.read_text()) if result.exists() else {"error": "no result"}
    run = {"side": side, "model": name, "tag": tag, "returncode": proc.returncode,
           "error": data.get("error") or (None if proc.returncode == 0 else
                                          f"exit {proc.returncode}"),
           "wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss_bytes": ru.ru_maxrss * 1024,
           "load_before": load_before, "load_after": os.getloadavg(),
           "startup_wall": data.get("process_start", t0) - t0, **{
               k: data.get(k) for k in ("segments", "imports", "ledger", "samples", "unpatched")}}
    if side == "eqdeploy" and run["error"] is None:
        stem = Path(spec["eqdeploy_args"][1]).stem
        report = json.loads((out / f"{stem}.report.json").read_text())
        run["report_timings"] = report["timings_seconds"]
        run["artifacts"] = [{k: a.get(k) for k in ("file", "precision", "target", "seconds",
                                                   "bytes")} for a in report["artifacts"]]
        run["verification"] = [{"runtime": v["runtime"], "artifact": v.get("artifact"),
                                "changed": [r["changed"] for r in v["equivariance"]]}
                               for v in report["verification"]]
    elif side == "bare" and run["error"] is None:
        files = sorted(p.name for p in out.iterdir())
        if len(files) != 4:
            run["error"] = f"bare run wrote {files}, expected 4 artifacts"
        run["artifacts"] = [{"file": f, "bytes": (out / f).stat().st_size} for f in files]
    if run["error"] is None and data.get("imports"):
        imp = data["imports"]
        run["import_wall"], run["import_cpu"] = imp["wall"], imp["cpu"]
        run["cpu_excl_imports"] = run["cpu"] - imp["cpu"]
        run["wall_excl_imports"] = run["wall"] - imp["wall"]
    shutil.rmtree(out, ignore_errors=True)
    return run


# --- analysis -----------------------------------------------------------------------------------
def _ok(runs: list[dict], model: str, side: str) -> list[dict]:
    return [r for r in runs if r["model"] == model and r["side"] == side and r["error"] is None]


def _stat(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "n": len(values)}


def ledger_total(run: dict, last: str | tuple, within: tuple = (), stage: str | None = None,
                 key: str = "cpu") -> tuple[float, int]:
    """Sum of ``key`` over ledger calls whose label starts with ``last``, nested in calls
    labelled ``within`` (in order) and, optionally, in ``stage``."""
    lasts = (last,) if isinstance(last, str) else last
    total, calls = 0.0, 0
    for r in run["ledger"]:
        path = r["path"]
        if not path[-1].startswith(lasts) or (stage and not r["stage"].startswith(stage)):
            continue
        if any(p.startswith(lasts) for p in path[:-1]):
            continue  # nested in a call of the same function: counted there
        it = iter(path[:-1])
        if all(any(p.startswith(w) for p in it) for w in within):
            total += r[key]
            calls += r["calls"]
    return total, calls


# (label, what it measures, ledger query) -- CPU seconds, imports inside included unless noted
ITEMS = [
    ("load: model factory + state dict", ("load_model",), {}),
    ("export: torch.export of the swapped model", ("torch.export.export",),
     {"within": ("export_equivariant",)}),
    ("export: second torch.export (_clean_reexport)", ("export._clean_reexport",), {}),
    ("export: filters made exactly invariant (adapter symmetrize)",
     ("adapter: symmetrize filters",), {}),
    ("normalize: run_decompositions + re-export", ("normalize",), {"stage": "normalize"}),
    ("fail-fast lowering check, onnx", ("lowering check onnx",), {}),
    ("fail-fast lowering check, tflite", ("lowering check tflite",), {}),
    ("verify source + graph on probes", ("verify rows",), {"stage": "verify_graph"}),
    ("  of which: the source model (e2cnn/escnn forward)", ("verify rows (_runtime_row) source",),
     {"stage": "verify_graph"}),
    ("  of which: the exported graph", ("verify rows (_runtime_row) torch.export graph",),
     {"stage": "verify_graph"}),
    ("DFQ (incl. a torch.export)", ("run_dfq",), {}),
    ("ranges: distillation (distill_inputs)", ("distill_inputs",), {}),
    ("ranges: min/max over calibration (compute_qparams)", ("compute_qparams",), {}),
    ("torch INT8 simulation + its verify rows", ("simulate_with", "verify rows"),
     {"stage": "quantize"}),
    ("  of which: the simulation's equivariance rows (rotated probes, float64)",
     ("equivariance_table",), {"stage": "quantize"}),
    ("ONNX INT8 emit (total)", ("onnx INT8 emit",), {}),
    ("  of which: FP32 graph re-exported (fp32_model: static_program + torch.onnx.export)",
     ("onnx_int8.fp32_model",), {"within": ("onnx INT8 emit",)}),
    ("  of which: compare_qparams (read back)", ("onnx_int8.compare_qparams",), {}),
    ("  of which: optimized_ops (an extra ORT session)", ("onnx_int8.optimized_ops",), {}),
    ("ONNX FP32 emit (beside INT8)", ("onnx FP32 emit",), {}),
    ("TFLite INT8 emit (total)", ("tflite INT8 emit",), {}),
    ("  of which: litert_torch.convert", ("litert_torch.convert",),
     {"within": ("tflite INT8 emit",)}),
    ("TFLite FP32 emit (beside INT8)", ("tflite FP32 emit",), {}),
    ("verify INT8 artifacts (open, manifest, probes, sidecar)", ("_verified (open, check, "
                                                                  "verify, sidecar) INT8",), {}),
    ("verify FP32 artifacts beside INT8", ("_verified (open, check, verify, sidecar) FP32",), {}),
    ("report (json, markdown, moves)", ("[report",), {}),
    ("all equivariance_table calls (every verify row)", ("equivariance_table",), {}),
    ("all PlainModel.static_program (re-export at fixed batch)",
     ("PlainModel.static_program",), {}),
    ("all torch.export.export calls", ("torch.export.export",), {}),
    ("all ExportedProgram.run_decompositions calls", ("ExportedProgram.run_decompositions",),
     {}),
    ("all ExportedProgram.module() calls (unlift)", ("ExportedProgram.module",), {}),
    ("all torch.onnx.export calls", ("torch.onnx.export",), {}),
    ("all litert_torch.convert calls", ("litert_torch.convert",), {}),
]


def items_of(runs: list[dict]) -> list[dict]:
    out = []
    for label, lasts, kw in ITEMS:
        cpu = [ledger_total(r, lasts, **kw) for r in runs]
        wall = [ledger_total(r, lasts, key="wall", **kw)[0] for r in runs]
        imp = [ledger_total(r, lasts, key="import_cpu", **kw)[0] for r in runs]
        if not any(c for c, _ in cpu):
            continue
        out.append({"item": label, "calls": cpu[0][1],
                    "cpu": statistics.median(c for c, _ in cpu),
                    "import_cpu": statistics.median(imp), "wall": statistics.median(wall)})
    return out


def stage_table(runs: list[dict]) -> list[dict]:
    """Median wall/CPU/import CPU per stage (stages in the order of the first run)."""
    order = [s["stage"] for s in runs[0]["segments"]]
    rows = []
    for stage in order:
        segs = [next((s for s in r["segments"] if s["stage"] == stage), None) for r in runs]
        segs = [s for s in segs if s is not None]
        rows.append({"stage": stage, **{k: statistics.median(s[k] for s in segs)
                                        for k in ("wall", "cpu", "import_wall", "import_cpu")}})
    return rows


def top_samples(runs: list[dict], n: int = 20) -> list[dict]:
    acc: dict[tuple, list[float]] = {}
    for r in runs:
        for s in r["samples"]:
            a = acc.setdefault((s["stage"], s["own"], s["callee"]), [0.0, 0.0])
            a[0] += s["wall"] / len(runs)
            a[1] += s["cpu"] / len(runs)
    rows = [{"stage": k[0], "own": k[1], "callee": k[2], "wall": v[0], "cpu": v[1]}
            for k, v in acc.items()]
    return sorted(rows, key=lambda r: -r["cpu"])[:n]


def imports_by_package(runs: list[dict], n: int = 10) -> list[dict]:
    acc: dict[str, list[float]] = {}
    for r in runs:
        for k, v in r["imports"]["by_package"].items():
            a = acc.setdefault(k, [0.0, 0.0])
            a[0] += v["wall"] / len(runs)
            a[1] += v["cpu"] / len(runs)
    return [{"package": k, "wall": v[0], "cpu": v[1]}
            for k, v in sorted(acc.items(), key=lambda kv: -kv[1][1])[:n]]


def _item(items: list[dict], label: str) -> float:
    return next((i["cpu"] - i["import_cpu"] for i in items if i["item"] == label), 0.0)


def proposals(s: dict) -> dict:
    """Measured CPU (imports excluded) each change removes, and the projected ratio."""
    it = s["items"]
    static = next((i for i in it if i["item"].startswith("all PlainModel.static_program")),
                  None)
    sim_rows = _item(it, "  of which: the simulation's equivariance rows (rotated probes, "
                         "float64)")
    changes = [
        ("reuse", "emit the FP32 artifacts from the BN-folded graph and hand the FP32 ONNX to "
         "the INT8 emit (`fp32=`, exists): one torch.onnx.export instead of two",
         _item(it, "  of which: FP32 graph re-exported (fp32_model: static_program + "
                   "torch.onnx.export)")),
        ("fp32", "FP32 artifacts beside INT8 only on request: drops the FP32 ONNX and TFLite "
         "emits and their verification",
         _item(it, "ONNX FP32 emit (beside INT8)") + _item(it, "TFLite FP32 emit (beside INT8)")
         + _item(it, "verify FP32 artifacts beside INT8")),
        ("check", "fail-fast lowering check from a table of ops known to lower (the registry "
         "only for ops outside it): no decompositions before the real ones",
         _item(it, "fail-fast lowering check, onnx") + _item(it, "fail-fast lowering check, "
                                                              "tflite")),
        ("static", "one fixed-batch re-export per conversion (cache `static_program`), not "
         "one per emit",
         (static["cpu"] * (1 - 1 / static["calls"])) if static and static["calls"] else 0.0),
        ("simrows", "the torch INT8 simulation checked on the probes only (its rotated-probe "
         "rows are diagnostics; each artifact's rows carry the proof)", sim_rows),
        ("dedupe", f"verify each batch once: `equivariance_table` runs f(g.x) and raw(g.x) "
         f"(the same function for FP32 rows; INT8 can dequantize raw) and raw(x) again: "
         f"1 + 2E runs where E = {s['exact_elements']} do; saves (1 + E) / (1 + 2E) of the "
         "other rows' tables",
         (_item(it, "all equivariance_table calls (every verify row)") - sim_rows)
         * (1 + s["exact_elements"]) / (1 + 2 * s["exact_elements"])),
        ("exit", "`os._exit` once the report is written and stdout flushed (skips the "
         "interpreter's teardown of torch/jax/litert; not in the projections below: the bare "
         "process pays it too)", s["sides"]["eqdeploy"]["exit_cpu"]["median"]),
        ("distill", "distillation budget (stop when ranges settle; see distill_scaling.md)",
         _item(it, "ranges: distillation (distill_inputs)")),
    ]
    e = s["sides"]["eqdeploy"]["cpu_excl_imports"]["median"]
    b = s["sides"]["bare"]["cpu_excl_imports"]["median"]
    rows = [{"key": k, "change": text, "cpu_now": v} for k, text, v in changes]
    keep = e - sum(r["cpu_now"] for r in rows if r["key"] in ("reuse", "check", "static",
                                                             "dedupe", "simrows"))
    drop = e - sum(r["cpu_now"] for r in rows if r["key"] in ("fp32", "check", "static",
                                                             "dedupe", "simrows"))
    # without FP32 artifacts the bare side drops its FP32 TFLite (its FP32 ONNX feeds ORT)
    tfl = next(r for r in s["stages"]["bare"] if r["stage"].startswith("tflite FP32"))
    b_int8 = b - (tfl["cpu"] - tfl["import_cpu"])
    return {"changes": rows, "eqdeploy_cpu_excl_imports": e, "bare_cpu_excl_imports": b,
            "bare_int8_only_cpu_excl_imports": b_int8,
            "keep_fp32": {"cpu": keep, "ratio": keep / b},
            "fp32_on_request": {"cpu": drop, "ratio": drop / b_int8}}


def bare_pt2e(runs: list[dict]) -> list[float]:
    """Median CPU s of the bare PT2E step's parts: calibration passes (the rest of the
    step), prepare + convert_pt2e, litert_torch.convert."""
    parts = []
    for r in runs:
        seg = next(x for x in r["segments"] if x["stage"].startswith("tflite INT8"))
        pc = sum(ledger_total(r, lbl, stage="tflite INT8")[0]
                 for lbl in ("prepare_pt2e", "convert_pt2e"))
        lc = ledger_total(r, "litert_torch.convert", stage="tflite INT8")[0]
        em = ledger_total(r, "ExportedProgram.module", stage="tflite INT8")[0]
        parts.append((seg["cpu"] - pc - lc - em, pc + em, lc))
    return [statistics.median(p[i] for p in parts) for i in range(3)]


def summarize(runs: list[dict], models: list[str]) -> dict:
    out = {}
    for name in models:
        eq, bare = _ok(runs, name, "eqdeploy"), _ok(runs, name, "bare")
        if not eq or not bare:
            out[name] = {"error": "no successful run on one side: nothing compared"}
            continue
        for r in eq + bare:  # interpreter start before the probe, exit after it
            r["exit_cpu"] = r["cpu"] - sum(x["cpu"] for x in r["segments"])
            r["exit_wall"] = r["wall"] - r["startup_wall"] - sum(x["wall"] for x in r["segments"])
        sides = {}
        for side, rs in (("eqdeploy", eq), ("bare", bare)):
            sides[side] = {k: _stat([r[k] for r in rs]) for k in
                           ("wall", "cpu", "cpu_excl_imports", "wall_excl_imports",
                            "import_cpu", "import_wall", "maxrss_bytes", "startup_wall",
                            "exit_cpu", "exit_wall")}
        ratios = {k: {"min": sides["eqdeploy"][k]["min"] / sides["bare"][k]["min"],
                      "median": sides["eqdeploy"][k]["median"] / sides["bare"][k]["median"]}
                  for k in ("wall", "cpu", "cpu_excl_imports", "wall_excl_imports",
                            "maxrss_bytes")}
        out[name] = {"sides": sides, "ratios": ratios,
                     "stages": {"eqdeploy": stage_table(eq), "bare": stage_table(bare)},
                     "report_timings": {k: statistics.median(r["report_timings"][k] for r in eq)
                                        for k in eq[0]["report_timings"]},
                     "items": items_of(eq), "bare_items": items_of(bare),
                     "bare_runs_pt2e": bare_pt2e(bare),
                     "top_samples": top_samples(eq), "bare_top_samples": top_samples(bare, 10),
                     "imports": {"eqdeploy": imports_by_package(eq),
                                 "bare": imports_by_package(bare)},
                     "changed_outputs": eq[0]["verification"]}
        out[name]["exact_elements"] = next(len(v["changed"]) for v in eq[0]["verification"]
                                           if v["changed"])
        out[name]["proposals"] = proposals(out[name])
    return out


# --- markdown -----------------------------------------------------------------------------------
def _f(x: float, nd: int = 1) -> str:
    return f"{x:.{nd}f}"


def markdown(doc: dict) -> str:
    m = doc["machine"]
    loads = [r["load_before"][0] for r in doc["runs"]] + [r["load_after"][0] for r in doc["runs"]]
    lines = ["# Conversion cost: eqdeploy INT8 `--target all` vs the bare converter steps", "",
             f"Command: `{doc['command']}` ({doc['created']}). Machine: {m['cpu_model']}, "
             f"{m['cores']} cores, ISA {', '.join(k for k, v in m['isa'].items() if v)}; "
             f"Python {m['python']}; torch {doc['versions'].get('torch')}, onnxruntime "
             f"{doc['versions'].get('onnxruntime')}, litert-torch "
             f"{doc['versions'].get('litert-torch')}. Shared machine: 1-min load average "
             f"{min(loads):.1f}-{max(loads):.1f} (median {statistics.median(loads):.1f}) "
             f"during the runs on {m['cores']} cores, so **wall times are inflated by the "
             "other users; CPU times are the comparable figures** (CPU = user + sys of the "
             "process and its children, from wait4). Every repetition is a fresh process, "
             "eqdeploy and bare alternated (ABBA).", "",
             "Bare steps, on a hand-written plain twin (`benchmarks/cost_twins.py`, same "
             "weights, output identical to the source): torch.export once (reused by ONNX and "
             "PT2E), torch.onnx.export FP32, litert_torch.convert FP32, ORT quantize_static "
             f"(QDQ, per channel), litert-torch PT2E INT8, calibrated on {BARE_CALIBRATION} "
             "inputs: the same four artifacts eqdeploy writes. eqdeploy: the `eqdeploy convert` "
             "command in process (the README command for the example; the ResNet18 from a "
             "state dict with `--arch`, data-free distilled ranges).", ""]
    for name, s in doc["summary"].items():
        spec = doc["specs"][name]
        lines += [f"## {name}", ""]
        if "error" in s:
            lines += [f"**FAILED: {s['error']}**", ""]
            continue
        e, b, ra = s["sides"]["eqdeploy"], s["sides"]["bare"], s["ratios"]
        lines += [f"eqdeploy: `eqdeploy {' '.join(spec['eqdeploy_args'])}`; twin: "
                  f"{spec['twin_layers']} plain layers, vs source "
                  f"{spec['twin_vs_source_rel_err']:.1e}. "
                  f"Runs: eqdeploy {e['wall']['n']}, bare {b['wall']['n']}.", "",
                  "| seconds (min / median) | eqdeploy | bare | ratio (min / median) |",
                  "|---|---|---|---|"]
        for k, label in (("cpu", "CPU"), ("cpu_excl_imports", "CPU, imports excluded"),
                         ("import_cpu", "CPU in imports"),
                         ("exit_cpu", "CPU outside the probe (mostly interpreter exit)"),
                         ("wall", "wall"),
                         ("wall_excl_imports", "wall, imports excluded")):
            ratio = (f"**{ra[k]['min']:.2f}x / {ra[k]['median']:.2f}x**" if k in ra else "")
            lines.append(f"| {label} | {_f(e[k]['min'])} / {_f(e[k]['median'])} | "
                         f"{_f(b[k]['min'])} / {_f(b[k]['median'])} | {ratio} |")
        lines.append(f"| peak RSS (MB) | {e['maxrss_bytes']['median'] / 1e6:.0f} | "
                     f"{b['maxrss_bytes']['median'] / 1e6:.0f} | "
                     f"{ra['maxrss_bytes']['median']:.2f}x |")
        lines += ["", "Stages (median; wall includes waiting for the shared CPUs):", "",
                  "| eqdeploy stage | wall s | CPU s | of which imports (CPU s) |",
                  "|---|---|---|---|"]
        for row in s["stages"]["eqdeploy"]:
            lines.append(f"| {row['stage']} | {_f(row['wall'])} | {_f(row['cpu'], 2)} | "
                         f"{_f(row['import_cpu'], 2)} |")
        rt = ", ".join(f"{k} {v:.2f}" for k, v in s["report_timings"].items())
        lines += ["", f"The report's own `timings_seconds` (wall, median): {rt}.", "",
                  "| bare step | wall s | CPU s | of which imports (CPU s) |", "|---|---|---|---|"]
        for row in s["stages"]["bare"]:
            lines.append(f"| {row['stage']} | {_f(row['wall'])} | {_f(row['cpu'], 2)} | "
                         f"{_f(row['import_cpu'], 2)} |")
        pt2e = next(r for r in s["stages"]["bare"] if r["stage"].startswith("tflite INT8"))
        calib, quant, lite = s["bare_runs_pt2e"]
        strict = s["sides"]["bare"]["cpu_excl_imports"]["median"] - calib
        lines += ["", f"Bare PT2E INT8 step, median CPU s: {_f(pt2e['cpu'], 2)} = calibration "
                  f"passes (stock HistogramObserver, {BARE_CALIBRATION} inputs) {_f(calib, 2)}"
                  f" + prepare/convert_pt2e {_f(quant, 2)} + litert_torch.convert "
                  f"{_f(lite, 2)}. Without its calibration passes the bare steps cost "
                  f"{_f(strict)} s CPU, imports excluded (a stricter reference: eqdeploy "
                  f"forces its parameters and runs no observers): eqdeploy is "
                  f"{s['sides']['eqdeploy']['cpu_excl_imports']['median'] / strict:.2f}x that."]
        lines += ["", "Where eqdeploy's time goes (call ledger, median CPU s per run; nested "
                  "calls included in their callers):", "",
                  "| item | calls | CPU s | of which imports | wall s |", "|---|---|---|---|---|"]
        for it in s["items"]:
            lines.append(f"| {it['item']} | {it['calls']} | {_f(it['cpu'], 2)} | "
                         f"{_f(it['import_cpu'], 2)} | {_f(it['wall'])} |")
        lines += ["", "Imports by package (exclusive CPU s, mean per run): eqdeploy "
                  + ", ".join(f"{i['package']} {i['cpu']:.2f}" for i in s["imports"]["eqdeploy"])
                  + "; bare " + ", ".join(f"{i['package']} {i['cpu']:.2f}"
                                          for i in s["imports"]["bare"]) + ".", "",
                  "Sampled profile, eqdeploy (mean CPU s per run; innermost eqdeploy function "
                  "and what it was inside):", "",
                  "| stage | eqdeploy function | inside | CPU s |", "|---|---|---|---|"]
        for t in s["top_samples"][:15]:
            lines.append(f"| {t['stage']} | `{t['own'].removeprefix('eqdeploy.')}` | "
                         f"`{t['callee']}` | {_f(t['cpu'], 2)} |")
        p = s["proposals"]
        lines += ["", "Changes and what they remove (measured CPU s, imports excluded; the "
                  "distillation budget's saving is in distill_scaling.md):", "",
                  "| change | CPU s it costs now |", "|---|---|"]
        for c in p["changes"]:
            if c["cpu_now"]:
                lines.append(f"| {c['change']} | {_f(c['cpu_now'], 2)} |")
        lines += ["", f"CPU, imports excluded: eqdeploy {_f(p['eqdeploy_cpu_excl_imports'])} s "
                  f"vs bare {_f(p['bare_cpu_excl_imports'])} s. Keeping FP32 artifacts, with "
                  f"reuse + table check + one static export + verify once + simulation on "
                  "the probes only: "
                  f"{_f(p['keep_fp32']['cpu'])} s, "
                  f"**{p['keep_fp32']['ratio']:.2f}x**; FP32 on request + table check + one "
                  f"static export + verify once + simulation on the probes only: "
                  f"{_f(p['fp32_on_request']['cpu'])} s against "
                  "the bare "
                  f"steps without their FP32 TFLite ({_f(p['bare_int8_only_cpu_excl_imports'])}"
                  f" s): **{p['fp32_on_request']['ratio']:.2f}x** (before any distillation "
                  "budget).", ""]
    failed = [r for r in doc["runs"] if r["error"]]
    if failed:
        lines += ["## Failed runs", ""] + [f"- {r['model']} {r['side']} {r['tag']}: {r['error']}"
                                          for r in failed] + [""]
    return "\n".join(lines)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("torch", "onnxruntime", "litert-torch", "onnx", "e2cnn", "escnn", "torchao"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


def _write(doc: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "conversion_cost.json").write_text(json.dumps(doc, indent=1))
    (out / "conversion_cost.md").write_text(markdown(doc))
    print(f"wrote {out / 'conversion_cost.md'} ({doc['total_seconds']:.0f} s of runs)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="repetitions per side, example")
    ap.add_argument("--resnet-reps", type=int, default=2, help="repetitions per side, ResNet18")
    ap.add_argument("--models", default="c4_cnn,resnet18_c4")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--from-json", default=None,
                    help="re-analyse the runs stored in a previous conversion_cost.json")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    out = Path(args.out)
    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
        doc["summary"] = summarize(doc["runs"], list(doc["specs"]))
        _write(doc, out)
        return
    from eqdeploy.harness.sysinfo import system_info

    models = args.models.split(",")
    reps = {"c4_cnn": args.reps, "resnet18_c4": args.resnet_reps}
    t0 = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="conversion-cost-") as tmp:
        work = Path(tmp)
        specs = prepare(work, models)
        for rep in range(max(reps[m] for m in models)):
            for name in models:
                if rep >= reps[name]:
                    continue
                order = ("eqdeploy", "bare") if rep % 2 == 0 else ("bare", "eqdeploy")
                for side in order:
                    run = run_child(side, name, specs[name], work, f"r{rep}")
                    runs.append(run)
                    print(f"{name:12s} {side:9s} rep {rep}: wall {run['wall']:6.1f} s, cpu "
                          f"{run['cpu']:6.1f} s, rss {run['maxrss_bytes'] / 1e6:5.0f} MB, load "
                          f"{run['load_before'][0]:.1f}" + (f"  ERROR {run['error']}"
                                                           if run["error"] else ""), flush=True)
    doc = {"schema": "eqdeploy.bench.conversion_cost", "version": 1,
           "created": time.strftime("%Y-%m-%d %H:%M:%S"),
           "command": "nice python benchmarks/conversion_cost.py " + " ".join(sys.argv[1:]),
           "machine": system_info(), "versions": _versions(), "nice": os.nice(0),
           "bare_calibration_inputs": BARE_CALIBRATION, "specs": specs,
           "summary": summarize(runs, models), "runs": runs,
           "total_seconds": time.perf_counter() - t0}
    _write(doc, out)
    if any(r["error"] for r in runs) or any("error" in s for s in doc["summary"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
