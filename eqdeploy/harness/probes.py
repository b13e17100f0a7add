"""Probe inputs for ``bench``: a given ``.npz``, else the one bundled with the artifact, else noise.

A probe file is an ``.npz`` with ``inputs`` (else ``test``, else ``calib``, as ``convert
--probes`` reads it; float, ``(N, C, H, W)``: the model's float input, before any
quantization), optionally ``reference`` (the FP32 source model's outputs for them)
and ``labels`` (int, ``(N,)``); ``eqdeploy convert`` also stores the FP32 reference's
per-probe interpolated errors (``interp_elements``, ``interp_reference_err``; see
``harness/equivariance.py``). ``eqdeploy convert`` writes ``<artifact>.probes.npz``.
Synthetic probes (seeded normal noise) are the last resort and are labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eqdeploy.errors import EqdeployError
from eqdeploy.harness.equivariance import reference_rows
from eqdeploy.input_arrays import check_inputs, pick_key, read_arrays

PROBES_SUFFIX = ".probes.npz"
SYNTHETIC_COUNT = 16
SYNTHETIC_SEED = 0


@dataclass
class Probes:
    inputs: np.ndarray  # float32 (N, ...)
    reference: np.ndarray | None  # FP32 source-model outputs for ``inputs``
    labels: np.ndarray | None  # int64 (N,)
    source: str  # "file" | "bundled" | "synthetic"
    path: str | None
    seed: int | None = None
    interp_reference: list[dict] | None = None  # FP32 reference rows, interpolated elements

    def describe(self) -> dict:
        d = {"source": self.source, "path": self.path, "count": int(len(self.inputs)),
             "shape": list(self.inputs.shape), "has_reference": self.reference is not None,
             "has_labels": self.labels is not None,
             "has_interpolated_reference": self.interp_reference is not None}
        if self.source == "synthetic":
            d["seed"] = self.seed
            d["note"] = ("synthetic probes (seeded normal noise): equivariance is measured off "
                         "the data distribution; no fidelity or accuracy")
        return d


def bundled_probes_path(artifact: str | Path) -> Path:
    return Path(f"{artifact}{PROBES_SUFFIX}")


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    arrays = read_arrays(path, "probe")
    return {"inputs": arrays[""]} if "" in arrays else arrays  # a plain .npy: inputs only


def _check_labels(labels: np.ndarray, n: int, where: str) -> np.ndarray:
    if labels.ndim != 1 or len(labels) != n or not np.issubdtype(labels.dtype, np.integer):
        raise EqdeployError(f"{where}: labels have shape {labels.shape} and dtype {labels.dtype}, "
                            f"expected integer ({n},)", "give one integer class per probe input")
    return labels.astype(np.int64)


def load_labels(path: str | Path, n: int) -> np.ndarray:
    """Labels from a ``.npy`` (or an ``.npz`` with ``labels``), checked against ``n`` probes."""
    path = Path(path)
    arrays = _load_arrays(path)
    labels = arrays.get("labels", arrays.get("inputs"))
    if labels is None:
        raise EqdeployError(f"{path} has no 'labels' array", "save the labels with numpy.save")
    return _check_labels(labels, n, str(path))


def validate(arrays: dict[str, np.ndarray], input_shape: tuple[int, ...], where: str
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Check a probe file's arrays against the artifact's input shape; returns them cast.

    The inputs follow ``convert --probes``'s rule (``inputs``, else ``test``, else ``calib``;
    ``eqdeploy.input_arrays``); labels are ``labels`` or ``<key>_labels``."""
    path = Path(where)
    key = pick_key(arrays, path, "probe")
    x = check_inputs(arrays[key], path, "probe", key, [], shape=tuple(input_shape),
                     rank=len(input_shape))
    ref = arrays.get("reference")
    if ref is not None and (ref.ndim < 1 or len(ref) != len(x)
                            or not np.issubdtype(ref.dtype, np.floating)):
        raise EqdeployError(f"{where}: 'reference' has shape {tuple(ref.shape)} and dtype "
                            f"{ref.dtype}, expected float ({len(x)}, ...)",
                            "store one FP32 output per probe input")
    if ref is not None and not np.isfinite(ref).all():
        raise EqdeployError(f"{where}: 'reference' contains NaN or inf",
                            "store the FP32 source model's (finite) outputs")
    labels = arrays.get("labels", arrays.get(f"{key}_labels"))
    if labels is not None:
        labels = _check_labels(labels, len(x), where)
    return (x, None if ref is None else ref.astype(np.float32), labels)


def synthetic_probes(input_shape: tuple[int, ...], count: int = SYNTHETIC_COUNT,
                     seed: int = SYNTHETIC_SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, *input_shape[1:])).astype(np.float32)


def load_probes(artifact: str | Path, input_shape: tuple[int, ...],
                probes_path: str | Path | None = None, labels_path: str | Path | None = None
                ) -> Probes:
    """``probes_path``, else the bundled ``<artifact>.probes.npz``, else synthetic noise."""
    if probes_path is not None:
        path, source = Path(probes_path), "file"
    elif bundled_probes_path(artifact).is_file():
        path, source = bundled_probes_path(artifact), "bundled"
    else:
        path, source = None, "synthetic"
    if path is None:
        if labels_path is not None:
            bundled = bundled_probes_path(artifact).name
            raise EqdeployError("--labels needs probe inputs to label, but none were found",
                                f"pass --probes FILE.npz or keep {bundled} beside the artifact")
        return Probes(synthetic_probes(input_shape), None, None, source, None, SYNTHETIC_SEED)
    arrays = _load_arrays(path)
    x, ref, labels = validate(arrays, input_shape, str(path))
    if labels_path is not None:
        labels = load_labels(labels_path, len(x))
    return Probes(x, ref, labels, source, str(path),
                  interp_reference=reference_rows(arrays, len(x), str(path)))
