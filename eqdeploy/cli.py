"""The ``eqdeploy`` command line: thin click commands that parse and delegate.

Only click and numpy are imported at module level, so ``bench``/``check``/``verify`` work on a
device with the base install and one runtime; conversion imports torch lazily.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from types import SimpleNamespace

import click
from click.core import ParameterSource

from eqdeploy import __version__
from eqdeploy.errors import CheckFailed, EqdeployError
from eqdeploy.harness.cli import bench, check
from eqdeploy.toplevel import HandledGroup, debug_option
from eqdeploy.validate import (
    INT8_ONLY,
    check_arch,
    check_mask_radius,
    check_outdir_text,
    parse_norm,
    parse_shape,
)


def _quiet_converters() -> None:
    """Keep the converters' own logging (absl, torch.onnx registry notes) off the terminal;
    eqdeploy prints its own progress lines."""
    import logging
    import os
    import warnings

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GLOG_minloglevel", "3")
    for name in ("", "torch.onnx", "torch.onnx._internal.exporter._registration",
                 "torch.utils._pytree", "torchao"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*training mode.*")
    with contextlib.suppress(ImportError):  # graph-cleanup notes while quantizing
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)


@click.group(cls=HandledGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="eqdeploy")
@debug_option
def main() -> None:
    """Ship group-equivariant CNNs (e2cnn, escnn) to ONNX and TFLite without losing
    their symmetry, and prove it.

    \b
    On the conversion host:   eqdeploy convert model.pt --target all -o out/
    On the device:            eqdeploy bench out/model.tflite
    In CI:                    eqdeploy check out/model.report.json --budget targets/x86-ci.toml

    \b
    Exit status: 0 ok; 1 a check or verification failed (or could not measure);
    2 bad usage or a bad input file; 3 internal error (a bug; --debug shows the traceback);
    130/143 interrupted (SIGINT/SIGTERM).
    """


@main.command(epilog="""\b
Examples:
  eqdeploy convert model.pt                                  # whole pickled model -> TFLite
  eqdeploy convert ckpt.pt --arch mypkg.nets:build_c4 --target all --input-shape 1,3,65,65
  eqdeploy convert escnn_model.pt2 -o out/                   # from 'eqdeploy export'
""")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--target", "target", type=click.Choice(["tflite", "onnx", "all"]),
              default="tflite", show_default=True, help="Artifact format(s) to write.")
@click.option("-o", "--outdir", type=click.Path(file_okay=False), default="eqdeploy-out",
              show_default=True, help="Folder for artifacts, sidecars, probes and the report.")
@click.option("--input-shape", default=None, metavar="N,C,H,W",
              help="Input shape of the artifact (N = its fixed batch). "
                   "[default: 1,C,33,33 with C from the model's input field type]")
@click.option("--arch", default=None, metavar="PKG.MODULE:FACTORY",
              help="Factory building the model for a state-dict checkpoint (loaded with "
                   "weights_only=True: the safe path for untrusted files).")
@click.option("--group", default=None, metavar="NAME",
              help="Symmetry group (C4, D4, C8, ...). e2cnn/escnn models: conversion stops "
                   "if the model's group differs. Plain-PyTorch and TorchScript models: "
                   "required; the channel layouts are discovered by probing.")
@click.option("--allow-broken", is_flag=True,
              help="With --group discovery: report tensors that are not equivariant instead "
                   "of stopping.")
@click.option("--int8", is_flag=True,
              help="Quantize to INT8 (DFQ first, one orbit-shared parameter set for all "
                   "targets; fully-integer TFLite, QDQ ONNX).")
@click.option("--per-tensor", is_flag=True,
              help="INT8 weights with one scale per tensor [default: per channel, equal "
                   "inside each field].")
@click.option("--float-io", is_flag=True,
              help="INT8 TFLite with float32 input and output (a QUANTIZE and a DEQUANTIZE "
                   "op around the integer graph) [default: int8 I/O; QDQ ONNX is always "
                   "float I/O].")
@click.option("--calibration", type=click.Path(exists=False), default=None,
              help="Activation ranges from these inputs (folder of images or .npz; see "
                   "calibration/README.md) [default: data-free, see --data-free].")
@click.option("--data-free", type=click.Choice(["distilled", "bn-stats"]),
              default="distilled", show_default=True,
              help="Without --calibration: min/max over inputs distilled from the BN "
                   "statistics (ZeroQ-style, a few seconds), or ranges propagated "
                   "analytically from them (instant, weaker on heavy-tailed activations).")
@click.option("--input-norm", default=None, metavar="MEAN[,..]:STD[,..]",
              help="Pixel normalization of the input (pixels in [0,1]), e.g. "
                   "0.1307:0.3081; fixes the input's INT8 range and normalizes images. "
                   "[default: read from the model: input_mean/input_std or a Normalize "
                   "attribute, or a leading (x - m) / s in its graph]")
@click.option("--no-dfq", is_flag=True, help="Skip the whole DFQ stage (BN is still folded).")
@click.option("--no-cle", is_flag=True, help="Skip cross-layer equalization.")
@click.option("--no-absorb", is_flag=True, help="Skip high-bias absorption.")
@click.option("--no-bias-correction", is_flag=True, help="Skip analytical bias correction.")
@click.option("--orbit-agnostic", is_flag=True,
              help="Equalize per channel like AIMET (for comparison; may break field "
                   "structure) instead of one scale per field.")
@click.option("--absorb-padded", type=click.Choice(["exact", "measured", "never", "always"]),
              default="exact", show_default=True,
              help="High-bias absorption into a zero-padded conv: exactly, through constant "
                   "channels (else by the measured criterion), only where the measured border "
                   "error is below the rounding noise it removes, never, or always.")
@click.option("--ranges", type=click.Choice(["minmax", "percentile", "mse"]),
              default="minmax", show_default=True,
              help="Activation ranges over the calibration (or distilled) inputs: min/max, "
                   "0.01 percent percentiles, or the clipping with the least INT8 MSE.")
@click.option("--explain", is_flag=True,
              help="Add sensitivities to the per-layer INT8 report: the output SQNR with only "
                   "one tensor, or one layer's weights, quantized (a simulation each).")
@click.option("--ort-weights", type=click.Choice(["u8", "s8"]), default="u8",
              show_default=True,
              help="INT8 ONNX weight encoding (same int8 values and scales): u8 = zero point "
                   "128, ORT's u8u8 kernels, bit-exact on every CPU measured; s8 = zero point "
                   "0, ORT's u8s8 kernels, 1.4-2.3x faster and bit-exact on CPUs with VNNI "
                   "(AVX-512 VNNI / AVX-VNNI) but saturating on AVX2-only x86: check with "
                   "'eqdeploy bench' on the device.")
@click.option("--probes", "probe_inputs", type=click.Path(exists=False), default=None,
              help="Real probe inputs (.npz or image folder) to verify with [default: "
                   "seeded noise].")
@click.option("--num-probes", "n_probes", type=int, default=16, show_default=True,
              help="How many probe inputs verify each artifact (>= 1).")
@click.option("--tap", default=None, metavar="LAYER",
              help="Also emit and verify the network cut at module LAYER (dotted path, e.g. "
                   "features.10): for heads that read group channels without pooling, whose "
                   "logits have no group action. Writes <name>.tap.<ext> beside the model.")
@click.option("--allow-misaligned", is_flag=True,
              help="Convert even if the input size makes the group's exact elements inexact.")
@click.option("--mask-radius", type=float, default=None, metavar="FRACTION",
              help="Disc inside which rotations without an exact pixel action (45, 30 "
                   "degrees...) are measured, as a fraction of the inscribed disc "
                   "[default: 1.0].")
@click.option("--force", is_flag=True,
              help="Replace files in OUTDIR that no earlier eqdeploy report there lists "
                   "(the inputs are never overwritten).")
@debug_option
@click.pass_context
def convert(ctx, model, target, outdir, input_shape, arch, group, int8, per_tensor, float_io,
            calibration, data_free,
            input_norm, no_dfq, no_cle, no_absorb, no_bias_correction, orbit_agnostic,
            absorb_padded, ranges, explain, ort_weights, probe_inputs, n_probes, tap,
            allow_misaligned,
            allow_broken, mask_radius, force):
    """Convert an equivariant MODEL to a plain conv network and write verified artifacts.

    MODEL is a whole pickled model (torch.save(model), pickle/dill: unpickling
    runs code, so only for files you trust), a state-dict checkpoint with --arch, or a .pt2
    written by 'eqdeploy export'. Writes OUTDIR/<name>.<ext>, a sidecar
    <name>.<ext>.eqdeploy.json (the symmetry manifest), <name>.<ext>.probes.npz (probe inputs
    and FP32 reference outputs for 'eqdeploy bench') and <name>.report.json/.md. Every
    argument and input file is checked before the conversion starts; files of an earlier
    conversion of MODEL in OUTDIR that this one does not write are removed.
    """
    from pathlib import Path

    from eqdeploy.validate import preflight

    check_outdir_text(outdir)
    kwargs = dict(targets=["onnx", "tflite"] if target == "all" else [target],
                  outdir=Path(outdir), input_shape=parse_shape(input_shape), arch=arch,
                  group=group, probes=n_probes, allow_misaligned=allow_misaligned,
                  allow_broken=allow_broken, int8=int8, per_tensor=per_tensor,
                  float_io=float_io, calibration=Path(calibration) if calibration else None,
                  data_free=data_free, input_norm=parse_norm(input_norm),
                  probe_inputs=Path(probe_inputs) if probe_inputs else None, tap=tap,
                  force=force, mask_radius=check_mask_radius(mask_radius), ranges=ranges,
                  explain=explain, ort_weights=ort_weights)
    dfq_kwargs = dict(enabled=not no_dfq, cle=not no_cle, absorb=not no_absorb,
                      bias_correction=not no_bias_correction, orbit_agnostic=orbit_agnostic,
                      weights="per_tensor" if per_tensor else "per_channel",
                      absorb_padded=absorb_padded)
    given = [f for f in INT8_ONLY if ctx.get_parameter_source(f[2:].replace("-", "_"))
             in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]
    from eqdeploy.progress import Progress

    progress = Progress()  # stage lines on stderr; live (elapsed, sub-steps) on a terminal
    plan = preflight(model, SimpleNamespace(**kwargs, dfq=SimpleNamespace(**dfq_kwargs)), given)
    try:  # convert() checks again (API callers) and prints what the checks noted
        _quiet_converters()
        from eqdeploy.convert import ConvertOptions
        from eqdeploy.convert import convert as run_convert
        from eqdeploy.dfq import DfqOptions
        from eqdeploy.report.convert_markdown import interpolated_brief

        opts = ConvertOptions(**kwargs, dfq=DfqOptions(**dfq_kwargs))
        report = run_convert(model, opts, progress)
    except BaseException:
        progress.close()
        plan.undo()
        raise
    progress.close()
    int8 = report.get("quantization") is not None
    for v in report["verification"]:
        eq = v["equivariance"]
        worst = max((r["rel_err_max"] for r in eq), default=0.0)
        who = v["runtime"] + (f" @ tap {v['tap']}" if v.get("tap") else "")
        what = v.get("artifact", "graph")
        line = (f"  {who:<24} {what:<22} vs source {v['rel_err_vs_source']:.1e}   "
                + (f"equivariance error {worst:.1e}" if eq else
                   "no exact group action on the output to verify"))
        if int8 and eq:
            line += f"   changed {max(r['changed'] for r in eq)}/{eq[0]['probes']}"
        if int8 and v.get("top1_agreement_vs_source") is not None:
            line += f"   top-1 vs source {v['top1_agreement_vs_source']:.3f}"
        click.echo(line + interpolated_brief(v))
    for a in report["artifacts"]:
        click.echo(f"wrote {Path(outdir) / a['file']} ({a['bytes']} bytes)")
    name = Path(model).stem
    click.echo(f"report: {Path(outdir) / (name + '.report.md')} "
               f"(+ {name}.report.json)")


@main.command("export", epilog="""\b
Example (in the training environment, e.g. escnn with numpy 1):
  eqdeploy export model.pt -o model.pt2 --input-shape 1,3,65,65
  eqdeploy convert model.pt2 --target all          # then, where the converters live
""")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="The .pt2 to write [default: MODEL with suffix .pt2].")
@click.option("--input-shape", default=None, metavar="N,C,H,W",
              help="Input shape to trace at [default: 1,C,33,33].")
@click.option("--arch", default=None, metavar="PKG.MODULE:FACTORY",
              help="Factory for a state-dict checkpoint (weights_only=True).")
@debug_option
def export_cmd(model, output, input_shape, arch):
    """Export an e2cnn/escnn MODEL to a plain-graph .pt2 with its symmetry manifest.

    Needs only torch and the model's library: run it where the model trains, then
    'eqdeploy convert MODEL.pt2' in the conversion environment (no e2cnn/escnn needed).
    """
    from pathlib import Path

    from eqdeploy.outputs import check_destination

    shape_arg = parse_shape(input_shape)
    check_arch(arch)
    if not Path(model).is_file():
        raise EqdeployError(f"{model} does not exist", "pass the path of a saved model")
    if output is not None:
        check_outdir_text(output)
    out = Path(output) if output else Path(model).with_suffix(".pt2")
    created = check_destination(out, "-o", {"model": Path(model)})
    try:
        import torch

        from eqdeploy.convert import ConvertOptions, resolve_input_shape
        from eqdeploy.export import export_equivariant
        from eqdeploy.export_pt2 import save_pt2
        from eqdeploy.load import load_model

        loaded = load_model(model, arch)
        if loaded.module is None:
            raise EqdeployError(f"{model} is already an exported program",
                                "pass it to 'eqdeploy convert' directly")
        shape = resolve_input_shape(ConvertOptions(input_shape=shape_arg), loaded,
                                    loaded.module)
        plain = export_equivariant(loaded.module, torch.zeros(1, *shape[1:]))
        plain.info["input_shape"] = list(shape)
        save_pt2(plain, out)
    except BaseException:
        for d in created:
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    click.echo(f"wrote {out} (group {plain.spec.group.name}, input {tuple(shape)})")


@main.command(epilog="""\b
Example:
  eqdeploy verify out/model.tflite
""")
@click.argument("artifact", type=click.Path(dir_okay=False))
@click.option("--probes", "probes", type=click.Path(dir_okay=False), default=None,
              help="Probe .npz [default: ARTIFACT.probes.npz written by convert].")
@click.option("--json", "json_out", is_flag=True, help="Print the result as JSON.")
@debug_option
def verify(artifact, probes, json_out):
    """Verify an ARTIFACT's equivariance (per exact group element) and its agreement with
    the FP32 reference outputs, in its runtime. Exits 1 if the probes' outputs changed
    under a group element by more than 1e-4 relative (FP32) or any probe changed (INT8),
    or if nothing could be compared (no exact group action on the output).
    """
    from eqdeploy.harness.bench import run_bench

    report = run_bench(artifact, runs=1, warmup=0, probes_path=probes)
    eq = report["equivariance"]
    if json_out:
        click.echo(json.dumps({"equivariance": eq, "fidelity": report.get("fidelity")},
                              indent=1))
    else:
        for r in eq["rows"]:
            click.echo(f"  {r['element']:<6} rel. error {r['rel_err_max']:.2e}   "
                       f"changed {r['changed']}/{r['probes']}")
        for r in (eq.get("interpolated") or {}).get("rows", []):  # measured, not gated here
            ratio = r.get("ratio_vs_fp32")
            click.echo(f"  {r['element']:<6} rel. error {r['rel_err_max']:.2e}   interpolated "
                       f"{r['degrees']:g} deg" + ("" if ratio is None else f", {ratio:.2f} x FP32"))
        fid = report.get("fidelity")
        if fid:
            click.echo(f"  vs FP32 reference: rel. error {fid['rel_err_max']:.2e}")
    rows = [r for r in eq["rows"] if r.get("exact", True)]  # interpolated: measured only
    if not rows:
        raise CheckFailed(f"{artifact}: nothing to verify ({eq.get('note') or 'no rows'})",
                          "verify an artifact whose output has an exact group action (e.g. "
                          "the .tap artifact); 'eqdeploy bench' still measures latency and "
                          "fidelity")
    integer = report["artifact"]["output_dtype"] != "float32"
    worst = max(rows, key=lambda r: (r["changed"], r["rel_err_max"]) if integer
                else r["rel_err_max"])
    ok = worst["changed"] == 0 if integer else worst["rel_err_max"] <= 1e-4
    if not ok:
        raise CheckFailed(f"equivariance NOT verified: under {worst['element']} rel. error "
                          f"{worst['rel_err_max']:.2e}, {worst['changed']}/{worst['probes']} "
                          "probes changed", "see the rows above; re-run 'eqdeploy convert' "
                          "and compare its report")
    click.echo("equivariance verified")


main.add_command(bench)
main.add_command(check)


def fast_exit(code: int) -> None:
    """Flush and leave without the interpreter's teardown: once a conversion's files are
    written and closed, unloading torch, jax and litert costs 2-3 s of CPU for nothing."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run() -> None:
    """The ``eqdeploy`` console entry point: ``main``, then ``fast_exit`` when the command
    loaded torch (a conversion or export); device commands (numpy + runtime) exit normally."""
    try:
        main()
    except SystemExit as e:
        code = e.code
    else:  # pragma: no cover - click always ends with SystemExit in standalone mode
        code = 0
    if "torch" in sys.modules and (code is None or isinstance(code, int)):
        fast_exit(code or 0)
    sys.exit(code)


if __name__ == "__main__":
    run()
