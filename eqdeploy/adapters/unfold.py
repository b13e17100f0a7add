"""Dynamic-kernel windows (``F.unfold`` * generated kernel, summed) -> plain 4D convs and a mul.

Involution / E4-style layers gather each location's k x k neighbourhood with ``F.unfold``
(``aten.im2col``, output ``(N, C*k*k, L)``), reshape it to many axes, multiply it with a
kernel tensor K computed from the input (broadcast over some axes) and sum over the window
axes. Edge runtimes have no im2col, and the 3D/7D tensors in between have no spatial axes
discovery or integer kernels could use. ``rewrite_windows`` turns each such chain

    im2col(x) -> shape ops -> mul(., shape ops(K)) -> sum(dims) -> shape ops -> y (N, O, H, W)

into 4D ops only (J = the number of summed terms per output value):

    P = conv2d(x, one-hot k x k kernels)   (N, O*J, H, W): channel o*J + j is term j's patch
                                            value (depthwise when term channels follow o)
    Q = K's producer conv with its rows gathered/replicated (or a one-hot 1x1 conv)
    y = conv2d(P * Q, ones)                 (N, O, H, W): the window sum, W[o, o*J + j] = 1

Which patch and kernel channel each term reads is found by running the shape ops on index
tensors (batch 1), so any reshape/permute/broadcast layout of the user's code is handled as
long as every term pairs a patch and a kernel value at the output's own location.
All three convs have constant one-hot/one weights: exact in float and, with int8 weights
127 at scale 1/127, exact in integer arithmetic.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import fx, nn

from eqdeploy.fx_attrs import attr_tensor

aten = torch.ops.aten
SHAPE_OPS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default,
             aten.permute.default, aten.transpose.int, aten.unsqueeze.default,
             aten.squeeze.dim, aten.squeeze.dims, aten.expand.default, aten.clone.default,
             aten.contiguous.default, aten.flatten.using_ints, aten.unflatten.int,
             aten.alias.default}
SUMS = {aten.sum.dim_IntList}


def _val(node) -> torch.Tensor | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return val if isinstance(val, torch.Tensor) else None


def _is_shape_op(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in SHAPE_OPS


def _chain_down(node: fx.Node) -> tuple[list[fx.Node], fx.Node] | None:
    """Single-user shape ops after ``node``, and the first other op they reach."""
    chain = []
    while len(node.users) == 1:
        nxt = next(iter(node.users))
        if not _is_shape_op(nxt) or nxt.args[0] is not node:
            return chain, nxt
        chain.append(nxt)
        node = nxt
    return None


def _chain_up(node: fx.Node) -> tuple[fx.Node, list[fx.Node]]:
    """The non-shape-op source of ``node`` and the shape ops from it to ``node``."""
    chain = []
    while _is_shape_op(node) and len(node.users) == 1 and isinstance(node.args[0], fx.Node):
        chain.append(node)
        node = node.args[0]
    return node, chain[::-1]


def _scalar(a, batch: int):
    """A size argument with a symbolic batch (sym_size of dim 0) set to ``batch``."""
    if isinstance(a, fx.Node):
        if a.target == aten.sym_size.int and a.args[1] == 0:
            return batch
        v = a.meta.get("val")
        if isinstance(v, int):
            return v
        raise ValueError(f"size {a.name} unknown")
    if isinstance(a, (list, tuple)):
        return type(a)(_scalar(b, batch) for b in a)
    if isinstance(a, torch.SymInt):
        raise ValueError("symbolic size")
    return a


def _replay(chain: list[fx.Node], t: torch.Tensor, batch: int) -> torch.Tensor:
    for n in chain:
        args = [_scalar(a, batch) for a in n.args[1:]]
        kwargs = {k: _scalar(v, batch) for k, v in n.kwargs.items()}
        t = n.target(t, *args, **kwargs)
    return t


def _term_maps(col: fx.Node, p_chain, mul: fx.Node, k_src: fx.Node, k_chain, total: fx.Node,
               y_chain) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(a, b) of shape (O, J): patch channel and kernel channel of each term, or None."""
    batch, pc, length = _val(col).shape
    batch = batch if isinstance(batch, int) else 1  # a symbolic batch: traced at 1
    kv = _val(k_src)
    if kv is None or kv.dim() != 4:
        return None
    kc, ho, wo = kv.shape[1:]
    if ho * wo != length:
        return None
    pidx = torch.arange(pc * length).reshape(1, pc, length).repeat(batch, 1, 1)
    kidx = torch.arange(kc * length).reshape(1, kc, ho, wo).repeat(batch, 1, 1, 1)
    a, b = torch.broadcast_tensors(_replay(p_chain, pidx, batch),
                                   _replay(k_chain, kidx, batch))
    dims = sorted(int(d) % a.dim() for d in total.args[1])
    keepdim = bool(total.args[2]) if len(total.args) > 2 else False
    kept = [d for d in range(a.dim()) if d not in dims]
    kept_shape = [1 if d in dims else a.shape[d] for d in range(a.dim())
                  if d in kept or keepdim]
    j = int(np.prod([a.shape[d] for d in dims]))
    a = a.permute(kept + dims).reshape(-1, j)
    b = b.permute(kept + dims).reshape(-1, j)
    out = _replay(y_chain, torch.arange(a.shape[0]).reshape(kept_shape), batch)
    if out.dim() != 4 or out.shape[0] != batch or tuple(out.shape[2:]) != (ho, wo):
        return None
    out = out[:1]
    o = out.shape[1]
    terms_a, terms_b = a[out.reshape(o, -1)], b[out.reshape(o, -1)]  # (O, H*W, J)
    pos = torch.arange(length).reshape(1, length, 1)
    if not (bool((terms_a % length == pos).all()) and bool((terms_b % length == pos).all())):
        return None  # a term reads another location: not a window aggregation
    ca, cb = terms_a // length, terms_b // length
    if not (bool((ca == ca[:, :1]).all()) and bool((cb == cb[:, :1]).all())):
        return None
    return ca[:, 0], cb[:, 0]


def _param(gm: fx.GraphModule, name: str, value: torch.Tensor, before: fx.Node) -> fx.Node:
    gm.register_parameter(name, nn.Parameter(value.contiguous(), requires_grad=False))
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(name)


def _conv(gm: fx.GraphModule, x, w, b, stride, padding, dilation, groups: int,
          before: fx.Node) -> fx.Node:
    with gm.graph.inserting_before(before):
        return gm.graph.call_function(aten.conv2d.default,
                                      (x, w, b, list(stride), list(padding), list(dilation),
                                       groups))


def _rewrite_one(gm: fx.GraphModule, col: fx.Node, tag: str) -> dict | None:
    x, ksize, dilation, padding, stride = col.args[:5]
    xv = _val(x)
    if xv is None or xv.dim() != 4 or _val(col) is None:
        return None
    down = _chain_down(col)
    if down is None or down[1].target != aten.mul.Tensor:
        return None
    p_chain, mul = down
    other = mul.args[1] if mul.args[0] is (p_chain[-1] if p_chain else col) else mul.args[0]
    if not isinstance(other, fx.Node):
        return None
    k_src, k_chain = _chain_up(other)
    after = _chain_down(mul)
    if after is None or after[0] or after[1].target not in SUMS:
        return None
    total = after[1]
    y_down = _chain_down(total)
    if y_down is None:
        return None
    y_chain = y_down[0]
    y = y_chain[-1] if y_chain else total
    try:
        maps = _term_maps(col, p_chain, mul, k_src, k_chain, total, y_chain)
    except (ValueError, RuntimeError, IndexError):
        return None
    if maps is None:
        return None
    a, b = maps
    o, j = a.shape
    cin = int(xv.shape[1])
    kh, kw = ksize
    kk = kh * kw
    ch, u = a // kk, a % kk
    m = o * j
    depthwise = m % cin == 0 and bool((ch.reshape(-1) == torch.arange(m) // (m // cin)).all())
    dtype = xv.dtype
    onehot = torch.zeros(m, 1 if depthwise else cin, kh, kw, dtype=dtype)
    rows = torch.arange(m)
    onehot[rows, 0 if depthwise else ch.reshape(-1), u.reshape(-1) // kw,
           u.reshape(-1) % kw] = 1.0
    w_p = _param(gm, f"_window_{tag}_patches", onehot, col)
    patches = _conv(gm, x, w_p, None, stride, padding, dilation, cin if depthwise else 1,
                    col)
    # the kernel: the producer conv's rows gathered, else a one-hot 1x1 gather conv
    kw_, kb_ = None, None
    if k_src.op == "call_function" and k_src.target == aten.conv2d.default \
            and len(k_src.users) == 1:
        kw_ = attr_tensor(gm, k_src.args[1])
        bias_node = k_src.args[2] if len(k_src.args) > 2 else None
        kb_ = attr_tensor(gm, bias_node) if bias_node is not None else None
        if kw_ is None or (bias_node is not None and kb_ is None):
            kw_ = None
    idx = b.reshape(-1)
    if kw_ is not None:
        w_k = _param(gm, f"_window_{tag}_kernel_w", kw_[idx].clone(), k_src)
        b_k = None if kb_ is None else _param(gm, f"_window_{tag}_kernel_b", kb_[idx].clone(),
                                              k_src)
        conv_args = [*k_src.args[3:], *([1, 1], [0, 0], [1, 1], 1)[len(k_src.args) - 3:]]
        kernel = _conv(gm, k_src.args[0], w_k, b_k, *conv_args, k_src)
    else:
        gather = torch.zeros(m, int(_val(k_src).shape[1]), 1, 1, dtype=dtype)
        gather[rows, idx] = 1.0
        w_g = _param(gm, f"_window_{tag}_gather", gather, mul)
        kernel = _conv(gm, k_src, w_g, None, (1, 1), (0, 0), (1, 1), 1, mul)
    with gm.graph.inserting_before(mul):
        prod = gm.graph.call_function(aten.mul.Tensor, (patches, kernel))
    ones = torch.zeros(o, m, 1, 1, dtype=dtype)
    ones[torch.arange(o).repeat_interleave(j), rows] = 1.0
    w_s = _param(gm, f"_window_{tag}_sum", ones, y)
    out = _conv(gm, prod, w_s, None, (1, 1), (0, 0), (1, 1), 1, y)
    y.replace_all_uses_with(out)
    return {"node": col.name, "kind": "im2col window -> one-hot convs + mul",
            "note": f"{cin} channels, {kh}x{kw} window, {j} terms per output: "
                    f"{'depthwise' if depthwise else 'dense'} one-hot patch conv "
                    f"{cin}->{m}, kernel {'rows gathered' if kw_ is not None else 'gather conv'}"
                    f" {int(_val(k_src).shape[1])}->{m}, window sum conv {m}->{o}"}


def rewrite_windows(gm: fx.GraphModule, info: dict | None = None) -> int:
    """Rewrite every im2col window aggregation of ``gm`` (an unlifted ``program.module()``)
    in place; records each in ``info["rewrites"]``. Returns how many were rewritten."""
    done = []
    for i, col in enumerate([n for n in gm.graph.nodes
                             if n.op == "call_function" and n.target == aten.im2col.default]):
        entry = _rewrite_one(gm, col, str(i))
        if entry is not None:
            done.append(entry)
            gm.graph.eliminate_dead_code()
    if done:
        from eqdeploy.adapters.rewrites import remove_unused_attrs

        remove_unused_attrs(gm)
        gm.recompile()
        if info is not None:
            info.setdefault("rewrites", []).extend(done)
    return len(done)
