"""Data-free distillation (``eqdeploy/quantize/distill.py``) on larger models: seconds and
peak RSS against batch size n and steps, and when the ranges settle.

Models: the escnn ResNet18 C4 at 33 px, a C16 e2cnn steerable CNN at 29 px written here
(``C16Steerable``: six R2Conv/InnerBatchNorm/ReLU blocks on regular fields, 64-256
channels, two antialiased average pools, group pooling, Linear head; BN settled on noise),
and the trained c8_residual (the model where distillation matters: held-out digits).

- Scaling: each (n, steps) runs ``distill_inputs`` in a fresh process on the model's
  exported graph (a ``.pt2``), measuring wall, CPU and peak RSS of the distillation alone
  (``/proc/self/clear_refs`` resets the peak to the current RSS first);
- Trajectory: one n=16, 100-step run (``distill_budget.distill_budgeted``, identical to
  ``distill_inputs``) records the inputs at checkpoints; the parameter set computed from each
  checkpoint is compared with the 50-step one (today's default) and its torch INT8
  simulation with FP32 on probes (SQNR, top-1); then the settle rule is tried at two
  tolerances.

    nice .venv/bin/python benchmarks/distill_scaling.py [--models resnet18_c4,c16_cnn,c8_residual]

Writes benchmarks/results/distill_scaling.{json,md} with machine info.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"
GRID = [(4, 20), (8, 20), (16, 20), (32, 20), (16, 50)]
CHECKPOINTS = [0, 5, 10, 15, 20, 30, 40, 50, 75, 100]
SETTLE = [(0.05, 5), (0.02, 5)]
BATCHES = [4, 8, 16, 32]  # quality of the ranges against n, at 50 steps


def c16_steerable():
    """C16 steerable CNN for 29x29 one-channel inputs (regular fields 4-8-8-12-12-16)."""
    import torch
    from torch import nn

    from eqdeploy.adapters import e2cnn_compat
    from eqdeploy.models.reference import settle_batchnorm

    e2cnn_compat.install()
    from e2cnn import gspaces
    from e2cnn import nn as enn

    class C16Steerable(nn.Module):
        def __init__(self, widths=(4, 8, 8, 12, 12, 16), classes: int = 10) -> None:
            super().__init__()
            gs = gspaces.Rot2dOnR2(16)
            types = [enn.FieldType(gs, [gs.trivial_repr])] + [
                enn.FieldType(gs, w * [gs.regular_repr]) for w in widths]
            self.input_type = types[0]
            layers = []
            for i in range(len(widths)):
                k = 7 if i == 0 else 5
                layers += [enn.R2Conv(types[i], types[i + 1], k, padding=k // 2, bias=False),
                           enn.InnerBatchNorm(types[i + 1]), enn.ReLU(types[i + 1], inplace=True)]
                if i in (1, 3):
                    layers.append(enn.PointwiseAvgPoolAntialiased(types[i + 1], 0.66, 2,
                                                                  padding=1))
            self.features = enn.SequentialModule(*layers)
            self.gpool = enn.GroupPooling(types[-1])
            self.head = nn.Linear(widths[-1], classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.gpool(self.features(enn.GeometricTensor(x, self.input_type))).tensor
            return self.head(y.mean(dim=(2, 3)))

    torch.manual_seed(0)
    return settle_batchnorm(C16Steerable(), (8, 1, 29, 29))


def build(name: str):
    """(model, input shape, input range, probes (N, C, H, W), probe note)."""
    from eqdeploy.datasets import MNIST_MEAN, MNIST_STD, load_mnist29

    mnist = (float(-MNIST_MEAN / MNIST_STD), float((1 - MNIST_MEAN) / MNIST_STD))
    if name == "resnet18_c4":
        from eqdeploy.models.escnn_resnet import escnn_resnet18

        x = np.random.default_rng(3).standard_normal((64, 3, 33, 33)).astype(np.float32)
        return escnn_resnet18("C4"), (1, 3, 33, 33), None, x, "64 seeded normal-noise inputs"
    if name == "c16_cnn":
        return (c16_steerable(), (1, 1, 29, 29), mnist, load_mnist29("test")[0][:64],
                "64 held-out MNIST digits (untrained model)")
    if name == "c8_residual":
        from eqdeploy.models import reference as R

        return (R.c8_residual(), (1, 1, 33, 33), mnist, load_mnist29("test", 33)[0][:256],
                "256 held-out MNIST digits (trained model)")
    raise SystemExit(f"unknown model {name}")


def conv_macs_per_input(pm) -> int:
    """Multiply-accumulates of the graph's convolutions and linears for one input."""
    import torch

    aten = torch.ops.aten
    total = 0
    for node in pm.program.graph.nodes:
        if node.op != "call_function" or node.target not in (aten.conv2d.default,
                                                             aten.linear.default):
            continue
        out, w = node.meta["val"], node.args[1].meta["val"]
        total += math.prod(int(s) for s in out.shape[1:]) * math.prod(
            int(s) for s in w.shape[1:])
    return total


# --- child: one (n, steps) in a fresh process -----------------------------------------------------
def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(pt2: str, shape: str, n: int, steps: int, input_range: str, result: str) -> None:
    import gc

    import torch

    from eqdeploy.export import PlainModel
    from eqdeploy.load import load_model
    from eqdeploy.quantize.distill import distill_inputs

    loaded = load_model(pt2)
    chw = tuple(int(v) for v in shape.split(","))
    pm = PlainModel(loaded.program, loaded.spec, torch.zeros(1, *chw), {})
    rng = None if input_range == "none" else tuple(float(v) for v in input_range.split(","))
    gc.collect()
    before = _rss("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
    info: dict = {}
    w, c = time.perf_counter(), time.process_time()
    distill_inputs(pm, (1, *chw), rng, n=n, steps=steps, info=info)
    wall, cpu = time.perf_counter() - w, time.process_time() - c
    Path(result).write_text(json.dumps({
        "n": n, "steps": steps, "wall": wall, "cpu": cpu, "rss_before": before,
        "peak_rss": _rss("VmHWM"), "process_maxrss": resource.getrusage(
            resource.RUSAGE_SELF).ru_maxrss * 1024, "bn_loss_start": info["bn_loss_start"],
        "bn_loss_end": info["bn_loss_end"], "load_average": os.getloadavg()[0]}))


# --- parent ---------------------------------------------------------------------------------------
def scaling(name: str, pt2: Path, shape, input_range, tmp: Path) -> list[dict]:
    rows = []
    rng = "none" if input_range is None else f"{input_range[0]},{input_range[1]}"
    for n, steps in GRID:
        result = tmp / f"{name}-{n}-{steps}.json"
        cmd = [sys.executable, __file__, "--child", str(pt2), ",".join(map(str, shape[1:])),
               str(n), str(steps), rng, str(result)]
        proc = subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{name} n={n} steps={steps} failed: {proc.stderr[-800:]}")
        row = json.loads(result.read_text())
        row["extra_rss"] = row["peak_rss"] - row["rss_before"]
        row["cpu_per_sample_step_ms"] = 1e3 * row["cpu"] / (n * (steps + 1))
        rows.append(row)
        print(f"  {name} n={n:3d} steps={steps:3d}: {row['wall']:6.1f} s wall, "
              f"{row['cpu']:6.1f} s cpu, +{row['extra_rss'] / 1e6:6.0f} MB "
              f"(peak {row['peak_rss'] / 1e6:.0f} MB)", flush=True)
    return rows


def trajectory(name: str, plain, folded, shape, input_range, probes) -> dict:
    import torch

    from eqdeploy.quantize.distill import distill_inputs
    from eqdeploy.quantize.distill_budget import distill_budgeted
    from eqdeploy.quantize.params import compute_qparams
    from eqdeploy.quantize.simulate import fidelity, simulate_with

    xs: dict[int, np.ndarray] = {}
    stamps: dict[int, float] = {}
    t0 = time.process_time()

    def on_step(step, x, _loss):
        stamps[step] = time.process_time() - t0
        if step in CHECKPOINTS:
            xs[step] = x.numpy().copy()

    info: dict = {}
    x100 = distill_budgeted(plain, shape, input_range, n=16, steps=max(CHECKPOINTS),
                            on_step=on_step, info=info)
    x50 = distill_inputs(plain, shape, input_range, n=16, steps=50)
    if not np.array_equal(xs[50], x50):
        raise SystemExit(f"{name}: the prototype's step-50 inputs differ from distill_inputs")
    probes_t = torch.from_numpy(probes)
    fp32 = plain.module()

    def evaluate(x: np.ndarray) -> tuple[dict, dict]:
        qp = compute_qparams(folded, per_channel=True, calibration=x, input_range=input_range)
        return qp, fidelity(fp32, simulate_with(folded, qp), probes_t)

    ref_qp, _ = evaluate(xs[50])
    ref = np.array([ref_qp.activations[k][0] for k in sorted(ref_qp.activations)])
    rows = []
    for k in CHECKPOINTS:
        qp, fid = evaluate(xs.get(k, x100))
        scales = np.array([qp.activations[p][0] for p in sorted(ref_qp.activations)])
        rel = np.abs(scales / ref - 1)
        rows.append({"step": k, "cpu_s": stamps.get(k, 0.0), "sqnr_db": fid["sqnr_db"],
                     "top1_agreement": fid["top1_agreement"],
                     "scale_change_vs_50_max": float(rel.max()),
                     "scale_change_vs_50_median": float(np.median(rel))})
    by_n = []
    for n in BATCHES:
        c0 = time.process_time()
        x = x50 if n == 16 else distill_inputs(plain, shape, input_range, n=n, steps=50)
        cpu = time.process_time() - c0 if n != 16 else stamps[50]
        _, fid = evaluate(x)
        by_n.append({"n": n, "cpu_s": cpu, "sqnr_db": fid["sqnr_db"],
                     "top1_agreement": fid["top1_agreement"]})
    settle = []
    for tol, window in SETTLE:
        sinfo: dict = {}
        c0 = time.process_time()
        x = distill_budgeted(plain, shape, input_range, n=16, steps=50, settle_tol=tol,
                             window=window, info=sinfo)
        cpu = time.process_time() - c0
        _, fid = evaluate(x)
        settle.append({"tol": tol, "window": window, "steps": sinfo["steps"],
                       "cpu_s": cpu, "wall_s": sinfo["seconds"], "stopped_by": sinfo["stopped_by"],
                       "sqnr_db": fid["sqnr_db"], "top1_agreement": fid["top1_agreement"]})
    return {"checkpoints": rows, "settle": settle, "by_n": by_n,
            "activation_bytes_per_input": info["activation_bytes_per_input"]}


def markdown(doc: dict) -> str:
    m = doc["machine"]
    isa = ", ".join(k for k, v in m["isa"].items() if v)
    lines = ["# Data-free distillation: cost against n and steps, and when ranges settle", "",
             f"Machine: {m['cpu_model']}, {m['cores']} cores, ISA {isa}; torch "
             f"{doc['torch']}; distillation runs on one torch thread. Shared machine: 1-min "
             f"load average {doc['load_average'][0]:.1f} -> {doc['load_average'][1]:.1f}, "
             "so wall > CPU; CPU is the comparable figure. Command: "
             f"`{doc['command']}`.", ""]
    for r in doc["results"]:
        lines += [f"## {r['model']} ({r['group']}, input {r['shape'][2]} px)", "",
                  f"{r['conv_macs_per_input'] / 1e6:.0f} M conv/linear MACs per input; "
                  f"{r['activation_bytes_per_input'] / 1e6:.1f} MB of graph tensors per "
                  f"input; {r['bn_layers']} BN layers. Probes: {r['probes']}.", "",
                  "| n | steps | wall s | CPU s | CPU ms per input-step | per input-step per "
                  "GMAC | distillation peak RSS over its start (MB) | process peak (MB) | "
                  "BN loss start -> end |", "|---|---|---|---|---|---|---|---|---|"]
        for s in r["scaling"]:
            per = s["cpu_per_sample_step_ms"]
            lines.append(f"| {s['n']} | {s['steps']} | {s['wall']:.1f} | {s['cpu']:.1f} | "
                         f"{per:.1f} | {per / (r['conv_macs_per_input'] / 1e9):.1f} ms | "
                         f"{s['extra_rss'] / 1e6:.0f} | {s['peak_rss'] / 1e6:.0f} | "
                         f"{s['bn_loss_start']:.3g} -> {s['bn_loss_end']:.3g} |")
        sc = [x for x in r["scaling"] if x["steps"] == r["scaling"][0]["steps"]]
        slope = np.polyfit([x["n"] for x in sc], [x["extra_rss"] for x in sc], 1)
        lines += ["", f"Peak RSS of the distillation over its start ~ {slope[1] / 1e6:.0f} MB + "
                  f"{slope[0] / 1e6:.2f} MB x n (least squares over the {len(sc)} n's); the "
                  f"graph's tensors take {r['activation_bytes_per_input'] / 1e6:.2f} MB per "
                  "input."]
        t = r["trajectory"]
        lines += ["", "Trajectory (n=16): INT8 simulation vs FP32 on the probes with the "
                  "ranges of the inputs after k steps; activation scales vs the 50-step "
                  "ones (today's default):", "",
                  "| steps | CPU s so far | SQNR dB | top-1 vs FP32 | scale change vs 50 (max / "
                  "median) |", "|---|---|---|---|---|"]
        for c in t["checkpoints"]:
            lines.append(f"| {c['step']} | {c['cpu_s']:.1f} | {c['sqnr_db']:.2f} | "
                         f"{c['top1_agreement']:.3f} | {c['scale_change_vs_50_max']:.3f} / "
                         f"{c['scale_change_vs_50_median']:.3f} |")
        lines += ["", "Ranges from n distilled inputs (50 steps), same probes:", "",
                  "| n | CPU s | SQNR dB | top-1 vs FP32 |", "|---|---|---|---|"]
        for b in t["by_n"]:
            lines.append(f"| {b['n']} | {b['cpu_s']:.1f} | {b['sqnr_db']:.2f} | "
                         f"{b['top1_agreement']:.3f} |")
        lines += ["", "Settle rule (stop when every BN input's and the output's min/max moved "
                  "by at most tol of its span over the last window steps):", "",
                  "| tol | window | steps run | CPU s | SQNR dB | top-1 vs FP32 |",
                  "|---|---|---|---|---|---|"]
        for s in t["settle"]:
            lines.append(f"| {s['tol']} | {s['window']} | {s['steps']} | {s['cpu_s']:.1f} | "
                         f"{s['sqnr_db']:.2f} | {s['top1_agreement']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        a = sys.argv[2:]
        child(a[0], a[1], int(a[2]), int(a[3]), a[4], a[5])
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet18_c4,c16_cnn,c8_residual")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    import torch

    from eqdeploy.dfq import run_dfq
    from eqdeploy.export import export_equivariant
    from eqdeploy.export_pt2 import save_pt2
    from eqdeploy.harness.sysinfo import system_info
    from eqdeploy.normalize import normalize
    from eqdeploy.quantize.distill import bn_targets
    from eqdeploy.quantize.distill_budget import activation_bytes_per_input

    load0 = os.getloadavg()[0]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            t = time.perf_counter()
            model, shape, input_range, probes, note = build(name)
            plain = normalize(export_equivariant(model, torch.zeros(1, *shape[1:])))
            folded, _ = run_dfq(plain)
            pt2 = Path(tmp) / f"{name}.pt2"
            save_pt2(plain, pt2)
            print(f"{name}: exported in {time.perf_counter() - t:.0f} s", flush=True)
            r = {"model": name, "group": plain.spec.group.name, "shape": list(shape),
                 "input_range": input_range, "probes": note,
                 "conv_macs_per_input": conv_macs_per_input(plain),
                 "activation_bytes_per_input": activation_bytes_per_input(plain),
                 "bn_layers": len(bn_targets(plain.module()))}
            r["scaling"] = scaling(name, pt2, shape, input_range, Path(tmp))
            r["trajectory"] = trajectory(name, plain, folded, shape, input_range, probes)
            results.append(r)
            print(f"{name}: done in {time.perf_counter() - t:.0f} s", flush=True)
    doc = {"schema": "eqdeploy.bench.distill_scaling", "version": 1,
           "created": time.strftime("%Y-%m-%d %H:%M:%S"),
           "command": "nice python benchmarks/distill_scaling.py " + " ".join(sys.argv[1:]),
           "machine": system_info(), "torch": torch.__version__,
           "load_average": [load0, os.getloadavg()[0]], "results": results}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distill_scaling.json").write_text(json.dumps(doc, indent=1))
    (out / "distill_scaling.md").write_text(markdown(doc))
    print(f"wrote {out / 'distill_scaling.md'}")


if __name__ == "__main__":
    main()
