"""Normalize: any graph ``torch.export`` accepts -> the canonical form later stages assume.

    export -> normalize -> verify -> DFQ -> quantize -> emit

1. **Functionalize** (``ExportedProgram.run_decompositions({})``): in-place ops
   (``out += x``, ``relu_``, ``F.relu(x, inplace=True)``, mutations through views) become
   functional ops; nothing is decomposed further (conv2d, linear stay).
2. **Fold constants**: every op that depends on parameters only (a filter bank built each
   forward, ``bias.view(1, C, 1, 1, 1)``) is evaluated once.
3. The rewrites of ``eqdeploy.normalize.rewrites.REWRITES``, in order (``rewrite_table()``
   lists them): tuple ops reduced to what is used, global pools as means, no-ops removed,
   shape-op chains as one reshape, constant biases into their layer.
4. **Re-export** (dynamic batch) and carry every tensor layout over by value
   (``eqdeploy.normalize.carry``): a rewrite never changes a tensor's value.

Unsupported constructs (used indices of a max, ``sort``/``topk``) stop here with one line
naming the node and the user's source line. ``check_support`` (``eqdeploy.normalize.support``)
then decides, before any slow stage, whether every op can be quantized and lowered for the
requested targets.
"""

from __future__ import annotations

import contextlib
import io
import time

import torch
from torch import fx

from eqdeploy.adapters.rewrites import drop_guards, fold_constants
from eqdeploy.errors import EqdeployError
from eqdeploy.export import PlainModel
from eqdeploy.normalize.carry import carry_layouts, example_input
from eqdeploy.normalize.rewrites import REWRITES


def rewrite_table() -> list[tuple[str, str]]:
    """(name, what it rewrites) for every normalization step, in order."""
    return [("functionalize", "in-place ops (add_, relu_, +=, inplace=True) -> functional ops"),
            ("constants", "input-independent ops -> constant parameters"),
            *[(name, what) for name, _, what, _ in REWRITES]]


def _export(gm: fx.GraphModule, example: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=4096)
    traced = example.repeat(2, 1, 1, 1)[: max(2, example.shape[0])]
    with contextlib.redirect_stdout(io.StringIO()):
        return torch.export.export(gm, (traced,), dynamic_shapes=({0: batch},))


def _reexport(gm: fx.GraphModule, example: torch.Tensor) -> torch.export.ExportedProgram:
    gm.graph.eliminate_dead_code()
    gm.recompile()
    try:
        return _export(gm, example)
    except Exception as e:  # noqa: BLE001 - torch.export raises many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise EqdeployError(f"the normalized graph does not export again ({first[:200]})",
                            "report this model to eqdeploy") from e


def normalize_program(program: torch.export.ExportedProgram, example: torch.Tensor
                      ) -> tuple[torch.export.ExportedProgram, dict[str, int]]:
    """The canonical program and {step: nodes changed} (steps that changed nothing omitted)."""
    counts: dict[str, int] = {}
    before = sum(1 for n in program.graph.nodes if n.op == "call_function")
    functional = program.run_decompositions({})
    mutating = sum(1 for n in program.graph.nodes if n.op == "call_function"
                   and getattr(n.target, "_schema", None) is not None
                   and n.target._schema.is_mutable)
    if mutating:
        counts["functionalize"] = mutating
    gm = functional.module()
    drop_guards(gm)
    folded = fold_constants(gm)
    if folded:
        counts["constants"] = len(folded)
    for name, rewrite, _, refresh in REWRITES:
        changed = rewrite(gm)
        if changed:
            counts[name] = changed
            if refresh:
                gm = _reexport(gm, example).module()
                drop_guards(gm)
    new = _reexport(gm, example)
    counts["nodes"] = before - sum(1 for n in new.graph.nodes if n.op == "call_function")
    return new, counts


def normalize(pm: PlainModel) -> PlainModel:
    """``pm`` in canonical form, its layouts carried over; ``info["normalize"]`` says what
    changed and ``info["normalize_seconds"]`` how long it took. A model whose layouts were
    discovered on its normalized graph (``discover_plain``) is returned as it is."""
    if "normalize" in pm.info:
        return pm
    t0 = time.perf_counter()
    program, counts = normalize_program(pm.program, pm.example)
    spec = pm.spec
    old_layouts = dict(spec.tensors)
    x = example_input(tuple(pm.example.shape))
    layouts = carry_layouts(pm.program.module(), program.module(), old_layouts, x)
    from copy import deepcopy

    new_spec = deepcopy(spec)
    new_spec.tensors = layouts
    info = dict(pm.info)
    info["normalize"] = counts
    info["normalize_seconds"] = round(time.perf_counter() - t0, 3)
    return PlainModel(program, new_spec, pm.example, info)
