"""Markdown rendering of a ``convert`` report."""

from __future__ import annotations


def _e(v: float) -> str:
    return f"{v:.1e}"


def _integer(a: dict) -> str:
    """Whether an INT8 artifact runs in integers, with the evidence."""
    if a["target"] == "onnx":
        floats = a.get("float_compute_ops")
        if floats is None:
            return "-"
        conv = "QLinearConv" in a.get("ort_ops", [])
        return ("yes" if not floats else f"no: float {', '.join(floats)}") + \
            (" (ORT runs QLinearConv)" if conv else "")
    floats = a.get("float_tensors")
    if floats is None:
        return "-"
    io = a.get("io") or {}
    float_io = [t for t in [*io.get("inputs", []), *io.get("outputs", [])] if t == "FLOAT32"]
    if not floats:
        return "yes (no float32 tensor)"
    if len(floats) <= len(float_io):
        return "yes (float32 only at the I/O, --float-io)"
    ops = a.get("float_ops")
    return f"no: {len(floats)} float32 tensors" + (f" (float {', '.join(ops)})" if ops else "")


def _steps(v) -> str:
    return "-" if v is None else f"{v:g}"


_PASS_ITEMS = ("folded", "replaced", "pairs", "absorbed", "corrected")


def _count(p: dict) -> str:
    """What a DFQ pass did, e.g. ``2 pairs, 1 skipped``."""
    done = next((f"{len(p[k])} {k}" for k in _PASS_ITEMS if k in p), "")
    skipped = len(p.get("skipped") or [])
    return f"({done}{f', {skipped} skipped' if skipped else ''})"


def _int8_sections(report: dict) -> list[str]:
    """INT8 fidelity per artifact and the parameter set's summary."""
    rows = {v["artifact"]: v for v in report["verification"] if "max_steps_vs_simulation" in v}
    lines = ["", "## INT8 fidelity", "",
             "Each INT8 artifact against the FP32 source (or the tap's FP32 graph) and against "
             "the torch simulation of the same parameters, on the probes; sizes against the "
             "FP32 artifact of the same graph written beside it.", "",
             "| artifact | runtime | top-1 vs FP32 | max error vs FP32 (steps) | vs simulation "
             "(steps) | bytes | / FP32 | integer | I/O |", "|---|---|---|---|---|---|---|---|---|"]
    for a in report["artifacts"]:
        v = rows.get(a["file"])
        if a["precision"] != "int8" or v is None:
            continue
        top1 = v.get("top1_agreement_vs_source")
        io = a.get("io") or {"inputs": ["FLOAT32"], "outputs": ["FLOAT32"]}
        lines.append(f"| {a['file']} | {v['runtime']} | "
                     f"{'-' if top1 is None else f'{top1:.3f}'} | "
                     f"{_steps(v.get('max_steps_vs_fp32'))} | "
                     f"{_steps(v.get('max_steps_vs_simulation'))} | {a['bytes']} | "
                     f"{a.get('size_ratio_vs_fp32', '-')} | {_integer(a)} | "
                     f"{'/'.join(io['inputs'])} -> {'/'.join(io['outputs'])} |")
    for a in report["artifacts"]:
        if a.get("ort_weight_kernel"):
            lines += ["", f"{a['file']}: ORT {a['ort_weight_kernel']} kernels; "
                          f"{a['ort_weight_kernel_why']}."]
    q = report["quantization"]["params"]
    sch = q["scheme"]
    dfq = report["quantization"]["dfq"]
    passes = dfq.get("passes", {})
    done = [f"{k} {_count(p)}" for k, p in passes.items() if isinstance(p, dict)]
    lines += ["", "## Quantization parameters (one set, forced into every artifact)", "",
              f"- weights: {sch['weights']}; {len(q['weights'])} layers",
              f"- activations: {sch['activations']}; {len(q['activations'])} quantization "
              f"points, ranges from {sch['ranges_from']}",
              f"- DFQ: {dfq.get('skipped') or ', '.join(done)}",
              *[f"- {n}" for n in q.get("notes", [])],
              "- every scale and zero point: `quantization.params` in the JSON report"]
    if report["quantization"].get("per_layer"):
        from eqdeploy.quantize.explain import explain_markdown

        lines += ["", "## Per-layer INT8 error", "",
                  *explain_markdown(report["quantization"]["per_layer"])]
    return lines


def interpolated_brief(row: dict) -> str:
    """The CLI summary's tail for one verification row: worst interpolated error and ratio."""
    interp = row.get("interpolated") or []
    if not interp:
        return ""
    ratios = [r["ratio_vs_fp32"] for r in interp if r.get("ratio_vs_fp32") is not None]
    return (f"   interpolated ({len(interp)} el.) {max(r['rel_err_max'] for r in interp):.1e}"
            + (f" = {max(ratios):.2f} x FP32" if ratios else ""))


def _element_cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if r["exact"]:
        return f"{_e(r['rel_err_max'])} ({r['changed']}/{r['probes']} changed)"
    top1 = r.get("top1_agreement")
    return f"{_e(r['rel_err_max'])} / {_e(r['rel_err_mean'])}" + \
        ("" if top1 is None else f", top-1 {top1:.2f}")


def _element_sections(report: dict) -> list[str]:
    """Every group element, exact or interpolated: source, FP32 and INT8 artifacts, ratio."""
    interp = report.get("interpolated")
    if not interp:
        return []
    model_rows = [v for v in report["verification"] if not v.get("tap")]
    source = model_rows[0]
    elements = sorted([*source["equivariance"], *source.get("interpolated", [])],
                      key=lambda r: (r["element"].startswith("f"), r["degrees"]))
    if not elements:
        return []
    precision = {a["file"]: a for a in report["artifacts"]}
    arts = sorted(((precision[v["artifact"]], v) for v in model_rows
                   if v.get("artifact") in precision),
                  key=lambda av: (av[0]["target"], av[0]["precision"] != "fp32"))
    columns = [("source", source)] + [(f"{a['precision'].upper()} {a['target']}", v)
                                      for a, v in arts]
    ratio_of = [(f"INT8/FP32 {a['target']}", v) for a, v in arts if a["precision"] == "int8"]
    lines = ["", "## Every group element", "",
             "Exact elements: error max (probes whose output changed at all). Interpolated "
             f"elements (no exact pixel action; {interp['method']} rotation about the grid "
             f"centre inside a disc of {interp['mask_radius']:g} x the inscribed disc's "
             "radius, applied to the probes before and after rotating): relative error max / "
             "mean over probes, top-1 agreement of f(x) and f(g.x), and the INT8 artifact's "
             "max error over its FP32 counterpart's at the same element.", "",
             "| element | degrees | action | " + " | ".join(c for c, _ in columns)
             + "".join(f" | {c}" for c, _ in ratio_of) + " |",
             "|---|---|---|" + "---|" * (len(columns) + len(ratio_of))]
    for el in elements:
        cells = []
        for _, v in columns:
            rows = {r["element"]: r for r in [*v["equivariance"], *v.get("interpolated", [])]}
            cells.append(_element_cell(rows.get(el["element"])))
        for _, v in ratio_of:
            r = {r["element"]: r for r in v.get("interpolated", [])}.get(el["element"])
            ratio = None if r is None else r.get("ratio_vs_fp32")
            cells.append("-" if ratio is None else f"{ratio:.3f}")
        lines.append(f"| {el['element']} | {el['degrees']:g} | "
                     f"{'exact' if el['exact'] else 'interpolated'} | " + " | ".join(cells)
                     + " |")
    for f in (report.get("plots") or {}).get("files", []):
        lines += ["", f"![equivariance error per element]({f})"]
    if (report.get("plots") or {}).get("note"):
        lines += ["", f"> plots: {report['plots']['note']}"]
    return lines


def convert_markdown(report: dict) -> str:
    """The human-readable twin of ``<name>.report.json``."""
    m = report["model"]
    lines = [f"# eqdeploy convert: {m['file']}", "",
             f"- group **{m['group']}**, input {tuple(m['input_shape'])}, format {m['format']}, "
             f"framework {m.get('framework', '-')}",
             f"- parameters: {m.get('trainable_parameters', '-')} trainable, "
             f"{m.get('deployed_parameters', '-')} deployed (expanded filters, BN buffers)",
             f"- input-size lint: {'aligned' if report['lint']['exact'] else 'MISALIGNED'}"
             + ("" if report["lint"]["exact"] else
                f" (exact sizes nearby: {report['lint']['nearest_exact']})"),
             f"- probes: {report['probes']['count']} ("
             f"{report['probes'].get('note') or report['probes'].get('path')})", "",
             "## Equivariance per runtime",
             "",
             "Relative error ||f(g.x) - g.f(x)|| / ||f(x)|| (max over probes) and the number "
             "of probes whose output changed at all, per exact group element.", ""]
    elements = next(([r["element"] for r in v["equivariance"]]
                     for v in report["verification"] if v["equivariance"]), [])
    lines.append("| runtime | artifact | vs reference (rel.) | " + " | ".join(elements) + " |")
    lines.append("|---|---|---|" + "---|" * len(elements))
    for v in report["verification"]:
        cells = [f"{_e(r['rel_err_max'])} ({r['changed']}/{r['probes']})"
                 for r in v["equivariance"]] or ["no group action"] + [""] * (len(elements) - 1)
        where = v.get("artifact") or ("graph" + (f" @ tap {v['tap']}" if v.get("tap") else ""))
        lines.append(f"| {v['runtime']} {v['version']} | {where} | "
                     f"{_e(v['rel_err_vs_source'])} | " + " | ".join(cells) + " |")
    if any(v.get("tap") for v in report["verification"]):
        lines += ["", "Tap rows compare against the FP32 graph cut at the tap (after DFQ for "
                  "INT8 artifacts, whose equalization rescales the tapped tensor per field)."]
    lines += _element_sections(report)
    if report.get("quantization"):
        lines += _int8_sections(report)
    lines += ["", "## Artifacts", "", "| target | file | bytes | seconds | ops |",
              "|---|---|---|---|---|"]
    for a in report["artifacts"]:
        lines.append(f"| {a['target']} | {a['file']} | {a['bytes']} | {a['seconds']} | "
                     f"{', '.join(a.get('ops', []))} |")
    t = report["timings_seconds"]
    machine = report["machine"]
    lines += ["", "## Timings (s)", "", ", ".join(f"{k} {v}" for k, v in t.items()), "",
              f"Machine: {machine.get('cpu_model', '?')}, {machine.get('cores', '?')} cores", ""]
    return "\n".join(lines)
