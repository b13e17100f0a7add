"""Markdown rendering of a ``convert`` report."""

from __future__ import annotations


def _e(v: float) -> str:
    return f"{v:.1e}"


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
