"""Stacked group copies -> plain 2D ops at the model's own cost (graph level, in place).

Plain-PyTorch group CNNs keep G copies of each feature map on a *group axis*: rot90
stacking ``(N, C, G, H, W)`` with a ``Conv3d`` whose kernel is 1 on that axis, or a
kernel-rotating CNN's responses stacked on the last axis ``(N, C, H, W, G)``. Edge runtimes
have no (or only float) 3D kernels, so each per-copy op becomes the 2D op of the tensor in
*g-major* order ``(N, G*C, H, W)`` (channel ``g*C + c``: the orbit of field c is the
strided set ``{c, C + c, ...}``, described by a strided layout):

- ``stacked_conv3d_to_grouped``: a conv3d with kernel, stride 1, padding 0 on the group
  axis -> permute the group axis next to the batch, flatten, ``conv2d(groups=G)`` with the
  2D kernel repeated for each copy, unflatten, permute back. The multiply-adds are the
  Conv3d's; the weight is stored once per copy (G x the Conv3d's), where the block-diagonal
  dense conv it replaces stored G^2 x and computed G x.
- ``pool3d_to_pool2d``: a max/avg pool3d with window 1 on the group axis -> the same
  sandwich around a 2D pool.
- ``merge_stacked_convs``: conv2d layers reading one input whose outputs are stacked or
  concatenated (the kernel rotated by ``torch.rot90`` for each copy) -> one conv2d with
  the weights concatenated (output channel ``k*O + o``), unflattened and moved to the
  stacking axis. The copies were separate tensors, each with no group action of its own;
  the merged conv's output is one equivariant tensor (strided fields).
- ``cancel_round_trips``: the sandwiches meet between consecutive layers; inverse pairs
  (``permute``/``permute``, ``unflatten``/``flatten``) cancel, ``flatten(stack(xs, d))`` is
  ``cat(xs, d)``, a permute that only moves a stacked axis is a stack on another axis, and
  a reduction of a permuted tensor reduces the unpermuted one when the kept axes keep
  their order. So chains of per-copy layers run in g-major order with no transposes.
- ``reductions_before_views``: a reduction (mean, amax, ...) with ``keepdim`` of a permuted
  or unflattened tensor, over axes the view leaves whole, runs on the view's input first
  (a global mean of the g-major 4D map, which every runtime runs in integers, instead of a
  5D ReduceMean), the view after it on the small result.
- ``shuffles_into_convs``: what is left of a sandwich after a conv that wrote its copies
  c-major (``conv -> relu -> view (N, C, G, H, W) -> permute -> flatten``, a GrouPy-style
  layer feeding a stacked Conv3d) is a channel shuffle: the conv writes its output
  channels in the shuffled order instead (weight rows and bias permuted), no transpose.

Every rewrite is exact (same float outputs).
"""

from __future__ import annotations

import torch
from torch import fx, nn

from eqdeploy.adapters.rewrites import remove_unused_attrs, shape_of, swap_node, triple
from eqdeploy.fx_attrs import module_attr

aten = torch.ops.aten
_CONV3D = (aten.conv3d.default, aten.convolution.default)
_POOL3D = (aten.max_pool3d.default, aten.avg_pool3d.default)
_REDUCE = (aten.amax.default, aten.amin.default, aten.mean.dim, aten.sum.dim_IntList)


def _call(gm: fx.GraphModule, op, args: tuple) -> fx.Node:
    return gm.graph.call_function(op, args)


def fill_vals(gm: fx.GraphModule) -> None:
    """Set ``meta["val"]`` (a fake tensor) on nodes that rewrites created without one, so
    later rewrites can read their shapes."""
    from torch._guards import detect_fake_mode

    mode = detect_fake_mode([n.meta.get("val") for n in gm.graph.nodes
                             if isinstance(n.meta.get("val"), torch.Tensor)])
    if mode is None:
        return
    for n in gm.graph.nodes:
        if "val" in n.meta or n.op not in ("get_attr", "call_function"):
            continue
        try:
            if n.op == "get_attr":
                value = module_attr(gm, n.target)
                if isinstance(value, torch.Tensor):
                    n.meta["val"] = mode.from_tensor(value.detach())
                continue
            args, kwargs = fx.node.map_arg((n.args, n.kwargs), lambda a: a.meta["val"])
            with mode:
                n.meta["val"] = n.target(*args, **kwargs)
        except Exception:  # noqa: BLE001 - a shape we cannot infer stays unknown
            continue


def _finish(gm: fx.GraphModule, count: int) -> int:
    if count:
        gm.graph.eliminate_dead_code()
        remove_unused_attrs(gm)
        gm.recompile()
        fill_vals(gm)
    return count


def _constant(gm: fx.GraphModule, name: str, value: torch.Tensor) -> str:
    attr = name
    gm.register_parameter(attr, nn.Parameter(value.detach().contiguous(), requires_grad=False))
    return attr


# --- the group axis ----------------------------------------------------------------------------
def group_axis(kernel: list[int], stride: list[int], padding: list[int],
               shape: tuple[int, ...]) -> int | None:
    """The axis (2, 3 or 4) of a 5D op's input that the op treats copy by copy (window 1,
    stride 1, no padding); the one with the fewest copies when several qualify."""
    ok = [a for a in range(3) if kernel[a] == 1 and stride[a] == 1 and padding[a] == 0]
    if not ok:
        return None
    return 2 + min(ok, key=lambda a: (int(shape[2 + a]), a))


def _sandwich(gm: fx.GraphModule, node: fx.Node, axis: int, op, op_args: tuple,
              out_channels: int) -> None:
    """Replace the 5D ``node`` by ``permute (group axis next to the batch) -> flatten ->
    op -> unflatten -> permute back``."""
    x = node.args[0]
    copies = int(shape_of(x)[axis])
    forward = [0, axis, 1, *(a for a in (2, 3, 4) if a != axis)]
    back = sorted(range(5), key=lambda i: forward[i])
    with gm.graph.inserting_before(node):
        flat = _call(gm, aten.flatten.using_ints,
                     (_call(gm, aten.permute.default, (x, forward)), 1, 2))
        out = _call(gm, op, (flat, *op_args))
        unflat = _call(gm, aten.unflatten.int, (out, 1, [copies, out_channels]))
        new = _call(gm, aten.permute.default, (unflat, back))
    swap_node(gm, node, new)


def _conv3d_args(node: fx.Node):
    """(weight node, bias node, stride, padding, dilation, groups) of a conv3d node, or
    None for a transposed conv or string padding."""
    args = list(node.args) + [None] * 9
    if node.target == aten.convolution.default:
        if args[6]:  # transposed
            return None
        groups = args[8]
    else:
        groups = args[6]
    if isinstance(args[4], str):
        return None
    return (args[1], args[2], triple(args[3], 1), triple(args[4], 0), triple(args[5], 1),
            groups or 1)


def stacked_conv3d_to_grouped(gm: fx.GraphModule) -> list[dict]:
    """Each conv3d with a constant weight and window 1 on a group axis -> a grouped conv2d
    in g-major order (module ``Conv3d``, ``F.conv3d`` and TorchScript alike). Returns one
    note per rewritten node."""
    notes = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _CONV3D:
            continue
        parsed = _conv3d_args(node)
        shape = shape_of(node.args[0])
        if parsed is None or shape is None or len(shape) != 5:
            continue
        w_node, b_node, stride, padding, dilation, groups = parsed
        if not (isinstance(w_node, fx.Node) and w_node.op == "get_attr") or groups != 1:
            continue
        weight = module_attr(gm, w_node.target).detach()
        axis = group_axis(list(weight.shape[2:]), stride, padding, shape) \
            if weight.dim() == 5 else None
        if axis is None:
            continue
        bias = module_attr(gm, b_node.target).detach() if isinstance(b_node, fx.Node) else None
        copies, keep = int(shape[axis]), [a - 2 for a in (2, 3, 4) if a != axis]
        w2 = weight.squeeze(axis).repeat(copies, 1, 1, 1)  # output g*O + o <- W[o]
        attrs = [_constant(gm, f"_grouped_{node.name}_weight", w2)]
        attrs.append(None if bias is None else
                     _constant(gm, f"_grouped_{node.name}_bias", bias.repeat(copies)))
        with gm.graph.inserting_before(node):
            w_new = gm.graph.get_attr(attrs[0])
            b_new = gm.graph.get_attr(attrs[1]) if attrs[1] else None
        out_channels, cin = int(weight.shape[0]), int(weight.shape[1])
        _sandwich(gm, node, axis, aten.conv2d.default,
                  (w_new, b_new, [stride[k] for k in keep], [padding[k] for k in keep],
                   [dilation[k] for k in keep], copies), out_channels)
        stack = node.meta.get("nn_module_stack") or {}
        notes.append({"node": node.name,
                      "module": list(stack.values())[-1][0] if stack else "<top level>",
                      "kind": "conv3d(1,k,k)->conv2d",
                      "note": f"kernel {tuple(weight.shape[2:])} over {copies} stacked copies "
                              f"(axis {axis}) -> conv2d {cin * copies}->"
                              f"{out_channels * copies} channels, groups={copies} (g-major)"})
    _finish(gm, len(notes))
    return notes


def _pool3d_args(node: fx.Node) -> tuple[list[int], ...]:
    """(kernel, stride, padding, dilation) of a pool3d node, each of 3 ints."""
    args = list(node.args) + [None] * 6
    kernel = triple(args[1], None)
    stride = triple(args[2], kernel)
    padding = triple(args[3], 0)
    dilation = triple(args[4], 1) if node.target == aten.max_pool3d.default else [1, 1, 1]
    return kernel, stride, padding, dilation


def pool3d_to_pool2d(gm: fx.GraphModule) -> int:
    """Max/avg ``pool3d`` nodes with window 1 on a group axis -> 2D pools in g-major order
    (LiteRT keeps a 5D MAX_POOL_3D in float). Returns the count replaced."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _POOL3D:
            continue
        shape = shape_of(node.args[0])
        kernel, stride, padding, dilation = _pool3d_args(node)
        axis = None if shape is None or len(shape) != 5 else \
            group_axis(kernel, stride, padding, shape)
        if axis is None:
            continue
        keep = [a - 2 for a in (2, 3, 4) if a != axis]
        window = ([kernel[k] for k in keep], [stride[k] for k in keep],
                  [padding[k] for k in keep])
        if node.target == aten.max_pool3d.default:  # ceil_mode follows the dilation
            op, op_args = aten.max_pool2d.default, (*window, [dilation[k] for k in keep],
                                                    *node.args[5:6])
        else:  # ceil_mode, count_include_pad, divisor_override
            op, op_args = aten.avg_pool2d.default, (*window, *node.args[4:])
        _sandwich(gm, node, axis, op, op_args, int(shape[1]))
        count += 1
    return _finish(gm, count)


# --- parallel convs of one input -> one conv ---------------------------------------------------
def _conv_key(gm: fx.GraphModule, node) -> tuple | None:
    """(input, bias present, the other args) of a plain conv2d with a constant weight."""
    if not (isinstance(node, fx.Node) and node.op == "call_function"
            and node.target == aten.conv2d.default and len(node.users) == 1):
        return None
    args = list(node.args) + [None] * (7 - len(node.args))
    w, b = args[1], args[2]
    if not (isinstance(w, fx.Node) and w.op == "get_attr") or (args[6] or 1) != 1:
        return None
    if b is not None and not (isinstance(b, fx.Node) and b.op == "get_attr"):
        return None
    rest = tuple(tuple(a) if isinstance(a, list) else a for a in args[3:6])
    return (args[0], b is None, rest)


def merge_stacked_convs(gm: fx.GraphModule) -> int:
    """``stack``/``cat(dim=1)`` of conv2d layers on one input -> one conv2d. Returns the
    count of merged stacks."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (aten.stack.default,
                                                            aten.cat.default):
            continue
        parts = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        keys = [_conv_key(gm, p) for p in parts] if isinstance(parts, (list, tuple)) else []
        if len(keys) < 2 or None in keys or len(set(keys)) != 1 or \
                len({p.name for p in parts}) != len(parts):
            continue
        out_shape = shape_of(node)
        if out_shape is None:
            continue
        dim = dim % len(out_shape)
        if node.target == aten.cat.default and dim != 1:
            continue
        weights = [module_attr(gm, p.args[1].target).detach() for p in parts]
        if len({tuple(w.shape) for w in weights}) != 1:
            continue
        w_attr = _constant(gm, f"_merged_{node.name}_weight", torch.cat(weights))
        b_attr = None
        if parts[0].args[2] is not None:
            b_attr = _constant(gm, f"_merged_{node.name}_bias", torch.cat(
                [module_attr(gm, p.args[2].target).detach() for p in parts]))
        x, rest = parts[0].args[0], tuple(parts[0].args[3:])
        with gm.graph.inserting_before(node):
            w_node = gm.graph.get_attr(w_attr)
            b_node = gm.graph.get_attr(b_attr) if b_attr else None
            new = _call(gm, aten.conv2d.default, (x, w_node, b_node, *rest))
            if node.target == aten.stack.default:
                new = _call(gm, aten.unflatten.int,
                            (new, 1, [len(parts), int(weights[0].shape[0])]))
                if dim != 1:  # (N, K, O, H, W) -> K at ``dim``
                    order = [0, 2, 3, 4]
                    order.insert(dim, 1)
                    new = _call(gm, aten.permute.default, (new, order))
        swap_node(gm, node, new)
        for p in parts:
            gm.graph.erase_node(p)
        count += 1
    return _finish(gm, count)


# --- cancelling layout round trips -------------------------------------------------------------
def _ints(v) -> list[int]:
    return [int(a) for a in v]


def _simplified(node: fx.Node) -> fx.Node | tuple | None:
    """What ``node`` simplifies to: an existing node, ``(op, args)`` for a new one, or
    None."""
    src = node.args[0] if node.args else None
    if not (isinstance(src, fx.Node) and src.op == "call_function"):
        return None
    t, s = node.target, src.target
    shape = shape_of(src.args[0]) if src.args and isinstance(src.args[0], fx.Node) else None
    if t == aten.permute.default and s == aten.permute.default:
        inner, outer = _ints(src.args[1]), _ints(node.args[1])
        nd = len(inner)
        inner, outer = [d % nd for d in inner], [d % nd for d in outer]
        composed = [inner[d] for d in outer]
        if composed == list(range(nd)):
            return src.args[0]
        return aten.permute.default, (src.args[0], composed)
    if t == aten.flatten.using_ints and s == aten.unflatten.int and shape is not None:
        d, sizes = int(src.args[1]) % len(shape), _ints(src.args[2])
        start, end = (int(a) for a in node.args[1:3])
        out_nd = len(shape) + len(sizes) - 1
        if (start % out_nd, end % out_nd) == (d, d + len(sizes) - 1):
            return src.args[0]
    if t == aten.unflatten.int and s == aten.flatten.using_ints and shape is not None:
        start, end = (int(a) % len(shape) for a in src.args[1:3])
        if int(node.args[1]) == start and _ints(node.args[2]) == list(shape[start:end + 1]):
            return src.args[0]
    if s == aten.stack.default and len(src.users) == 1:
        parts = src.args[0]
        nd = len(shape_of(src) or ())
        d = int(src.args[1] if len(src.args) > 1 else 0) % max(nd, 1)
        if t == aten.flatten.using_ints and nd and \
                [int(a) % nd for a in node.args[1:3]] == [d, d + 1]:
            return aten.cat.default, (parts, d)
        if t == aten.permute.default and nd:
            perm = [p % nd for p in _ints(node.args[1])]
            rest = [p for p in perm if p != d]
            if rest == sorted(rest):  # only the stacked axis moves
                return aten.stack.default, (parts, perm.index(d))
    if t in _REDUCE and s == aten.permute.default and len(node.args) > 1:
        perm = _ints(src.args[1])
        nd = len(perm)
        dims = node.args[1]
        dims = [dims] if isinstance(dims, int) else _ints(dims)
        keepdim = bool(node.args[2]) if len(node.args) > 2 else bool(
            node.kwargs.get("keepdim", False))
        if keepdim or node.kwargs.get("dtype") is not None or not dims:
            return None
        dims = [d % nd for d in dims]
        kept = [perm[i] for i in range(nd) if i not in dims]
        if kept == sorted(kept):
            return t, (src.args[0], sorted(perm[d] for d in dims), *node.args[2:])
    return None


_PER_ELEMENT = (aten.relu.default, aten.relu6.default, aten.hardtanh.default)


def _shuffle(node: fx.Node) -> tuple[fx.Node, list[int]] | None:
    """(the 4D tensor, the channel order) when ``node`` is ``flatten(permute(view(t,
    (N, a, b, H, W)), (0, 2, 1, 3, 4)), 1, 2)`` with every step used once."""
    if node.target != aten.flatten.using_ints or _ints(node.args[1:3]) != [1, 2]:
        return None
    perm_node = node.args[0]
    if not (isinstance(perm_node, fx.Node) and perm_node.target == aten.permute.default
            and len(perm_node.users) == 1 and _ints(perm_node.args[1]) == [0, 2, 1, 3, 4]):
        return None
    view = perm_node.args[0]
    if not (isinstance(view, fx.Node) and view.target in (aten.view.default,
                                                          aten.reshape.default,
                                                          aten.unflatten.int)
            and len(view.users) == 1):
        return None
    src, mid = view.args[0], shape_of(view)
    inner = shape_of(src)
    if inner is None or mid is None or len(inner) != 4 or len(mid) != 5 or \
            inner[2:] != mid[3:] or int(mid[1]) * int(mid[2]) != int(inner[1]):
        return None
    a, b = int(mid[1]), int(mid[2])
    return src, [(j % a) * b + j // a for j in range(a * b)]  # new channel j <- old


def shuffles_into_convs(gm: fx.GraphModule) -> int:
    """Channel shuffles right after a conv (through per-element activations, each used
    once) folded into the conv's output channel order. Returns the count folded."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        found = _shuffle(node)
        if found is None:
            continue
        src, order = found
        conv = src
        while isinstance(conv, fx.Node) and conv.target in _PER_ELEMENT and \
                len(conv.users) == 1:
            conv = conv.args[0]
        if not (isinstance(conv, fx.Node) and conv.target == aten.conv2d.default
                and len(conv.users) == 1 and isinstance(conv.args[1], fx.Node)
                and conv.args[1].op == "get_attr"
                and (len(conv.args) < 7 or conv.args[6] == 1)):
            continue
        args = list(conv.args) + [None] * max(0, 3 - len(conv.args))
        index = torch.tensor(order)
        w = module_attr(gm, args[1].target).detach()[index]
        b = module_attr(gm, args[2].target).detach()[index] if isinstance(args[2], fx.Node) \
            else None
        with gm.graph.inserting_before(conv):
            args[1] = gm.graph.get_attr(_constant(gm, f"_shuffled_{conv.name}_weight", w))
            if b is not None:
                args[2] = gm.graph.get_attr(_constant(gm, f"_shuffled_{conv.name}_bias", b))
        conv.args = tuple(args)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        count += 1
    return _finish(gm, count)


def _reduce_dims_through(view: fx.Node, dims: list[int], nd: int) -> list[int] | None:
    """``dims`` of ``view``'s output as axes of its input, None if the view splits one."""
    if view.target == aten.permute.default:
        perm = [p % nd for p in _ints(view.args[1])]
        return sorted(perm[d] for d in dims)
    d, parts = int(view.args[1]) % (nd - len(view.args[2]) + 1), len(view.args[2])
    if any(d <= a < d + parts for a in dims):
        return None
    return sorted(a if a < d else a - parts + 1 for a in dims)


def reductions_before_views(gm: fx.GraphModule) -> int:
    """``reduce(view(x), dims, keepdim=True)`` -> ``view(reduce(x, dims'), keepdim=True)``
    for permutes and unflattens that keep the reduced axes whole. Returns the count moved."""
    count, changed = 0, True
    while changed:
        changed = False
        for node in list(gm.graph.nodes):
            if node.op != "call_function" or node.target not in _REDUCE or \
                    len(node.args) < 3 or node.args[2] is not True or node.kwargs:
                continue
            view = node.args[0]
            if not (isinstance(view, fx.Node) and view.target in (aten.permute.default,
                                                                  aten.unflatten.int)
                    and len(view.users) == 1 and shape_of(view) is not None):
                continue
            nd = len(shape_of(view))
            dims = node.args[1]
            dims = [d % nd for d in ([dims] if isinstance(dims, int) else _ints(dims))]
            inner = _reduce_dims_through(view, dims, nd) if dims else None
            if inner is None:
                continue
            with gm.graph.inserting_before(node):
                reduced = _call(gm, node.target, (view.args[0], inner, True, *node.args[3:]))
                new = _call(gm, view.target, (reduced, *view.args[1:]))
            swap_node(gm, node, new)
            gm.graph.erase_node(view)
            count += 1
            changed = True
            break
    return _finish(gm, count)


def cancel_round_trips(gm: fx.GraphModule) -> int:
    """Apply ``_simplified`` until nothing changes. Returns the count of simplifications."""
    count, changed = 0, True
    while changed:
        changed = False
        for node in list(gm.graph.nodes):
            if node.op != "call_function" or not node.users:
                continue
            new = _simplified(node)
            if new is None:
                continue
            if isinstance(new, tuple):
                with gm.graph.inserting_before(node):
                    new = _call(gm, *new)
                new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            gm.graph.eliminate_dead_code()
            count += 1
            changed = True
            break
    return _finish(gm, count)
