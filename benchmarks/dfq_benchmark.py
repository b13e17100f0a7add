"""DFQ benchmark: FP32 vs per-tensor INT8 (naive, orbit-agnostic DFQ, block-aware DFQ).

On MobileNetV2-style models (equivariant C4/C8/C12 and a conventional one, BN gammas
spread over 10**U(-1, 1) across fields): top-1 agreement and SQNR vs FP32 of the simulated
INT8 model, equivariance error of its logits under the exact 90-degree elements, and for
C8/C12 the interpolated smallest rotation (logits, and the worst per-field error increase
at an intermediate tensor over FP32). Writes benchmarks/results/dfq.json and dfq.md.

    .venv/bin/python benchmarks/dfq_benchmark.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from eqdeploy.dfq import DfqOptions, equalize, run_dfq
from eqdeploy.dfq.verify import disc_mask, interpolated_tap_error, rotate
from eqdeploy.export import export_equivariant
from eqdeploy.harness.equivariance import equivariance_table, summarize
from eqdeploy.harness.sysinfo import system_info
from eqdeploy.models import mobilenet as M
from eqdeploy.quantize.simulate import fidelity, simulate_int8

OUT = Path(__file__).parent / "results"
SIZE = 33
MODES = {
    "naive": DfqOptions(cle=False, absorb=False, bias_correction=False),
    "orbit-agnostic DFQ": DfqOptions(orbit_agnostic=True, weights="per_tensor"),
    "block-aware DFQ": DfqOptions(weights="per_tensor"),
}


def _inputs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 1, SIZE, SIZE)) + 0.5).astype(np.float32)


def _interp_logit_error(f, spec, probes: np.ndarray, element) -> float:
    x = disc_mask(probes, margin=2.0)
    y, yr = f(x), f(rotate(x, element.degrees))
    perm = spec.channel_perm(spec.output, element)
    ref = y[:, perm]
    return float(np.mean(np.linalg.norm(yr - ref, axis=1) / np.linalg.norm(ref, axis=1)))


def bench_model(name: str, pm, n_eval: int) -> list[dict]:
    x = _inputs(n_eval, 1)
    cal = torch.from_numpy(_inputs(64, 2))
    probes = _inputs(16, 3)
    group = pm.spec.group
    interp = None
    if group.rotations > 4 and not group.has_flips:
        interp = group.element("r1")
    fp32 = lambda a: pm(torch.from_numpy(a)).detach().numpy()  # noqa: E731
    rows = []
    folded, _ = run_dfq(pm, DfqOptions(cle=False, absorb=False, bias_correction=False))
    base_taps = interpolated_tap_error(folded, probes[:6], interp) if interp else None
    variants = [("FP32", None, fp32, folded)]  # (label, dfq info, function, graph for taps)
    for mode, opt in MODES.items():
        t0 = time.perf_counter()
        new, rep = run_dfq(pm, opt)
        dfq_s = time.perf_counter() - t0
        sim = simulate_int8(new, "per_tensor", "minmax", cal)
        # field-structure check on the CLE step alone (absorption and bias correction shift
        # channel means, which moves this relative metric without touching the fields)
        cle_only = equalize(folded, opt.orbit_agnostic)[0] if opt.cle else folded
        variants.append((f"INT8 {mode}", (rep, dfq_s), sim.numpy, cle_only))
    for label, extra, f, graph in variants:
        row = {"model": name, "group": group.name, "variant": label}
        fid = fidelity(lambda t: torch.from_numpy(fp32(t.numpy())),
                       lambda t, f=f: torch.from_numpy(f(t.numpy())), torch.from_numpy(x))
        row.update(fid)
        eq = summarize(equivariance_table(f, pm.spec, probes))
        row["equiv_err_exact"] = eq["rel_err_max"] if group.exact_elements else None
        row["changed_exact"] = eq["changed_max"] if group.exact_elements else None
        if interp:
            row["equiv_err_interp_logits"] = _interp_logit_error(f, pm.spec, probes, interp)
            taps = interpolated_tap_error(graph, probes[:6], interp)
            row["tap_err_increase_interp"] = max(taps[k] / base_taps[k] for k in base_taps)
        if extra:
            rep, dfq_s = extra
            cle = rep["passes"]["cle"]
            if "range_ratio" in cle:
                rr = cle["range_ratio"].values()
                row["range_ratio_median_before"] = float(np.median([r["before"] for r in rr]))
                row["range_ratio_median_after"] = float(np.median([r["after"] for r in rr]))
                row["cle_sweeps"] = cle["sweeps"]
            row["dfq_seconds"] = round(dfq_s, 2)
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()},
              flush=True)
    return rows


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-2 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def markdown(rows: list[dict], meta: dict) -> str:
    head = ["model", "variant", "top-1 agr.", "SQNR dB", "equiv. err (90°)", "changed",
            "equiv. err interp. (logits)", "field err increase interp.", "range ratio med."]
    lines = [f"# DFQ benchmark ({meta['date']})", "",
             f"Per-tensor INT8 simulation (weights symmetric per tensor, activations "
             f"asymmetric per tensor, min/max over 64 calibration inputs); {meta['n_eval']} "
             f"random inputs of {SIZE}x{SIZE}; BN gammas spread over 10^U(-1,1) per field. "
             f"CPU: {meta['system'].get('cpu_model', platform.processor())}, torch "
             f"{torch.__version__}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        rr = "-"
        if "range_ratio_median_after" in r:
            rr = f"{r['range_ratio_median_before']:.3f} -> {r['range_ratio_median_after']:.3f}"
        lines.append("| " + " | ".join([
            f"{r['model']}", r["variant"], _fmt(r["top1_agreement"]), _fmt(r["sqnr_db"], 2),
            _fmt(r["equiv_err_exact"]), _fmt(r["changed_exact"]),
            _fmt(r.get("equiv_err_interp_logits")),
            _fmt(r.get("tap_err_increase_interp")), rr]) + " |")
    lines += ["", "equiv. err: max over probes and exact 90-degree elements of "
              "||f(g x) - rho(g) f(x)|| / ||f(x)||; changed: probes whose output changed at "
              "all. Interp.: the smallest rotation (45° C8, 30° C12) by bilinear "
              "interpolation on a disc; field err increase: worst ratio, over intermediate "
              "tensors of the FP32 graph after the mode's CLE, of the per-field error of the "
              "channel averages to the unequalized graph's (1.0 = fields still transform as "
              "fields). Logits are centred (head bias = -W E[features]), so relative errors "
              "are large numbers on small logits."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer inputs, width 0.5")
    args = ap.parse_args()
    n_eval = 256 if args.quick else 1024
    width = 0.5 if args.quick else 1.0
    torch.manual_seed(0)
    example = torch.randn(1, 1, SIZE, SIZE)
    rows = []
    for g in ("C4", "C8", "C12"):
        pm = export_equivariant(M.eq_mobilenet(g, width=width, imbalance=1.0, seed=1), example)
        rows += bench_model(f"Eq-MobileNetV2 {g}", pm, n_eval)
    pm = M.export_conventional(M.mobilenet(width=width, imbalance=1.0, seed=1), example)
    rows += bench_model("MobileNetV2 (plain)", pm, n_eval)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "n_eval": n_eval, "width": width,
            "size": SIZE, "torch": torch.__version__, "system": system_info()}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "dfq.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1,
                                             default=float))
    (OUT / "dfq.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
