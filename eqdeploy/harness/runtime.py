"""Open an artifact in an edge runtime and run batches through it (numpy + runtime only).

``.tflite`` runs in ai-edge-litert, else tflite-runtime; ``.onnx`` in onnxruntime. Models
are exported with a fixed batch size; ``Runner.run`` splits or pads any batch to it.
Integer I/O (int8/uint8) is quantized/dequantized with the artifact's own parameters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eqdeploy.errors import EqdeployError
from eqdeploy.spec import SCHEMA, SymmetrySpec

SIDECAR_SUFFIX = ".eqdeploy.json"


def sidecar_path(artifact: str | Path) -> Path:
    return Path(f"{artifact}{SIDECAR_SUFFIX}")


@dataclass
class Runner:
    """One loaded artifact: ``run`` maps float ``(N, ...)`` inputs to float outputs."""

    path: Path
    runtime: str
    runtime_version: str
    batch: int
    input_shape: tuple[int, ...]
    input_dtype: str
    output_dtype: str
    threads: int | None
    _invoke: Any = field(repr=False)
    input_qparams: tuple[float, int] | None = None
    output_qparams: tuple[float, int] | None = None
    manifest: str | None = None  # the embedded symmetry manifest (JSON), read at open

    def run_raw(self, x: np.ndarray) -> np.ndarray:
        """Run inputs already in the artifact's input dtype; returns its raw outputs."""
        outs = []
        for i in range(0, len(x), self.batch):
            chunk = x[i:i + self.batch]
            n = len(chunk)
            if n < self.batch:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch - n, 0)])
            outs.append(self._invoke(np.ascontiguousarray(chunk))[:n])
        return np.concatenate(outs)

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        if self.input_qparams is None:
            return x.astype(self.input_dtype)
        scale, zp = self.input_qparams
        info = np.iinfo(self.input_dtype)
        return np.clip(np.round(x / scale) + zp, info.min, info.max).astype(self.input_dtype)

    def dequantize_output(self, y: np.ndarray) -> np.ndarray:
        if self.output_qparams is None:
            return y.astype(np.float32)
        scale, zp = self.output_qparams
        return ((y.astype(np.float32) - zp) * scale).astype(np.float32)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Float in, float out."""
        return self.dequantize_output(self.run_raw(self.quantize_input(x)))


def _tflite_interpreter_cls() -> tuple[Any, str, str]:
    try:
        from ai_edge_litert import interpreter as litert

        return litert.Interpreter, "ai-edge-litert", _version("ai-edge-litert")
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as tfl_rt

        return tfl_rt.Interpreter, "tflite-runtime", _version("tflite-runtime")
    except ImportError:
        raise EqdeployError("no TFLite runtime is installed",
                            "pip install ai-edge-litert (or tflite-runtime on older devices)"
                            ) from None


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


def _qparams(detail: dict) -> tuple[float, int] | None:
    scale, zp = detail.get("quantization", (0.0, 0))
    return (float(scale), int(zp)) if scale else None


def _open_tflite(path: Path, threads: int | None) -> Runner:
    cls, name, ver = _tflite_interpreter_cls()
    try:
        interp = cls(model_path=str(path), num_threads=threads)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise EqdeployError(f"{path} is not a valid TFLite model ({str(e).splitlines()[0]})",
                            "re-run 'eqdeploy convert' to rebuild it") from None
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

    def invoke(x: np.ndarray) -> np.ndarray:
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        return interp.get_tensor(out["index"]).copy()

    shape = tuple(int(s) for s in inp["shape"])
    return Runner(path, name, ver, shape[0], shape, np.dtype(inp["dtype"]).name,
                  np.dtype(out["dtype"]).name, threads, invoke, _qparams(inp), _qparams(out),
                  _safely(_embedded_tflite_spec, path))


def _open_onnx(path: Path, threads: int | None) -> Runner:
    try:
        import onnxruntime as ort
    except ImportError:
        raise EqdeployError("onnxruntime is not installed", "pip install onnxruntime") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    try:
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises several unrelated types
        raise EqdeployError(f"{path} is not a valid ONNX model ({str(e).splitlines()[0]})",
                            "re-run 'eqdeploy convert' to rebuild it") from None
    inp, out = sess.get_inputs()[0], sess.get_outputs()[0]
    dtypes = {"tensor(float)": "float32", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}

    def invoke(x: np.ndarray) -> np.ndarray:
        return sess.run([out.name], {inp.name: x})[0]

    shape = tuple(int(s) if isinstance(s, int) else 1 for s in inp.shape)
    return Runner(path, "onnxruntime", ort.__version__, shape[0], shape,
                  dtypes.get(inp.type, "float32"), dtypes.get(out.type, "float32"), threads,
                  invoke, manifest=sess.get_modelmeta().custom_metadata_map.get(SCHEMA))


def open_artifact(path: str | Path, threads: int | None = None) -> Runner:
    """Load ``path`` (.tflite or .onnx) in the matching runtime."""
    path = Path(path)
    if not path.is_file():
        raise EqdeployError(f"{path} does not exist", "pass the path of a .tflite or .onnx file")
    if path.suffix == ".tflite":
        return _open_tflite(path, threads)
    if path.suffix == ".onnx":
        return _open_onnx(path, threads)
    raise EqdeployError(f"{path} is neither .tflite nor .onnx",
                        "pass an artifact written by 'eqdeploy convert'")


def _embedded_tflite_spec(path: Path) -> str | None:
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        return None
    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    for i in range(model.MetadataLength()):
        md = model.Metadata(i)
        if md.Name() and md.Name().decode() == SCHEMA:
            return model.Buffers(md.Buffer()).DataAsNumpy().tobytes().decode()
    return None


def _embedded_onnx_spec(path: Path) -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.get_modelmeta().custom_metadata_map.get(SCHEMA)


def _safely(read, path: Path) -> str | None:
    try:
        return read(path)
    except Exception:  # noqa: BLE001 - a damaged manifest falls back to the sidecar
        return None


def read_spec(path: str | Path, runner: Runner | None = None) -> SymmetrySpec:
    """The SymmetrySpec embedded in an artifact, else from its sidecar file.

    Pass the artifact's open ``runner`` to reuse the manifest read when it was loaded.
    """
    path = Path(path)
    if runner is not None:
        text = runner.manifest
    elif path.suffix == ".tflite":
        text = _safely(_embedded_tflite_spec, path)
    elif path.suffix == ".onnx":
        text = _safely(_embedded_onnx_spec, path)
    else:
        text = None
    if text is None and sidecar_path(path).is_file():
        try:
            text = json.dumps(json.loads(sidecar_path(path).read_text())["symmetry"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise EqdeployError(f"sidecar {sidecar_path(path)} is not an eqdeploy manifest "
                                f"({type(e).__name__}: {str(e)[:100]})",
                                "re-run 'eqdeploy convert' to rewrite it") from None
    if text is None:
        raise EqdeployError(f"{path} carries no symmetry manifest and has no sidecar",
                            f"keep {sidecar_path(path).name} beside it or re-run 'eqdeploy "
                            "convert'")
    return SymmetrySpec.loads(text)
