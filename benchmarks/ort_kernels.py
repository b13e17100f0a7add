"""ORT INT8 weight kernels on this CPU: u8u8 (QUInt8 weights, zero point 128: today's
default) vs s8 weights (QInt8, zero point 0) with the same scales and the same int8 values.

For each reference model (e2cnn c4_cnn, c8_residual, d4_cnn with their trained weights,
calibrated on the bundled MNIST digits; the escnn ResNet18 C4 with data-free distilled
ranges) the pipeline's stages run once (export, normalize, DFQ, one parameter set) and the
BN-folded graph is written twice by ``onnx_int8.emit_int8`` with only ``weight_type``
changed (both checked to carry the parameter set), plus the FP32 graph for reference. Then,
on the same probes (held-out digits / seeded noise): probes whose output changes at all
under every exact group element (``eqdeploy.harness.equivariance``), agreement between the
two artifacts and with the torch INT8 simulation, the op types ORT runs after its QDQ
fusions, and latency on 1 thread (intra and inter op), variants interleaved round by round.
Every figure comes with the CPU's ISA features. The same artifacts are then checked again
(numpy + onnxruntime only) under ``qemu-x86_64-static -cpu Haswell``: an emulated CPU with
AVX2 but no AVX-512/VNNI, where ORT takes its other u8s8 kernels (correctness, not speed).

    nice .venv/bin/python benchmarks/ort_kernels.py [--rounds 7] [--runs 200]

Writes benchmarks/results/ort_kernels.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
MODELS = ["c4_cnn", "c8_residual", "d4_cnn", "resnet18_c4"]
VARIANTS = {"u8u8 (QUInt8 weights, zp 128)": "QUInt8", "s8 (QInt8 weights, zp 0)": "QInt8"}


def build(name: str):
    """(source module, input shape (1, C, H, W), calibration or None, probes, input range)."""
    if name == "resnet18_c4":
        from eqdeploy.models.escnn_resnet import escnn_resnet18

        probes = np.random.default_rng(3).standard_normal((64, 3, 33, 33)).astype(np.float32)
        return escnn_resnet18("C4"), (1, 3, 33, 33), None, probes, None
    from eqdeploy.datasets import MNIST_MEAN, MNIST_STD, load_mnist29
    from eqdeploy.models import reference as R

    size = 33 if name == "c8_residual" else 29
    rng = (float(-MNIST_MEAN / MNIST_STD), float((1 - MNIST_MEAN) / MNIST_STD))
    return (getattr(R, name)(), (1, 1, size, size), load_mnist29("calib", size)[0],
            load_mnist29("test", size)[0][:64], rng)


def quantized(name: str) -> dict:
    """The pipeline's plain graph, BN-folded graph and parameter set for ``name``."""
    import torch

    from eqdeploy.dfq import run_dfq
    from eqdeploy.export import export_equivariant
    from eqdeploy.normalize import normalize
    from eqdeploy.quantize.distill import distill_inputs
    from eqdeploy.quantize.params import compute_qparams
    from eqdeploy.quantize.simulate import simulate_with

    model, shape, calib, probes, input_range = build(name)
    plain = normalize(export_equivariant(model, torch.zeros(1, *shape[1:])))
    folded, _ = run_dfq(plain)
    ranges = "calibration (512 MNIST digits)"
    if calib is None:
        calib = distill_inputs(plain, shape, input_range, seed=0)
        ranges = "data-free: 16 inputs distilled from BN statistics"
    qp = compute_qparams(folded, per_channel=True, calibration=calib, input_range=input_range)
    return {"plain": plain, "folded": folded, "qp": qp, "probes": probes, "ranges": ranges,
            "simulation": simulate_with(folded, qp).numpy(probes)}


def latency(sessions: dict, x: np.ndarray, rounds: int, runs: int) -> dict:
    """Per-run seconds of each session on one input, variants alternated every round."""
    names = list(sessions)
    feeds = {n: {s.get_inputs()[0].name: x} for n, s in sessions.items()}
    for n in names:  # warm-up
        for _ in range(20):
            sessions[n].run(None, feeds[n])
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            sess, feed = sessions[n], feeds[n]
            for _ in range(runs):
                t = time.perf_counter()
                sess.run(None, feed)
                times[n].append(time.perf_counter() - t)
    return {n: {"min_ms": 1e3 * min(t), "p50_ms": 1e3 * statistics.median(t),
                "p90_ms": 1e3 * float(np.percentile(t, 90)), "runs": len(t)}
            for n, t in times.items()}


def measure(name: str, rounds: int, runs: int, tmp: Path) -> dict:
    import onnxruntime as ort

    from eqdeploy.harness.equivariance import equivariance_table
    from eqdeploy.targets import onnx_int8, onnx_target

    q = quantized(name)
    spec, probes = q["plain"].spec, q["probes"]
    np.save(tmp / f"{name}.probes.npy", probes)
    (tmp / f"{name}.spec.json").write_text(spec.dumps())
    paths = {"fp32": tmp / f"{name}.fp32.onnx"}
    onnx_target.emit(q["plain"], paths["fp32"])
    result: dict = {"model": name, "group": spec.group.name, "ranges": q["ranges"],
                    "probes": len(probes), "variants": {}}
    outs = {}
    for label, wtype in VARIANTS.items():
        path = tmp / f"{name}.{wtype}.onnx"
        onnx_int8.emit_int8(q["folded"], q["qp"], path, weight_type=wtype)
        mismatch = onnx_int8.compare_qparams(path, q["qp"], spec)
        ran = onnx_int8.optimized_ops(path)
        f = onnx_int8.runner(path, threads=1)
        y = f(probes)
        rows = equivariance_table(f, spec, probes, f_probes=y)
        if not rows:
            raise SystemExit(f"{name}: no exact element to measure equivariance under")
        step = float(q["qp"].act_for(_output_name(q["folded"]))[0])
        outs[label] = y
        paths[label] = path
        result["variants"][label] = {
            "weight_type": wtype,
            "parameter_mismatches": mismatch[:3], "ort_ops": ran,
            "float_compute_ops": onnx_int8.float_ops_of(ran),
            "changed": {r["element"]: r["changed"] for r in rows},
            "changed_max": max(r["changed"] for r in rows),
            "rel_err_max": max(r["rel_err_max"] for r in rows),
            "max_steps_vs_simulation": float(np.abs(y - q["simulation"]).max() / step),
            "probes_differing_from_simulation": int(
                (np.abs(y - q["simulation"]).reshape(len(y), -1).max(1) > 0.5 * step).sum()),
            "output_step": step, "bytes": path.stat().st_size}
    np.savez(tmp / f"{name}.outputs.npz", **{VARIANTS[k]: v for k, v in outs.items()})
    (a, ya), (b, yb) = outs.items()
    step = result["variants"][a]["output_step"]
    diff = np.abs(ya - yb).reshape(len(ya), -1)
    result["agreement"] = {
        "probes_differing": int((diff.max(1) > 0).sum()),
        "outputs_differing": int((diff > 0).sum()), "outputs": int(diff.size),
        "max_steps": float(diff.max() / step),
        "top1_agreement": float((ya.argmax(1) == yb.argmax(1)).mean())}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sessions = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                for k, p in paths.items()}
    lat = latency(sessions, probes[:1], rounds, runs)
    result["latency"] = lat
    u8, s8 = (lat[k]["p50_ms"] for k in VARIANTS)
    result["s8_over_u8_p50"] = s8 / u8
    result["s8_over_u8_min"] = lat[list(VARIANTS)[1]]["min_ms"] / lat[list(VARIANTS)[0]]["min_ms"]
    return result


def check(folder: Path, models: list[str]) -> dict:
    """Changed counts and s8/u8u8 agreement of the saved artifacts (numpy + onnxruntime
    only: runs under an emulated CPU), with the ISA numpy's CPUID probe sees."""
    from numpy._core._multiarray_umath import __cpu_features__ as cpu

    from eqdeploy.harness.equivariance import equivariance_table
    from eqdeploy.harness.runtime import open_artifact
    from eqdeploy.spec import SymmetrySpec

    out = {"cpu_features": {k: bool(cpu.get(k)) for k in
                            ("AVX2", "AVX512F", "AVX512VNNI", "AVX512_ICL")}, "models": {}}
    for name in models:
        spec = SymmetrySpec.loads((folder / f"{name}.spec.json").read_text())
        probes = np.load(folder / f"{name}.probes.npy")
        ys, res = {}, {}
        for label, wtype in VARIANTS.items():
            f = open_artifact(folder / f"{name}.{wtype}.onnx", threads=1).run
            ys[label] = y = f(probes)
            rows = equivariance_table(f, spec, probes, f_probes=y)
            res[label] = {"changed": {r["element"]: r["changed"] for r in rows},
                          "changed_max": max(r["changed"] for r in rows)}
        (a, ya), (b, yb) = ys.items()
        diff = np.abs(ya - yb).reshape(len(ya), -1)
        native = np.load(folder / f"{name}.outputs.npz")
        res["probes_differing_s8_u8"] = int((diff.max(1) > 0).sum())
        res["probes_differing_from_native"] = {
            k: int((np.abs(ys[k] - native[VARIANTS[k]]).reshape(len(ya), -1).max(1) > 0).sum())
            for k in VARIANTS}
        out["models"][name] = res
    return out


def emulated(qemu: str, cpu: str, folder: Path, models: list[str]) -> dict:
    import subprocess

    result = folder / "emulated.json"
    cmd = [qemu, "-cpu", cpu, sys.executable, __file__, "--check", str(folder), str(result),
           ",".join(models)]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise SystemExit(f"emulated check failed: {proc.stderr[-800:]}")
    return {"emulator": f"{Path(qemu).name} -cpu {cpu}", **json.loads(result.read_text())}


def _output_name(pm) -> str:
    from eqdeploy.graph_layouts import output_node

    return output_node(pm.program.graph_module).name


def markdown(doc: dict) -> str:
    m = doc["machine"]
    isa = ", ".join(k for k, v in m["isa"].items() if v) or "none"
    loads = doc["load_average"]
    u8, s8 = VARIANTS
    lines = ["# ORT INT8 weight kernels: u8u8 vs s8 (same scales, same int8 weights)", "",
             f"Machine: {m['cpu_model']}, {m['cores']} cores, **ISA: {isa}**; onnxruntime "
             f"{doc['onnxruntime']}; 1 intra-op and 1 inter-op thread; batch 1; "
             f"{doc['rounds']} interleaved rounds x {doc['runs']} runs per variant. Shared "
             f"machine, 1-min load average {loads[0]:.1f} -> {loads[1]:.1f} during the "
             "latency runs (take min as the cleanest figure). Command: "
             f"`{doc['command']}`.", "",
             "Changed: probes whose output changes at all under the element (max over the "
             "exact elements); steps: output quantization steps.", "",
             "| model | ranges | variant | ORT ops (QDQ fused) | float ops | changed | "
             "max steps vs sim. | latency min / p50 ms |", "|---|---|---|---|---|---|---|---|"]
    for r in doc["results"]:
        for label, v in r["variants"].items():
            conv = "QLinearConv" if "QLinearConv" in v["ort_ops"] else ", ".join(v["ort_ops"])
            lat = r["latency"][label]
            lines.append(f"| {r['model']} ({r['group']}) | {r['ranges']} | {label} | {conv} | "
                         f"{', '.join(v['float_compute_ops']) or 'none'} | "
                         f"{v['changed_max']}/{r['probes']} | "
                         f"{v['max_steps_vs_simulation']:.2f} | "
                         f"{lat['min_ms']:.3f} / {lat['p50_ms']:.3f} |")
        lat = r["latency"]["fp32"]
        lines.append(f"| {r['model']} ({r['group']}) | - | FP32 | - | - | - | - | "
                     f"{lat['min_ms']:.3f} / {lat['p50_ms']:.3f} |")
    lines += ["", "| model | s8 / u8u8 latency (p50, min) | probes where s8 and u8u8 differ | "
              "outputs differing | max diff (steps) | top-1 agreement |",
              "|---|---|---|---|---|---|"]
    for r in doc["results"]:
        a = r["agreement"]
        lines.append(f"| {r['model']} | {r['s8_over_u8_p50']:.3f}x, {r['s8_over_u8_min']:.3f}x | "
                     f"{a['probes_differing']}/{r['probes']} | {a['outputs_differing']}/"
                     f"{a['outputs']} | {a['max_steps']:.2f} | {a['top1_agreement']:.3f} |")
    emu = doc.get("emulated")
    if emu:
        feats = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in emu["cpu_features"].items())
        lines += ["", f"The same artifacts and probes on an emulated CPU without AVX-512 "
                  f"(`{emu['emulator']}`; CPUID as numpy sees it: {feats}; correctness only, "
                  "no timing):", "",
                  "| model | u8u8 changed | s8 changed | probes where s8 and u8u8 differ | "
                  "probes differing from the native run (u8u8, s8) |", "|---|---|---|---|---|"]
        for name, v in emu["models"].items():
            nat = v["probes_differing_from_native"]
            lines.append(f"| {name} | {v[u8]['changed_max']}/{_probes(doc, name)} | "
                         f"{v[s8]['changed_max']}/{_probes(doc, name)} | "
                         f"{v['probes_differing_s8_u8']} | {nat[u8]}, {nat[s8]} |")
    lines += ["", "Per-element changed counts (native): " + "; ".join(
        f"{r['model']} " + ", ".join(f"{k.split(' ')[0]} {v['changed']}"
                                     for k, v in r["variants"].items())
        for r in doc["results"]), ""]
    return "\n".join(lines)


def _probes(doc: dict, name: str) -> int:
    return next(r["probes"] for r in doc["results"] if r["model"] == name)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--check":  # the emulated half (numpy + ORT)
        folder, result, models = Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4].split(",")
        result.write_text(json.dumps(check(folder, models)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--emulate", default="/usr/bin/qemu-x86_64-static:Haswell",
                    help="QEMU:CPU to re-run the changed counts on an emulated CPU without "
                         "AVX-512/VNNI ('' to skip)")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import onnxruntime as ort

    from eqdeploy.harness.sysinfo import system_info

    ort.set_default_logger_severity(3)
    results = []
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            t = time.perf_counter()
            r = measure(name, args.rounds, args.runs, Path(tmp))
            results.append(r)
            print(f"{name}: " + ", ".join(f"{k.split(' ')[0]} changed {v['changed_max']}, "
                                          f"p50 {r['latency'][k]['p50_ms']:.3f} ms"
                                          for k, v in r["variants"].items())
                  + f", differing probes {r['agreement']['probes_differing']} "
                  f"({time.perf_counter() - t:.0f} s)", flush=True)
        emu = None
        if args.emulate:
            qemu, _, cpu = args.emulate.partition(":")
            emu = emulated(qemu, cpu, Path(tmp), [r["model"] for r in results])
            print(f"emulated ({emu['emulator']}, {emu['cpu_features']}): " + ", ".join(
                f"{m} " + "/".join(str(v[k]["changed_max"]) for k in VARIANTS)
                for m, v in emu["models"].items()), flush=True)
    doc = {"schema": "eqdeploy.bench.ort_kernels", "version": 1,
           "created": time.strftime("%Y-%m-%d %H:%M:%S"),
           "command": "nice python benchmarks/ort_kernels.py " + " ".join(sys.argv[1:]),
           "machine": system_info(), "onnxruntime": ort.__version__,
           "load_average": [load0, os.getloadavg()[0]], "rounds": args.rounds,
           "runs": args.runs, "results": results, "emulated": emu}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ort_kernels.json").write_text(json.dumps(doc, indent=1))
    (out / "ort_kernels.md").write_text(markdown(doc))
    print(f"wrote {out / 'ort_kernels.md'}")


if __name__ == "__main__":
    main()
