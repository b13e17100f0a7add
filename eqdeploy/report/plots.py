"""PNG plots: error per group element (bench and convert reports), latency histogram.

matplotlib is an optional extra (``pip install eqdeploy[plots]``); without it the plots are
skipped and the report says so.
"""

from __future__ import annotations

from pathlib import Path

MISSING_NOTE = "matplotlib is not installed (pip install 'eqdeploy[plots]'): plots skipped"


FLOOR = 1e-12  # an error of exactly 0 (bit-exact) is drawn at the floor and labelled "0"


def _pyplot():
    """matplotlib.pyplot on the Agg backend, None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def element_bars(plt, path: Path, title: str, elements: list[dict],
                 series: dict[str, list[float | None]]) -> None:
    """Grouped bars (log scale): one group per element, one bar per series (None: no bar);
    interpolated elements are marked under their tick, an element's ``note`` (e.g. the
    changed-output count) above its group."""
    width_in = min(12.0, max(6.0, 2.0 + 0.25 * len(elements) * max(1, len(series))))
    fig, ax = plt.subplots(figsize=(width_in, 3.8))
    width = 0.8 / max(1, len(series))
    xs = list(range(len(elements)))
    for i, (label, values) in enumerate(series.items()):
        pos = [x - 0.4 + width * (i + 0.5) for x in xs]
        shown = [(p, v) for p, v in zip(pos, values, strict=True) if v is not None]
        if not shown:
            continue
        ax.bar([p for p, _ in shown], [max(v, FLOOR) for _, v in shown], width=width,
               label=label)
        for p, v in shown:
            if v == 0:
                ax.annotate("0", (p, FLOOR), ha="center", va="bottom", fontsize=7)
    top = max([max(v or FLOOR, FLOOR) for vals in series.values() for v in vals] or [FLOOR])
    for x, e in zip(xs, elements, strict=True):
        if e.get("note"):
            ax.annotate(e["note"], (x, top), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(xs, [f"{e['element']}\n{e['degrees']:g}°" + ("" if e["exact"] else "\ninterp.")
                       for e in elements], fontsize=7)
    ax.set_yscale("log")
    ax.set_ylabel("rel. error ||f(g·x) − ρ(g) f(x)|| / ||f(x)||", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def bench_series(report: dict) -> tuple[list[dict], dict] | None:
    """Elements and series of a bench report: the artifact (max over probes) and, at the
    interpolated elements, the FP32 reference stored with the probes."""
    eq = report["equivariance"]
    interp = (eq.get("interpolated") or {}).get("rows") or []
    rows = sorted([*eq["rows"], *interp], key=lambda r: (r["element"].startswith("f"),
                                                            r["degrees"]))
    if not rows:
        return None
    elements = [{"element": r["element"], "degrees": r["degrees"], "exact": r["exact"],
                 "note": f"changed {r['changed']}/{r['probes']}" if "changed" in r else None}
                for r in rows]
    series = {report["artifact"]["name"]: [r["rel_err_max"] for r in rows]}
    if any("fp32_rel_err_max" in r for r in interp):
        series["FP32 reference"] = [r.get("fp32_rel_err_max") for r in rows]
    return elements, series


def write_plots(report: dict, out_dir: str | Path) -> dict:
    """Write the PNGs into ``out_dir``; returns the report's ``plots`` entry."""
    plt = _pyplot()
    if plt is None:
        return {"available": False, "dir": str(out_dir), "files": [], "note": MISSING_NOTE}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = report["artifact"]["name"]
    files = []

    series = bench_series(report)
    if series:
        path = out_dir / f"{stem}.equivariance.png"
        element_bars(plt, path, f"{stem}: equivariance error per element "
                     f"({report['symmetry']['group']})", *series)
        files.append(str(path))

    samples = report["latency"].get("samples_ms") or []
    if samples:
        lat = report["latency"]
        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.hist(samples, bins=min(50, max(5, len(samples) // 5)))
        for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
            ax.axvline(lat[key], color="k", linestyle=style, label=f"{key[:-3]} {lat[key]:.3g} ms")
        ax.set_xlabel("latency per invoke (ms)")
        ax.set_ylabel("runs")
        ax.set_title(f"{stem}: {report['runtime']['name']}, {len(samples)} runs")
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{stem}.latency.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        files.append(str(path))
    return {"available": True, "dir": str(out_dir), "files": files, "note": None}


def convert_series(report: dict) -> tuple[list[dict], dict] | None:
    """Elements and series of a convert report: the source model, then each artifact of the
    model (not its tap) labelled by precision and target; max over probes."""
    precision = {a["file"]: (a["precision"], a["target"]) for a in report["artifacts"]}
    first = report["verification"][0]
    arts = sorted((v for v in report["verification"]
                   if not v.get("tap") and v.get("artifact") in precision),
                  key=lambda v: (precision[v["artifact"]][1], precision[v["artifact"]][0]))
    rows = [first, *arts]
    per_element = sorted([*first["equivariance"], *first.get("interpolated", [])],
                         key=lambda r: (r["element"].startswith("f"), r["degrees"]))
    if not per_element:
        return None
    elements = [{"element": r["element"], "degrees": r["degrees"], "exact": r["exact"]}
                for r in per_element]
    series = {}
    for v in rows:
        errs = {r["element"]: r["rel_err_max"]
                for r in [*v["equivariance"], *v.get("interpolated", [])]}
        label = "source" if v is first else " ".join(precision[v["artifact"]]).upper()
        series[label] = [errs.get(e["element"]) for e in elements]
    return elements, series


def write_convert_plots(report: dict, out_dir: str | Path, stem: str) -> dict:
    """``<stem>.equivariance.png`` of a convert report (file names relative to ``out_dir``)."""
    plt = _pyplot()
    if plt is None:
        return {"available": False, "files": [], "note": MISSING_NOTE}
    series = convert_series(report)
    if series is None:
        return {"available": True, "files": [], "note": "no group element to plot"}
    name = f"{stem}.equivariance.png"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    element_bars(plt, Path(out_dir) / name, f"{stem}: equivariance error per element "
                 f"({report['model']['group']}), source vs artifacts", *series)
    return {"available": True, "files": [name], "note": None}
