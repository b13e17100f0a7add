"""RESULTS.md, real_data.json and the PNG figures from one results dict (no measuring here)."""

from __future__ import annotations

import json
from pathlib import Path

DEFAULT = "eqdeploy INT8 per-channel (default)"
RT = {"torch": "torch", "onnxruntime": "ORT", "ai-edge-litert": "LiteRT"}
COMMAND = "nice .venv/bin/python benchmarks/real_data.py"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _num(v, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if (abs(v) < 1e-2 and v) else f"{v:.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def _rows(res: dict, ds: str | None = None, model: str | None = None,
          variant: str | None = None) -> list[dict]:
    return [r for r in res["rows"] if (ds is None or r["dataset"] == ds)
            and (model is None or r["model"] == model)
            and (variant is None or r["variant"] == variant)]


def _one(res: dict, ds: str, model: str, variant: str, runtime: str) -> dict | None:
    return next((r for r in _rows(res, ds, model, variant) if r["runtime"] == runtime), None)


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(r) + " |" for r in rows), ""]


def _failed(r: dict, lead: list[str], width: int) -> list[str] | None:
    """A table row for a path that failed: its error in the first metric column."""
    if "error" not in r:
        return None
    return [*lead, f"failed: {r['error']}", *["-"] * (width - len(lead) - 1)]


def _flips(r: dict) -> str:
    return f"{r['flips_rot90']} ({100 * r['flips_rot90'] / r['n']:.2f}%)"


def _models(res: dict, ds: str, keys) -> list[str]:
    seen = []
    for r in _rows(res, ds):
        if r["model"] not in seen and r["model"] in keys:
            seen.append(r["model"])
    return seen


def header(res: dict, smoke: bool) -> list[str]:
    m = res["meta"]
    mach = m["machine"]
    isa = [k for k, v in mach.get("isa", {}).items() if v]
    no = [k for k, v in mach.get("isa", {}).items() if not v]
    v = m["versions"]
    lines = ["# Results on real labelled data: the source papers' tables with INT8 columns", ""]
    if smoke:
        lines += ["**Smoke configuration: tiny data, a fraction of an epoch. These numbers mean "
                  "nothing; run the full configuration.**", ""]
    lines += [
        f"Regenerate: `{COMMAND}` (training is cached under `benchmarks/results/cache/`; a "
        f"re-run only converts and evaluates). Run {m['date']}: **{m['wall_seconds'] / 60:.1f} "
        f"min wall, {m['cpu_seconds'] / 60:.1f} min CPU** of this process and its training "
        f"workers (load average at the end "
        f"{', '.join(f'{x:.1f}' for x in (m.get('load_average_end') or []))}; trained "
        f"this run: {', '.join(m['trained_this_run']) or 'none (all cached)'})."
        + (f" {m['note']}" if m.get("note") else ""),
        "",
        f"Machine: {mach.get('cpu_model')}, {mach.get('cores')} cores, {mach.get('os')}; ISA: "
        f"{', '.join(isa) or '-'}" + (f" (not present: {', '.join(no)})" if no else "") + ".",
        "Versions: " + ", ".join(f"{k} {x}" for k, x in v.items() if x) + ".", ""]
    lines.append("Data (nothing downloaded at run time):")
    for name, d in res.get("datasets", {}).items():
        lines.append(f"- **{name}**: {d['source']}; {d['n_train']:,} training images, "
                     f"{d['n_test']:,} test images; 28x28 zero-padded to {d['size']}x{d['size']} "
                     f"(2 before, 3 after) so 90° rotations are exact; normalized with mean "
                     f"{d['mean']}, std {d['std']}.")
    c = m["config"]
    lines += [
        "",
        "Test sets: *upright*; *90°* (exact `rot90`; flips and changed outputs are over 90°, "
        "180° and 270°); *random angle*: each image inside the inscribed disc (the circular "
        "mask, zero outside) rotated by its own seeded angle in [0°, 360°), bilinear about "
        "the grid centre. *flips*: test images whose predicted class differs between the "
        "upright image and any of its exact rotations; *changed*: test images whose output "
        "(INT8 TFLite: the int8 values; ONNX QDQ: the float outputs) is not identical under "
        "some exact rotation; *interp. err*: mean of ||f(R x) - f(x)|| / ||f(x)|| over the "
        "random-angle set (x masked).",
        f"Training: seeded (seed {c['schedule']['seed']}), CPU, upright images only, Adam "
        f"(peak lr {c['schedule']['lr']}, warm-up + cosine), batch {c['schedule']['batch']}, "
        f"{c['schedule']['epochs']} epochs on Fashion-MNIST, {c['mnist_schedule']['epochs']} on "
        f"MNIST; e2cnn models in e2cnn's train mode (at batch 128 its per-step basis expansion "
        f"is cheap, so no faster exact path was needed).",
        f"INT8: eqdeploy `convert --int8` with `--calibration` = {c['n_calib']} training images "
        f"(the same images calibrate the stock paths), the dataset's `--input-norm`; "
        f"artifacts at batch 1.", ""]
    for note in res.get("notes", []):
        lines.append(f"Note: {note}")
    return lines


def headline(res: dict) -> list[str]:
    ds = "fashion_mnist"
    out = []
    for key in ("e2cnn_c4", "e2cnn_c8", "mnv2_c8"):
        f = _one(res, ds, key, "FP32", "torch")
        o, t = _one(res, ds, key, DEFAULT, "onnxruntime"), _one(res, ds, key, DEFAULT,
                                                                 "ai-edge-litert")
        s = _one(res, ds, key, "stock ORT quantize_static", "onnxruntime")
        p = _one(res, ds, key, "stock litert-torch PT2E", "ai-edge-litert")
        if not (f and o and t) or "error" in o or "error" in t:
            continue
        s = None if s is None or "error" in s else s
        p = None if p is None or "error" in p else p
        text = (f"- **{f['label']}** on Fashion-MNIST ({f['n']:,} test images): FP32 "
                f"{_pct(f['acc_upright'])}% -> eqdeploy INT8 {_pct(o['acc_upright'])}% (ORT) / "
                f"{_pct(t['acc_upright'])}% (LiteRT); under 90° rotations "
                f"{o['changed_rot90']} / {t['changed_rot90']} images change their output "
                f"at all, {o['flips_rot90']} / {t['flips_rot90']} their class")
        if s:
            text += (f"; stock ORT `quantize_static`: {_pct(s['acc_upright'])}%, "
                     f"{s['flips_rot90']} class flips ({100 * s['flips_rot90'] / s['n']:.2f}%)")
        if p:
            text += (f"; stock litert-torch PT2E: {_pct(p['acc_upright'])}%, "
                     f"{p['flips_rot90']} flips")
        out.append(text + ".")
    return (["## Headline", "", *out, ""]) if out else []


def table1(res: dict) -> list[str]:
    lines = ["## Table 1: plain CNN vs rot90-stacking vs e2cnn C4/C8, FP32 and eqdeploy INT8",
             "", "After the \"let the kernel rotate\" article (MNIST: plain CNN 97.3 % upright / "
             "15.1 % rotated, equivariant 96.5 % / 96.5 %). All trained upright.", ""]
    keys = res["meta"]["config"]["table1"]
    for ds in res.get("datasets", {}):
        rows = []
        for key in _models(res, ds, keys):
            params = res["models"][f"{ds}/{key}"]["cost"]["trainable_params"]
            for variant, rt in (("FP32", "torch"), (DEFAULT, "onnxruntime"),
                                (DEFAULT, "ai-edge-litert")):
                r = _one(res, ds, key, variant, rt)
                if r is None:
                    continue
                prec = "FP32" if variant == "FP32" else f"INT8 {RT[rt]}"
                bad = _failed(r, [r["label"], f"{params:,}", prec], 8)
                if bad:
                    rows.append(bad)
                    continue
                rows.append([r["label"], f"{params:,}",
                             "FP32" if variant == "FP32" else f"INT8 {RT[rt]}",
                             _pct(r["acc_upright"]), _pct(r["acc_rot90"]),
                             _pct(r["acc_angle"]), _flips(r),
                             "-" if variant == "FP32" else str(r["changed_rot90"])])
        if rows:
            n = _rows(res, ds)[0]["n"]
            lines += [f"**{ds}** ({n:,} test images; accuracy in %)", ""]
            lines += _table(["model", "params", "precision", "upright", "90°", "random angle",
                             "flips under 90°", "changed (INT8)"], rows)
    return lines


def table2(res: dict) -> list[str]:
    ds = "fashion_mnist"
    keys = res["meta"]["config"]["table2"]
    rows = []
    for key in _models(res, ds, keys):
        f = _one(res, ds, key, "FP32", "torch")
        cand = [("FP32", "torch", f)]
        for r in _rows(res, ds, key):
            if r["variant"].startswith("eqdeploy INT8"):
                cand.append((r["variant"].removeprefix("eqdeploy INT8 "), r["runtime"], r))
        for scheme, rt, r in cand:
            if r is None:
                continue
            bad = _failed(r, [r["label"], scheme, RT[rt]], 11)
            if bad:
                rows.append(bad)
                continue
            delta = 100 * (r["acc_upright"] - f["acc_upright"])
            rows.append([r["label"], scheme, RT[rt], _pct(r["acc_upright"]),
                         "-" if scheme == "FP32" else f"{delta:+.2f}",
                         _pct(r["acc_rot90"]), _pct(r["acc_angle"]), _flips(r),
                         "-" if scheme == "FP32" else str(r["changed_rot90"]),
                         _num(r["interp_err_mean"]),
                         "-" if scheme == "FP32" else _pct(r.get("top1_vs_fp32"))])
    if not rows:
        return []
    return ["## Table 2: MobileNetV2-style, conventional vs equivariant, INT8 schemes", "",
            "After the equivariant-MobileNetV2 paper (PCam: FP32 89.19 -> INT8 88.94, "
            "conventional 84.67 -> 84.32; its bar: INT8 within 0.3 pt of FP32). Fashion-MNIST "
            "at 33x33; per-tensor schemes converted to TFLite only (one runtime), the "
            "default to both. Accuracy in %, Δ in points vs FP32.", "",
            *_table(["model", "scheme", "runtime", "upright", "Δ pt", "90°", "random angle",
                     "flips under 90°", "changed", "interp. err", "top-1 vs FP32"], rows)]


def table3(res: dict) -> list[str]:
    ds = "fashion_mnist"
    keys = res["meta"]["config"]["table3"]
    rows = []
    order = [("FP32", "torch"), ("stock ORT quantize_static", "onnxruntime"),
             ("stock litert-torch PT2E", "ai-edge-litert"), (DEFAULT, "onnxruntime"),
             (DEFAULT, "ai-edge-litert")]
    for key in _models(res, ds, keys):
        for variant, rt in order:
            r = _one(res, ds, key, variant, rt)
            if r is None:
                continue
            name = variant if not variant.startswith("eqdeploy") else "eqdeploy INT8"
            bad = _failed(r, [r["label"], name, RT[rt]], 9)
            if bad:
                rows.append(bad)
                continue
            rows.append([r["label"], name, RT[rt], _pct(r["acc_upright"]), _pct(r["acc_rot90"]),
                         _flips(r), "-" if variant == "FP32" else str(r["changed_rot90"]),
                         "-" if variant == "FP32" else _pct(r.get("top1_vs_fp32")),
                         "-" if variant == "FP32" else f"{r['bytes']:,}"])
    if not rows:
        return []
    return ["## Table 3: the stock paths vs eqdeploy on the same trained models", "",
            "Stock: e2cnn's own `.export()` of every equivariant module (the model's forward "
            "unchanged) -> `torch.onnx.export(dynamo=True)` -> ORT `quantize_static` with its "
            "defaults; litert-torch's stock PT2E quantizer (per-channel symmetric). Calibrated "
            "on the same images as eqdeploy. Accuracy in %.", "",
            *_table(["model", "path", "runtime", "upright", "90°", "flips under 90°", "changed",
                     "top-1 vs FP32", "bytes"], rows)]


def table4(res: dict) -> list[str]:
    ds = "fashion_mnist"
    keys = res["meta"]["config"]["table4"]
    rows = []
    for key in _models(res, ds, keys):
        c = res["models"][f"{ds}/{key}"]["cost"]
        f = _one(res, ds, key, "FP32", "torch")
        o = _one(res, ds, key, DEFAULT, "onnxruntime")
        t = _one(res, ds, key, DEFAULT, "ai-edge-litert")
        o = None if o is None or "error" in o else o
        t = None if t is None or "error" in t else t
        rows.append([f["label"], f"{c['trainable_params']:,}", f"{c['expanded_params']:,}",
                     f"{c['macs']:,}", _pct(f["acc_upright"]), _pct(o and o["acc_upright"]),
                     _pct(t and t["acc_upright"]), _pct(f["acc_angle"]),
                     f"{o['changed_rot90'] if o else '-'} / {t['changed_rot90'] if t else '-'}"])
    if not rows:
        return []
    return ["## Table 4: P4CNN vs g- and gc-separable group convolutions", "",
            "After the separable group-convolution paper (fewer parameters and multiply-adds "
            "at equal or better accuracy). Same widths (6 fields); Fashion-MNIST; accuracy in %.",
            "", *_table(["model", "trainable params", "deployed params", "multiply-adds",
                         "FP32", "INT8 ORT", "INT8 LiteRT", "FP32 random angle",
                         "changed ORT / LiteRT"], rows)]


def _stage(conv: dict, prefix: str) -> float:
    return sum(s["wall_s"] for s in conv["stages"] if s["stage"].startswith(prefix))


def table5(res: dict) -> list[str]:
    rows = []
    for name, m in res["models"].items():
        conv = (m.get("conversions") or {}).get("per-channel (default)")
        if conv is None:
            continue
        if "error" in conv:
            rows.append([f"{m['label']} ({name.split('/')[0]})", f"failed: {conv['error']}",
                         *["-"] * 12])
            continue
        c = m["cost"]
        arts = conv["artifacts"]
        size = {a["target"]: a for a in arts.values() if a.get("precision") == "int8"}
        peak = max((s.get("peak_rss_mb") or 0 for s in conv["stages"]), default=0)
        o, t = size.get("onnx", {}), size.get("tflite", {})
        rows.append([f"{m['label']} ({name.split('/')[0]})", f"{c['trainable_params']:,}",
                     f"{c['expanded_params']:,}", f"{c['macs']:,}",
                     f"{o.get('fp32_bytes', 0):,} / {o.get('bytes', 0):,}",
                     f"{t.get('fp32_bytes', 0):,} / {t.get('bytes', 0):,}",
                     f"{conv['wall_s']:.1f}", f"{_stage(conv, 'export'):.1f}",
                     f"{_stage(conv, 'normalize'):.1f}", f"{_stage(conv, 'verify'):.1f}",
                     f"{_stage(conv, 'DFQ') + _stage(conv, 'INT8'):.1f}",
                     f"{_stage(conv, 'emit INT8 onnx'):.1f}",
                     f"{_stage(conv, 'emit INT8 tflite'):.1f}",
                     f"{peak:,.0f} (+{peak - conv['baseline_rss_mb']:,.0f})"])
    if not rows:
        return []
    return ["## Table 5: cost", "",
            "One `convert --int8 --target onnx,tflite` per model (it writes and verifies the "
            "INT8 and the FP32 artifacts). Stage wall times in seconds; multiply-adds per image "
            "on the exported graph (convs and linears); peak RSS in MB of the whole benchmark "
            "process during the conversion (its data and models included; in brackets: above "
            "the process's RSS before the conversion). Wall times depend on the machine's "
            "load (see the load average above).", "",
            *_table(["model", "trainable params", "deployed params", "multiply-adds",
                     "ONNX FP32 / INT8 bytes", "TFLite FP32 / INT8 bytes", "convert s",
                     "export", "normalize", "verify", "DFQ + params", "emit+verify ONNX",
                     "emit+verify TFLite", "peak RSS MB"], rows)]


def table6(res: dict) -> list[str]:
    lat = res.get("latency")
    if not lat:
        return []
    mach = res["meta"]["machine"]
    isa = mach.get("isa", {})
    stats = lat["stats"]
    base = stats.get("e2cnn eager", {}).get("p50_ms")
    rows = [[k, f"{v['p50_ms']:.3f}", f"{v['min_ms']:.3f}", f"{v['p90_ms']:.3f}",
             f"{base / v['p50_ms']:.2f}x" if base else "-",
             f"{lat['bytes'][k]:,}" if k in lat["bytes"] else "-"] for k, v in stats.items()]
    tax = []
    for ours, twin in (("eqdeploy ORT FP32", "plain twin ORT FP32 (stock)"),
                       ("eqdeploy ORT INT8", "plain twin ORT INT8 (stock quantize_static)"),
                       ("eqdeploy LiteRT FP32", "plain twin LiteRT FP32 (stock)"),
                       ("eqdeploy LiteRT INT8", "plain twin LiteRT INT8 (stock PT2E)")):
        if ours in stats and twin in stats:
            tax.append(f"{ours}: {stats[ours]['p50_ms'] / stats[twin]['p50_ms']:.2f}x")
    int8 = []
    for rt in ("ORT", "LiteRT"):
        a, b = stats.get(f"eqdeploy {rt} INT8"), stats.get(f"eqdeploy {rt} FP32")
        if a and b:
            int8.append(f"{rt} {b['p50_ms'] / a['p50_ms']:.2f}x")
    vnni = isa.get("avx512_vnni") or isa.get("avx_vnni") or isa.get("dotprod")
    return ["## Table 6: latency, batch 1, 1 thread, interleaved", "",
            f"{lat['label']} (trained on Fashion-MNIST), {lat['rounds']} interleaved rounds on "
            f"{mach.get('cpu_model')} ({mach.get('machine')}; INT8 dot-product instructions "
            f"(VNNI/dotprod): **{'yes' if vnni else 'no'}**). The *plain twin* is the same graph "
            f"hand-written as a plain CNN (Conv2d/BN/ReLU/MaxPool, group pooling as reshape + "
            f"amax; loaded with the model's expanded filters, max output difference "
            f"{lat['twin_max_abs_diff']:.1e}) and converted the stock way.", "",
            *_table(["candidate", "p50 ms", "min ms", "p90 ms", "speed-up vs e2cnn eager",
                     "bytes"], rows),
            "Export tax (eqdeploy artifact p50 / plain twin's, 1.00 = none): "
            + (", ".join(tax) or "-") + ".",
            "INT8 speed-up over FP32 (p50): " + (", ".join(int8) or "-")
            + ("." if vnni else " — this CPU has no INT8 dot-product instructions, so INT8 is "
               "not expected to be faster here; the gains belong to ARM (dotprod) or VNNI "
               "CPUs."), ""]


def earlier(results_dir: Path) -> list[str]:
    """The per-topic result files beside this one: title, machine line, what they cover."""
    files = sorted(p for p in results_dir.glob("*.md") if not p.name.startswith("real_data"))
    if not files:
        return []
    lines = ["## Per-topic results (earlier runs, other scripts)", "",
             "Measured on random inputs or the 512 bundled MNIST digits, by their own scripts "
             "(`benchmarks/<name>.py`), on the machine each names; regenerate them after the "
             "pipeline changes. The tables above supersede them for accuracy on real data.", ""]
    for f in files:
        text = f.read_text().splitlines()
        title = next((t.lstrip("# ") for t in text if t.startswith("# ")), f.stem)
        mach = next((t for t in text if t.startswith(("Machine:", "Per-tensor INT8"))), "")
        mach = mach.split(";")[0].split(". ")[0] if mach.startswith("Machine") else ""
        lines.append(f"- [{f.name}](results/{f.name}): {title}" + (f" ({mach})" if mach else ""))
    return [*lines, ""]


def markdown(res: dict, smoke: bool = False, results_dir: Path | None = None) -> str:
    parts = [header(res, smoke), headline(res), table1(res), table2(res), table3(res),
             table4(res), table5(res), table6(res), figures_md(res),
             earlier(results_dir) if results_dir and not smoke else []]
    return "\n".join(line for p in parts for line in p).rstrip() + "\n"


def figures_md(res: dict) -> list[str]:
    figs = res.get("figures") or []
    return (["## Figures", "", *(f"![{f}](results/{f})" for f in figs), ""]) if figs else []


def figures(res: dict, out: Path) -> list[str]:
    """PNG figures; none (and a note) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        res["notes"].append("matplotlib is not installed: figures skipped")
        return []
    made = []
    ds = "fashion_mnist"
    keys = [k for k in res["meta"]["config"]["table1"] if _one(res, ds, k, "FP32", "torch")]
    if keys:
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
        sets = (("acc_upright", "upright"), ("acc_rot90", "90°"), ("acc_angle", "random angle"))
        for ax, (metric, title) in zip(axes, sets, strict=True):
            for j, (variant, rt, lab) in enumerate((("FP32", "torch", "FP32"),
                                                    (DEFAULT, "onnxruntime", "INT8 ORT"),
                                                    (DEFAULT, "ai-edge-litert", "INT8 LiteRT"))):
                vals = [100 * (_one(res, ds, k, variant, rt) or {}).get(metric, 0) for k in keys]
                vals = [v if v == v else 0 for v in vals]
                ax.bar([i + 0.27 * (j - 1) for i in range(len(keys))], vals, 0.27, label=lab)
            ax.set_xticks(range(len(keys)), [MODEL_SHORT.get(k, k) for k in keys], fontsize=8)
            ax.set_title(f"Fashion-MNIST, {title}")
            ax.grid(axis="y", alpha=0.3)
        axes[0].set_ylabel("test accuracy %")
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        made.append(_save(fig, plt, out / "real_data_table1.png"))
    keys2 = [k for k in res["meta"]["config"]["table2"] if _one(res, ds, k, "FP32", "torch")]
    if keys2:
        schemes = res["meta"]["config"]["schemes"]
        fig, ax = plt.subplots(figsize=(8, 3.6))
        for j, s in enumerate(schemes):
            vals = []
            for k in keys2:
                f = _one(res, ds, k, "FP32", "torch")
                r = _one(res, ds, k, f"eqdeploy INT8 {s}", "ai-edge-litert")
                ok = r is not None and "error" not in r
                vals.append(100 * (r["acc_upright"] - f["acc_upright"]) if ok else 0)
            w = 0.8 / len(schemes)
            ax.bar([i + w * (j - (len(schemes) - 1) / 2) for i in range(len(keys2))], vals, w,
                   label=s)
        ax.axhline(-0.3, color="k", ls="--", lw=0.8, label="paper's bar (-0.3 pt)")
        ax.set_xticks(range(len(keys2)), [MODEL_SHORT.get(k, k) for k in keys2])
        ax.set_ylabel("INT8 - FP32 accuracy (pt), LiteRT")
        ax.set_title("MobileNetV2-style on Fashion-MNIST: INT8 schemes")
        ax.legend(fontsize=7)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        made.append(_save(fig, plt, out / "real_data_table2.png"))
    lat = res.get("latency")
    if lat:
        stats = lat["stats"]
        fig, ax = plt.subplots(figsize=(8, 3.8))
        names = list(stats)
        ax.barh(range(len(names)), [stats[n]["p50_ms"] for n in names],
                xerr=[[0] * len(names), [stats[n]["p90_ms"] - stats[n]["p50_ms"] for n in names]])
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("ms per image (p50, bar to p90), batch 1, 1 thread")
        ax.set_title(f"Latency: {lat['label']}")
        fig.tight_layout()
        made.append(_save(fig, plt, out / "real_data_latency.png"))
    return made


MODEL_SHORT = {"plain_cnn": "plain", "rotstack_c4": "rot-stack C4", "e2cnn_c4": "e2cnn C4",
               "e2cnn_c8": "e2cnn C8", "mnv2_plain": "MNv2 plain", "mnv2_c4": "MNv2 C4",
               "mnv2_c8": "MNv2 C8", "mnv2_c12": "MNv2 C12"}


def _save(fig, plt, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def write_all(res: dict, out: Path, smoke: bool = False) -> dict[str, Path]:
    """``out/RESULTS.md``, ``out/results/real_data.json`` and ``out/results/real_data_*.png``."""
    results_dir = out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    res["figures"] = figures(res, results_dir)
    md = out / "RESULTS.md"
    md.write_text(markdown(res, smoke, results_dir))
    js = results_dir / "real_data.json"
    js.write_text(json.dumps(res, indent=1, default=str))
    return {"markdown": md, "json": js, **{f: results_dir / f for f in res["figures"]}}
