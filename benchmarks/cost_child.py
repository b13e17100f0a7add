"""One measured conversion in a fresh process (run by ``conversion_cost.py``, not by hand).

    python cost_child.py eqdeploy RESULT.json -- <eqdeploy convert arguments>
    python cost_child.py bare RESULT.json MODEL TWIN_STATE CALIB.npy OUTDIR C,H,W

``eqdeploy``: the ``eqdeploy convert`` command itself, in process (``eqdeploy.cli.main``),
its stages marked from its own progress lines (the report phase from the call that starts
it). ``bare``: the stock steps on the hand-written twin, each one a stage: load the twin,
``torch.export`` (once; reused by ONNX and PT2E), ``torch.onnx.export`` FP32,
``litert_torch.convert`` FP32, ORT ``quantize_static`` (QDQ, per channel, on the calibration
inputs), litert-torch PT2E INT8 (calibrated on the same inputs). Both write the probe's
measurements (cost_probe.Probe) to RESULT.json.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cost_probe import Probe  # noqa: E402

STAGES = [("load ", "load"), ("export to a plain graph", "export"),
          ("normalize the graph", "normalize (incl. lowering check)"),
          ("input size ", "lint, input norm, probes"),
          ("verify source and exported graph", "verify_graph"),
          ("DFQ:", "dfq"), ("INT8 parameters", "quantize (params, simulation)"),
          ("per-layer INT8 error report", "explain (per-layer INT8 report)"),
          ("emit INT8 onnx", "emit+verify onnx (INT8 + FP32)"),
          ("emit INT8 tflite", "emit+verify tflite (INT8 + FP32)"),
          ("emit onnx", "emit+verify onnx"), ("emit tflite", "emit+verify tflite")]


def stage_of(message: str) -> str | None:
    for prefix, label in STAGES:
        if message.startswith(prefix):
            return label + (" (tap)" if message.endswith("(tap)") else "")
    return None  # a note inside the current stage


def run_eqdeploy(probe: Probe, args: list[str]) -> None:
    import click

    echo = click.echo

    import eqdeploy.progress

    stage_line = eqdeploy.progress.Progress.__call__

    def marking_stage(self, msg: str) -> None:  # the convert command's stage lines
        label = stage_of(msg)
        if label:
            probe.clock.mark(label)
        return stage_line(self, msg)

    def marking_echo(message=None, *a, **k):  # the summary printed after the stages
        if probe.clock.stage != "cli summary":
            probe.clock.mark("cli summary")
        return echo(message, *a, **k)

    eqdeploy.progress.Progress.__call__ = marking_stage
    click.echo = marking_echo
    probe.ledger.mark_on("eqdeploy.convert", "system_info", "report (json, markdown, moves)")
    probe.clock.mark("cli startup (click, eqdeploy.cli, torch)")
    from eqdeploy.cli import main

    main(args, standalone_mode=False)


def run_bare(probe: Probe, model: str, state: str, calib_path: str, outdir: str,
             chw: str) -> None:
    probe.clock.mark("load twin (torch, state dict)")
    import cost_twins
    import numpy as np
    import torch

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    twin = cost_twins.TWINS[model]().eval()
    twin.load_state_dict(torch.load(state, weights_only=True))
    calib = np.load(calib_path).astype(np.float32)
    example = torch.zeros(1, *(int(v) for v in chw.split(",")))

    probe.clock.mark("torch.export")
    ep = torch.export.export(twin, (example,))

    probe.clock.mark("onnx FP32 (torch.onnx.export)")
    with contextlib.redirect_stdout(io.StringIO()):
        onnx_program = torch.onnx.export(ep, (example,), dynamo=True, external_data=False,
                                         opset_version=18, input_names=["input"],
                                         output_names=["output"])
    onnx_program.save(str(out / f"{model}.fp32.onnx"))

    probe.clock.mark("tflite FP32 (litert_torch.convert)")
    import litert_torch

    with contextlib.redirect_stdout(io.StringIO()):
        litert_torch.convert(twin, (example,)).export(str(out / f"{model}.fp32.tflite"))

    probe.clock.mark("onnx INT8 (ORT quantize_static)")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter([{"input": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    with contextlib.redirect_stdout(io.StringIO()):
        quantize_static(str(out / f"{model}.fp32.onnx"), str(out / f"{model}.onnx"), Reader(),
                        quant_format=QuantFormat.QDQ, per_channel=True)

    probe.clock.mark("tflite INT8 (litert PT2E)")
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True))
    with contextlib.redirect_stdout(io.StringIO()):
        prepared = prepare_pt2e(ep.module(), quantizer)
        with torch.no_grad():
            for i in range(len(calib)):
                prepared(torch.from_numpy(calib[i:i + 1]))
        converted = convert_pt2e(prepared, fold_quantize=False)
        litert_torch.convert(converted, (example,),
                             quant_config=QuantConfig(pt2e_quantizer=quantizer)
                             ).export(str(out / f"{model}.tflite"))


def main() -> None:
    mode, result = sys.argv[1], Path(sys.argv[2])
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    probe = Probe(eqdeploy=mode == "eqdeploy")
    probe.install()
    error = None
    try:
        if mode == "eqdeploy":
            run_eqdeploy(probe, sys.argv[sys.argv.index("--") + 1:])
        else:
            run_bare(probe, *sys.argv[3:8])
    except BaseException as e:  # noqa: BLE001 - recorded; the parent fails the run
        error = f"{type(e).__name__}: {e}"[:500]
    data = probe.result()
    data["error"] = error
    data["mode"] = mode
    result.write_text(json.dumps(data))
    if mode == "eqdeploy":  # what the console entry point does after a conversion
        from eqdeploy.cli import fast_exit

        fast_exit(1 if error else 0)
    sys.exit(1 if error else 0)


if __name__ == "__main__":
    main()
