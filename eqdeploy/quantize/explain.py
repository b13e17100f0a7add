"""Per-layer INT8 error report: where the signal goes, per quantization point and per field.

For every quantization point q of the parameter set, on the probes:

- ``sqnr_db``: SQNR of the INT8 simulation's value at q against the FP32 graph's value at q
  (the same graph after DFQ, so the two are comparable element by element): the error
  accumulated up to q, what ONNX Runtime's ``qdq_loss_debug`` calls the cross-model error;
- ``local_sqnr_db``: SQNR of q's own rounding alone (the FP32 value against its fake-quant
  with q's scale and zero point), ORT's QDQ error; a low value with a high upstream SQNR says
  the tensor's own range is the problem (AIMET's quant analyzer separates the two the same
  way, layer by layer);
- ``sqnr_drop_db``: how much lower q's SQNR is than its worst input's: the loss at q itself,
  which names where the signal goes (the lowest SQNR is usually downstream of it);
- ``worst_field``: the field (of q's layout) with the lowest cumulative SQNR, and its SQNR;
- ``field_range_ratio``: min/max over fields of each field's largest |value| (1 = balanced);
  ``collapsed_fields``: fields whose values all lie within one quantization step of zero,
  so INT8 keeps at most one level of them.

- ``alone_output_sqnr_db`` (sensitivity, AIMET's per-quantizer analysis): the model output's
  SQNR against FP32 when only q is quantized (every other tensor and every weight in float,
  no bias correction); per layer, the same with only its weights quantized (with its own
  bias correction); ``weights_alone_output_sqnr_db``: all weights (and biases) quantized.

SQNR is ``10 log10(sum ref^2 / sum (out - ref)^2)``; a tensor (or field) whose FP32 values are
all zero has no signal to measure: it is reported as ``null`` (listed as unmeasured), never
as a perfect score.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import fx

from eqdeploy.quantize.params import QuantParams, fixed_range, quant_points
from eqdeploy.quantize.simulate import _fake_quant, _int_mean, _int_mul, simulate_with


class _Capture(fx.Interpreter):
    """Runs a graph and keeps the values of the nodes ``key`` names (key(node) -> name)."""

    def __init__(self, gm: fx.GraphModule, key) -> None:
        super().__init__(gm)
        self.key, self.values = key, {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        name = self.key(n)
        if name is not None and isinstance(out, torch.Tensor):
            self.values[name] = out.detach().double().numpy().copy()
        return out


class _Only(fx.Interpreter):
    """The simulation with activation quantization at ``active`` points only (the others
    pass their float value; integer means and products become float ones)."""

    def __init__(self, gm: fx.GraphModule, active: set[str]) -> None:
        super().__init__(gm)
        self.active = active

    def call_function(self, target, args, kwargs):
        if target is _fake_quant and self._src not in self.active:
            return args[0]
        if target is _int_mean and self._src not in self.active:
            return args[0].mean(dim=args[1], keepdim=args[2])
        if target is _int_mul and self._src not in self.active:
            return args[0] * args[1]
        return super().call_function(target, args, kwargs)

    def run_node(self, n: fx.Node):
        self._src = n.args[0].name if n.target is _fake_quant and isinstance(
            n.args[0], fx.Node) else n.name
        return super().run_node(n)


def _alone(gm: fx.GraphModule, x: np.ndarray, active: set[str]) -> np.ndarray:
    with torch.no_grad():
        return _Only(gm, active).run(torch.from_numpy(np.ascontiguousarray(x)).double()
                                     ).numpy()


def _run(gm: fx.GraphModule, x: np.ndarray, key, dtype) -> dict[str, np.ndarray]:
    it = _Capture(gm, key)
    with torch.no_grad():
        it.run(torch.from_numpy(np.ascontiguousarray(x)).to(dtype))
    return it.values


def _clipped(r: np.ndarray, scale: float, zp: int) -> float:
    """Fraction of FP32 values outside the interval the int8 grid covers (half a step
    beyond its ends); the grid always covers 0, so a range [0.05, 17] clips nothing at 0."""
    lo, hi = fixed_range(scale, zp)
    return float(np.mean((r < lo - scale / 2) | (r > hi + scale / 2)))


def sqnr_db(ref: np.ndarray, out: np.ndarray) -> float | None:
    """``10 log10(signal / noise)``; None when the reference has no signal, inf if exact."""
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    noise = float(np.sum((out.astype(np.float64) - ref) ** 2))
    if signal == 0.0:
        return None
    return math.inf if noise == 0.0 else 10.0 * math.log10(signal / noise)


def _field_channels(spec, name: str, channels: int) -> list[np.ndarray]:
    lay = spec.tensors.get(name)
    if lay is None or lay.channels != channels:
        return [np.array([i]) for i in range(channels)]
    return spec.field_channels(lay)


def _module_path(node: fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    return path.removeprefix("L['self'].").removeprefix("model.") or None


def explain(pm, qp: QuantParams, probes: np.ndarray, reference=None,
            sensitivity: bool = True) -> dict:
    """The per-layer report of ``pm`` (BN folded, the graph ``qp`` was computed for).

    ``reference``: the FP32 graph to compare with, of the same nodes (default ``pm``); pass
    the graph before bias correction, which moves FP32 biases on purpose. ``sensitivity``:
    also the one-at-a-time analyses (a simulation per tensor and per layer).
    """
    gm = pm.program.module()
    points, producer = quant_points(gm)
    ref_gm = gm if reference is None else reference.program.module()
    ref = _run(ref_gm, probes, lambda n: n.name if n.name in points else None, torch.float32)
    sim = simulate_with(pm, qp)
    out = _run(sim.gm, probes, lambda n: n.args[0].name if n.op == "call_function"
               and n.target is _fake_quant and isinstance(n.args[0], fx.Node) else None,
               torch.float64)
    y_ref = _run(ref_gm, probes, lambda n: "out" if n.name == _output_name(ref_gm) else None,
                 torch.float32)["out"]
    base = pm if reference is None else reference
    act_only = simulate_with(base, qp, quantize_weights=False).gm if sensitivity else None
    rows = []
    for q in points:
        if q not in ref or q not in out:
            continue
        r, o = ref[q], out[q]
        scale, zp = qp.act_for(q)
        local = (np.clip(np.round(r / scale) + zp, -128, 127) - zp) * scale
        channels = r.shape[1] if r.ndim > 1 else 1
        fields = []
        for i, idx in enumerate(_field_channels(pm.spec, q, channels)):
            rf, of = (r[:, idx], o[:, idx]) if r.ndim > 1 else (r, o)
            fields.append({"field": i, "channels": [int(c) for c in idx][:8]
                           + (["..."] if len(idx) > 8 else []), "sqnr_db": sqnr_db(rf, of),
                           "max_abs": float(np.abs(rf).max())})
        measured = [f for f in fields if f["sqnr_db"] is not None]
        worst = min(measured, key=lambda f: f["sqnr_db"]) if measured else None
        peaks = [f["max_abs"] for f in fields]
        lo, hi = qp.ranges.get(q, (float("nan"), float("nan")))
        ups = sorted({qp.grid[a.name] for a in producer[q].all_input_nodes
                      if a.name in qp.grid and qp.grid[a.name] != q})
        rows.append({
            "tensor": q, "op": str(producer[q].target).replace("aten.", "").split(".")[0],
            "module": _module_path(producer[q]), "scale": scale, "zero_point": zp, "inputs": ups,
            "range": [lo, hi], "sqnr_db": sqnr_db(r, o), "local_sqnr_db": sqnr_db(r, local),
            "clipped_fraction": _clipped(r, scale, zp),
            "worst_field": None if worst is None else {
                "field": worst["field"], "channels": worst["channels"],
                "sqnr_db": worst["sqnr_db"]},
            "fields": len(fields),
            "field_range_ratio": (min(peaks) / max(peaks)) if max(peaks) > 0 else None,
            "collapsed_fields": [f["field"] for f in fields if f["max_abs"] < scale],
            "no_signal_fields": [f["field"] for f in fields if f["sqnr_db"] is None],
            "alone_output_sqnr_db": sqnr_db(y_ref, _alone(act_only, probes, {q}))
            if sensitivity else None,
        })
    measured = [r for r in rows if r["sqnr_db"] is not None]
    if not measured:
        from eqdeploy.errors import EqdeployError

        raise EqdeployError("the per-layer report measured nothing: every tensor was zero "
                            "on the probes", "pass real probe inputs with --probes")
    lowest = min(measured, key=lambda r: r["sqnr_db"])
    by_name = {r["tensor"]: r for r in rows}
    for r in rows:  # SQNR lost at this tensor: its inputs' worst SQNR minus its own
        ups = [by_name[u]["sqnr_db"] for u in r["inputs"]
               if u in by_name and by_name[u]["sqnr_db"] is not None]
        r["sqnr_drop_db"] = (min(ups) - r["sqnr_db"]) if ups and r["sqnr_db"] is not None \
            and math.isfinite(min(ups)) else None
    drops = [r for r in rows if r["sqnr_drop_db"] is not None]
    largest_drop = max(drops, key=lambda r: r["sqnr_drop_db"]) if drops else None
    lowest_local = min((r for r in rows if r["local_sqnr_db"] is not None),
                       key=lambda r: r["local_sqnr_db"])
    w_only = simulate_with(pm, qp, quantize_activations=False)
    weight_rows = [{"layer": name, "weight_scales": len(set(qp.weights[name].tolist())),
                    "alone_output_sqnr_db": sqnr_db(y_ref, _weights_alone(base, pm, qp, name,
                                                                           probes))}
                   for name in qp.weights] if sensitivity else []
    return {"probes": int(len(probes)), "rows": rows,
            "output_sqnr_db": sqnr_db(y_ref, sim.numpy(probes)),
            "weights_alone_output_sqnr_db": sqnr_db(y_ref, w_only.numpy(probes)),
            "weights": weight_rows,
            "lowest_sqnr": {"tensor": lowest["tensor"], "sqnr_db": lowest["sqnr_db"]},
            "largest_drop": None if largest_drop is None else {
                "tensor": largest_drop["tensor"], "sqnr_drop_db": largest_drop["sqnr_drop_db"]},
            "lowest_local_sqnr": {"tensor": lowest_local["tensor"],
                                  "local_sqnr_db": lowest_local["local_sqnr_db"]},
            "unmeasured": [r["tensor"] for r in rows if r["sqnr_db"] is None]}


def _weights_alone(base, pm, qp: QuantParams, layer: str, probes: np.ndarray) -> np.ndarray:
    """Output of ``base`` with only ``layer``'s weights on their INT8 grid (and its bias as
    deployed in ``pm``, i.e. with its own bias correction)."""
    from eqdeploy.dfq.graph import clone, layers

    work = clone(base)
    lay = layers(work)[layer]
    deployed = layers(pm)[layer].bias
    if lay.bias is not None and deployed is not None:
        with torch.no_grad():
            lay.bias.copy_(deployed)
    s = torch.as_tensor(qp.weights[layer], dtype=torch.float64)
    s = s.reshape(-1, *([1] * (lay.weight.dim() - 1)))
    with torch.no_grad():
        lay.weight.copy_((torch.clamp(torch.round(lay.weight.double() / s), -127, 127) * s
                          ).to(lay.weight.dtype))
        return work.module()(torch.from_numpy(np.ascontiguousarray(probes))).double().numpy()


def _output_name(gm: fx.GraphModule) -> str:
    from eqdeploy.graph_layouts import output_node

    return output_node(gm).name


def _db(v) -> str:
    return "-" if v is None else ("exact" if v == math.inf else f"{v:.1f}")


def explain_markdown(rep: dict) -> list[str]:
    """The per-layer table as Markdown lines (the sensitivity column when it was measured)."""
    alone = any(r["alone_output_sqnr_db"] is not None for r in rep["rows"])
    lines = [f"Per quantization point, on {rep['probes']} probes: SQNR of the INT8 simulation "
             "against FP32 at that tensor (accumulated error), of its own rounding alone "
             "(local), " + ("of the model output when only this tensor is quantized (alone), "
                            if alone else "") + "the worst field, and the fields' range ratio "
             "(min/max of each field's largest |value|).", "",
             "| tensor | op | module | SQNR dB | local dB | " + ("output dB, alone | "
                                                              if alone else "")
             + "worst field (dB) | field range ratio | collapsed fields | clipped |",
             "|---|---|---|---|---|" + ("---|" if alone else "") + "---|---|---|---|"]
    for r in rep["rows"]:
        w = r["worst_field"]
        ratio = r["field_range_ratio"]
        lines.append(
            f"| {r['tensor']} | {r['op']} | {r['module'] or '-'} | {_db(r['sqnr_db'])} | "
            f"{_db(r['local_sqnr_db'])} | "
            + (f"{_db(r['alone_output_sqnr_db'])} | " if alone else "")
            + ("-" if w is None else f"{w['field']} ({_db(w['sqnr_db'])})")
            + f" | {'-' if ratio is None else f'{ratio:.3g}'} | "
            f"{len(r['collapsed_fields'])}/{r['fields']} | {r['clipped_fraction']:.2%} |")
    low = rep["lowest_sqnr"]
    lines += ["", f"Model output: {_db(rep['output_sqnr_db'])} dB with everything quantized, "
              f"{_db(rep['weights_alone_output_sqnr_db'])} dB with only the weights "
              f"quantized. Lowest SQNR: **{low['tensor']}** ({_db(low['sqnr_db'])} dB); "
              "lowest local "
              f"SQNR: {rep['lowest_local_sqnr']['tensor']} "
              f"({_db(rep['lowest_local_sqnr']['local_sqnr_db'])} dB)"
              + ("." if rep["largest_drop"] is None else
                 f"; largest loss at one tensor: {rep['largest_drop']['tensor']} "
                 f"({rep['largest_drop']['sqnr_drop_db']:.1f} dB below its inputs).")]
    if rep["weights"]:
        lines += ["", "| layer | weight scales | output dB, only its weights quantized |",
                  "|---|---|---|"]
        lines += [f"| {w['layer']} | {w['weight_scales']} | {_db(w['alone_output_sqnr_db'])} |"
                  for w in rep["weights"]]
    wide = [r["tensor"] for r in rep["rows"] if r["field_range_ratio"] is not None
            and r["field_range_ratio"] < 0.01]
    if wide:
        lines.append(f"Fields differ by more than two decades in range at: {', '.join(wide)} "
                     "(per-tensor INT8 keeps few levels of the small fields; per-channel "
                     "weights and the range criterion are what is left).")
    collapsed = [f"{r['tensor']} ({len(r['collapsed_fields'])})" for r in rep["rows"]
                 if r["collapsed_fields"]]
    if collapsed:
        lines.append(f"Fields within one INT8 step of zero: {', '.join(collapsed)}.")
    if rep["unmeasured"]:
        lines.append(f"No signal on the probes (not measured): {', '.join(rep['unmeasured'])}.")
    return lines
