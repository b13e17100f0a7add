"""Fail fast: can each requested target's converter lower every op of the canonical graph?

Decided right after normalization, before calibration, distillation and emitting, by asking
the converters themselves, without converting: the graph is decomposed the way each
converter decomposes it (torch.onnx's registry-driven decomposition; litert-torch's
pre-convert and pre-lower tables), and every remaining op must have a lowering in that
converter's registry. A target that cannot lower an op stops the conversion with one line
naming the op, the node, the user's source line, and the other target when it can.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import logging
import operator
from collections.abc import Callable

import torch
from torch import fx

from eqdeploy.errors import EqdeployError
from eqdeploy.normalize.source import where

_ALWAYS = {operator.getitem}


def _call_nodes(program: torch.export.ExportedProgram) -> list[fx.Node]:
    return [n for n in program.graph.nodes if n.op == "call_function" and n.target not in _ALWAYS
            and not str(n.target).startswith(("aten.sym_", "<built-in", "sym_"))]


def _quiet():
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    for name in ("torch.onnx", "torch.onnx._internal.exporter._registration"):
        logger = logging.getLogger(name)
        old = logger.level
        logger.setLevel(logging.ERROR)
        stack.callback(logger.setLevel, old)
    return stack


@functools.cache
def _onnx_registry():
    from torch.onnx._internal.exporter import _registration

    with _quiet():
        return _registration.ONNXRegistry.from_torchlib()


def onnx_unlowerable(program: torch.export.ExportedProgram) -> list[fx.Node]:
    """Nodes of ``program`` (before decomposition) whose ops torch.onnx cannot translate."""
    from torch.onnx._internal.exporter import _fx_passes

    registry = _onnx_registry()
    with _quiet():
        decomposed = _fx_passes.decompose_with_registry(program, registry)
    return _origins(program, [n for n in _call_nodes(decomposed)
                              if not registry.is_registered(n.target)])


def tflite_unlowerable(program: torch.export.ExportedProgram) -> list[fx.Node]:
    """Nodes of ``program`` whose ops litert-torch has no lowering for after its decompositions."""
    from litert_torch import fx_infra
    from litert_torch.backend import lowerings

    with _quiet():  # on a copy: litert rewrites the nodes of the program it is given
        ep = fx_infra.safe_run_decompositions(copy.deepcopy(program),
                                              fx_infra.decomp.pre_convert_decomp(),
                                              can_skip=False)
        ep = fx_infra.safe_run_decompositions(ep, fx_infra.decomp.pre_lower_decomp(),
                                              can_skip=False)
    return _origins(program, [n for n in _call_nodes(ep) if lowerings.lookup(n.target) is None])


def _origins(program: torch.export.ExportedProgram, nodes: list[fx.Node]) -> list[fx.Node]:
    """Map decomposed nodes back to the nodes of ``program`` they came from (``from_node``
    provenance), falling back to the decomposed node itself."""
    by_name = {n.name: n for n in program.graph.nodes}
    out = []
    for n in nodes:
        origin = n
        for src in n.meta.get("from_node") or []:
            if getattr(src, "name", None) in by_name:
                origin = by_name[src.name]
                break
        if origin not in out:
            out.append(origin)
    return out


CHECKS: dict[str, Callable[[torch.export.ExportedProgram], list[fx.Node]]] = {
    "onnx": onnx_unlowerable, "tflite": tflite_unlowerable}

_aten = torch.ops.aten
# Ops of the canonical graph both converters lower (``tests/test_normalize.py`` runs the real
# checks on a graph holding every one): a graph made only of these skips the decompositions.
KNOWN_LOWERABLE = frozenset({
    _aten.conv2d.default, _aten.linear.default, _aten.batch_norm.default,
    _aten.relu.default, _aten.hardtanh.default, _aten.sigmoid.default, _aten.tanh.default,
    _aten.add.Tensor, _aten.sub.Tensor, _aten.mul.Tensor, _aten.div.Tensor,
    _aten.max_pool2d.default, _aten.avg_pool2d.default, _aten.amax.default,
    _aten.mean.dim, _aten.cat.default, _aten.stack.default,
    _aten.reshape.default, _aten.view.default, _aten.permute.default,
    _aten.flatten.using_ints, _aten.squeeze.dim, _aten.unsqueeze.default,
    _aten.slice.Tensor, _aten.clone.default,
})


def known_lowerable(program: torch.export.ExportedProgram) -> bool:
    """Every op of ``program`` is in ``KNOWN_LOWERABLE`` (no need to ask the converters)."""
    return all(n.target in KNOWN_LOWERABLE for n in _call_nodes(program))


def check_support(program: torch.export.ExportedProgram, targets: list[str]) -> dict:
    """Raise for the first target that cannot lower the graph; returns what was checked.

    A converter whose internals moved (private APIs) is recorded as ``"not checked"`` rather
    than failing the conversion: the emit stage then reports its error as usual.
    """
    if known_lowerable(program):
        return {target: "ok (known ops)" for target in targets}
    found: dict[str, list[fx.Node]] = {}
    report: dict[str, str] = {}
    for target in targets:
        try:
            found[target] = CHECKS[target](program)
        except (ImportError, AttributeError, TypeError) as e:
            report[target] = f"not checked ({type(e).__name__}: {str(e)[:80]})"
            continue
        report[target] = "ok" if not found[target] else "unlowerable"
    for target in targets:
        bad = found.get(target)
        if not bad:
            continue
        node = bad[0]
        others = ""
        for other, check in CHECKS.items():
            if other == target:
                continue
            with contextlib.suppress(ImportError, AttributeError, TypeError):
                if not found.get(other, check(program)):
                    others = f"; --target {other} can lower it"
        raise EqdeployError(f"the {target} converter cannot lower {node.target} at node "
                            f"{node.name}{where(node)}" + (f" (and {len(bad) - 1} more)"
                                                           if len(bad) > 1 else ""),
                            "replace that op with conv/pool/mean/max/reshape ops" + others)
    return report
