"""Deploy targets by name; each module has ``emit(plain, path, batch) -> dict`` (artifact info),
``emit_int8(plain, qp, path, batch, ...)`` and ``emit_pair`` (INT8 + its FP32 counterpart).

Targets import their converters lazily, so listing them costs nothing.
"""

from __future__ import annotations

import importlib

TARGETS = {"onnx": ".onnx", "tflite": ".tflite"}


def target_module(name: str):
    """The module implementing target ``name`` (``onnx`` or ``tflite``)."""
    if name not in TARGETS:
        raise ValueError(f"unknown target {name!r}")
    return importlib.import_module(f"eqdeploy.targets.{name}_target")
