"""PNG plots of a bench report (error per group element, latency histogram).

matplotlib is an optional extra (``pip install eqdeploy[plots]``); without it the plots are
skipped and the report says so.
"""

from __future__ import annotations

from pathlib import Path

MISSING_NOTE = "matplotlib is not installed (pip install 'eqdeploy[plots]'): plots skipped"


def write_plots(report: dict, out_dir: str | Path) -> dict:
    """Write the PNGs into ``out_dir``; returns the report's ``plots`` entry."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {"available": False, "dir": str(out_dir), "files": [], "note": MISSING_NOTE}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = report["artifact"]["name"]
    files = []

    rows = report["equivariance"]["rows"]
    if rows:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        names = [r["element"] for r in rows]
        xs = list(range(len(rows)))
        floor = 1e-12  # an error of exactly 0 (bit-exact) is drawn at the floor and labelled
        for off, key in ((-0.2, "rel_err_max"), (0.2, "rel_err_mean")):
            ax.bar([x + off for x in xs], [max(r[key], floor) for r in rows], width=0.4,
                   label=key.replace("rel_err_", ""))
        for x, r in zip(xs, rows, strict=True):
            text = f"changed {r['changed']}/{r['probes']}" + (" (0 error)" if not r["rel_err_max"]
                                                              else "")
            ax.annotate(text, (x, max(r["rel_err_max"], floor)), ha="center", va="bottom",
                        fontsize=7)
        ax.set_xticks(xs, names)
        ax.set_yscale("log")
        ax.set_ylabel("relative error ||f(g·x) − ρ(g) f(x)|| / ||f(x)||", fontsize=8)
        ax.set_xlabel("group element")
        ax.set_title(f"{stem}: equivariance error ({report['symmetry']['group']})")
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{stem}.equivariance.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
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
