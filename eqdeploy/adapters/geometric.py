"""Swap e2cnn/escnn ``EquivariantModule``s for plain-torch modules, keeping their field types.

Each leaf equivariant module becomes a ``Swapped`` wrapper that takes and returns the
library's ``GeometricTensor`` but computes with plain torch ops, so the user's own
``forward`` (residual adds, ``.tensor``, torch heads) runs unchanged and ``torch.export``
sees a plain graph. We build the plain modules ourselves where the libraries' ``export()``
loses information (PointwiseMaxPool ``ceil_mode``, escnn R2Conv ``padding_mode``) or leaves
a library class behind (``GroupPooling`` -> e2cnn ``MaxPoolChannels``). R2Conv filters are
made exactly invariant under the exact group elements (``symmetrize``), so INT8 rounding
cannot break the symmetry the library's float sampling kept only to ~1e-7.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from eqdeploy.adapters.field_types import exact_channel_perms, group_of
from eqdeploy.errors import EqdeployError
from eqdeploy.groups import Element, Group

FRAMEWORKS = ("e2cnn", "escnn")
_CONTAINERS = {"SequentialModule", "ModuleList", "ModuleDict"}

# Modules we cannot turn into plain ops, with what the user should use instead.
_UNSUPPORTED = {
    "NormNonLinearity": "use regular fields with ReLU (pointwise nonlinearities export exactly)",
    "NormBatchNorm": "use InnerBatchNorm on regular fields",
    "GNormBatchNorm": "use InnerBatchNorm on regular fields",
    "InducedNormBatchNorm": "use InnerBatchNorm on regular fields",
    "IIDBatchNorm2d": "use InnerBatchNorm on regular fields",
    "GatedNonLinearity1": "use regular fields with ReLU",
    "GatedNonLinearity2": "use regular fields with ReLU",
    "InducedGatedNonLinearity1": "use regular fields with ReLU",
    "NormPool": "use GroupPooling on regular fields",
    "InducedNormPool": "use GroupPooling on regular fields",
    "ConcatenatedNonLinearity": "use regular fields with ReLU",
    "TensorProductModule": "use regular fields with ReLU",
    "FourierPointwise": "use regular fields with ReLU",
    "FourierELU": "use regular fields with ELU",
    "QuotientFourierPointwise": "use regular fields with ReLU",
    "QuotientFourierELU": "use regular fields with ELU",
}


def framework_of(module: nn.Module) -> str | None:
    """'e2cnn' or 'escnn' if ``module`` is an equivariant module of that library."""
    root = type(module).__module__.split(".")[0]
    if root in FRAMEWORKS and hasattr(module, "in_type") and hasattr(module, "out_type"):
        return root
    return None


class Swapped(nn.Module):
    """Plain-torch stand-in for one equivariant module: GeometricTensor in, GeometricTensor out."""

    def __init__(self, plain: nn.Module, in_type, out_type, source: str) -> None:
        super().__init__()
        self.plain = plain
        self.in_type = in_type
        self.out_type = out_type
        self.source = source  # class name of the swapped module, for reports

    def forward(self, x):
        return type(x)(self.plain(x.tensor), self.out_type)

    def extra_repr(self) -> str:
        return f"source={self.source}"


class GroupMaxPool(nn.Module):
    """Max over the channels of each field (fields of equal size, contiguous)."""

    def __init__(self, field_size: int) -> None:
        super().__init__()
        self.field_size = field_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c = x.shape[:2]
        return x.reshape(b, c // self.field_size, self.field_size, *x.shape[2:]).amax(2)


class FixedDepthwiseConv(nn.Conv2d):
    """A depthwise conv with a fixed filter (the antialiasing blur of e2cnn/escnn pools)."""

    def __init__(self, channels: int, filt: torch.Tensor, stride, padding) -> None:
        k = filt.shape[-2:]
        super().__init__(channels, channels, k, stride=stride, padding=padding, groups=channels,
                         bias=False)
        with torch.no_grad():
            self.weight.copy_(filt.detach().reshape(-1, 1, *k).expand(channels, 1, *k))
        self.weight.requires_grad_(False)


class FixedMask(nn.Module):
    """``x * mask`` with a fixed (1, 1, H, W) mask (e2cnn/escnn ``MaskModule``)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask


class ChannelPermutation(nn.Module):
    """``x[:, index]``: a fixed reordering of the channel axis."""

    def __init__(self, index: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("index", index.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.index)


class GlobalMeanPool(nn.Module):
    """Mean over H and W, keeping them as 1 x 1 (what an adaptive average pool to 1 computes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


def _adaptive_avg(m) -> nn.Module:
    """A global pool becomes a spatial ``mean``: its own quant point on every target (ONNX's
    exporter lowers ``adaptive_avg_pool2d`` to a ReduceMean under another name, which the INT8
    ONNX target cannot give the forced parameters)."""
    size = m.output_size
    if size in (1, (1, 1), [1, 1]):
        return GlobalMeanPool()
    return nn.AdaptiveAvgPool2d(size)


def _filter_action(w: torch.Tensor, el: Element, p_in: torch.Tensor, p_out: torch.Tensor
                   ) -> torch.Tensor:
    """``T_g(w)`` with ``T[p_out[o], j] = S_g^-1(w)[o, p_in^-1[j]]`` (S_g: the pixel action):
    a conv commutes with g (``conv(g x) = g conv(x)``) iff ``T_g(w) == w``. On a bias
    (1-D) only the output permutation acts."""
    if w.dim() == 4:
        w = torch.rot90(w, -el.quarter_turns, dims=(-2, -1))
        w = (w.flip(-1) if el.flip else w)[:, torch.argsort(p_in)]
    out = torch.empty_like(w)
    out[p_out] = w
    return out


def symmetrize(w: torch.Tensor, group: Group, p_in: dict[str, np.ndarray] | None,
               p_out: dict[str, np.ndarray], tol: float = 1e-5) -> torch.Tensor:
    """``w`` (a filter, or a bias if ``p_in`` is None) made exactly invariant under the exact
    elements' ``T_g``: each orbit of entries gets one value, its mean.

    e2cnn/escnn sample their steerable bases with float trigonometry, so an expanded filter
    is equivariant only to ~1e-7; rounding to INT8 then flips a few weights that sit on a
    rounding boundary (seen: the integer weights of 1 of the 20 convs of an escnn D4
    ResNet18 lost the symmetry, and 7-12 of 16 INT8 outputs changed under every element in
    both runtimes). The change is ~1e-7 relative. Returned unchanged if ``w`` is farther
    than ``tol`` (relative) from invariant: then it is not an equivariant filter at all.
    """
    els = [e for e in group.elements if e.exact]
    pin = {k: torch.from_numpy(v) for k, v in (p_in or {}).items()}
    pout = {k: torch.from_numpy(v) for k, v in p_out.items()}
    w64 = w.detach().double()
    idx = torch.arange(w.numel()).reshape(w.shape)
    total, canon = torch.zeros_like(w64), idx
    for e in els:
        t = _filter_action(w64, e, pin.get(e.name), pout[e.name])
        if (t - w64).abs().max() > tol * max(float(w64.abs().max()), 1e-30):
            return w
        total += t
        canon = torch.minimum(canon, _filter_action(idx, e, pin.get(e.name), pout[e.name]))
    mean = total / len(els)
    return mean.flatten()[canon.flatten()].reshape(w.shape).to(w.dtype)


def _r2conv(m) -> nn.Module:
    m.eval()  # expands the basis into m.filter / m.expanded_bias
    conv = nn.Conv2d(m.in_type.size, m.out_type.size, m.kernel_size, stride=m.stride,
                     padding=m.padding, dilation=m.dilation, groups=m.groups,
                     bias=m.bias is not None, padding_mode=getattr(m, "padding_mode", "zeros"))
    weight = m.filter.detach()
    bias = m.expanded_bias.detach() if m.bias is not None else None
    group = group_of(m.in_type.gspace)
    p_in = exact_channel_perms(m.in_type, group)
    p_out = exact_channel_perms(m.out_type, group)
    if p_in is not None and p_out is not None and m.groups == 1:
        weight = symmetrize(weight, group, p_in, p_out)
        bias = None if bias is None else symmetrize(bias, group, None, p_out)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return conv


def _inner_bn(m) -> nn.Module:
    if not m.track_running_stats:
        raise _Unsupported("it has no running statistics",
                           "build it with track_running_stats=True and retrain")
    try:
        return m.export()
    except NotImplementedError as e:
        raise _Unsupported("its fields are not contiguous by type",
                           "group fields of one type together") from e


def _max_pool(m) -> nn.Module:
    return nn.MaxPool2d(m.kernel_size, m.stride, m.padding, m.dilation,
                        ceil_mode=bool(getattr(m, "ceil_mode", False)))


def _avg_pool(m) -> nn.Module:
    return nn.AvgPool2d(m.kernel_size, m.stride, m.padding,
                        ceil_mode=bool(getattr(m, "ceil_mode", False)))


def _antialiased(m) -> nn.Module:
    size = m.in_type.size
    blur = FixedDepthwiseConv(size, m.filter, m.stride, getattr(m, "_pad", m.padding))
    if "Max" in type(m).__name__:
        return nn.Sequential(nn.MaxPool2d(m.kernel_size, 1, m.padding, m.dilation,
                                          ceil_mode=bool(getattr(m, "ceil_mode", False))), blur)
    return blur


def _group_pooling(m) -> nn.Module:
    sizes = {r.size for r in m.in_type.representations}
    if len(sizes) != 1:
        raise _Unsupported("its fields have different sizes",
                           "pool fields of one size per GroupPooling module")
    return GroupMaxPool(sizes.pop())


def _pointwise(m) -> nn.Module:
    fn = getattr(m, "_function", None)
    table = {F.relu: nn.ReLU, F.elu: nn.ELU, F.sigmoid: nn.Sigmoid, F.tanh: nn.Tanh,
             torch.sigmoid: nn.Sigmoid, torch.tanh: nn.Tanh, torch.relu: nn.ReLU}
    if fn not in table:
        raise _Unsupported(f"its function {getattr(fn, '__name__', fn)!r} has no plain "
                           "equivalent", "use p_relu, p_elu, p_sigmoid or p_tanh")
    return table[fn]()


def _mask(m) -> nn.Module:
    mask = m.mask.detach()
    if mask.dim() != 4 or mask.shape[:2] != (1, 1):
        raise _Unsupported(f"its mask has shape {tuple(mask.shape)}, not (1, 1, S, S)",
                           "use a 2D MaskModule")
    return FixedMask(mask)


def _disentangle(m) -> nn.Module:
    """The change of basis of each field, when every one is a permutation matrix: a channel
    permutation (identity for regular fields restricted to a subgroup)."""
    index, start = [], 0
    for rep in m.in_type.representations:
        cob = np.asarray(getattr(m, f"change_of_basis_{rep.name}").detach().cpu(), np.float64)
        perm = cob.round().argmax(1)
        if not (np.allclose(cob, np.eye(rep.size)[perm], atol=1e-6)
                and len(set(perm)) == rep.size):
            raise _Unsupported(f"the change of basis of its field {rep.name!r} is not a "
                               "permutation, so it mixes channels inside the field",
                               "drop the DisentangleModule after RestrictionModule: the "
                               "restricted regular fields are permutation fields already")
        index.extend(start + int(i) for i in perm)
        start += rep.size
    if index == list(range(start)):
        return nn.Identity()
    return ChannelPermutation(torch.tensor(index, dtype=torch.long))


_BUILDERS: dict[str, Callable[[nn.Module], nn.Module]] = {
    "R2Conv": _r2conv,
    "InnerBatchNorm": _inner_bn,
    "PointwiseMaxPool": _max_pool,
    "PointwiseMaxPool2D": _max_pool,
    "PointwiseAvgPool": _avg_pool,
    "PointwiseAvgPool2D": _avg_pool,
    "PointwiseMaxPoolAntialiased": _antialiased,
    "PointwiseMaxPoolAntialiased2D": _antialiased,
    "PointwiseAvgPoolAntialiased": _antialiased,
    "PointwiseAvgPoolAntialiased2D": _antialiased,
    "PointwiseAdaptiveAvgPool": _adaptive_avg,
    "PointwiseAdaptiveAvgPool2D": _adaptive_avg,
    "PointwiseAdaptiveMaxPool": lambda m: nn.AdaptiveMaxPool2d(m.output_size),
    "PointwiseAdaptiveMaxPool2D": lambda m: nn.AdaptiveMaxPool2d(m.output_size),
    "GroupPooling": _group_pooling,
    "ReLU": lambda m: nn.ReLU(),
    "LeakyReLU": lambda m: nn.LeakyReLU(m._negative_slope),
    "ELU": lambda m: nn.ELU(m.alpha),
    "PointwiseNonLinearity": _pointwise,
    "PointwiseDropout": lambda m: nn.Identity(),
    "FieldDropout": lambda m: nn.Identity(),
    "IdentityModule": lambda m: nn.Identity(),
    "MaskModule": _mask,
    "RestrictionModule": lambda m: nn.Identity(),  # a new field type, the same tensor
    "DisentangleModule": _disentangle,
    "ReshuffleModule": lambda m: ChannelPermutation(m.indices),
}


class _Unsupported(Exception):
    def __init__(self, why: str, fix: str) -> None:
        self.why, self.fix = why, fix


def plain_equivalent(module: nn.Module, path: str) -> nn.Module:
    """A plain-torch module computing what ``module`` computes in eval mode."""
    name = type(module).__name__
    where = f"{name} at '{path or '<model>'}'"
    if name in _UNSUPPORTED:
        raise EqdeployError(f"unsupported module {where}: it acts inside non-permutation "
                            "fields, which no plain conv graph reproduces", _UNSUPPORTED[name])
    builder = _BUILDERS.get(name)
    if builder is None:
        raise EqdeployError(f"unsupported module {where}: eqdeploy has no plain equivalent",
                            f"use one of {sorted(_BUILDERS)} or open an issue")
    try:
        return builder(module).eval()
    except _Unsupported as e:
        raise EqdeployError(f"cannot convert {where}: {e.why}", e.fix) from None


@contextlib.contextmanager
def swapped_modules(model: nn.Module) -> Iterator[dict[str, Swapped]]:
    """Swap every leaf equivariant module of ``model`` for the duration of the block.

    Yields the swapped modules by path and puts the originals back on exit, so the caller's
    model is unchanged afterwards (e2cnn/escnn models cannot be deep-copied in eval mode).
    """
    if framework_of(model) and type(model).__name__ not in _CONTAINERS:
        raise EqdeployError("the model is a single equivariant layer",
                            "wrap it in a SequentialModule or an nn.Module")
    plan: list[tuple[nn.Module, str, str, nn.Module]] = []

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in parent.named_children():
            path = f"{prefix}{name}"
            if framework_of(child) and type(child).__name__ not in _CONTAINERS:
                plan.append((parent, name, path, child))
            else:
                visit(child, path + ".")

    visit(model, "")
    swapped = {path: Swapped(plain_equivalent(child, path), child.in_type, child.out_type,
                             type(child).__name__) for _, _, path, child in plan}
    try:
        for parent, name, path, _ in plan:
            parent._modules[name] = swapped[path]
        yield swapped
    finally:
        for parent, name, _, child in plan:
            parent._modules[name] = child
