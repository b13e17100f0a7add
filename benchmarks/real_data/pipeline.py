"""Conversions: eqdeploy (``eqdeploy.convert.convert``, timed per stage) and the stock paths
a user would take instead (e2cnn ``.export()`` -> ``torch.onnx`` -> ORT ``quantize_static``
defaults; litert-torch stock PT2E), on the same trained model and calibration images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from eqdeploy.convert import ConvertOptions, convert
from eqdeploy.dfq import DfqOptions

from .models import ModelDef

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/
from int8_vs_stock import stock_litert_module, stock_ort  # noqa: E402

# Table 2's INT8 schemes as ``convert`` options (per-channel = the eqdeploy default).
SCHEMES = {
    "per-tensor naive": dict(per_tensor=True, dfq=DfqOptions(enabled=False)),
    "per-tensor orbit-agnostic DFQ": dict(
        per_tensor=True, dfq=DfqOptions(orbit_agnostic=True, weights="per_tensor")),
    "per-tensor block-aware DFQ": dict(per_tensor=True, dfq=DfqOptions(weights="per_tensor")),
    "per-channel (default)": {},
}


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class StageMeter:
    """``convert``'s progress callback: wall time, CPU time and peak RSS of every stage."""

    def __init__(self) -> None:
        self.stages: list[dict] = []
        self._open: tuple[str, float, float] | None = None
        self.peak_resettable = _reset_peak()
        self.baseline_rss_mb = (_status_kb("VmRSS") or 0) / 1024

    def __call__(self, label: str) -> None:
        self.close()
        if label.startswith("input size"):  # the lint's message, not a stage
            self.stages.append({"stage": label, "wall_s": 0.0, "cpu_s": 0.0})
            return
        _reset_peak()
        self._open = (label, time.perf_counter(), time.process_time())

    def close(self) -> None:
        if self._open is None:
            return
        label, t, c = self._open
        peak = _status_kb("VmHWM")
        self.stages.append({"stage": label, "wall_s": round(time.perf_counter() - t, 2),
                            "cpu_s": round(time.process_time() - c, 2),
                            "peak_rss_mb": None if peak is None or not self.peak_resettable
                            else round(peak / 1024, 1)})
        self._open = None


@dataclass
class Conversion:
    report: dict
    outdir: Path
    name: str
    wall_s: float
    cpu_s: float
    stages: list[dict] = field(default_factory=list)
    baseline_rss_mb: float = 0.0

    def artifact(self, target: str, fp32: bool = False) -> Path:
        ext = {"onnx": ".onnx", "tflite": ".tflite"}[target]
        return self.outdir / f"{self.name}{'.fp32' if fp32 else ''}{ext}"


def save_model(model: torch.nn.Module, path: Path) -> Path:
    """The whole module, pickled the way e2cnn users must (dill)."""
    import dill

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path, pickle_module=dill)
    return path


def eqdeploy_convert(model_file: Path, mdef: ModelDef, outdir: Path, size: int,
                     norm: tuple[float, float], calibration: Path | None,
                     targets: list[str], probes: int = 8, channels: int = 1,
                     **overrides) -> Conversion:
    """One ``convert(..., int8=True)`` (writes INT8 and FP32 artifacts), timed per stage."""
    opts = ConvertOptions(targets=targets, outdir=outdir, input_shape=(1, channels, size, size),
                          group=mdef.group, int8=True, calibration=calibration,
                          allow_misaligned=mdef.allow_misaligned,
                          input_norm=([norm[0]] * channels, [norm[1]] * channels),
                          probes=probes)
    opts = dataclasses.replace(opts, **overrides)
    meter = StageMeter()
    t, c = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        report = convert(model_file, opts, progress=meter)
    meter.close()
    return Conversion(report, outdir, model_file.stem, round(time.perf_counter() - t, 2),
                      round(time.process_time() - c, 2), meter.stages, meter.baseline_rss_mb)


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {(text[0] if text else '')[:240]}"


def _timed(out: dict, name: str, make) -> Path | None:
    """``out[name]`` = the artifact ``make()`` wrote and its seconds, or the one-line error."""
    t = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            path = make()
    except Exception as e:  # noqa: BLE001 - a stock converter failing is a result
        out[name] = {"error": one_line(e), "seconds": round(time.perf_counter() - t, 2)}
        return None
    out[name] = {"path": path, "seconds": round(time.perf_counter() - t, 2)}
    return path


def stock_paths(module: torch.nn.Module, example: torch.Tensor, calib: np.ndarray,
                outdir: Path) -> dict[str, dict]:
    """FP32 and stock INT8 artifacts of a plain-torch ``module`` (e2cnn: ``stock_export``):
    ``torch.onnx`` -> ORT ``quantize_static`` defaults; litert-torch FP32 and stock PT2E.
    A path that fails is recorded with its error, not raised."""
    import litert_torch

    outdir.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    out: dict[str, dict] = {}

    def onnx_fp32() -> Path:
        path = outdir / "stock.fp32.onnx"
        torch.onnx.export(module, (example,), str(path), dynamo=True, external_data=False)
        return path

    def tflite_fp32() -> Path:
        path = outdir / "stock.fp32.tflite"
        litert_torch.convert(module, (example,)).export(str(path))
        return path

    fp32 = _timed(out, "stock ORT FP32", onnx_fp32)
    if fp32 is not None:
        _timed(out, "stock ORT quantize_static",
               lambda: stock_ort(fp32, calib, outdir / "stock.int8.onnx"))
    _timed(out, "stock LiteRT FP32", tflite_fp32)
    _timed(out, "stock litert-torch PT2E", lambda: stock_litert_module(
        torch.export.export(module, (example,)).module(), example, calib,
        outdir / "stock.int8.tflite"))
    return out
