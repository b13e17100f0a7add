"""Markdown rendering of an ``eqdeploy.bench`` report (stdlib only)."""

from __future__ import annotations


def _f(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}g}"


def _table(head: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in r) + " |"
            for r in rows]
    return out


def bench_markdown(report: dict) -> str:
    """A human-readable page for one bench report."""
    a, rt, sysi, lat = report["artifact"], report["runtime"], report["system"], report["latency"]
    eq, pr = report["equivariance"], report["probes"]
    isa = ", ".join(k for k, v in sysi.get("isa", {}).items() if v) or "none detected"
    lines = [f"# eqdeploy bench: `{a['name']}`", ""]
    lines += _table(["", ""], [
        ["artifact", f"`{a['path']}` ({a['format']}, {a['size_bytes']} bytes)"],
        ["sha256", f"`{a['sha256'][:16]}…`"],
        ["input / output", f"{a['input_shape']} {a['input_dtype']} -> "
                           f"{a['output_shape']} {a['output_dtype']}"],
        ["runtime", f"{rt['name']} {rt['version']}, threads: {rt['threads'] or 'default'}"],
        ["CPU", f"{sysi['cpu_model']} ({sysi['machine']}, {sysi['cores']} cores)"
                + (f", board: {sysi['board']}" if sysi.get("board") else "")],
        ["ISA features", isa],
        ["OS / Python / numpy", f"{sysi['os']} / {sysi['python']} / {sysi['numpy']}"],
        ["peak RSS", _mib(report.get("memory", {}).get("peak_rss_bytes"))],
        ["created", f"{report.get('created', '–')} (eqdeploy {report.get('eqdeploy_version')})"],
    ])
    lines += ["", "## Latency (ms)", ""]
    lines += _table(["runtime import", "init", "first", "min", "p50", "p90", "p99", "mean", "std",
                     "runs (warm-up)"],
                    [[lat.get("runtime_import_ms"), lat["init_ms"], lat["first_ms"],
                      lat["min_ms"], lat["p50_ms"], lat["p90_ms"], lat["p99_ms"], lat["mean_ms"],
                      lat["std_ms"], f"{lat['runs']} ({lat['warmup']})"]])
    lines += ["", f"One run = one invoke of a batch of {lat['batch']}."]

    lines += ["", f"## Equivariance ({report['symmetry']['group']}, output "
                  f"{eq['output_action']}, compared on {eq['compared_on']})", ""]
    src = pr["source"] + (f" `{pr['path']}`" if pr.get("path") else "")
    lines.append(f"Probes: {pr['count']} inputs, {src}.")
    if pr["source"] == "synthetic":
        lines += ["", f"> **{pr['note'][0].upper()}{pr['note'][1:]}.**"]
    if eq["rows"]:
        lines.append("")
        lines += _table(["element", "degrees", "rel. error max", "rel. error mean",
                         "changed outputs", "orbit top-1 agreement"],
                        [[r["element"], r["degrees"], r["rel_err_max"], r["rel_err_mean"],
                          f"{r['changed']}/{r['probes']}", r.get("top1_agreement")]
                         for r in eq["rows"]])
    if eq.get("note"):
        lines += ["", f"> {eq['note']}"]
    lines += interpolated_lines(eq.get("interpolated"))
    if eq.get("interpolated_elements_skipped"):
        lines += ["", "Not measured (no exact pixel action on the square grid): "
                      + ", ".join(eq["interpolated_elements_skipped"]) + "."]

    fid, acc = report.get("fidelity"), report.get("accuracy")
    if fid or acc:
        lines += ["", "## Fidelity vs FP32 reference", ""]
        rows = []
        if fid:
            rows += [["top-1 agreement", _f(fid["top1_agreement"])],
                     ["max abs error", _f(fid["max_abs_error"])
                      + (f" ({_f(fid['max_abs_error_steps'], 3)} quantization steps)"
                         if fid.get("max_abs_error_steps") is not None else "")],
                     ["mean abs error", _f(fid["mean_abs_error"])],
                     ["relative error max", _f(fid["rel_err_max"])]]
        if acc:
            rows.append(["accuracy (top-1)", f"{_f(acc['top1'])} on {acc['count']} labelled "
                         f"probes (FP32 reference: {_f(acc['reference_top1'])})"])
        lines += _table(["", ""], rows)

    plots = report.get("plots")
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{p}]({p})" for p in plots.get("files", [])]
        if plots.get("note"):
            lines.append(f"> {plots['note']}")
    return "\n".join(lines) + "\n"


def interpolated_lines(interp: dict | None) -> list[str]:
    """The interpolated elements' table of a bench report (nothing if there are none)."""
    if not interp or not interp.get("rows"):
        return [] if not interp or not interp.get("note") else ["", f"> {interp['note']}"]
    lines = ["", f"### Interpolated elements (no exact pixel action: {interp['method']} "
                 f"rotation inside a disc of {interp['mask_radius']:g} x the inscribed disc's "
                 "radius)", "",
             "Relative error of f(g.x) against rho_out(g) f(x) on the masked probes, next to "
             "the FP32 reference's at the same element and their ratio; top-1: f(x) and "
             "f(g.x) agree.", ""]
    lines += _table(["element", "degrees", "rel. error max", "rel. error mean",
                     "FP32 ref. max", "ratio to FP32", "top-1 f(x) = f(g.x)"],
                    [[r["element"], r["degrees"], r["rel_err_max"], r["rel_err_mean"],
                      r.get("fp32_rel_err_max"), r.get("ratio_vs_fp32"), r.get("top1_agreement")]
                     for r in interp["rows"]])
    if interp.get("note"):
        lines += ["", f"> {interp['note']}"]
    return lines


def _mib(b: int | None) -> str:
    return "–" if b is None else f"{b / 2**20:.1f} MiB"
