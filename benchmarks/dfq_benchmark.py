"""DFQ benchmark: FP32 vs per-tensor INT8 (naive, orbit-agnostic DFQ, block-aware DFQ).

On the DFQ stress model (``eqdeploy.models.stress``: C4, BN scales over three decades across
fields, 20 % high-bias fields, group pooling before a Linear head) and MobileNetV2-style
models (equivariant C4/C8/C12 and a conventional one, BN gammas spread over 10**U(-1, 1)
across fields): top-1 agreement and SQNR vs FP32 of the simulated INT8 model (per-tensor
weights and activations, min/max over 64 calibration inputs, which DFQ also uses for its
empirical bias correction and absorption constants), equivariance error of its logits under
the exact 90-degree elements, and for C8/C12 the interpolated smallest rotation (logits, and
the worst per-field error increase at an intermediate tensor over FP32). Also per model:
what absorption next to zero padding costs (FP32 SQNR of the DFQ graph against the model,
exact constant channels vs absorbing into the bias), and the per-layer SQNR table of the
block-aware INT8 model (``eqdeploy.quantize.explain``). Writes benchmarks/results/dfq.json
and dfq.md.

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

from eqdeploy.dfq import DfqOptions, equalize, run_dfq, run_dfq_with_reference
from eqdeploy.dfq.verify import disc_mask, interpolated_tap_error, rotate
from eqdeploy.export import export_equivariant
from eqdeploy.harness.equivariance import equivariance_table, summarize
from eqdeploy.harness.sysinfo import system_info
from eqdeploy.models import mobilenet as M
from eqdeploy.models import stress as S
from eqdeploy.quantize.explain import explain, explain_markdown
from eqdeploy.quantize.params import compute_qparams
from eqdeploy.quantize.simulate import fidelity, simulate_with

OUT = Path(__file__).parent / "results"
SIZE = 33
MODES = {
    "naive": DfqOptions(cle=False, absorb=False, bias_correction=False),
    "orbit-agnostic DFQ": DfqOptions(orbit_agnostic=True, weights="per_tensor"),
    "block-aware DFQ": DfqOptions(weights="per_tensor"),
    "block-aware DFQ, padded absorption into the bias": DfqOptions(weights="per_tensor",
                                                                   absorb_padded="always"),
}


def _inputs(n: int, seed: int, size: int = SIZE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 1, size, size)) + 0.5).astype(np.float32)


def _padding_summary(rep: dict) -> str:
    """What absorption did next to zero padding, from the absorb pass's report."""
    ab = rep["passes"].get("absorb", {})
    exact = sum(1 for a in ab.get("absorbed", []) if a.get("padding", {}).get("method", "")
                .startswith("exact"))
    approx = sum(1 for a in ab.get("absorbed", []) if a.get("padding", {}).get("method", "")
                 .startswith("approximate"))
    chans = sum(a.get("padding", {}).get("constant_channels", 0) for a in ab.get("absorbed", []))
    skipped = sum(1 for a in ab.get("skipped", []) if "padding" in a)
    return (f"{exact} exact (+{chans} const. ch.), {approx} approx., {skipped} not absorbed"
            if "absorbed" in ab else "-")


def _interp_logit_error(f, spec, probes: np.ndarray, element) -> float:
    x = disc_mask(probes, margin=2.0)
    y, yr = f(x), f(rotate(x, element.degrees))
    perm = spec.channel_perm(spec.output, element)
    ref = y[:, perm]
    return float(np.mean(np.linalg.norm(yr - ref, axis=1) / np.linalg.norm(ref, axis=1)))


def bench_model(name: str, pm, n_eval: int, tables: dict) -> list[dict]:
    size = int(pm.example.shape[-1])
    x = _inputs(n_eval, 1, size)
    cal = _inputs(64, 2, size)
    probes = _inputs(16, 3, size)
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
        new, rep, ref, _ = run_dfq_with_reference(pm, opt, inputs=None if mode == "naive" else cal)
        dfq_s = time.perf_counter() - t0
        qp = compute_qparams(new, per_channel=False, calibration=cal)
        sim = simulate_with(new, qp)
        rep["fp32_sqnr_db"] = fidelity(pm, ref, torch.from_numpy(x[:128]))["sqnr_db"]
        if mode in ("naive", "block-aware DFQ"):
            tables[f"{name}, {mode}"] = explain(new, qp, probes, ref, sensitivity=False)
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
            row["fp32_sqnr_after_dfq_db"] = rep["fp32_sqnr_db"]
            row["padded_absorption"] = _padding_summary(rep)
            row["group_pool_pairs"] = sum(1 for p in cle.get("pairs", [])
                                          if p.get("through_group_pooling"))
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
            "equiv. err interp. (logits)", "field err increase interp.", "range ratio med.",
            "FP32 SQNR after DFQ", "padded absorption", "group-pool pairs"]
    lines = [f"# DFQ benchmark ({meta['date']})", "",
             f"Per-tensor INT8 simulation (weights symmetric per tensor, activations "
             f"asymmetric per tensor, min/max over 64 calibration inputs, which DFQ also uses "
             f"for bias correction); {meta['n_eval']} random inputs (N(0.5, 1) pixels) of "
             f"{SIZE}x{SIZE} ({S.SIZE}x{S.SIZE} for the stress model); MobileNets: BN gammas "
             f"spread over 10^U(-1,1) per field; stress model: over 10^U(-1.5,1.5), 20 % "
             f"of fields with beta = gamma U(2,5) (second stress model: 50 %, U(4,6)). "
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
            _fmt(r.get("tap_err_increase_interp")), rr,
            _fmt(r.get("fp32_sqnr_after_dfq_db"), 2), r.get("padded_absorption", "-"),
            _fmt(r.get("group_pool_pairs"))]) + " |")
    lines += ["", "equiv. err: max over probes and exact 90-degree elements of "
              "||f(g x) - rho(g) f(x)|| / ||f(x)||; changed: probes whose output changed at "
              "all. Interp.: the smallest rotation (45° C8, 30° C12) by bilinear "
              "interpolation on a disc; field err increase: worst ratio, over intermediate "
              "tensors of the FP32 graph after the mode's CLE, of the per-field error of the "
              "channel averages to the unequalized graph's (1.0 = fields still transform as "
              "fields). Logits are centred (head bias = -W E[features]), so relative errors "
              "are large numbers on small logits. FP32 SQNR after DFQ: the DFQ graph before "
              "bias correction against the model (inf-like = exact; folding, CLE and exact "
              "absorption keep the function, absorbing next to zero padding into the bias "
              "does not). Padded absorption: pairs with a zero-padded consumer absorbed "
              "exactly through constant channels, approximately, or not (criterion: "
              "eqdeploy/dfq/absorb.py). Group-pool pairs: equalized through group pooling "
              "into the head."]
    for title, rep in meta.get("tables", {}).items():
        lines += ["", f"## Per-layer SQNR: {title}", "", *explain_markdown(rep)]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer inputs, width 0.5")
    ap.add_argument("--stress-only", action="store_true", help="only the stress model "
                    "(a smoke run; results are written to /tmp, not benchmarks/results)")
    args = ap.parse_args()
    n_eval = 256 if args.quick else 1024
    width = 0.5 if args.quick else 1.0
    torch.manual_seed(0)
    example = torch.randn(1, 1, SIZE, SIZE)
    rows, tables = [], {}
    pm = export_equivariant(S.stress_c4(), torch.randn(1, 1, S.SIZE, S.SIZE))
    rows += bench_model("Stress C4 (3 decades, high biases)", pm, n_eval, tables)
    pm = export_equivariant(S.stress_c4(high_bias=0.5, beta_over_gamma=(4.0, 6.0)),
                            torch.randn(1, 1, S.SIZE, S.SIZE))
    rows += bench_model("Stress C4, half the fields high-bias", pm, n_eval, tables)
    for g in () if args.stress_only else ("C4", "C8", "C12"):
        pm = export_equivariant(M.eq_mobilenet(g, width=width, imbalance=1.0, seed=1), example)
        rows += bench_model(f"Eq-MobileNetV2 {g}", pm, n_eval, tables)
    if not args.stress_only:
        pm = M.export_conventional(M.mobilenet(width=width, imbalance=1.0, seed=1), example)
        rows += bench_model("MobileNetV2 (plain)", pm, n_eval, tables)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "n_eval": n_eval, "width": width,
            "size": SIZE, "torch": torch.__version__, "system": system_info(),
            "tables": tables}
    out = Path("/tmp/eqdeploy-dfq-smoke") if args.stress_only else OUT
    out.mkdir(parents=True, exist_ok=True)
    (out / "dfq.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1,
                                             default=float))
    (out / "dfq.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
