"""Click commands ``bench`` and ``check`` (numpy + one runtime; never imports torch).

``eqdeploy/cli.py`` adds them to the main group; ``python -m eqdeploy.harness.cli`` runs them
without it (what a device with only the base install uses).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path

import click

from eqdeploy.errors import EqdeployError
from eqdeploy.toplevel import HandledCommand, HandledGroup, debug_option

MAX_RUNS = 1_000_000


def _write(path: str, text: str) -> None:
    """Write a report atomically (a temporary file beside it, then a rename)."""
    if path == "-":
        click.echo(text, nl=False)
        return
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _check_bench_outputs(artifact: str, probes: str | None, labels: str | None,
                         outs: dict[str, str | None], plots_dir: str | None) -> list[Path]:
    """Every destination bench will write, checked before it measures; returns the
    folders created for them."""
    from eqdeploy.harness.probes import bundled_probes_path
    from eqdeploy.harness.runtime import sidecar_path
    from eqdeploy.outputs import check_destination

    inputs = {"artifact": Path(artifact), "sidecar": sidecar_path(artifact),
              "probe": Path(probes) if probes else bundled_probes_path(artifact)}
    if labels:
        inputs["labels"] = Path(labels)
    given = [p for p in outs.values() if p and p != "-"]
    if len(set(given)) < len(given):
        raise EqdeployError("--json and --md name the same file", "give two file names")
    if list(outs.values()).count("-") > 1:
        raise EqdeployError("--json - and --md - both write to stdout", "send one to a file")
    if plots_dir is not None and importlib.util.find_spec("matplotlib") is None:
        raise EqdeployError("--plots needs matplotlib, which is not installed",
                            "pip install 'eqdeploy[plots]', or drop --plots")
    created = []
    for option, path in outs.items():
        if path:
            created += check_destination(path, option, inputs)
    return created


def _summary(report: dict) -> str:
    lat, eq, rt = report["latency"], report["equivariance"], report["runtime"]
    isa = ",".join(k for k, v in report["system"]["isa"].items() if v) or "-"
    lines = [f"{report['artifact']['name']}: {report['artifact']['size_bytes']} bytes, "
             f"{rt['name']} {rt['version']}, threads {rt['threads'] or 'default'}, "
             f"{report['system']['cpu_model']} [{isa}]",
             f"latency ms: p50 {lat['p50_ms']:.4g}  p90 {lat['p90_ms']:.4g}  "
             f"p99 {lat['p99_ms']:.4g}  min {lat['min_ms']:.4g}  (init {lat['init_ms']:.4g}, "
             f"first {lat['first_ms']:.4g}, {lat['runs']} runs)"]
    probes = report["probes"]
    lines.append(f"equivariance ({report['symmetry']['group']}, {probes['count']} "
                 f"{probes['source']} probes, on {eq['compared_on']}):")
    for r in eq["rows"]:
        agree = r.get("top1_agreement")
        lines.append(f"  {r['element']:>6}  rel.err max {r['rel_err_max']:.3g}  mean "
                     f"{r['rel_err_mean']:.3g}  changed {r['changed']}/{r['probes']}"
                     + ("" if agree is None else f"  top-1 agree {agree:.3g}"))
    if eq.get("note"):
        lines.append(f"  {eq['note']}")
    interp = eq.get("interpolated") or {}
    for r in interp.get("rows", []):
        agree, ratio = r.get("top1_agreement"), r.get("ratio_vs_fp32")
        lines.append(f"  {r['element']:>6}  rel.err max {r['rel_err_max']:.3g}  mean "
                     f"{r['rel_err_mean']:.3g}  interpolated {r['degrees']:g} deg"
                     + ("" if ratio is None else f"  x{ratio:.3g} FP32")
                     + ("" if agree is None else f"  top-1 agree {agree:.3g}"))
    if interp.get("note"):
        lines.append(f"  {interp['note']}")
    if probes["source"] == "synthetic":
        lines.append(f"  note: {probes['note']}")
    fid = report.get("fidelity")
    if fid:
        agree = fid["top1_agreement"]
        lines.append(f"fidelity vs FP32: max abs err {fid['max_abs_error']:.3g}"
                     + ("" if agree is None else f", top-1 agreement {agree:.3g}"))
    if report.get("accuracy"):
        lines.append(f"accuracy: {report['accuracy']['top1']:.4g}")
    return "\n".join(lines)


@click.command("bench", cls=HandledCommand, epilog="""\b
Example:
  eqdeploy bench model.tflite --runs 200 --threads 4 --json model.bench.json --md model.bench.md
  eqdeploy check model.bench.json --budget targets/raspberry-pi-5.toml
""")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--runs", type=click.IntRange(1, MAX_RUNS), default=100, show_default=True,
              help="Timed runs (one batch each).")
@click.option("--warmup", type=click.IntRange(0, MAX_RUNS), default=10, show_default=True,
              help="Untimed runs before timing.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="Runtime threads [default: runtime's].")
@click.option("--probes", "probes", type=click.Path(dir_okay=False), default=None,
              help="Probe inputs .npz (inputs, [reference], [labels]) "
                   "[default: ARTIFACT.probes.npz, else synthetic noise].")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="Integer labels .npy for the probes: adds accuracy.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, allow_dash=True),
              default=None, help="Write the JSON report here ('-' for stdout).")
@click.option("--md", "md_out", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Write the Markdown report here ('-' for stdout).")
@click.option("--plots", "plots_dir", type=click.Path(file_okay=False), default=None,
              help="Write PNG plots into this directory (needs matplotlib).")
@debug_option
def bench(artifact, runs, warmup, threads, probes, labels, json_out, md_out, plots_dir):
    """Measure latency, equivariance and fidelity of a .tflite or .onnx ARTIFACT here.

    Needs only numpy and one runtime (ai-edge-litert or tflite-runtime for .tflite,
    onnxruntime for .onnx). The symmetry comes from the artifact or its sidecar
    ARTIFACT.eqdeploy.json; probe inputs from --probes, else ARTIFACT.probes.npz. The
    --json/--md/--plots destinations are checked before measuring. Exit 1 if the
    measurement could not be made (non-finite or constant outputs).
    """
    from eqdeploy.harness.bench import run_bench
    from eqdeploy.report.markdown import bench_markdown

    created = _check_bench_outputs(artifact, probes, labels,
                                   {"--json": json_out, "--md": md_out}, plots_dir)
    try:
        report = run_bench(artifact, runs=runs, warmup=warmup, threads=threads,
                           probes_path=probes, labels_path=labels)
    except BaseException:
        for d in created:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    if plots_dir is not None:
        from eqdeploy.report.plots import write_plots

        report["plots"] = write_plots(report, plots_dir)
    to_stdout = "-" in (json_out, md_out)
    if not to_stdout:
        click.echo(_summary(report))
    if json_out:
        _write(json_out, json.dumps(report, indent=1) + "\n")
    if md_out:
        _write(md_out, bench_markdown(report))


@click.command("check", cls=HandledCommand, epilog="""\b
Example:
  eqdeploy check model.bench.json --budget targets/raspberry-pi-5.toml --max-p99-ms 40
Exit status: 0 when every budget holds, 1 when one is violated (or not in the report),
2 when the report or the budget file is missing or malformed, or no budget is given.
""")
@click.argument("report", type=click.Path(dir_okay=False))
@click.option("--budget", "budget_file", type=click.Path(dir_okay=False), default=None,
              help="Target profile TOML whose [budgets] apply (e.g. targets/x86-ci.toml).")
@click.option("--max-equivariance-error", type=float, default=None,
              help="Max relative equivariance error over exact group elements.")
@click.option("--max-changed-outputs", type=int, default=None,
              help="Max probe outputs changed at all by an exact group element.")
@click.option("--min-top1-agreement", type=float, default=None,
              help="Min top-1 agreement with the FP32 reference outputs.")
@click.option("--min-orbit-top1-agreement", type=float, default=None,
              help="Min top-1 agreement across each probe's group orbit.")
@click.option("--max-p50-ms", type=float, default=None, help="Max median latency (ms).")
@click.option("--max-p99-ms", type=float, default=None, help="Max p99 latency (ms).")
@click.option("--max-size-bytes", type=int, default=None, help="Max artifact size (bytes).")
@click.option("--max-interpolated-error", type=float, default=None,
              help="Max relative error over the interpolated (non-exact) elements.")
@click.option("--max-interpolated-error-ratio", type=float, default=None,
              help="Max ratio of the artifact's interpolated error to FP32's, same element.")
@click.option("--min-rotation-top1", type=float, default=None,
              help="Min top-1 agreement of f(x) and f(g.x) over the interpolated elements.")
@debug_option
def check(report, budget_file, **inline):
    """Compare a REPORT (JSON from bench or convert) with budgets; exit 1 if any is violated,
    2 if a file is malformed.

    Budgets come from --budget's [budgets] table, overridden by the --max-/--min- options.
    A budget whose metric the report lacks fails.
    """
    from eqdeploy.report.check import check_report, format_table, load_budgets, load_report

    data = load_report(report)
    budgets = load_budgets(budget_file) if budget_file else {}
    budgets.update({k: v for k, v in inline.items() if v is not None})
    if not budgets:
        raise EqdeployError("no budgets given",
                            "pass --budget targets/NAME.toml or a --max-/--min- option")
    rows = check_report(data, budgets, report)
    click.echo(format_table(rows))
    failed = [r.name for r in rows if not r.ok]
    if failed:
        click.echo(f"FAILED: {len(failed)} of {len(rows)} budgets ({', '.join(failed)})")
        click.get_current_context().exit(1)
    click.echo(f"ok: {len(rows)} budgets hold")


@click.group(cls=HandledGroup,
             help="eqdeploy device-side commands (bench, check) without the conversion stack.")
@debug_option
def _main() -> None:
    pass


_main.add_command(bench)
_main.add_command(check)

if __name__ == "__main__":
    _main(prog_name="python -m eqdeploy.harness.cli")
