"""The ``convert`` pipeline: load -> export -> lint -> verify(source, graph) -> emit -> verify.

Every argument and input file is checked first (``eqdeploy.validate.preflight``). Everything
is written to a staging folder inside the output folder and moved into place only when every
stage succeeded (``eqdeploy.outputs.Staging``), so a failed or interrupted conversion leaves
no half-written artifact, and the previous conversion's files it does not replace go.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from eqdeploy import __version__
from eqdeploy.adapters.plain import discover_plain
from eqdeploy.dfq import DfqOptions, fold_batchnorm, run_dfq_with_reference
from eqdeploy.errors import CheckFailed, EqdeployError
from eqdeploy.export import PlainModel, detect_framework, export_equivariant
from eqdeploy.harness.bench import sha256_file
from eqdeploy.harness.equivariance import (
    equivariance_table,
    interpolated_elements,
    interpolated_table,
    last_call_cache,
    reference_npz,
    relative_error,
)
from eqdeploy.harness.measurable import check_outputs, check_probes_move, check_rows
from eqdeploy.harness.probes import PROBES_SUFFIX
from eqdeploy.harness.rotate import METHOD, disc_mask
from eqdeploy.harness.runtime import open_artifact, read_spec, sidecar_path
from eqdeploy.harness.sysinfo import system_info
from eqdeploy.input_norm import read_input_norm
from eqdeploy.lint import check_input_extent, lint_input_size, lint_message
from eqdeploy.load import load_model
from eqdeploy.normalize import normalize
from eqdeploy.normalize.support import check_support
from eqdeploy.outputs import FILES_KEY, Staging
from eqdeploy.quantize.calibrate import load_calibration
from eqdeploy.quantize.distill import distill_inputs, has_batchnorm
from eqdeploy.quantize.explain import explain
from eqdeploy.quantize.params import QuantParams, compute_qparams
from eqdeploy.quantize.ranges import select_ranges
from eqdeploy.quantize.simulate import simulate_with
from eqdeploy.report.convert_markdown import convert_markdown
from eqdeploy.report.plots import write_convert_plots
from eqdeploy.spec import opaque_layout
from eqdeploy.tap import follow_tap, renamed_params, resolve_tap, truncate
from eqdeploy.targets import TARGETS, target_module
from eqdeploy.validate import Preflight, check_norm, preflight

REPORT_SCHEMA = "eqdeploy.convert"
REPORT_VERSION = 1
EXPORT_TOL = 1e-5  # exported graph vs source, relative to the output's max magnitude
SOURCE_EQUIVARIANCE_TOL = 1e-3  # above this the source model itself is not equivariant
SIMULATION_ROTATED_PROBES = 16  # probes the torch INT8 simulation's group rows run on
EXPLAIN_PROBES = 64  # probes the per-layer INT8 report runs on (two float64 passes each)


@dataclass
class ConvertOptions:
    """What ``eqdeploy convert`` was asked to do."""

    targets: list[str] = field(default_factory=lambda: ["tflite"])
    outdir: Path = Path("eqdeploy-out")
    input_shape: tuple[int, int, int, int] | None = None
    arch: str | None = None
    group: str | None = None
    probes: int = 16
    probe_inputs: Path | None = None  # .npz / image folder of real inputs (else noise)
    seed: int = 0
    allow_misaligned: bool = False
    allow_broken: bool = False  # with --group discovery: report non-equivariant tensors
    int8: bool = False
    per_tensor: bool = False
    float_io: bool = False  # INT8 TFLite: float32 input/output around QUANTIZE/DEQUANTIZE
    calibration: Path | None = None
    data_free: str = "distilled"  # without calibration: "distilled" inputs or "bn-stats"
    input_norm: tuple[list[float], list[float]] | None = None  # pixel mean, std
    dfq: DfqOptions = field(default_factory=DfqOptions)
    tap: str | None = None  # module path whose output gets its own verified artifacts
    mask_radius: float | None = None  # interpolated elements' disc [default: the spec's, 1.0]
    ranges: str = "minmax"  # activation ranges over calibration inputs: minmax|percentile|mse
    explain: bool = False  # per-layer report with sensitivities (one simulation per tensor)
    ort_weights: str = "u8"  # INT8 ONNX weights: "u8" (u8u8 kernels) | "s8" (u8s8, VNNI)
    force: bool = False  # replace files in outdir that no earlier eqdeploy report lists


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


def _runtime_row(name: str, version: str, f, spec, probes, source_out, raw=None,
                 fp32: list[dict] | None = None, y: np.ndarray | None = None,
                 rotated: int | None = None) -> dict:
    """Exact elements (``equivariance``), interpolated ones (``interpolated``; with ``fp32``,
    an FP32 counterpart's interpolated rows, each gets the ratio to it) and fidelity.
    ``y``: ``f(probes)`` if already computed; ``rotated``: the group rows on the first
    ``rotated`` probes only (fidelity always on all)."""
    check_probes_move(spec, probes)
    y = f(probes) if y is None else y
    check_outputs(y, name)
    k = len(probes) if rotated is None else min(rotated, len(probes))
    rows = equivariance_table(f, spec, probes[:k], f_probes=y[:k], raw=raw)
    check_rows(rows, name)
    interp = interpolated_table(f, spec, probes[:k], reference=fp32, where=name)
    scale = float(np.abs(source_out).max()) or 1.0
    classifier = y.ndim == 2 and y.shape[1] > 1
    return {"runtime": name, "version": version, "equivariance": rows, "interpolated": interp,
            "max_abs_err_vs_source": float(np.abs(y - source_out).max()),
            "rel_err_vs_source": float(np.abs(y - source_out).max() / scale),
            "rel_err_vs_source_l2": float(relative_error(y, source_out).max()),
            "top1_agreement_vs_source": float((y.argmax(1) == source_out.argmax(1)).mean())
            if classifier else None}


def _probes(options: ConvertOptions, shape: tuple[int, ...]) -> tuple[np.ndarray, dict]:
    if options.probe_inputs is not None:
        mean, std = options.input_norm or ([0.0], [1.0])
        x = load_calibration(options.probe_inputs, shape, mean, std,
                             role="probe")[: options.probes]
        return x, {"count": len(x), "kind": "file", "path": str(options.probe_inputs)}
    rng = np.random.default_rng(options.seed)
    if options.input_norm is not None:  # pixels uniform in [0, 1], normalized as declared
        m, s_ = (np.asarray(v, np.float32).reshape(1, -1, 1, 1) for v in options.input_norm)
        x = ((rng.random((options.probes, *shape[1:])) - m) / s_).astype(np.float32)
        note = f"seeded uniform-noise pixels, normalized (seed {options.seed})"
    else:
        x = rng.standard_normal((options.probes, *shape[1:])).astype(np.float32)
        note = f"seeded normal noise (seed {options.seed})"
    return x, {"count": len(x), "kind": "synthetic",
               "note": note + "; pass --probes for real inputs"}


def _quantize(plain: PlainModel, options: ConvertOptions, shape, probes, source_out, stage,
              timings) -> dict:
    """DFQ, then the one parameter set for every target, then its torch simulation."""
    t = stage("DFQ: fold BN, equalize per field, absorb high biases, correct bias")
    distill = options.calibration is None and options.data_free == "distilled" \
        and has_batchnorm(plain)
    mean, std = options.input_norm or (None, None)
    input_range = None
    if mean is not None:
        m, s_ = np.asarray(mean, float), np.asarray(std, float)
        input_range = (float(((0 - m) / s_).min()), float(((1 - m) / s_).max()))
    cal, distilled = None, None
    if options.calibration is not None:
        cal = load_calibration(options.calibration, shape, mean or [0.0], std or [1.0])
    elif distill:
        distilled = {}
        stage.detail("distilling inputs from BN statistics")
        cal = distill_inputs(plain, shape, input_range, seed=options.seed, info=distilled,
                             on_step=lambda i, n, loss: stage.detail(
                                 f"distilling inputs: step {i}/{n}, BN loss {loss:.3g}"))
    if options.dfq.enabled:  # inputs, when there are: empirical bias correction
        folded, dfq_report, reference, bn_folded = run_dfq_with_reference(plain, options.dfq,
                                                                          cal)
    else:  # integer kernels have no BN: fold it even without DFQ
        folded, fold_report = fold_batchnorm(plain)
        reference = bn_folded = folded
        dfq_report = {"skipped": "--no-dfq", "passes": {"fold": fold_report}}
    timings["dfq"] = time.perf_counter() - t
    t = stage("INT8 parameters (" + ("calibration" if options.calibration else
                                     "data-free: inputs distilled from BN statistics"
                                     if distill else "data-free, from BN statistics") + ")")
    range_report: dict = {}
    qp = compute_qparams(folded, per_channel=not options.per_tensor, calibration=cal,
                         input_range=input_range,
                         range_selector=select_ranges(options.ranges, range_report)
                         if cal is not None else None)
    if cal is not None and options.ranges != "minmax":
        qp.notes.append(f"activation ranges: {options.ranges} over the calibration inputs "
                        "(per tensor: quantization.ranges)")
    if distilled is not None:
        qp.ranges_from = "distilled"
        qp.notes.append(f"data-free ranges: min/max over {distilled['n']} inputs distilled "
                        f"from BN statistics ({distilled['steps']} Adam steps, seed "
                        f"{options.seed}, BN loss {distilled['bn_loss_start']:.3g} -> "
                        f"{distilled['bn_loss_end']:.3g})")
    sim = simulate_with(folded, qp)
    sim_out = sim.numpy(probes)
    timings["quantize"] = time.perf_counter() - t
    # the parameters' own equivariance, a diagnostic (the artifacts' rows are the proof):
    # float64 fake quantization is the slowest forward, so on the first probes only
    row = _runtime_row("torch INT8 simulation", torch.__version__, sim.numpy, plain.spec,
                       probes, source_out, y=sim_out, rotated=SIMULATION_ROTATED_PROBES)
    from eqdeploy.graph_layouts import output_node

    out_step = qp.act_for(output_node(folded.program.graph_module).name)[0]
    t = stage("per-layer INT8 error report" + (" with sensitivities" if options.explain else ""))
    per_layer = explain(folded, qp, probes[:EXPLAIN_PROBES], reference,
                        sensitivity=options.explain)
    timings["explain"] = time.perf_counter() - t
    return {"model": folded, "params": qp, "dfq_report": dfq_report, "bn_folded": bn_folded,
            "simulation_out": sim_out, "simulation_row": row, "output_step": out_step,
            "per_layer": per_layer, "ranges": range_report or None}


def _int8_fidelity(runner, probes: np.ndarray, sim_out: np.ndarray, out_step: float,
                   fp32_out: np.ndarray) -> dict:
    """Artifact vs the torch simulation of the same parameters and vs the FP32 reference,
    in output quantization steps."""
    y = runner.run(probes)
    step = runner.output_qparams[0] if runner.output_qparams else out_step
    diff = float(np.abs(y - sim_out).max())
    off = float(np.abs(y - fp32_out).max())
    return {"max_abs_err_vs_simulation": diff,
            "max_steps_vs_simulation": None if not step else round(diff / step, 3),
            "max_steps_vs_fp32": None if not step else round(off / step, 3),
            "output_step": step}


@dataclass
class _Emission:
    """One artifact to write per target: what to emit and what to verify it against."""

    file: str
    plain: PlainModel  # FP32 graph (emitted as is without INT8; its spec either way)
    fp32_counterpart: PlainModel  # beside INT8: the BN-folded graph (the INT8 graph's ops)
    quant_model: PlainModel | None  # BN-folded graph for INT8, with ``params``
    params: QuantParams | None
    reference: np.ndarray  # what the artifact is compared with on the probes
    fp32_reference: np.ndarray  # what its FP32 counterpart is compared with
    simulation: np.ndarray | None  # torch INT8 simulation outputs on the probes
    output_step: float
    label: str  # "" for the model, "tap" for its tap


def _taps(plain: PlainModel, tap: str, plain_tap: PlainModel, quant: dict | None,
          probes: np.ndarray) -> list[_Emission]:
    """The tap's emission: cut from the same (quantized) graph with the same parameters."""
    ref = _torch_fn(plain_tap.module())(probes)
    if quant is None:
        return [_Emission("", plain_tap, plain_tap, None, None, ref, ref, None, 0.0, "tap")]
    from eqdeploy.graph_layouts import output_node

    qtap, names = truncate(quant["model"], follow_tap(plain, tap, quant["model"]))
    qp = renamed_params(quant["params"], names)
    step = qp.act_for(output_node(qtap.program.graph_module).name)[0]
    # reference: the FP32 graph after DFQ (equalization rescales the tap per field)
    return [_Emission("", plain_tap, plain_tap, qtap, qp, _torch_fn(qtap.module())(probes), ref,
                      simulate_with(qtap, qp).numpy(probes), step, "tap")]


def _emit_artifact(target: str, path: Path, job: _Emission, probes: np.ndarray,
                   options: ConvertOptions, batch: int) -> list[tuple[dict, dict]]:
    """Write the artifact (+ sidecar + probes) to ``path`` and verify it; for INT8 also its
    FP32 counterpart ``<stem>.fp32<ext>``, verified side by side. Returns (entry, row)s."""
    module = target_module(target)
    t = time.perf_counter()
    if job.quant_model is None:
        info = module.emit(job.plain, path, batch=batch)
        info["seconds"] = round(time.perf_counter() - t, 2)
        return [_verified(target, path, job, info, probes, options, batch, quant=False)]
    extra = {"ort_weights": options.ort_weights} if target == "onnx" else {}
    fp32 = path.with_name(f"{path.stem}.fp32{path.suffix}")
    info, info32 = module.emit_pair(job.quant_model, job.params, path, job.fp32_counterpart,
                                    fp32, batch=batch, float_io=options.float_io, **extra)
    info["fp32_file"], info["fp32_bytes"] = fp32.name, fp32.stat().st_size
    info["size_ratio_vs_fp32"] = round(path.stat().st_size / fp32.stat().st_size, 4)
    pair32 = _verified(target, fp32, job, info32, probes, options, batch, quant=False)
    return [_verified(target, path, job, info, probes, options, batch, quant=True,
                      fp32=pair32[1]), pair32]


def _verified(target: str, path: Path, job: _Emission, info: dict, probes: np.ndarray,
              options: ConvertOptions, batch: int, quant: bool, fp32: dict | None = None
              ) -> tuple[dict, dict]:
    """Open a written artifact, check its manifest, verify it; write sidecar and probes.
    ``fp32``: the verified row of the INT8 artifact's FP32 counterpart (interpolated ratios,
    and the reference errors its probe file carries for ``bench``)."""
    runner = open_artifact(path)
    deployed = job.quant_model.spec if quant else job.fp32_counterpart.spec
    if read_spec(path, runner).to_json() != deployed.to_json():
        raise CheckFailed(f"the manifest read back from {path.name} differs",
                          "report this to eqdeploy")
    reference = job.reference if quant else job.fp32_reference
    raw = last_call_cache(lambda a: runner.run_raw(runner.quantize_input(a))) if quant else None
    run = (lambda a: runner.dequantize_output(raw(a))) if quant else runner.run
    row = _runtime_row(runner.runtime, runner.runtime_version, run, job.plain.spec,
                       probes, reference, raw=raw, fp32=fp32["interpolated"] if fp32 else None)
    row["artifact"] = path.name
    if fp32 is not None and row["interpolated"]:
        row["interpolated_reference"] = fp32["artifact"]
    if job.label:
        row["tap"] = options.tap
    if quant:
        row.update(_int8_fidelity(runner, probes, job.simulation, job.output_step,
                                  reference))
    np.savez(Path(f"{path}{PROBES_SUFFIX}"), inputs=probes, reference=reference,
             **reference_npz((fp32 or row)["interpolated"]))
    art = {"target": target, "file": path.name, "bytes": path.stat().st_size,
           "sha256": sha256_file(path), "runtime": runner.runtime, "batch": batch,
           "precision": "int8" if quant else "fp32", **info}
    if job.label:
        art["tap"] = options.tap
    sidecar_path(path).write_text(json.dumps(  # byte-reproducible: timings go to the report
        {"symmetry": deployed.to_json(), "artifact": {k: v for k, v in art.items()
                                                      if k != "seconds"},
         "probes": f"{path.name}{PROBES_SUFFIX}"}, indent=1))
    return art, row


def _retarget(job: _Emission, name: str, target: str) -> _Emission:
    return dataclasses.replace(job, file=f"{name}.{job.label}{TARGETS[target]}")


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
    """Run the pipeline; returns the report (also written beside the artifacts). Checks
    every argument first; a failed run leaves the output folder as it was."""
    plan = preflight(model_path, options)
    for note in plan.notes:
        progress(note)
    try:
        return _convert(model_path, options, progress, plan)
    except BaseException:
        plan.undo()
        raise


def _convert(model_path: str | Path, options: ConvertOptions,
             progress: Callable[[str], None], plan: Preflight) -> dict:
    model_path = Path(model_path)
    name = model_path.stem
    timings: dict[str, float] = {}

    def stage(label: str):
        progress(label)
        return time.perf_counter()

    stage.detail = getattr(progress, "detail", lambda text: None)  # a live sub-step line

    t = stage(f"load {model_path}")
    loaded = load_model(model_path, options.arch)
    timings["load"] = time.perf_counter() - t
    source = loaded.module
    shape = resolve_input_shape(options, loaded, source)
    for note in plan.against_model(shape, options.input_norm):
        progress(note)
    batch = int(shape[0])
    example = torch.zeros(1, *shape[1:])

    t = stage("export to a plain graph")
    if loaded.program is not None:
        plain = PlainModel(loaded.program, loaded.spec, example, dict(loaded.info or {}))
        source_fn, source_name = _torch_fn(loaded.program.module()), "source (.pt2 graph)"
    else:
        scripted = isinstance(source, torch.jit.ScriptModule)
        if scripted or detect_framework(source) is None:
            if not options.group:
                raise EqdeployError("the model has no e2cnn/escnn field types"
                                    + (" (TorchScript)" if scripted else ""),
                                    "pass --group C4|D4|C8|... so eqdeploy discovers the "
                                    "channel layouts by probing")
            plain = discover_plain(source, example, options.group,
                                   allow_broken=options.allow_broken, tap=options.tap)
            plain.info.setdefault("framework", "plain torch (discovered)")
        else:
            plain = export_equivariant(source, example, options.group)
        source_fn = _torch_fn(source)
        source_name = f"source ({plain.info['framework']})"
    timings["export"] = time.perf_counter() - t
    t = stage("normalize the graph (functional ops, no tuples, canonical shapes)")
    plain = normalize(plain)
    plain.info["lowering_check"] = check_support(plain.program, options.targets)
    timings["normalize"] = time.perf_counter() - t
    spec = plain.spec
    if options.mask_radius is not None:
        disc_mask(*shape[2:], options.mask_radius)  # one-line error for a bad radius
        spec.mask_radius = float(options.mask_radius)

    gm = plain.program.graph_module
    check_input_extent(gm, plain.program.graph_signature.user_inputs[0], shape[2], shape[3])
    lint = lint_input_size(gm, plain.program.graph_signature.user_inputs[0], shape[2], shape[3],
                           group=spec.group)
    progress(lint_message(lint))
    if not lint["exact"] and not options.allow_misaligned:
        raise EqdeployError(lint_message(lint), "pass --input-shape with an exact size, or "
                            "--allow-misaligned to convert anyway")

    norm_from = "--input-norm" if options.input_norm else None
    if options.input_norm is None:
        found = read_input_norm(source, plain.module())
        if found is not None:
            check_norm(found[0], shape[1], f"the input normalization read from {found[1]}")
            options = dataclasses.replace(options, input_norm=found[0])
            norm_from = found[1]
            progress(f"input normalization mean {found[0][0]}, std {found[0][1]} "
                     f"(from {norm_from})")
    probes, probe_info = _probes(options, shape)
    t = stage(f"verify source and exported graph on {len(probes)} probes")
    source_out = source_fn(probes)
    verification = [_runtime_row(source_name, torch.__version__, source_fn, spec, probes,
                                 source_out),
                    _runtime_row("torch.export graph", torch.__version__,
                                 _torch_fn(plain.module()), spec, probes, source_out)]
    timings["verify_graph"] = time.perf_counter() - t
    tap = plain_tap = None
    if options.tap:
        tap = resolve_tap(plain, options.tap)
        plain_tap, _ = truncate(plain, tap)
        row = _runtime_row("torch.export graph", torch.__version__, _torch_fn(plain_tap.module()),
                           plain_tap.spec, probes, _torch_fn(plain_tap.module())(probes))
        verification.append({**row, "tap": options.tap})
        worst_tap = max((r["rel_err_max"] for r in row["equivariance"]), default=0.0)
        if lint["exact"] and worst_tap > SOURCE_EQUIVARIANCE_TOL:
            raise CheckFailed(f"the model is not equivariant at --tap {options.tap}: "
                              f"error {worst_tap:.2e}", "tap an earlier layer")
    worst_src = max(verification[0]["equivariance"], key=lambda r: r["rel_err_max"], default=None)
    if tap and worst_src and worst_src["rel_err_max"] > SOURCE_EQUIVARIANCE_TOL:
        # the head mixes group channels: the output has no action; the tap carries the proof
        out = spec.output
        spec.output = opaque_layout(spec.representations, out.channels, out.spatial)
        plain.info["output_action"] = f"none (verified at --tap {options.tap})"
        for v in verification[:2]:
            v["equivariance"] = v["interpolated"] = []
    elif lint["exact"] and worst_src and worst_src["rel_err_max"] > SOURCE_EQUIVARIANCE_TOL:
        raise CheckFailed(f"the source model is not equivariant: error "
                          f"{worst_src['rel_err_max']:.2e} under {worst_src['element']}",
                          "check that every layer between input and output is an "
                          "equivariant module or acts on each channel alone (or, if the "
                          "head reads group channels on purpose, verify at --tap LAYER)")
    if verification[1]["rel_err_vs_source"] > EXPORT_TOL:
        raise CheckFailed(f"the exported graph differs from the source by "
                          f"{verification[1]['rel_err_vs_source']:.2e}",
                          "report this model to eqdeploy: an adapter is wrong")

    quant = None
    if options.int8:
        quant = _quantize(plain, options, shape, probes, source_out, stage, timings)
        verification.append(quant.pop("simulation_row"))

    taps = _taps(plain, tap, plain_tap, quant, probes) if tap else []
    stager = Staging(options.outdir, name, plan.inputs, options.force)
    with stager as staging:
        artifacts = []
        for target in options.targets:
            main = _Emission(f"{name}{TARGETS[target]}", plain,
                             quant["bn_folded"] if quant else plain,
                             quant["model"] if quant else None,
                             quant["params"] if quant else None, source_out, source_out,
                             quant["simulation_out"] if quant else None,
                             quant["output_step"] if quant else 0.0, "")
            for job in [main, *(_retarget(t, name, target) for t in taps)]:
                stage(f"emit {'INT8 ' if quant else ''}{target} -> "
                          f"{options.outdir / job.file}" + (" (tap)" if job.label else ""))
                for art, row in _emit_artifact(target, staging / job.file, job, probes,
                                               options, batch):
                    verification.append(row)
                    artifacts.append(art)
        report_files = [f"{name}.report.json", f"{name}.report.md"]
        report = {
            "schema": REPORT_SCHEMA, "version": REPORT_VERSION, "eqdeploy": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {"file": str(model_path), "format": loaded.format,
                      "group": spec.group.name,
                      "input_norm": None if norm_from is None else {
                          "mean": options.input_norm[0], "std": options.input_norm[1],
                          "from": norm_from}, **plain.info,
                      "input_shape": list(shape)},  # the artifact's (the trace's is 1,...)
            "lint": lint,
            "probes": probe_info,
            "input_notes": plan.notes,
            "verification": verification,
            "quantization": None if quant is None else {
                "params": quant["params"].to_json(), "dfq": quant["dfq_report"],
                "per_layer": quant["per_layer"], "ranges": quant["ranges"]},
            "artifacts": artifacts,
            "interpolated": {"method": METHOD, "mask_radius": spec.mask_radius,
                             "elements": [e.name for e in interpolated_elements(spec)]},
            "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
            "machine": system_info(),
        }
        report["plots"] = write_convert_plots(report, staging, name)
        report[FILES_KEY] = sorted([*(p.name for p in staging.iterdir()), *report_files])
        (staging / report_files[0]).write_text(json.dumps(report, indent=1))
        (staging / report_files[1]).write_text(convert_markdown(report))
        removed = stager.commit()
    if removed:
        progress(f"removed {len(removed)} file(s) of the previous conversion that this one "
                 f"does not write: {', '.join(removed)}")
    return report
