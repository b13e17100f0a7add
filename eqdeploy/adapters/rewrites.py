"""Rewrites that make plain-PyTorch group convs a plain 2D graph edge runtimes handle well.

All graph level (an unlifted ``program.module()``, in place), all exact. The group-axis
rewrites (Conv3d / pool3d over stacked copies, stacked rotated-kernel convs) are in
``eqdeploy.adapters.stacked``.

- ``fold_constants``: every op that depends on parameters and constants only (a GrouPy
  filter bank built by ``rot90``/index gathers/``roll`` each forward, a repeated bias) is
  evaluated once and replaced by a constant parameter, so the graph has a plain ``conv2d``
  with a constant weight that DFQ and quantization can edit.
- ``merge_field_batchnorm``: GrouPy-style BatchNorm that shares its statistics over each
  field runs a ``BatchNorm3d`` on the feature map viewed as ``(N, C, G, H, W)`` between two
  reshapes. In eval mode that is a per-channel affine map of the 4D tensor with each
  field's statistics repeated G times: the reshape -> batch_norm -> reshape chain becomes
  one 4D ``batch_norm``, which BN folding can merge into the conv before it.
- ``activations_before_reshapes``: ``conv -> unflatten/permute -> relu`` (a group-axis
  rewrite's output viewed as 5D) becomes ``conv -> relu -> unflatten/permute``, so
  quantizers fuse the activation into the conv (litert's PT2E quantizer otherwise leaves
  the relu and everything after it in float). Exact: the activation acts per element.
- ``fold_bias_adds``: a constant added to a conv output seen through reshapes/permutes
  (``y.view(N, C, G, H, W) + bias.view(1, C, 1, 1, 1)``) that is constant over H, W
  becomes part of the conv's bias (quantizers have no weight layer for such an add).
- ``explicit_squeezes``: ``squeeze()`` -> ``squeeze(dims)`` of the size-1 non-batch axes,
  so a deployed batch of 1 keeps its batch axis.
- ``convolution_to_conv2d``: ``aten.convolution`` (TorchScript conversions produce it) ->
  ``aten.conv2d`` when it is a plain 2D, non-transposed convolution.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from eqdeploy.fx_attrs import module_attr

aten = torch.ops.aten
_NONDETERMINISTIC = ("rand", "dropout", "bernoulli", "normal", "uniform", "empty", "multinomial")


# --- graph level ---------------------------------------------------------------------------
def _inputs(node: fx.Node) -> list[fx.Node]:
    return list(node.all_input_nodes)


def _deterministic(node: fx.Node) -> bool:
    name = str(node.target).lower()
    return not any(w in name for w in _NONDETERMINISTIC)


def remove_unused_attrs(gm: fx.GraphModule) -> None:
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
        remove_unused_attrs(gm)
        gm.recompile()
    return folded


_RESHAPES = (aten.reshape.default, aten.view.default, aten._unsafe_view.default)


def shape_of(node) -> tuple[int, ...] | None:
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
        inner, mid, out = shape_of(src.args[0]), shape_of(src), shape_of(back)
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
        remove_unused_attrs(gm)
        gm.recompile()
    return merged


def triple(v, default) -> list[int]:
    """A 3D op's int-or-list argument as 3 ints (``default`` when absent)."""
    v = default if v is None or v == [] else v
    v = [int(v)] if isinstance(v, int) else [int(a) for a in v]
    return v * 3 if len(v) == 1 else v


def swap_node(gm: fx.GraphModule, old: fx.Node, new: fx.Node) -> None:
    """``new`` takes ``old``'s place (and metadata) in the graph."""
    new.meta = dict(old.meta)
    old.replace_all_uses_with(new)
    gm.graph.erase_node(old)


_ELEMENTWISE = (aten.relu.default, aten.relu6.default, aten.hardtanh.default)
_VIEWS = (*_RESHAPES, aten.flatten.using_ints, aten.unflatten.int, aten.permute.default)


def activations_before_reshapes(gm: fx.GraphModule) -> int:
    """Move elementwise activations in front of the reshapes/permutes feeding them (when a
    reshape has no other user), in place, through whole chains. Returns the count moved."""
    count = 0
    todo = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in _ELEMENTWISE]
    while todo:
        act = todo.pop()
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
        swap_node(gm, act, new_view)
        gm.graph.erase_node(view)
        todo.append(new_act)
        count += 1
    if count:
        gm.recompile()
    return count


def _view_chain(node) -> tuple[fx.Node, list[fx.Node]] | None:
    """(conv2d, the reshapes/permutes from ``node`` back to it) when ``node`` is a conv2d
    output seen through views, every node on the way used once; None otherwise."""
    chain = []
    while isinstance(node, fx.Node) and node.op == "call_function" and len(node.users) == 1:
        if node.target == aten.conv2d.default:
            return node, chain
        if node.target not in _VIEWS:
            return None
        chain.append(node)
        node = node.args[0]
    return None


def _on_conv_output(c: torch.Tensor, out: fx.Node, chain: list[fx.Node]) -> torch.Tensor | None:
    """A constant broadcast onto ``chain[0]`` (a view of ``out``, a conv's output), carried
    back through the views to the conv's ``(O,)`` channels; None if it varies over H, W."""
    shape = shape_of(chain[0]) if chain else shape_of(out)
    if shape is None or any(not isinstance(d, int) for d in shape[1:]):
        return None
    try:
        full = torch.broadcast_to(c.detach(), (1, *shape[1:]))
    except RuntimeError:
        return None
    for view in chain:
        src = shape_of(view.args[0])
        if src is None or any(not isinstance(d, int) for d in src[1:]):
            return None  # the batch moved off axis 0 on the way: not a per-channel constant
        if view.target == aten.permute.default:
            perm = [int(p) % len(src) for p in view.args[1]]
            full = full.permute(sorted(range(len(perm)), key=perm.__getitem__))
        else:
            full = full.reshape(1, *src[1:])
    if full.dim() != 4 or not bool((full == full[:, :, :1, :1]).all()):
        return None
    return full[0, :, 0, 0]


def fold_bias_adds(gm: fx.GraphModule) -> int:
    """``conv -> reshapes/permutes -> + bias`` (a bias added after a 5D view,
    ``y + bias.view(1, C, 1, 1, 1)``) -> the bias folded into the conv, in place. Returns
    the count folded."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (aten.add.Tensor,
                                                            aten.sub.Tensor):
            continue
        if len(node.args) != 2 or node.kwargs.get("alpha", 1) != 1:
            continue
        a, c = node.args
        if node.target == aten.add.Tensor and isinstance(a, fx.Node) and a.op == "get_attr":
            a, c = c, a
        if not (isinstance(c, fx.Node) and c.op == "get_attr"):
            continue
        found = _view_chain(a)
        const = module_attr(gm, c.target)
        if found is None or not isinstance(const, torch.Tensor):
            continue
        conv, chain = found
        per_channel = _on_conv_output(const, conv, chain)
        if per_channel is None:
            continue
        sign = 1.0 if node.target == aten.add.Tensor else -1.0
        args = list(conv.args) + [None] * max(0, 3 - len(conv.args))
        old = module_attr(gm, args[2].target).detach() if isinstance(args[2], fx.Node) \
            else torch.zeros_like(per_channel)
        attr = f"_bias_{conv.name}"
        gm.register_parameter(attr, nn.Parameter((old + sign * per_channel).contiguous(),
                                                 requires_grad=False))
        with gm.graph.inserting_before(conv):
            args[2] = gm.graph.get_attr(attr)
        conv.args = tuple(args)
        node.replace_all_uses_with(a)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.eliminate_dead_code()
        remove_unused_attrs(gm)
        gm.recompile()
    return count


def explicit_squeezes(gm: fx.GraphModule) -> int:
    """``squeeze()`` without dims -> ``squeeze(dims)`` of the non-batch axes of size 1 at
    export, in place: a model traced with a dynamic batch must not drop its batch axis
    when deployed with batch 1 (``x.squeeze()`` on ``(1, C, 1, 1, G)`` gives ``(C, G)``).
    Returns the count replaced."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target != aten.squeeze.default:
            continue
        shape = shape_of(node.args[0])
        if shape is None:
            continue
        dims = [i for i, d in enumerate(shape) if i > 0 and isinstance(d, int) and d == 1]
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(aten.squeeze.dims, (node.args[0], dims))
        swap_node(gm, node, new)
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
        swap_node(gm, node, new)
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
