"""Rewrites that make plain-PyTorch group convs a plain 2D graph edge runtimes handle well.

- ``rewrite_stacked_conv3d`` (module level, before export): a ``Conv3d`` with a
  ``(1, k, k)`` kernel over a stacked group axis ``(N, C, G, H, W)`` applies one 2D filter
  bank to each of the G copies. It becomes a ``Conv2d`` on the tensor reshaped to
  ``(N, C*G, H, W)`` (channel ``c*G + g``, so each group orbit is contiguous and becomes
  one field) with the block-diagonal weight ``W2[o*G+g, c*G+g'] = W[o, c] delta(g, g')``;
  the output is reshaped back to ``(N, O, G, H', W')``. Exact (the extra terms are zeros),
  at the price of G times the multiply-adds of the Conv3d (a grouped conv would keep the
  cost but interleave the orbits, which a contiguous-field layout cannot describe).
- ``stacked_conv3d_to_conv2d``: the same at graph level, for models without modules to
  swap (TorchScript) or calling ``F.conv3d``.
- ``fold_constants`` (graph level, after export): every op that depends on parameters and
  constants only (a GrouPy filter bank built by ``rot90``/index gathers/``roll`` each
  forward, a repeated bias) is evaluated once and replaced by a constant parameter, so the
  graph has a plain ``conv2d`` with a constant weight that DFQ and quantization can edit.
- ``merge_field_batchnorm`` (graph level): GrouPy-style BatchNorm that shares its
  statistics over each field runs a ``BatchNorm3d`` on the feature map viewed as
  ``(N, C, G, H, W)`` between two reshapes. In eval mode that is a per-channel affine map of
  the 4D tensor with each field's statistics repeated G times: the reshape -> batch_norm ->
  reshape chain becomes one 4D ``batch_norm`` (exact), which BN folding can merge into the
  conv before it.
- ``pool3d_to_pool2d`` (graph level): a max/avg ``pool3d`` with a ``(1, k, k)`` window over
  ``(N, C, G, H, W)`` pools each copy alone: it becomes the 2D pool of the tensor viewed as
  ``(N, C*G, H, W)`` between two reshapes (exact), which every runtime runs in integers
  (LiteRT keeps a 5D MAX_POOL_3D in float).
- ``activations_before_reshapes`` (graph level): ``conv -> unflatten -> relu`` (a Conv3d
  rewrite's output viewed as ``(N, C, G, H, W)``) becomes ``conv -> relu -> unflatten``, so
  quantizers fuse the activation into the conv (litert's PT2E quantizer otherwise leaves
  the relu and everything after it in float). Exact: the activation acts per element.
- ``convolution_to_conv2d``: ``aten.convolution`` (TorchScript conversions produce it) ->
  ``aten.conv2d`` when it is a plain 2D, non-transposed convolution.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F  # noqa: N812
from torch import fx, nn

from eqdeploy.fx_attrs import module_attr

aten = torch.ops.aten
_NONDETERMINISTIC = ("rand", "dropout", "bernoulli", "normal", "uniform", "empty", "multinomial")


def block_diagonal(w: torch.Tensor, b: torch.Tensor | None, copies: int
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A ``(O, C, 1, k, k)`` Conv3d weight (and bias) as the Conv2d weight over
    ``(N, C*copies, H, W)``: ``W2[o*G+g, c*G+g'] = W[o, c] delta(g, g')``."""
    w = w[:, :, 0]
    o, c, kh, kw = w.shape
    eye = torch.eye(copies, dtype=w.dtype)
    w2 = torch.einsum("ocij,gh->ogchij", w, eye).reshape(o * copies, c * copies, kh, kw)
    b2 = None if b is None else b.detach().repeat_interleave(copies).contiguous()
    return w2.contiguous(), b2


class StackedConv2d(nn.Module):
    """A ``Conv3d`` with a ``(1, k, k)`` kernel over ``(N, C, G, H, W)`` as one ``Conv2d``."""

    def __init__(self, conv: nn.Conv3d, copies: int) -> None:
        super().__init__()
        w2, b2 = block_diagonal(conv.weight.detach(), conv.bias, copies)
        self.weight = nn.Parameter(w2, requires_grad=False)
        self.bias = None if b2 is None else nn.Parameter(b2, requires_grad=False)
        self.copies, self.out_fields = copies, conv.out_channels
        self.stride, self.padding = conv.stride[1:], conv.padding[1:]
        self.dilation = conv.dilation[1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x.flatten(1, 2), self.weight, self.bias, self.stride, self.padding,
                     self.dilation)
        return y.unflatten(1, (self.out_fields, self.copies))


def _is_stacked_conv3d(m: nn.Module) -> bool:
    return (isinstance(m, nn.Conv3d) and m.kernel_size[0] == 1 and m.stride[0] == 1
            and m.dilation[0] == 1 and m.groups == 1 and m.padding_mode == "zeros"
            and isinstance(m.padding, tuple) and m.padding[0] == 0)


@dataclass
class Rewrite:
    path: str
    kind: str
    note: str

    def to_json(self) -> dict:
        return {"module": self.path, "kind": self.kind, "note": self.note}


def rewrite_stacked_conv3d(model: nn.Module, example: torch.Tensor
                           ) -> tuple[nn.Module, list[Rewrite]]:
    """A copy of ``model`` with every (1, k, k) ``Conv3d`` replaced by ``StackedConv2d``.

    The number of stacked copies of each layer is read from one forward on ``example``.
    Returns the model unchanged (not copied) when it has no such layer.
    """
    targets = {p: m for p, m in model.named_modules() if _is_stacked_conv3d(m)}
    if not targets:
        return model, []
    copies: dict[str, int] = {}

    def record(path: str):
        def hook(mod, args) -> None:
            copies.setdefault(path, int(args[0].shape[2]))
        return hook

    hooks = [m.register_forward_pre_hook(record(p)) for p, m in targets.items()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    new = copy.deepcopy(model)
    done = []
    for path in targets:
        if path not in copies:  # never called
            continue
        parent_path, _, name = path.rpartition(".")
        parent = new.get_submodule(parent_path) if parent_path else new
        conv = getattr(parent, name)
        setattr(parent, name, StackedConv2d(conv, copies[path]))
        k = conv.kernel_size
        done.append(Rewrite(path, "conv3d(1,k,k)->conv2d",
                            f"{tuple(k)} kernel over {copies[path]} stacked copies -> conv2d "
                            f"{conv.in_channels * copies[path]}->"
                            f"{conv.out_channels * copies[path]} channels, block-diagonal"))
    return new, done


# --- graph level ---------------------------------------------------------------------------
def _inputs(node: fx.Node) -> list[fx.Node]:
    return list(node.all_input_nodes)


def _deterministic(node: fx.Node) -> bool:
    name = str(node.target).lower()
    return not any(w in name for w in _NONDETERMINISTIC)


def _remove_unused_attrs(gm: fx.GraphModule) -> None:
    used = {n.target for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters(remove_duplicate=False)) + \
            list(gm.named_buffers(remove_duplicate=False)):
        if name in used:
            continue
        owner_path, _, attr = name.rpartition(".")
        owner = gm.get_submodule(owner_path) if owner_path else gm
        if attr in owner._parameters:
            del owner._parameters[attr]
        elif attr in owner._buffers:
            del owner._buffers[attr]


def fold_constants(gm: fx.GraphModule) -> list[str]:
    """Evaluate input-independent tensor ops in ``gm`` (an unlifted ``program.module()``)
    and replace them by constant parameters, in place. Returns the folded node names (the
    ones now read as parameters)."""
    const: dict[str, object] = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            const[node.name] = module_attr(gm, node.target)
        elif node.op == "call_function" and _deterministic(node) and \
                all(a.name in const for a in _inputs(node)):
            args = fx.node.map_arg(node.args, lambda a: const[a.name])
            kwargs = fx.node.map_arg(node.kwargs, lambda a: const[a.name])
            try:
                with torch.no_grad():
                    const[node.name] = node.target(*args, **kwargs)
            except Exception:  # noqa: BLE001 - leave anything that cannot run eagerly
                continue
    folded = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.name not in const:
            continue
        val = const[node.name]
        if not isinstance(val, torch.Tensor) or not val.is_floating_point():
            continue
        if all(u.name in const for u in node.users):
            continue  # interior of a constant subgraph: only its frontier is kept
        attr = f"_folded_{node.name}"
        gm.register_parameter(attr, nn.Parameter(val.detach().clone().contiguous(),
                                                 requires_grad=False))
        with gm.graph.inserting_before(node):
            new = gm.graph.get_attr(attr)
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        folded.append(node.name)
    if folded:
        gm.graph.eliminate_dead_code()
        _remove_unused_attrs(gm)
        gm.recompile()
    return folded


_RESHAPES = (aten.reshape.default, aten.view.default, aten._unsafe_view.default)


def _shape(node) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _is_reshape(node) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and node.target in _RESHAPES


def merge_field_batchnorm(gm: fx.GraphModule) -> list[str]:
    """``reshape (N, C*G, H, W) -> (N, C, G, H, W)``, eval ``batch_norm``, reshape back ->
    one 4D ``batch_norm`` with each statistic repeated G times, in place (an unlifted
    ``program.module()``). Returns the names of the merged batch_norm nodes."""
    merged = []
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target != aten.batch_norm.default:
            continue
        src, params, training = bn.args[0], bn.args[1:5], bn.args[5]
        if training or not _is_reshape(src) or len(bn.users) != 1:
            continue
        back = next(iter(bn.users))
        inner, mid, out = _shape(src.args[0]), _shape(src), _shape(back)
        if not (_is_reshape(back) and inner is not None and mid is not None and len(mid) == 5
                and len(inner) == 4 and out == inner and mid[1] * mid[2] == inner[1]
                and mid[3:] == inner[2:]
                and all(p is None or p.op == "get_attr" for p in params)):
            continue
        copies = mid[2]
        new_args = [src.args[0]]
        for i, p in enumerate(params):
            if p is None:
                new_args.append(None)
                continue
            attr = f"_field_bn_{bn.name}_{i}"
            value = module_attr(gm, p.target).detach().repeat_interleave(copies).contiguous()
            gm.register_parameter(attr, nn.Parameter(value, requires_grad=False))
            with gm.graph.inserting_before(bn):
                new_args.append(gm.graph.get_attr(attr))
        with gm.graph.inserting_before(back):
            new = gm.graph.call_function(aten.batch_norm.default,
                                         (*new_args, *bn.args[5:]), dict(bn.kwargs))
        new.meta = dict(back.meta)
        back.replace_all_uses_with(new)
        gm.graph.erase_node(back)
        gm.graph.erase_node(bn)
        merged.append(bn.name)
    if merged:
        gm.graph.eliminate_dead_code()
        _remove_unused_attrs(gm)
        gm.recompile()
    return merged


_CONV3D = (aten.conv3d.default, aten.convolution.default)


def _triple(v, default) -> list[int]:
    """A 3D op's int-or-list argument as 3 ints (``default`` when absent)."""
    v = default if v is None or v == [] else v
    v = [int(v)] if isinstance(v, int) else [int(a) for a in v]
    return v * 3 if len(v) == 1 else v


def _stacked_conv3d_node(gm: fx.GraphModule, node: fx.Node) -> bool:
    """A graph conv with a constant ``(O, C, 1, k, k)`` weight on ``(N, C, G, H, W)``."""
    if node.op != "call_function" or node.target not in _CONV3D:
        return False
    args = list(node.args) + [None] * 9
    w = args[1]
    if not (isinstance(w, fx.Node) and w.op == "get_attr"):
        return False
    weight, shape = module_attr(gm, w.target), _shape(args[0])
    if weight.dim() != 5 or weight.shape[2] != 1 or shape is None or len(shape) != 5:
        return False
    groups = args[8] if node.target == aten.convolution.default else args[6]
    if (node.target == aten.convolution.default and args[6]) or isinstance(args[4], str):
        return False  # transposed, or padding="same"/"valid"
    return (_triple(args[3], 1)[0], _triple(args[4], 0)[0], _triple(args[5], 1)[0],
            groups or 1) == (1, 0, 1, 1)


def stacked_conv3d_to_conv2d(gm: fx.GraphModule) -> int:
    """Graph-level twin of ``rewrite_stacked_conv3d`` (a TorchScript model has no modules
    to swap): each (1, k, k) conv3d node over stacked copies -> reshape, block-diagonal
    ``conv2d``, reshape back, in place. Returns the count replaced."""
    count = 0
    for node in list(gm.graph.nodes):
        if not _stacked_conv3d_node(gm, node):
            continue
        args = list(node.args) + [None] * 9
        copies = _shape(args[0])[2]
        weight = module_attr(gm, args[1].target)
        bias = module_attr(gm, args[2].target) if isinstance(args[2], fx.Node) else None
        w2, b2 = block_diagonal(weight.detach(), bias, copies)
        stride, padding, dilation = _triple(args[3], 1), _triple(args[4], 0), _triple(args[5], 1)
        attrs = []
        for suffix, value in (("weight", w2), ("bias", b2)):
            if value is None:
                attrs.append(None)
                continue
            attr = f"_stacked_{node.name}_{suffix}"
            gm.register_parameter(attr, nn.Parameter(value, requires_grad=False))
            attrs.append(attr)
        with gm.graph.inserting_before(node):
            w_node = gm.graph.get_attr(attrs[0])
            b_node = gm.graph.get_attr(attrs[1]) if attrs[1] else None
        _per_copy_2d(gm, node, aten.conv2d.default,
                     (w_node, b_node, stride[1:], padding[1:], dilation[1:], 1),
                     weight.shape[0])
        count += 1
    if count:
        gm.graph.eliminate_dead_code()
        _remove_unused_attrs(gm)
        gm.recompile()
    return count


def _swap(gm: fx.GraphModule, old: fx.Node, new: fx.Node) -> None:
    """``new`` takes ``old``'s place (and metadata) in the graph."""
    new.meta = dict(old.meta)
    old.replace_all_uses_with(new)
    gm.graph.erase_node(old)


def _per_copy_2d(gm: fx.GraphModule, node: fx.Node, op, op_args: tuple, out_channels: int
                 ) -> None:
    """Replace the 5D ``node`` (on ``(N, C, G, H, W)``, acting on each copy alone) by
    ``flatten(1, 2) -> op(x, *op_args) -> unflatten(1, (out_channels, G))``."""
    x = node.args[0]
    with gm.graph.inserting_before(node):
        flat = gm.graph.call_function(aten.flatten.using_ints, (x, 1, 2))
        out = gm.graph.call_function(op, (flat, *op_args))
        back = gm.graph.call_function(aten.unflatten.int, (out, 1, [out_channels,
                                                                    _shape(x)[2]]))
    _swap(gm, node, back)


def _pool3d_args(node: fx.Node) -> tuple[list[int], ...]:
    """(kernel, stride, padding, dilation) of a pool3d node, each of 3 ints."""
    args = list(node.args) + [None] * 6
    kernel = _triple(args[1], None)
    stride = _triple(args[2], kernel)
    padding = _triple(args[3], 0)
    dilation = _triple(args[4], 1) if node.target == aten.max_pool3d.default else [1, 1, 1]
    return kernel, stride, padding, dilation


def pool3d_to_pool2d(gm: fx.GraphModule) -> int:
    """Replace (1, k, k) max/avg ``pool3d`` nodes on 5D tensors by reshape -> 2D pool ->
    reshape, in place (an unlifted ``program.module()``). Returns the count replaced."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (aten.max_pool3d.default,
                                                            aten.avg_pool3d.default):
            continue
        shape = _shape(node.args[0])
        kernel, stride, padding, dilation = _pool3d_args(node)
        if shape is None or len(shape) != 5 or kernel[0] != 1 or stride[0] != 1 \
                or padding[0] != 0 or dilation[0] != 1:
            continue
        window = (kernel[1:], stride[1:], padding[1:])
        if node.target == aten.max_pool3d.default:  # ceil_mode follows the dilation
            op, op_args = aten.max_pool2d.default, (*window, dilation[1:], *node.args[5:6])
        else:  # ceil_mode, count_include_pad, divisor_override
            op, op_args = aten.avg_pool2d.default, (*window, *node.args[4:])
        _per_copy_2d(gm, node, op, op_args, shape[1])
        count += 1
    if count:
        gm.recompile()
    return count


_ELEMENTWISE = (aten.relu.default, aten.relu6.default, aten.hardtanh.default)
_VIEWS = (*_RESHAPES, aten.flatten.using_ints, aten.unflatten.int)


def activations_before_reshapes(gm: fx.GraphModule) -> int:
    """Move an elementwise activation in front of the reshape feeding it (when the reshape
    has no other user), in place. Returns the count moved."""
    count = 0
    for act in list(gm.graph.nodes):
        if act.op != "call_function" or act.target not in _ELEMENTWISE:
            continue
        view = act.args[0]
        if not (isinstance(view, fx.Node) and view.op == "call_function"
                and view.target in _VIEWS and len(view.users) == 1):
            continue
        with gm.graph.inserting_before(act):
            new_act = gm.graph.call_function(act.target, (view.args[0], *act.args[1:]),
                                             dict(act.kwargs))
            new_view = gm.graph.call_function(view.target, (new_act, *view.args[1:]),
                                              dict(view.kwargs))
        new_act.meta = dict(view.args[0].meta) if isinstance(view.args[0], fx.Node) else {}
        _swap(gm, act, new_view)
        gm.graph.erase_node(view)
        count += 1
    if count:
        gm.recompile()
    return count


def convolution_to_conv2d(gm: fx.GraphModule) -> int:
    """Replace 2D non-transposed ``aten.convolution`` nodes by ``aten.conv2d``, in place."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != aten.convolution.default:
            continue
        x, w, b, stride, padding, dilation, transposed, _out_pad, groups = node.args
        val = getattr(w, "meta", {}).get("val")
        ndim = val.dim() if isinstance(val, torch.Tensor) else len(stride) + 2
        if transposed or ndim != 4:
            continue
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(aten.conv2d.default,
                                         (x, w, b, list(stride), list(padding), list(dilation),
                                          groups))
        _swap(gm, node, new)
        count += 1
    if count:
        gm.recompile()
    return count


def drop_guards(gm: fx.GraphModule) -> None:
    """Remove the ``_guards_fn`` call an unlifted program carries (it blocks re-export)."""
    for n in list(gm.graph.nodes):
        if n.op == "call_module" and n.target == "_guards_fn":
            gm.graph.erase_node(n)
    gm.graph.eliminate_dead_code()
    gm.recompile()
