"""TorchScript input: a ``ScriptModule`` as a plain module that ``torch.export`` can trace.

``torch.export`` cannot trace into a ScriptModule (strict mode refuses ``torch.jit`` modules;
non-strict mode runs the TorchScript interpreter, whose parameters are not ``nn.Parameter``
and whose shapes specialize the batch). torch's ``TS2EPConverter`` translates the graph op by
op, but it turns every ``aten::Int`` into ``_local_scalar_dense``: slice bounds read from
index buffers (e2cnn's ``InnerBatchNorm``/``GroupPooling``) and traced shape arithmetic
(``prim::NumToTensor`` chains, e.g. ``c // 4`` in a P4CNN's reshape) become unbacked
symbols and the export fails.

``TorchScriptGraph`` interprets the inlined graph instead, in two phases:

1. At construction every value that does not depend on the graph's tensor inputs (attribute
   reads, index buffers, filter banks computed from parameters, shape arithmetic on
   parameters) is evaluated once with the real tensors. Non-tensor results become Python
   constants; tensors read by the input-dependent part become parameters (floating point)
   or buffers of the module: attributes keep their qualified name (``.`` -> ``_``), computed
   ones are named ``_folded_<value>``.
2. ``forward`` runs the input-dependent nodes with ``torch.ops`` overloads from their
   schemas. ``prim::NumToTensor`` yields the number itself, so traced shape arithmetic stays
   Python (Sym)int arithmetic and the batch stays symbolic. ``prim::If``/``prim::Loop`` run
   as Python control flow (scripted models). A few rewrites keep the graph in the op set the
   rest of eqdeploy knows: ``aten::_convolution`` -> ``aten.conv2d``; ``view`` -> ``reshape``
   (a ``-1`` beside the batch axis made concrete); ``max(x, dim)`` whose indices are
   unused -> ``amax``; full-range slices (traced ``x[:, :]``) -> the tensor;
   ``empty``/``empty_like`` filled by ``copy_`` into slices (e2cnn's batch norms and group
   pooling) -> ``cat`` of the pieces, or the one piece.

``torchscript_to_module`` exports it (dynamic batch) and returns the unlifted graph module.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import fx, nn
from torch.fx.experimental.symbolic_shapes import statically_known_true

from eqdeploy.adapters.rewrites import convolution_to_conv2d, drop_guards
from eqdeploy.errors import EqdeployError

Value = Any  # torch._C.Value
_FIX_TRACE = "save the model with torch.jit.trace(model.eval(), x) on a 4D example input"

_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
           torch.float32, torch.float64, torch.complex32, torch.complex64, torch.complex128,
           torch.bool, torch.qint8, torch.quint8, torch.qint32, torch.bfloat16]


def _trunc_div(a, b):
    q = a / b
    return torch.sym_int(q) if isinstance(q, torch.SymFloat) else math.trunc(q)


def _div(a, b, rounding_mode: str | None = None):
    if rounding_mode == "floor":
        return a // b
    if rounding_mode == "trunc":
        return _trunc_div(a, b)
    return a / b


def _to_int(a):
    if isinstance(a, torch.Tensor):
        return int(a.item())
    if isinstance(a, torch.SymInt):
        return a
    return torch.sym_int(a) if isinstance(a, torch.SymFloat) else int(a)


def _to_float(a):
    return float(a.item()) if isinstance(a, torch.Tensor) else a * 1.0


def _append(lst: list, item) -> list:
    lst.append(item)
    return lst


def _add(a, b, alpha=1):
    return a + (b if alpha == 1 else alpha * b)


def _sub(a, b, alpha=1):
    return a - (b if alpha == 1 else alpha * b)


# Builtins evaluated in Python when no argument is a tensor: int/float/list arithmetic, and
# traced shape arithmetic on numbers from ``prim::NumToTensor``.
_SCALAR: dict[str, Callable] = {
    "aten::add": _add, "aten::sub": _sub, "aten::mul": operator.mul,
    "aten::div": _div, "aten::floordiv": operator.floordiv,
    "aten::floor_divide": operator.floordiv, "aten::remainder": operator.mod,
    "aten::fmod": math.fmod, "aten::rsub": lambda a, b, alpha=1: _sub(b, a, alpha),
    "aten::neg": operator.neg, "aten::pow": operator.pow, "aten::abs": abs,
    "aten::eq": operator.eq, "aten::ne": operator.ne, "aten::lt": operator.lt,
    "aten::le": operator.le, "aten::gt": operator.gt, "aten::ge": operator.ge,
    "aten::__and__": operator.and_, "aten::__or__": operator.or_,
    "aten::__xor__": operator.xor, "aten::__not__": operator.not_,
    "aten::__is__": operator.is_, "aten::__isnot__": operator.is_not,
    "aten::__contains__": operator.contains, "aten::__getitem__": operator.getitem,
    "aten::len": len, "aten::list": list, "aten::append": _append,
    "aten::min": min, "aten::max": max, "prim::min": min, "prim::max": max,
    "aten::Int": _to_int, "aten::Float": _to_float, "aten::ScalarImplicit": lambda a: a,
    "aten::Bool": bool, "aten::ceil": math.ceil, "aten::floor": math.floor,
    "aten::sqrt": math.sqrt, "aten::format": lambda f, *a: f.format(*a),
    "aten::warn": lambda *a: None, "aten::str": str,
}

# Ops on tensors that TorchScript types differently from torch.ops (ints, not SymInts).
_TENSOR_BUILTINS: dict[str, Callable] = {
    "aten::size": lambda t, *d: t.size(*d) if d else list(t.size()),
    "aten::dim": lambda t: t.dim(), "aten::numel": lambda t: t.numel(),
    "aten::Int": _to_int, "aten::Float": _to_float, "aten::Bool": lambda t: bool(t.item()),
    "aten::ScalarImplicit": lambda t: t.item(), "aten::item": lambda t: t.item(),
    "aten::len": len, "aten::__getitem__": operator.getitem, "aten::append": _append,
    "aten::list": list, "aten::__is__": operator.is_, "aten::__isnot__": operator.is_not,
    "aten::format": lambda f, *a: f.format(*a), "aten::warn": lambda *a: None,
    "prim::NumToTensor": lambda a: a, "prim::device": lambda t: t.device,
    "prim::dtype": lambda t: _DTYPES.index(t.dtype), "prim::is_cuda": lambda t: t.is_cuda,
    "prim::layout": lambda t: 0, "prim::requires_grad": lambda t: False,
    "prim::data": lambda t: t, "prim::unchecked_cast": lambda a: a,
    "prim::TupleIndex": operator.getitem, "prim::min": min, "prim::max": max,
}


def _has_tensor(values: Iterable) -> bool:
    for v in values:
        if isinstance(v, torch.Tensor):
            return True
        if isinstance(v, (list, tuple)) and _has_tensor(v):
            return True
    return False


def _uses(node) -> list[tuple[str, Value]]:
    """(consumer kind, value) for the node's inputs and every value its blocks read."""
    uses = [(node.kind(), v) for v in node.inputs()]
    for block in node.blocks():
        for inner in block.nodes():
            uses.extend(_uses(inner))
        uses.extend(("prim::Return", v) for v in block.outputs())
    return uses


def _node_inputs(node) -> list[Value]:
    return [v for _, v in _uses(node)]


def _where(node) -> str:
    src = node.sourceRange().strip().splitlines()
    return f" at {src[0].strip()[:80]}" if src else ""


def _check_writes(node, dynamic: set[int]) -> None:
    """An input-dependent op must not write into a folded (input-independent) tensor."""
    schema = node.schema()
    if schema == "(no schema)":
        return
    for a, v in zip(torch._C.parse_schema(schema).arguments, node.inputs(), strict=False):
        if a.alias_info is not None and a.alias_info.is_write and v.unique() not in dynamic:
            raise EqdeployError(f"the TorchScript graph writes into parameter or buffer "
                                f"{v.debugName()!r} with {node.kind()}{_where(node)}",
                                "trace the model in eval mode: torch.jit.trace(model.eval(), x)")


def _has_out_of_place(kind: str) -> bool:
    ns, _, name = kind.partition("::")
    return kind != "aten::copy_" and hasattr(getattr(torch.ops, ns, None), name[:-1])


def _infer_shape(x: torch.Tensor, shape: list) -> list:
    """``-1`` in a reshape that keeps the batch axis -> its concrete size (as eager code
    writes it; the TFLite INT8 emitter needs it)."""
    shape = list(shape)
    rest = [d for d in shape[1:] if d != -1]
    if shape.count(-1) != 1 or shape[0] == -1 or not all(
            isinstance(d, int) for d in [*x.shape[1:], *rest]) or not statically_known_true(
            shape[0] == x.shape[0]):
        return shape
    known = math.prod(rest)
    total = math.prod(x.shape[1:])
    if known and total % known == 0:
        shape[shape.index(-1)] = total // known
    return shape


def _schema_args(node, args: list) -> tuple[list, dict]:
    """Positional and keyword-only arguments by the node's schema."""
    pos, kw = [], {}
    for a, val in zip(torch._C.parse_schema(node.schema()).arguments, args, strict=False):
        if a.kwarg_only:
            kw[a.name] = val
        else:
            pos.append(val)
    return pos, kw


def _convolution(x, w, b, stride, padding, dilation, transposed, out_pad, groups, *_):
    if not transposed and w.dim() == 4:
        return torch.ops.aten.conv2d.default(x, w, b, stride, padding, dilation, groups)
    return torch.ops.aten.convolution.default(x, w, b, stride, padding, dilation, transposed,
                                              out_pad, groups)


# ops whose argument at this position says "training mode" (batch statistics, dropout)
_TRAIN_FLAG = {"aten::batch_norm": 5, "aten::dropout": 2, "aten::dropout_": 2,
               "aten::feature_dropout": 2, "aten::alpha_dropout": 2}
_END = 2**62  # slice ends at or beyond this are "to the end" (traced INT64_MAX)
_CANVAS_OPS = {"aten::empty_like", "aten::zeros_like", "aten::empty", "aten::zeros",
               "aten::new_empty", "aten::new_zeros"}


def _view_op(node) -> bool:
    schema = node.schema()
    if schema == "(no schema)":
        return False
    returns = torch._C.parse_schema(schema).returns
    return any(r.alias_info is not None and not r.alias_info.is_write for r in returns)


def _sole_owner(value) -> bool:
    """Nothing but its one use can observe ``value`` (nor the tensor it is a view of)."""
    while len(value.uses()) == 1:
        node = value.node()
        if not _view_op(node):
            return node.kind() != "prim::Param"
        value = node.inputsAt(0)
    return False


def _aliases(node) -> bool:
    """The node's output may share memory with its first input (views, in-place ops)."""
    schema = node.schema()
    return schema != "(no schema)" and any(
        r.alias_info is not None for r in torch._C.parse_schema(schema).returns)


def _functional_ok(node) -> bool:
    """An in-place op whose target is observed after it only through the target value and the
    op's output: running it out of place and rebinding those two values is equivalent."""
    schema = node.schema()
    if schema == "(no schema)" or not node.kind().endswith("_") or node.outputsSize() != 1:
        return False
    first = torch._C.parse_schema(schema).arguments[0]
    if first.alias_info is None or not first.alias_info.is_write:
        return False
    target, out = node.inputsAt(0), node.output()
    group: dict[int, Value] = {}
    todo = [target]
    while target.node().kind() != "prim::Param" and _aliases(target.node()):
        target = target.node().inputsAt(0)  # up to the tensor the target is a view of
        todo.append(target)
    rebound = {node.inputsAt(0).unique(), out.unique()}
    while todo:  # every value sharing memory with it (views of the rebound values made after
        v = todo.pop()  # the op see the new value)
        if v.unique() not in group:
            group[v.unique()] = v
            todo.extend(u.user.output() for u in v.uses() if u.user.outputsSize() == 1
                        and u.offset == 0 and _aliases(u.user)
                        and not (v.unique() in rebound and u.user.isAfter(node)))
    for key in rebound:
        group.pop(key, None)
    return not any(u.user.isAfter(node) for v in group.values() for u in v.uses())


class _Canvas:
    """A tensor made by ``empty``/``zeros`` and written by ``copy_`` into slices (e2cnn's
    per-field-size loops): kept lazy, so that the exported graph reads ``cat`` of the
    pieces (or the one piece) instead of an uninitialised tensor and slice writes."""

    def __init__(self, make: Callable[[], torch.Tensor], shape, dtype) -> None:
        self.make, self.shape, self.dtype = make, list(shape), dtype
        self.pieces: list[tuple[list, torch.Tensor, bool]] = []  # (region, src, sole owner)
        self.tensor: torch.Tensor | None = None

    def materialize(self) -> torch.Tensor:
        if self.tensor is None:
            self.tensor = self._as_cat()
            if self.tensor is None:  # not a tiling: the eager construction
                self.tensor = self.make()
                for region, src, _ in self.pieces:
                    _sliced(self.tensor, region).copy_(src)
        return self.tensor

    def _as_cat(self) -> torch.Tensor | None:
        dims = {d for region, _, _ in self.pieces for d, r in enumerate(region) if r}
        if not self.pieces or len(dims) > 1:
            return None
        if not dims:
            parts = [self.pieces[-1]]
            d = 0
        else:
            d = dims.pop()
            if any(not region[d] for region, _, _ in self.pieces):
                return None
            parts = sorted(self.pieces, key=lambda p: p[0][d][0])
        pos = 0
        for region, src, _ in parts:
            lo, hi = region[d] or (0, self.shape[d])
            want = self.shape[:d] + [hi - lo] + self.shape[d + 1:]
            if lo != pos or src.dtype != self.dtype or list(src.shape) != want:
                return None
            pos = hi
        if pos != self.shape[d]:
            return None
        if len(parts) == 1:
            src, sole = parts[0][1], parts[0][2]
            return src if sole else src.clone()
        return torch.cat([src for _, src, _ in parts], d)


class _View:
    """``canvas[region]``: a slice of a lazy canvas (per dim ``None`` or ``(start, end)``)."""

    def __init__(self, canvas: _Canvas, region: list) -> None:
        self.canvas, self.region = canvas, region

    def materialize(self) -> torch.Tensor:
        return _sliced(self.canvas.materialize(), self.region)


def _sliced(t: torch.Tensor, region: list) -> torch.Tensor:
    for d, r in enumerate(region):
        if r:
            t = t.narrow(d, r[0], r[1] - r[0])
    return t


def _full_slice(size, start, end, step) -> bool:
    if step != 1 or start not in (0, None):
        return False
    return end is None or (isinstance(end, int) and (end >= _END or (
        isinstance(size, int) and end >= size)))


def _resolve(a):
    if isinstance(a, (_Canvas, _View)):
        return a.materialize()
    if isinstance(a, list) and any(isinstance(v, (_Canvas, _View)) for v in a):
        return [_resolve(v) for v in a]
    return a


class TorchScriptGraph(nn.Module):
    """A ScriptModule's inlined forward graph, input-independent values folded (module doc)."""

    def __init__(self, script: torch.jit.ScriptModule) -> None:
        super().__init__()
        graph = script.inlined_graph
        inputs = list(graph.inputs())
        self._graph = graph  # keeps the torch._C values alive
        if len(inputs) != 2:
            raise EqdeployError(f"the TorchScript model takes {len(inputs) - 1} inputs",
                                "eqdeploy converts models with one image tensor input")
        self._input = inputs[1]
        dynamic = {self._input.unique()}
        nodes = list(graph.nodes())
        later = []
        for node in nodes:
            later.append(any(v.unique() in dynamic for v in _node_inputs(node)))
            if later[-1]:
                dynamic.update(o.unique() for o in node.outputs())
                _check_writes(node, dynamic)
        self._nodes = [n for n, dyn in zip(nodes, later, strict=True) if dyn]
        # in-place ops (relu_, add_) run out of place where no other alias observes them
        self._functional = {n.output().unique() for n in self._nodes
                            if _functional_ok(n) and _has_out_of_place(n.kind())}
        self._canvases = False  # lazy empty+copy_ only when running forward
        env: dict[int, Any] = {inputs[0].unique(): script}
        paths: dict[int, str] = {inputs[0].unique(): ""}
        with torch.no_grad():
            for node, dyn in zip(nodes, later, strict=True):
                if dyn:
                    continue
                if node.kind() == "prim::GetAttr":
                    parent = paths.get(node.input().unique())
                    if parent is not None:
                        name = node.s("name")
                        paths[node.output().unique()] = f"{parent}.{name}" if parent else name
                self._run_node(node, env)
        self._consts: dict[int, Any] = {}
        self._attrs: dict[int, str] = {}
        registered: dict[int, str] = {}
        needed: dict[int, tuple[Value, set[str]]] = {}
        uses = [u for n in self._nodes for u in _uses(n)]
        for kind, v in uses + [("prim::Return", v) for v in graph.outputs()]:
            if v.unique() in env and v.unique() not in dynamic:
                needed.setdefault(v.unique(), (v, set()))[1].add(kind)
        for key, (v, kinds) in needed.items():
            val = env[key]
            if isinstance(val, torch.Tensor) and val.dim() == 0 and kinds & set(_SCALAR):
                self._consts[key] = val.item()  # a traced Python number (e.g. c // 4)
            elif isinstance(val, torch.Tensor):
                if id(val) not in registered:
                    registered[id(val)] = self._register(val, paths.get(key), v.debugName())
                self._attrs[key] = registered[id(val)]
            elif _has_tensor([val]) or isinstance(val, torch.ScriptObject):
                raise EqdeployError(f"the TorchScript graph passes {type(val).__name__} "
                                    f"{v.debugName()!r} (tensor lists or script objects) to "
                                    "input-dependent ops", _FIX_TRACE)
            else:
                self._consts[key] = val

    def _register(self, val: torch.Tensor, path: str | None, debug: str) -> str:
        base = re.sub(r"\W", "_", path) if path else "_folded_" + re.sub(r"\W", "_", debug)
        name, i = base, 1
        while hasattr(self, name):
            name, i = f"{base}_{i}", i + 1
        data = val.detach().clone().contiguous()
        if data.is_floating_point():
            self.register_parameter(name, nn.Parameter(data, requires_grad=False))
        else:
            self.register_buffer(name, data)
        return name

    # --- interpretation -------------------------------------------------------------------
    def _run_block(self, block, env: dict[int, Any]) -> list:
        for node in block.nodes():
            self._run_node(node, env)
        return [env[v.unique()] for v in block.outputs()]

    def _run_node(self, node, env: dict[int, Any]) -> None:
        kind = node.kind()
        outs = list(node.outputs())
        if kind == "prim::Constant":
            env[outs[0].unique()] = outs[0].toIValue()
            return
        if kind == "prim::If":
            cond = env[node.input().unique()]
            res = self._run_block(list(node.blocks())[0 if cond else 1], env)
        elif kind == "prim::Loop":
            res = self._loop(node, env)
        else:
            args = [env[v.unique()] for v in node.inputs()]
            res = self._lazy(node, kind, args) if self._canvases else None
            if res is None and len(outs) == 1 and outs[0].unique() in self._functional:
                res = self._out_of_place(node, kind, [_resolve(a) for a in args])
                env[node.inputsAt(0).unique()] = res
            elif res is None:
                res = self._call(node, kind, [_resolve(a) for a in args])
            if len(outs) == 1:
                res = [res]
        for o, r in zip(outs, res, strict=True):
            env[o.unique()] = r

    def _lazy(self, node, kind: str, args: list):
        """Canvas creation, slicing and writes; anything else returns None."""
        if kind in _CANVAS_OPS:
            pos, kw = _schema_args(node, args)
            dtype = kw.get("dtype")
            like = args[0] if kind.endswith("like") or kind.startswith("aten::new") else None
            shape = args[1] if kind.startswith("aten::new") else (
                like.shape if like is not None else args[0])
            dtype = _DTYPES[dtype] if isinstance(dtype, int) else dtype or (
                like.dtype if like is not None else torch.get_default_dtype())
            return _Canvas(lambda: self._aten(node, kind, args), shape, dtype)
        target = args[0] if args else None
        if not isinstance(target, (_Canvas, _View)):
            return None
        canvas = target if isinstance(target, _Canvas) else target.canvas
        region = list(target.region) if isinstance(target, _View) else [None] * len(
            canvas.shape)
        if kind == "aten::slice" and canvas.tensor is None:
            dim, start, end, step = args[1:]
            dim = dim % len(region)
            size = canvas.shape[dim]
            if _full_slice(size, start, end, step):
                return _View(canvas, region)
            ok = all(isinstance(v, int) and v >= 0 for v in (start, end)) and step == 1
            if region[dim] or not ok:
                return None
            region[dim] = (start, min(end, size) if isinstance(size, int) else end)
            return _View(canvas, region)
        if kind == "aten::copy_" and canvas.tensor is None:
            src = args[1]
            if not isinstance(src, torch.Tensor):
                return None
            canvas.pieces.append((region, src, _sole_owner(node.inputsAt(1))))
            return target
        return None

    def _out_of_place(self, node, kind: str, args: list):
        ns, _, name = kind.partition("::")
        packet = getattr(getattr(torch.ops, ns), name[:-1])
        op = getattr(packet, torch._C.parse_schema(node.schema()).overload_name or "default")
        pos, kw = _schema_args(node, args)
        return op(*pos, **kw)

    def _loop(self, node, env: dict[int, Any]) -> list:
        trips, cond, *carried = (env[v.unique()] for v in node.inputs())
        block = next(iter(node.blocks()))
        block_in = list(block.inputs())
        i = 0
        while cond and i < trips:
            env[block_in[0].unique()] = i
            for v, c in zip(block_in[1:], carried, strict=True):
                env[v.unique()] = c
            cond, *carried = self._run_block(block, env)
            i += 1
        return carried

    def _call(self, node, kind: str, args: list):
        if kind == "prim::GetAttr":
            return getattr(args[0], node.s("name"))
        if kind in ("prim::ListConstruct",):
            return list(args)
        if kind == "prim::TupleConstruct":
            return tuple(args)
        if kind in ("prim::ListUnpack", "prim::TupleUnpack"):
            return list(args[0])
        if kind == "prim::RaiseException":
            raise EqdeployError(f"the TorchScript graph raised {args[0]!r}{_where(node)}",
                                "check the input shape and dtype")
        if kind == "prim::Uninitialized":
            return None
        if not _has_tensor(args) and kind in _SCALAR:
            return _SCALAR[kind](*args)
        if kind in _TENSOR_BUILTINS:
            return _TENSOR_BUILTINS[kind](*args)
        if kind == "aten::slice" and isinstance(args[0], torch.Tensor) and _full_slice(
                args[0].shape[args[1]], *args[2:]):
            return args[0]  # x[:, :] in traced indexing: the tensor itself
        if kind in _TRAIN_FLAG and args[_TRAIN_FLAG[kind]] is True:
            raise EqdeployError(f"the TorchScript graph runs {kind} in training mode"
                                f"{_where(node)}", "trace the model in eval mode: "
                                "torch.jit.trace(model.eval(), x)")
        if kind in ("aten::max", "aten::min") and node.outputsSize() == 2 and isinstance(
                args[1], int) and not node.outputsAt(1).uses():  # values only: amax / amin
            op = torch.ops.aten.amax if kind == "aten::max" else torch.ops.aten.amin
            return op.default(args[0], [args[1]], args[2]), None
        if kind in ("aten::_convolution", "aten::convolution"):
            return _convolution(*args)
        if kind == "aten::view" and isinstance(args[1], (list, tuple)):
            return torch.ops.aten.reshape.default(args[0], _infer_shape(args[0], args[1]))
        return self._aten(node, kind, args)

    def _aten(self, node, kind: str, args: list):
        schema = node.schema()
        ns, _, name = kind.partition("::")
        if schema == "(no schema)" or not hasattr(getattr(torch.ops, ns, None), name):
            raise EqdeployError(f"TorchScript op {kind}{_where(node)} is not supported",
                                f"{_FIX_TRACE}, or pass the pickled model")
        parsed = torch._C.parse_schema(schema)
        op = getattr(getattr(getattr(torch.ops, ns), name), parsed.overload_name or "default")
        pos, kw = _schema_args(node, args)
        return op(*pos, **kw)

    def forward(self, x: torch.Tensor):
        self._canvases = True
        env: dict[int, Any] = dict(self._consts)
        for key, name in self._attrs.items():
            env[key] = getattr(self, name)
        env[self._input.unique()] = x
        for node in self._nodes:
            self._run_node(node, env)
        outs = [_resolve(env[v.unique()]) for v in self._graph.outputs()]
        return outs[0] if len(outs) == 1 else tuple(outs)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def torchscript_to_module(script: torch.jit.ScriptModule, example: torch.Tensor
                          ) -> fx.GraphModule:
    """A TorchScript module as a plain fx module with ``aten.conv2d`` (see module doc)."""
    try:
        module = TorchScriptGraph(script)
    except EqdeployError:
        raise
    except Exception as e:  # noqa: BLE001 - evaluating the graph raises many types
        raise EqdeployError(f"cannot evaluate the TorchScript graph's constant part "
                            f"({_first_line(e)})", _FIX_TRACE) from None
    batch = torch.export.Dim("batch", min=1, max=4096)
    traced = example.repeat(2, *([1] * (example.dim() - 1)))
    try:
        ep = torch.export.export(module, (traced,), dynamic_shapes=({0: batch},))
    except EqdeployError:
        raise
    except Exception as e:  # noqa: BLE001 - torch.export raises many types
        raise EqdeployError(f"cannot export the TorchScript graph ({_first_line(e)})",
                            f"{_FIX_TRACE} (data-dependent shapes and control flow on "
                            "tensor values are not exportable)") from None
    gm = ep.module()
    drop_guards(gm)
    convolution_to_conv2d(gm)
    return gm
