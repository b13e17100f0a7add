"""The ``convert`` pipeline: load -> export -> lint -> verify(source, graph) -> emit -> verify.

Everything is written to a staging folder inside the output folder and moved into place only
when every stage succeeded, so a failed conversion leaves no half-written artifact.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from eqdeploy import __version__
from eqdeploy.errors import EqdeployError
from eqdeploy.export import PlainModel, export_equivariant
from eqdeploy.harness.equivariance import equivariance_table, relative_error
from eqdeploy.harness.probes import PROBES_SUFFIX
from eqdeploy.harness.runtime import open_artifact, read_spec, sidecar_path
from eqdeploy.harness.sysinfo import system_info
from eqdeploy.lint import lint_input_size, lint_message
from eqdeploy.load import load_model
from eqdeploy.report.convert_markdown import convert_markdown
from eqdeploy.targets import TARGETS, target_module

REPORT_SCHEMA = "eqdeploy.convert"
REPORT_VERSION = 1
EXPORT_TOL = 1e-5  # exported graph vs source, relative to the output's max magnitude
SOURCE_EQUIVARIANCE_TOL = 1e-3  # above this the source model itself is not equivariant


@dataclass
class ConvertOptions:
    """What ``eqdeploy convert`` was asked to do."""

    targets: list[str] = field(default_factory=lambda: ["tflite"])
    outdir: Path = Path("eqdeploy-out")
    input_shape: tuple[int, int, int, int] | None = None
    arch: str | None = None
    group: str | None = None
    probes: int = 16
    seed: int = 0
    allow_misaligned: bool = False


def _first_input_channels(module: torch.nn.Module) -> int | None:
    for m in module.modules():
        in_type = getattr(m, "in_type", None)
        if in_type is not None and hasattr(in_type, "size"):
            return int(in_type.size)
    return None


def _torch_fn(module: Callable) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y = module(torch.from_numpy(np.ascontiguousarray(x)))
        y = y.tensor if hasattr(y, "tensor") and hasattr(y, "type") else y
        return y.detach().numpy().astype(np.float32)

    return run


def _runtime_row(name: str, version: str, f, spec, probes, source_out, raw=None) -> dict:
    y = f(probes)
    rows = equivariance_table(f, spec, probes, f_probes=y, raw=raw)
    scale = float(np.abs(source_out).max()) or 1.0
    classifier = y.ndim == 2 and y.shape[1] > 1
    return {"runtime": name, "version": version, "equivariance": rows,
            "max_abs_err_vs_source": float(np.abs(y - source_out).max()),
            "rel_err_vs_source": float(np.abs(y - source_out).max() / scale),
            "rel_err_vs_source_l2": float(relative_error(y, source_out).max()),
            "top1_agreement_vs_source": float((y.argmax(1) == source_out.argmax(1)).mean())
            if classifier else None}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def resolve_input_shape(options: ConvertOptions, loaded, module) -> tuple[int, ...]:
    if options.input_shape is not None:
        return tuple(options.input_shape)
    if loaded.info and loaded.info.get("input_shape"):
        return tuple(loaded.info["input_shape"])
    channels = _first_input_channels(module) if module is not None else None
    if channels is None:
        raise EqdeployError("cannot tell the model's input shape",
                            "pass --input-shape N,C,H,W (e.g. 1,3,33,33)")
    return (1, channels, 33, 33)


def convert(model_path: str | Path, options: ConvertOptions,
            progress: Callable[[str], None] = lambda s: None) -> dict:
    """Run the pipeline; returns the report (also written beside the artifacts)."""
    for t in options.targets:
        if t not in TARGETS:
            raise EqdeployError(f"unknown target {t!r}", f"use one of {sorted(TARGETS)} or all")
    model_path = Path(model_path)
    name = model_path.stem
    timings: dict[str, float] = {}

    def stage(label: str):
        progress(label)
        return time.perf_counter()

    t = stage(f"load {model_path}")
    loaded = load_model(model_path, options.arch)
    timings["load"] = time.perf_counter() - t
    source = loaded.module
    shape = resolve_input_shape(options, loaded, source)
    if len(shape) != 4:
        raise EqdeployError(f"--input-shape {shape} is not N,C,H,W", "e.g. --input-shape 1,1,29,29")
    batch = int(shape[0])
    example = torch.zeros(1, *shape[1:])

    t = stage("export to a plain graph")
    if loaded.program is not None:
        plain = PlainModel(loaded.program, loaded.spec, example, dict(loaded.info or {}))
        source_fn, source_name = _torch_fn(loaded.program.module()), "source (.pt2 graph)"
    else:
        plain = export_equivariant(source, example, options.group)
        source_fn = _torch_fn(source)
        source_name = f"source ({plain.info['framework']})"
    timings["export"] = time.perf_counter() - t
    spec = plain.spec

    gm = plain.program.graph_module
    lint = lint_input_size(gm, plain.program.graph_signature.user_inputs[0], shape[2], shape[3])
    progress(lint_message(lint))
    if not lint["exact"] and not options.allow_misaligned:
        raise EqdeployError(lint_message(lint), "pass --input-shape with an exact size, or "
                            "--allow-misaligned to convert anyway")

    t = stage(f"verify source and exported graph on {options.probes} probes")
    probes = np.random.default_rng(options.seed).standard_normal(
        (options.probes, *shape[1:])).astype(np.float32)
    source_out = source_fn(probes)
    verification = [_runtime_row(source_name, torch.__version__, source_fn, spec, probes,
                                 source_out),
                    _runtime_row("torch.export graph", torch.__version__,
                                 _torch_fn(plain.module()), spec, probes, source_out)]
    timings["verify_graph"] = time.perf_counter() - t
    worst_src = max(verification[0]["equivariance"], key=lambda r: r["rel_err_max"], default=None)
    if lint["exact"] and worst_src and worst_src["rel_err_max"] > SOURCE_EQUIVARIANCE_TOL:
        raise EqdeployError(f"the source model is not equivariant: error "
                            f"{worst_src['rel_err_max']:.2e} under {worst_src['element']}",
                            "check that every layer between input and output is an "
                            "equivariant module or acts on each channel alone")
    if verification[1]["rel_err_vs_source"] > EXPORT_TOL:
        raise EqdeployError(f"the exported graph differs from the source by "
                            f"{verification[1]['rel_err_vs_source']:.2e}",
                            "report this model to eqdeploy: an adapter is wrong")

    options.outdir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".eqdeploy-", dir=options.outdir))
    try:
        artifacts = []
        for target in options.targets:
            path = staging / f"{name}{TARGETS[target]}"
            t = stage(f"emit {target} -> {options.outdir / path.name}")
            info = target_module(target).emit(plain, path, batch=batch)
            seconds = time.perf_counter() - t
            runner = open_artifact(path)
            read_back = read_spec(path)
            if read_back.to_json() != spec.to_json():
                raise EqdeployError(f"the manifest read back from {path.name} differs",
                                    "report this to eqdeploy")
            verification.append(_runtime_row(runner.runtime, runner.runtime_version, runner.run,
                                             spec, probes, source_out))
            np.savez(Path(f"{path}{PROBES_SUFFIX}"), inputs=probes, reference=source_out)
            art = {"target": target, "file": path.name, "bytes": path.stat().st_size,
                   "sha256": _sha256(path), "seconds": round(seconds, 2),
                   "runtime": runner.runtime, "batch": batch, **info}
            sidecar_path(path).write_text(json.dumps(
                {"symmetry": spec.to_json(), "artifact": art,
                 "probes": f"{path.name}{PROBES_SUFFIX}"}, indent=1))
            artifacts.append(art)
        report = {
            "schema": REPORT_SCHEMA, "version": REPORT_VERSION, "eqdeploy": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {"file": str(model_path), "format": loaded.format,
                      "group": spec.group.name, "input_shape": list(shape), **plain.info},
            "lint": lint,
            "probes": {"count": options.probes, "kind": "synthetic",
                       "note": f"seeded normal noise (seed {options.seed})"},
            "verification": verification,
            "artifacts": artifacts,
            "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
            "machine": system_info(),
        }
        (staging / f"{name}.report.json").write_text(json.dumps(report, indent=1))
        (staging / f"{name}.report.md").write_text(convert_markdown(report))
        for f in sorted(staging.iterdir()):
            os.replace(f, options.outdir / f.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report
