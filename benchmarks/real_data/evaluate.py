"""Accuracy, prediction flips, changed outputs and interpolated error of one predictor on
the rotated test sets (numpy in, numpy out).

A predictor maps a float32 batch to ``(logits, raw)``: ``raw`` is what exact equality is
counted on (an INT8 TFLite model's int8 outputs; float outputs otherwise). Every model here
has invariant logits (group pooling before the head), so under an exact rotation the
expected output is the unrotated one.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from eqdeploy.harness.runtime import Runner

from .data import TestSets

Predictor = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def torch_predictor(model: torch.nn.Module, batch: int = 500) -> Predictor:
    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outs = []
        with torch.no_grad():
            for i in range(0, len(x), batch):
                y = model(torch.from_numpy(np.ascontiguousarray(x[i:i + batch])))
                outs.append((y.tensor if hasattr(y, "tensor") else y).numpy())
        y = np.concatenate(outs).astype(np.float32)
        return y, y

    return run


def runner_predictor(r: Runner) -> Predictor:
    integer = r.output_dtype != "float32"

    def run(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raw = r.run_raw(r.quantize_input(x))
        return (r.dequantize_output(raw) if integer else raw.astype(np.float32)), raw

    return run


def _rel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)


def evaluate(predict: Predictor, ts: TestSets, reference: np.ndarray | None = None) -> dict:
    """Metrics of ``predict`` on ``ts``; ``reference``: FP32 logits on the upright set, for
    the top-1 agreement. Raises when a measurement cannot be made (non-finite outputs)."""
    y, raw = predict(ts.upright)
    rots = [predict(x) for x in ts.rot90]
    ym, _ = predict(ts.masked)
    ya, _ = predict(ts.angle)
    for name, v in (("upright", y), ("masked", ym), ("angle", ya), *(
            (f"rot{90 * (k + 1)}", r[0]) for k, r in enumerate(rots))):
        if not np.isfinite(v).all():
            raise ValueError(f"non-finite outputs on the {name} test set")
    if np.ptp(y, axis=0).max() == 0:
        raise ValueError("the outputs do not depend on the input (constant logits)")
    pred, labels = y.argmax(1), ts.labels
    flips = np.zeros(len(y), bool)
    changed = np.zeros(len(y), bool)
    for yr, rr in rots:
        flips |= yr.argmax(1) != pred
        changed |= (rr != raw).reshape(len(rr), -1).any(1)
    out = {
        "n": len(labels),
        "acc_upright": float((pred == labels).mean()),
        "acc_rot90": float((rots[0][0].argmax(1) == labels).mean()),
        "acc_rot_all": float(np.mean([(r[0].argmax(1) == labels).mean() for r in rots])),
        "acc_masked": float((ym.argmax(1) == labels).mean()),
        "acc_angle": float((ya.argmax(1) == labels).mean()),
        "flips_rot90": int(flips.sum()),
        "changed_rot90": int(changed.sum()),
        "equiv_err_rot90_max": float(max(_rel(r[0], y).max() for r in rots)),
        "flips_angle": int((ya.argmax(1) != ym.argmax(1)).sum()),
        "interp_err_mean": float(_rel(ya, ym).mean()),
    }
    if reference is not None:
        out["top1_vs_fp32"] = float((pred == reference.argmax(1)).mean())
    return out
