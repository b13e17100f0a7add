"""The canonicalizing graph rewrites, each exact, each on an unlifted ``program.module()``.

Every rewrite takes an ``fx.GraphModule`` whose nodes carry ``meta["val"]`` (as
``torch.export`` leaves them), edits it in place and returns how many nodes it changed.
They run after functionalization (``ExportedProgram.run_decompositions({})``), so no
in-place op is left; the table ``REWRITES`` is the order ``normalize`` applies them in.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
from torch import fx, nn

from eqdeploy.adapters.rewrites import fold_bias_adds
from eqdeploy.errors import EqdeployError
from eqdeploy.fx_attrs import attr_tensor
from eqdeploy.normalize.source import where

aten = torch.ops.aten

# ops whose output is their input's data under another shape
RESHAPE_OPS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
               aten.flatten.using_ints, aten.unflatten.int, aten.squeeze.default,
               aten.squeeze.dim, aten.squeeze.dims, aten.unsqueeze.default}
# ops that return their input unchanged (in eval mode, after functionalization)
IDENTITY_OPS = {aten.clone.default, aten.contiguous.default, aten.alias.default,
                aten.detach.default, aten.lift_fresh_copy.default, aten.dropout.default,
                aten.feature_dropout.default, aten.alpha_dropout.default}
ASSERTS = {aten._assert_tensor_metadata.default, aten._assert_scalar.default}


def _val(node) -> torch.Tensor | None:
    v = node.meta.get("val") if isinstance(node, fx.Node) else None
    return v if isinstance(v, torch.Tensor) else None


def _shape(node) -> tuple | None:
    v = _val(node)
    return tuple(v.shape) if v is not None else None


def _replace(gm: fx.GraphModule, old: fx.Node, target, args: tuple,
             kwargs: dict | None = None) -> fx.Node:
    """Insert ``target(*args)`` before ``old``, carrying its metadata, and use it instead."""
    with gm.graph.inserting_before(old):
        new = gm.graph.call_function(target, args, kwargs or {})
    new.meta = dict(old.meta)
    old.replace_all_uses_with(new)
    return new


def _getitems(node: fx.Node) -> dict[int, list[fx.Node]] | None:
    """``node``'s users by tuple index, or None if some user is not a ``getitem``."""
    out: dict[int, list[fx.Node]] = {}
    for u in node.users:
        if u.op != "call_function" or u.target is not operator.getitem:
            return None
        out.setdefault(int(u.args[1]), []).append(u)
    return out


def _dims(value, rank: int) -> list[int]:
    dims = value if isinstance(value, (list, tuple)) else [value]
    return sorted(int(d) % rank for d in dims)


# --- tuple-returning ops -> what is used -------------------------------------------------------
def _adaptive_max(node: fx.Node) -> tuple:
    x, size = node.args[0], node.args[1]
    size = list(size) if isinstance(size, (list, tuple)) else [size, size]
    h, w = _shape(x)[2:]
    if size == [1, 1]:
        return aten.amax.default, (x, [2, 3], True)
    if h % size[0] == 0 and w % size[1] == 0:
        k = [h // size[0], w // size[1]]
        return aten.max_pool2d.default, (x, k, k)
    raise _unsupported(node, f"adaptive_max_pool2d to {size} of a {h}x{w} map (windows "
                       "overlap)", "use an output size that divides the input, or 1")


TUPLE_RULES: dict = {
    aten.max.dim: lambda n: (aten.amax.default,
                             (n.args[0], [n.args[1]], bool(n.args[2]) if len(n.args) > 2
                              else False)),
    aten.min.dim: lambda n: (aten.amin.default,
                             (n.args[0], [n.args[1]], bool(n.args[2]) if len(n.args) > 2
                              else False)),
    aten.max_pool2d_with_indices.default: lambda n: (aten.max_pool2d.default, n.args),
    aten.adaptive_max_pool2d.default: _adaptive_max,
    aten._native_batch_norm_legit_no_training.default: lambda n: (
        aten.batch_norm.default, (*n.args[:5], False, n.args[5], n.args[6], False)),
}


def _unsupported(node: fx.Node, what: str, fix: str) -> EqdeployError:
    return EqdeployError(f"{what} at node {node.name}{where(node)}", fix)


def _split_points(node: fx.Node) -> tuple[int, list[tuple[int, int]]] | None:
    """(dim, [(start, end)] per output) of a split/chunk/unbind node."""
    shape = _shape(node.args[0])
    if shape is None:
        return None
    rank = len(shape)
    if node.target in (aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default):
        dim = int(node.args[2]) % rank if len(node.args) > 2 else 0
        n = int(shape[dim])
        arg = node.args[1]
        if node.target == aten.chunk.default:
            step = -(-n // int(arg))
            sizes = [min(step, n - s) for s in range(0, n, step)]
        elif isinstance(arg, (list, tuple)):
            sizes = [int(s) for s in arg]
        else:
            sizes = [min(int(arg), n - s) for s in range(0, n, int(arg))]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        return dim, [(s, s + z) for s, z in zip(starts, sizes, strict=True)]
    if node.target == aten.unbind.int:
        dim = int(node.args[1]) % rank if len(node.args) > 1 else 0
        return dim, [(i, i + 1) for i in range(int(shape[dim]))]
    return None


def reduce_tuple_ops(gm: fx.GraphModule) -> int:
    """Tuple-returning ops -> the single-output ops that compute what is used.

    ``max``/``min`` over a dim -> ``amax``/``amin`` (values only), ``max_pool2d_with_indices``
    -> ``max_pool2d``, ``adaptive_max_pool2d`` -> ``amax`` (to 1x1) or ``max_pool2d``, the
    functional batch norm -> ``batch_norm``; ``split``/``chunk``/``unbind`` -> one ``slice``
    per used piece (``unbind`` then drops the axis). Indices that are used, and other tuple
    ops (``sort``, ``topk``...), stop with one line naming the node and its source line.
    """
    changed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or not isinstance(node.meta.get("val"), (tuple, list)):
            continue
        items = _getitems(node)
        if items is None:
            raise _unsupported(node, f"{node.target} returns a tuple used as a whole",
                               "index its result (x[0]) or use an op with one output")
        if node.target in TUPLE_RULES:
            if set(items) - {0}:
                raise _unsupported(node, f"{node.target} uses its indices or statistics "
                                   "(output 1+)", "use only the values (e.g. "
                                   "x.amax(dim) instead of x.max(dim))")
            target, args = TUPLE_RULES[node.target](node)
            for getter in items.get(0, []):
                _replace(gm, getter, target, args)
                gm.graph.erase_node(getter)
            changed += 1
        elif (points := _split_points(node)) is not None:
            dim, ranges = points
            for index, getters in items.items():
                start, end = ranges[index]
                for getter in getters:
                    piece = (node.args[0], dim, start, end)
                    if node.target == aten.unbind.int:  # the piece without its axis
                        with gm.graph.inserting_before(getter):
                            piece = (gm.graph.call_function(aten.slice.Tensor, piece),
                                     _target_shape(getter))
                        _replace(gm, getter, aten.reshape.default, piece)
                    else:
                        _replace(gm, getter, aten.slice.Tensor, piece)
                    gm.graph.erase_node(getter)
            changed += 1
        else:
            raise _unsupported(node, f"{node.target} (a tuple-returning op) has no plain "
                               "equivalent eqdeploy can quantize",
                               "rewrite that part of the model with max/mean/reshape ops")
        if not node.users:
            gm.graph.erase_node(node)
    return changed


# --- pools with a plain equivalent -------------------------------------------------------------
def global_pools(gm: fx.GraphModule) -> int:
    """``adaptive_avg_pool2d(x, 1)`` -> ``mean(x, [2, 3], keepdim=True)`` (the ONNX exporter
    lowers the former to an unnamed ReduceMean; the mean is a quant point like any other),
    and an adaptive pool whose output size equals its input's -> nothing."""
    changed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.adaptive_avg_pool2d.default:
            continue
        size = node.args[1]
        size = list(size) if isinstance(size, (list, tuple)) else [size, size]
        if size == [1, 1]:
            _replace(gm, node, aten.mean.dim, (node.args[0], [2, 3], True))
        elif list(_shape(node.args[0])[2:]) == size:
            node.replace_all_uses_with(node.args[0])
        else:
            continue
        gm.graph.erase_node(node)
        changed += 1
    return changed


# --- no-ops ------------------------------------------------------------------------------
def _is_noop(node: fx.Node) -> bool:
    if node.op != "call_function":
        return False
    t, args = node.target, node.args
    if t in IDENTITY_OPS:
        return True
    if t == aten.cat.default and isinstance(args[0], (list, tuple)) and len(args[0]) == 1:
        return True
    src = args[0] if args else None
    if not isinstance(src, fx.Node) or _val(src) is None or _val(node) is None:
        return False
    same = _shape(src) == _shape(node) and _val(src).dtype == _val(node).dtype
    if t in RESHAPE_OPS or t in (aten.expand.default, aten._to_copy.default, aten.to.dtype,
                                 aten.type_as.default):
        return same
    if t == aten.permute.default:
        return list(args[1]) == list(range(len(args[1])))
    if t == aten.slice.Tensor:
        return same
    if t in (aten.mul.Tensor, aten.div.Tensor) and len(args) > 1 and args[1] == 1:
        return same
    if t in (aten.add.Tensor, aten.sub.Tensor) and len(args) > 1 and args[1] == 0 \
            and node.kwargs.get("alpha", 1) == 1:
        return same
    return False


def drop_noops(gm: fx.GraphModule) -> int:
    """Ops that return their input (clone, contiguous, eval dropout, a reshape or expand to
    the same shape, an identity permute or full slice, ``x * 1``, ``x + 0``, a one-input cat,
    a same-dtype cast) and runtime asserts are removed."""
    changed = 0
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target in ASSERTS:
            gm.graph.erase_node(node)
            changed += 1
        elif _is_noop(node):
            src = node.args[0][0] if node.target == aten.cat.default else node.args[0]
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            changed += 1
    return changed


# --- shape chains -------------------------------------------------------------------------
def _target_shape(node: fx.Node) -> list | None:
    """``node``'s static shape with its one dynamic (batch-carrying) dim as -1."""
    shape = _shape(node)
    if shape is None:
        return None
    dynamic = [i for i, s in enumerate(shape) if not isinstance(s, int)]
    if len(dynamic) > 1:
        return None
    return [-1 if i in dynamic else int(s) for i, s in enumerate(shape)]


def canonical_shapes(gm: fx.GraphModule) -> int:
    """Chains of reshape-like ops (view, reshape, flatten, unflatten, squeeze, unsqueeze)
    become one ``reshape`` to the chain's final shape; ``transpose`` becomes ``permute``
    and consecutive permutes compose into one."""
    changed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        if node.target == aten.transpose.int:
            rank = len(_shape(node))
            a, b = int(node.args[1]) % rank, int(node.args[2]) % rank
            order = list(range(rank))
            order[a], order[b] = order[b], order[a]
            new = _replace(gm, node, aten.permute.default, (node.args[0], order))
            gm.graph.erase_node(node)
            node, changed = new, changed + 1
        if node.target == aten.permute.default and isinstance(node.args[0], fx.Node) \
                and node.args[0].target == aten.permute.default:
            inner = node.args[0]
            order = [list(inner.args[1])[int(i)] for i in node.args[1]]
            node.args = (inner.args[0], order)
            changed += 1
        if node.target in RESHAPE_OPS:
            src = node.args[0]
            while isinstance(src, fx.Node) and src.target in RESHAPE_OPS:
                src = src.args[0]
            shape = _target_shape(node)
            if shape is None:
                continue
            if src is node.args[0] and node.target == aten.reshape.default \
                    and list(node.args[1]) == shape:
                continue
            _replace(gm, node, aten.reshape.default, (src, shape))
            gm.graph.erase_node(node)
            changed += 1
    gm.graph.eliminate_dead_code()
    return changed


# --- batch norm over stacked group axes ----------------------------------------------------
def spatial_means_to_4d(gm: fx.GraphModule) -> int:
    """A mean over two axes of a tensor that is not ``(N, C, H, W)`` read the usual way (a
    rotation stack's ``(N, C, H, W, G)`` pooled over H, W) -> permute the two axes last,
    reshape to ``(N, C', H, W)``, mean over (2, 3), reshape to the mean's shape: exact, and
    the runtimes' integer global-average kernels (QLinearGlobalAveragePool, int8 MEAN) take
    the 4-D form; a 5-D ReduceMean stays float."""
    changed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.mean.dim or node.kwargs \
                or len(node.args) < 2 or len(node.args) > 3:
            continue
        shape, out = _shape(node.args[0]), _shape(node)
        if shape is None or out is None or any(not isinstance(d, int) for d in shape[1:]):
            continue
        rank = len(shape)
        dims = sorted(_dims(node.args[1], rank))
        if len(dims) != 2 or 0 in dims or (rank == 4 and dims == [2, 3]):
            continue
        others = [i for i in range(1, rank) if i not in dims]
        merged = 1
        for i in others:
            merged *= int(shape[i])
        with gm.graph.inserting_before(node):
            moved = gm.graph.call_function(aten.permute.default,
                                           (node.args[0], [0, *others, *dims]))
            flat = gm.graph.call_function(aten.reshape.default, (
                moved, [-1, merged, int(shape[dims[0]]), int(shape[dims[1]])]))
            mean = gm.graph.call_function(aten.mean.dim, (flat, [2, 3], True))
        for n in (moved, flat, mean):
            n.meta = {k: v for k, v in node.meta.items() if k != "val"}
        _replace(gm, node, aten.reshape.default, (mean, [-1, *(int(d) for d in out[1:])]))
        gm.graph.erase_node(node)
        changed += 1
    return changed


def batchnorm_to_4d(gm: fx.GraphModule) -> int:
    """An eval ``batch_norm`` over ``(N, C, G..., H, W)`` (GrouPy-style BatchNorm3d, one
    statistic per field) -> reshape to ``(N, C*G..., H, W)``, a 4D ``batch_norm`` with each
    statistic repeated, reshape back: exact, and once the shape chains collapse, the conv
    before it folds the BN like any other."""
    changed = 0
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target is not aten.batch_norm.default:
            continue
        shape, params = _shape(bn.args[0]), bn.args[1:5]
        if shape is None or len(shape) <= 4 or bool(bn.args[5]) \
                or any(not isinstance(s, int) for s in shape[1:]) \
                or not all(p is None or attr_tensor(gm, p) is not None for p in params):
            continue
        copies = 1
        for s in shape[2:-2]:
            copies *= int(s)
        new_params = []
        for i, p in enumerate(params):
            if p is None:
                new_params.append(None)
                continue
            name = f"_bn4d_{bn.name}_{i}"
            value = attr_tensor(gm, p).repeat_interleave(copies).contiguous()
            gm.register_parameter(name, nn.Parameter(value, requires_grad=False))
            with gm.graph.inserting_before(bn):
                new_params.append(gm.graph.get_attr(name))
        flat = [-1, int(shape[1]) * copies, int(shape[-2]), int(shape[-1])]
        with gm.graph.inserting_before(bn):
            x4 = gm.graph.call_function(aten.reshape.default, (bn.args[0], flat))
            y4 = gm.graph.call_function(aten.batch_norm.default,
                                        (x4, *new_params, *bn.args[5:]), dict(bn.kwargs))
        back = _replace(gm, bn, aten.reshape.default,
                        (y4, [-1, *(int(s) for s in shape[1:])]))
        for n in (x4, y4):
            n.meta = {k: v for k, v in bn.meta.items() if k != "val"}
        gm.graph.erase_node(bn)
        del back
        changed += 1
    return changed


# --- activations the integer runtimes build from kernels they have ----------------------
def decompose_activations(gm: fx.GraphModule) -> int:
    """``silu(x)`` -> ``x * sigmoid(x)``: integer runtimes have a LOGISTIC / QLinearSigmoid
    kernel (fixed output grid 1/256) and an integer MUL, but no integer SiLU; as one op the
    ONNX exporter splits it anyway, leaving its sigmoid without a parameter of the set."""
    changed = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.silu.default:
            continue
        x = node.args[0]
        with gm.graph.inserting_before(node):
            sig = gm.graph.call_function(aten.sigmoid.default, (x,))
        sig.meta = dict(node.meta)
        _replace(gm, node, aten.mul.Tensor, (x, sig))
        gm.graph.erase_node(node)
        changed += 1
    return changed


# the order normalize applies them in (after functionalization and constant folding); a
# rewrite marked ``True`` leaves new nodes without shape metadata, so the graph is traced
# again (fresh ``meta["val"]``) before the next one
REWRITES: list[tuple[str, Callable[[fx.GraphModule], int], str, bool]] = [
    ("tuple ops", reduce_tuple_ops, "max/min(dim) -> amax/amin, split/chunk/unbind -> slice, "
     "adaptive_max_pool2d -> amax or max_pool2d, functional batch norm -> batch_norm", False),
    ("global pools", global_pools, "adaptive_avg_pool2d(1) -> mean over H, W", False),
    ("spatial means", spatial_means_to_4d, "mean over two axes of a non-(N, C, H, W) tensor "
     "-> permute + reshape to 4D, mean over (2, 3), reshape back", True),
    ("constant biases", fold_bias_adds, "conv (+ reshapes/permutes) + per-channel constant "
     "-> the conv's bias", False),
    ("field batch norms", batchnorm_to_4d, "batch_norm over (N, C, G, H, W) -> 4D batch_norm "
     "with repeated statistics between reshapes", True),
    ("shape chains", canonical_shapes, "view/reshape/flatten/unflatten/squeeze/unsqueeze "
     "chains -> one reshape; transpose -> permute; permute chains composed", False),
    ("no-ops", drop_noops, "clone, contiguous, eval dropout, same-shape reshape/expand, "
     "identity permute/slice, x*1, x+0, one-input cat, same-dtype cast: removed", False),
    ("activations", decompose_activations, "silu(x) -> x * sigmoid(x) (integer kernels)",
     False),
]
