"""INT8 side by side on the same trained models: what a user would do vs eqdeploy.

For each reference model (trained on rotated MNIST, bundled weights), on the same probes
(held-out MNIST digits) and the same calibration digits:
- stock ORT: the plain FP32 ONNX graph -> ``onnxruntime.quantization.quantize_static`` with its
  defaults (QDQ, QInt8, per-tensor weights, MinMax calibration);
- stock LiteRT: litert-torch's PT2E quantizer (per-channel, histogram observers) calibrated
  on the same digits;
- eqdeploy INT8 TFLite and ONNX: DFQ + one orbit-shared parameter set forced into both.
Reported per artifact: probes whose output changed at all under each exact group element,
max relative equivariance error, top-1 agreement with FP32, size. Writes
benchmarks/results/int8_vs_stock.{json,md} with machine info.

    .venv/bin/python benchmarks/int8_vs_stock.py
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from eqdeploy.convert import ConvertOptions, convert  # noqa: E402
from eqdeploy.datasets import load_mnist29  # noqa: E402
from eqdeploy.export import export_equivariant  # noqa: E402
from eqdeploy.harness.equivariance import equivariance_table  # noqa: E402
from eqdeploy.harness.runtime import open_artifact  # noqa: E402
from eqdeploy.harness.sysinfo import system_info  # noqa: E402
from eqdeploy.models import reference as R  # noqa: E402
from eqdeploy.targets import onnx_target, tflite_target  # noqa: E402

OUT = Path(__file__).parent / "results"
MODELS = ["c4_cnn", "c8_residual", "d4_cnn"]


def stock_ort(fp32_onnx: Path, calib: np.ndarray, out: Path) -> Path:
    """``quantize_static`` with its defaults, calibrated on ``calib`` one input at a time."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    name = onnx.load(str(fp32_onnx), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{name: calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(fp32_onnx), str(out), Reader())
    return out


def stock_litert(plain, calib: np.ndarray, out: Path) -> Path:
    return stock_litert_module(plain.static_program(1).module(), plain.example[:1], calib, out)


def stock_litert_module(module: torch.nn.Module, example: torch.Tensor, calib: np.ndarray,
                        out: Path) -> Path:
    """litert-torch's stock PT2E INT8 (per-channel symmetric weights), calibrated on
    ``calib``; ``module`` a ``torch.export``-ed graph module at batch 1."""
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    q = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with contextlib.redirect_stdout(io.StringIO()):
        prepared = prepare_pt2e(module, q)
        for i in range(len(calib)):
            prepared(torch.from_numpy(calib[i:i + 1]))
        converted = convert_pt2e(prepared, fold_quantize=False)
        litert_torch.convert(converted, (example,),
                             quant_config=QuantConfig(pt2e_quantizer=q)).export(str(out))
    return out


def measure(path: Path, spec, probes: np.ndarray, fp32_out: np.ndarray) -> dict:
    r = open_artifact(path)
    integer = r.input_dtype != "float32" or r.output_dtype != "float32"
    raw = (lambda a: r.run_raw(r.quantize_input(a))) if integer else None
    y = r.run(probes)
    rows = equivariance_table(r.run, spec, probes, f_probes=y, raw=raw)
    return {"artifact": path.name, "runtime": r.runtime, "bytes": path.stat().st_size,
            "changed": {row["element"]: row["changed"] for row in rows},
            "changed_max": max(row["changed"] for row in rows),
            "equivariance_error_max": max(row["rel_err_max"] for row in rows),
            "top1_agreement_vs_fp32": float((y.argmax(1) == fp32_out.argmax(1)).mean())}


def main() -> None:
    results = {"machine": system_info(), "torch": torch.__version__, "models": {}}
    for name in MODELS:
        n = R.EXACT_SIZES[name]
        probes, _ = load_mnist29("test", size=n)
        probes = probes[:128]
        calib, _ = load_mnist29("calib", size=n)
        calib = calib[:128]
        model = getattr(R, name)()
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            plain = export_equivariant(model, torch.zeros(1, 1, n, n))
            with torch.no_grad():
                fp32_out = model(torch.from_numpy(probes)).numpy()
            rows = []
            fp32_onnx = tmp / f"{name}.fp32.onnx"
            onnx_target.emit(plain, fp32_onnx)
            fp32_tfl = tmp / f"{name}.fp32.tflite"
            tflite_target.emit(plain, fp32_tfl)
            rows.append({"variant": "FP32 ONNX", **measure(fp32_onnx, plain.spec, probes,
                                                          fp32_out)})
            rows.append({"variant": "FP32 TFLite", **measure(fp32_tfl, plain.spec, probes,
                                                            fp32_out)})
            t = time.perf_counter()
            stock = stock_ort(fp32_onnx, calib, tmp / f"{name}.stock.onnx")
            rows.append({"variant": "stock ORT quantize_static", "seconds":
                         round(time.perf_counter() - t, 1),
                         **measure(stock, plain.spec, probes, fp32_out)})
            t = time.perf_counter()
            stock_t = stock_litert(plain, calib, tmp / f"{name}.stock.tflite")
            rows.append({"variant": "stock litert-torch PT2E", "seconds":
                         round(time.perf_counter() - t, 1),
                         **measure(stock_t, plain.spec, probes, fp32_out)})
            ckpt = tmp / f"{name}.pt"
            torch.save(model.state_dict(), ckpt)
            cal_file = tmp / "calib.npz"
            np.savez(cal_file, calib=calib)
            for label, cal, data_free in (
                    ("eqdeploy data-free (distilled, default)", None, "distilled"),
                    ("eqdeploy data-free (bn-stats)", None, "bn-stats"),
                    ("eqdeploy calibrated", cal_file, "distilled")):
                t = time.perf_counter()
                targets = ["tflite", "onnx"] if _onnx_int8_available() else ["tflite"]
                outdir = tmp / label.split(" (")[0].replace(" ", "_") / data_free
                convert(ckpt, ConvertOptions(
                    targets=targets, outdir=outdir, input_shape=(1, 1, n, n),
                    arch=f"eqdeploy.models.reference:{name}", int8=True, calibration=cal,
                    data_free=data_free, input_norm=([0.1307], [0.3081]), probes=8))
                secs = round(time.perf_counter() - t, 1)
                for target in targets:
                    art = outdir / f"{name}.{target}"
                    spec = plain.spec
                    rows.append({"variant": f"{label} {target}", "convert_seconds": secs,
                                 **measure(art, spec, probes, fp32_out)})
        results["models"][name] = rows
        print(name, file=sys.stderr)
        for row in rows:
            print(f"  {row['variant']:<44} changed {row['changed_max']:>3}/{len(probes)} "
                  f"err {row['equivariance_error_max']:.1e} top1 "
                  f"{row['top1_agreement_vs_fp32']:.3f} {row['bytes']} B", file=sys.stderr)
    OUT.mkdir(exist_ok=True)
    (OUT / "int8_vs_stock.json").write_text(json.dumps(results, indent=1))
    (OUT / "int8_vs_stock.md").write_text(markdown(results))


def _onnx_int8_available() -> bool:
    try:
        import eqdeploy.targets.onnx_int8  # noqa: F401
    except ImportError:
        return False
    return True


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# INT8: stock quantizers vs eqdeploy (same models, probes, calibration)", "",
             f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores, ISA "
             f"{[k for k, v in m.get('isa', {}).items() if v]}; torch {results['torch']}.",
             "Probes: 128 held-out MNIST digits; calibration: 128 other digits.", "",
             "| model | variant | changed (max over elements) | equiv. error | top-1 vs FP32 |"
             " bytes |", "|---|---|---|---|---|---|"]
    for name, rows in results["models"].items():
        for r in rows:
            lines.append(f"| {name} | {r['variant']} | {r['changed_max']} "
                         f"({', '.join(f'{k}:{v}' for k, v in r['changed'].items())}) | "
                         f"{r['equivariance_error_max']:.1e} | "
                         f"{r['top1_agreement_vs_fp32']:.3f} | {r['bytes']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
