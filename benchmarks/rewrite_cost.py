"""What the group-axis rewrites cost: parameters and multiply-adds, source vs deployed.

Per model (the rot-stack C4 classifier, the kernel-rotating CNN with its rotation stack on
the last axis, and its variant with a bias after a 5D view): the source's trainable
parameters and multiply-adds per sample (its exported graph before any rewrite, Conv3d
counted as a Conv3d), and the deployed graph's (after ``export_plain``'s rewrites). With
``--baseline CHECKOUT`` the same numbers are measured with another eqdeploy checkout's
rewrites (e.g. the main branch, where a (1,k,k) Conv3d became a block-diagonal conv2d), in
a subprocess importing that checkout; models and the multiply-add counter come from this
checkout's files either way. Writes benchmarks/results/rewrite_cost.{json,md}.

    .venv/bin/python benchmarks/rewrite_cost.py [--baseline /work/main]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "results"
MODELS = {  # name: (file in this checkout, factory, kwargs, input size)
    "rotstack_c4": ("eqdeploy/models/plain_groupconv.py", "rotstack_c4", {}, 28),
    "kernel_rot_cnn": ("eqdeploy/models/kernel_rot.py", "kernel_rot_cnn", {}, 28),
    "kernel_rot_cnn_bias_after_view": ("eqdeploy/models/kernel_rot.py", "kernel_rot_cnn",
                                       {"bias_after_reshape": True}, 28),
}


def _load(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure() -> dict:
    """Numbers with whichever ``eqdeploy`` is importable (this process's sys.path)."""
    import torch

    from eqdeploy.adapters.plain import export_plain

    macs = _load("eqdeploy/graph_cost.py").multiply_adds
    out = {}
    for name, (path, factory, kwargs, n) in MODELS.items():
        model = getattr(_load(path), factory)(**kwargs)
        example = torch.zeros(1, 1, n, n)
        source, _ = export_plain(model, example, rewrite=False)
        deployed, info = export_plain(model, example)
        x = torch.randn(4, 1, n, n, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ref = model(x)
            err = float((deployed.module()(x) - ref).abs().max() / ref.abs().max())
        out[name] = {"source_parameters": int(sum(p.numel() for p in model.parameters())),
                     "source_multiply_adds": macs(source.graph),
                     "deployed_parameters": int(info["deployed_parameters"]),
                     "deployed_multiply_adds": macs(deployed.graph),
                     "rel_err_vs_source": err,
                     "conv3d_rewrites": [r.get("note") for r in info.get("rewrites", [])
                                         if "conv3d" in r.get("kind", "")]}
    return out


def _baseline(checkout: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    code = (f"import json, sys; sys.path.insert(0, {str(checkout)!r}); "
            f"sys.path.insert(1, {str(HERE)!r}); import rewrite_cost; "
            "print('RESULT' + json.dumps(rewrite_cost.measure()))")
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    line = next(ln for ln in run.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def _git(checkout: Path) -> str:
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _markdown(result: dict) -> str:
    lines = ["# Group-axis rewrites: parameters and multiply-adds", "",
             "Per sample, at the input size given; `source`: the model's own exported graph "
             "(Conv3d counted as Conv3d), `deployed`: after eqdeploy's rewrites "
             f"(this checkout {result['checkout']}" +
             (f", baseline {result['baseline_checkout']}" if "baseline" in result else "") +
             "). Command: `" + result["command"] + "`.", "",
             "Deployed parameters count what the artifact stores: a grouped conv holds its 2D "
             "kernel once per copy (G x the Conv3d's weights, where the block-diagonal conv "
             "held G^2 x), and the rotated kernels the source computes in each forward are "
             "stored as constants. Multiply-adds are the Conv3d's exactly.", "",
             "| model | source params | source MACs | " +
             ("baseline params | baseline MACs | " if "baseline" in result else "") +
             "deployed params | deployed MACs | params x | MACs x | err vs source |",
             "|---|---:|---:|" + ("---:|---:|" if "baseline" in result else "") +
             "---:|---:|---:|---:|---:|"]
    for name, r in result["models"].items():
        base = result.get("baseline", {}).get(name)
        cells = [name, f"{r['source_parameters']:,}", f"{r['source_multiply_adds']:,}"]
        if "baseline" in result:
            cells += [f"{base['deployed_parameters']:,}", f"{base['deployed_multiply_adds']:,}"]
        cells += [f"{r['deployed_parameters']:,}", f"{r['deployed_multiply_adds']:,}",
                  f"{r['deployed_parameters'] / r['source_parameters']:.2f}",
                  f"{r['deployed_multiply_adds'] / r['source_multiply_adds']:.2f}",
                  f"{r['rel_err_vs_source']:.1e}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Conv3d rewrites (this checkout):", ""]
    for name, r in result["models"].items():
        lines += [f"- {name}: " + "; ".join(r["conv3d_rewrites"] or ["none"])]
    if "baseline" in result:
        lines += ["", "Conv3d rewrites (baseline):", ""]
        for name, r in result["baseline"].items():
            lines += [f"- {name}: " + "; ".join(r["conv3d_rewrites"] or ["none"])]
    m = result["machine"]
    lines += ["", f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores, {m.get('machine')}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, help="another eqdeploy checkout to compare")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from eqdeploy.harness.sysinfo import system_info

    result = {"command": "benchmarks/rewrite_cost.py" + (
        f" --baseline {args.baseline}" if args.baseline else ""),
        "checkout": _git(ROOT), "models": measure(), "machine": system_info()}
    if args.baseline:
        result["baseline"] = _baseline(args.baseline)
        result["baseline_checkout"] = f"{args.baseline} @ {_git(args.baseline)}"
    OUT.mkdir(exist_ok=True)
    (OUT / "rewrite_cost.json").write_text(json.dumps(result, indent=1))
    (OUT / "rewrite_cost.md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
