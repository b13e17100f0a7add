"""Plain-PyTorch (and TorchScript) group-equivariant models: export + orbit discovery.

``discover_plain(model, example, group_name)`` exports any traceable model to a plain aten
graph (dynamic batch) and *discovers* the SymmetrySpec by probing (DESIGN.md section 3):

1. For each generator s of the exact subgroup H of the named group G (rot90, or rot180 for
   N = 2 mod 4; the flip for D_N), random inputs x and s.x are run through the graph with
   an ``fx.Interpreter`` that records every float tensor that depends on the input and
   has the batch as its leading axis.
2. For every such tensor T, the permutation pi with ``T(s.x) == spatial_s(T(x))[:, pi]``
   is found by matching channels (squared distance on a subsample, then a linear
   assignment that prefers the identity among exact ties, then an exact check of every
   value within ``tol`` relative to the tensor's largest value). The group may act on any
   axes (``eqdeploy.adapters.matching``): T is read through candidate *views*, a pair of
   adjacent spatial axes moved by the pixel action or left alone (rot90-stacking models
   permute copies without rotating the maps: ``spatial=False``), the other non-batch axes
   flattened into one channel index; or, without spatial extent (after global pooling, a
   ``squeeze()``, a flatten), every axis a channel axis. So ``(N, C, G, H, W)``,
   ``(N, C, H, W, G)`` (a rotation stack on the last axis) and ``(N, C, G)`` all have
   channel ``c*G + g``. The first view under which a permutation exists is kept (the
   same view for every generator). Only tensors read channel-first (``(N, C)``,
   ``(N, C, H, W)``) get ``spec.tensors`` layouts; the others are listed in
   ``info["discovery"]["stacked_layouts"]`` with their view (no stage reads them).
3. The perms of every element of H are composed from the generators' perms along words
   (``p_{s g} = p_g[p_s]``), checking that they form a representation (a closed word
   gives the identity).
4. Fields are the orbits of the group on the channels (channels ascending): an orbit of
   size |group| is ``regular``, a smaller one ``quotient``, a fixed channel ``trivial``.
   Where orbits interleave (a grouped conv's channel ``g*C + c``: orbit ``{c, C + c, ...}``)
   the layout gets a channel order (strided fields, ``SymmetrySpec.field_channels``).

Groups without an exact pixel action for every element (C8, C12, D8, ...): only H (C4, D4,
C2, ...) is discovered. The perms of the other elements are derived when every field is a
fixed channel (trivial) or a block of |G| channels on which H acts exactly as on the
canonical regular representation (channel i <-> element i in ``Group.elements`` order,
the e2cnn/escnn order); the spec then keeps G, its non-exact perms are marked as derived in
``info``, and their correctness is measured only by the interpolated checks. Otherwise the
spec's group becomes H and ``info["group_reduced"]`` says why (which tensor and field).

A tensor with no permutation is not equivariant: ``EqdeployError`` naming the aten node and
the module path that produced it, or, with ``allow_broken=True``, an entry of
``info["broken_tensors"]`` (the tensor then has no layout). Tensors computed from a
``--tap`` node (``tap=``) may be broken without an error: the head after a tap need not be
equivariant; they are listed in ``info["discovery"]["not_equivariant_after_tap"]``.

TorchScript input goes through ``eqdeploy.adapters.torchscript.torchscript_to_module``
(the graph interpreted with its input-independent part folded, then exported).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import fx, nn

from eqdeploy.adapters.matching import (
    View,
    candidate_views,
    exact,
    match_channels,
    norms_compatible,
    reference,
)
from eqdeploy.adapters.rewrites import (
    activations_before_reshapes,
    convolution_to_conv2d,
    drop_guards,
    explicit_squeezes,
    fold_bias_adds,
    fold_constants,
    merge_field_batchnorm,
)
from eqdeploy.adapters.stacked import (
    cancel_round_trips,
    fill_vals,
    merge_stacked_convs,
    pool3d_to_pool2d,
    reductions_before_views,
    shuffles_into_convs,
    stacked_conv3d_to_grouped,
)
from eqdeploy.adapters.torchscript import torchscript_to_module
from eqdeploy.adapters.unfold import rewrite_windows
from eqdeploy.errors import EqdeployError
from eqdeploy.export import PlainModel
from eqdeploy.graph_cost import multiply_adds
from eqdeploy.groups import Element, Group, apply_pixel_action
from eqdeploy.spec import Layout, Representation, SymmetrySpec, trivial_layout

DEFAULT_TOL = 1e-4
MAX_RANK = 6

__all__ = ["discover_layouts", "discover_plain", "export_plain", "exact_subgroup",
           "layout_from_perms", "match_channels", "regular_perms"]

Key = tuple[int, int]  # (flip, rotation) of an element of the named group


# --- group arithmetic on (flip, rotation) keys ------------------------------------------------
def _mul(a: Key, b: Key, n: int) -> Key:
    """``a * b`` in D_N / C_N with elements ``r^k F^f`` (flip first, then rotate)."""
    return (a[0] ^ b[0], (a[1] + (-1) ** a[0] * b[1]) % n)


def _inv(a: Key, n: int) -> Key:
    return a if a[0] else (0, (-a[1]) % n)


def exact_subgroup(group: Group) -> tuple[Group, list[Key], int]:
    """(H as a Group, H's generators as keys of ``group``, rotation step of H in ``group``)."""
    n = group.rotations
    m = math.gcd(n, 4)  # exact rotations: multiples of n / m steps
    step = n // m
    gens: list[Key] = [(0, step)] if m > 1 else []
    if group.has_flips:
        gens.append((1, 0))
    return Group(f"{'D' if group.has_flips else 'C'}{m}"), gens, step


def regular_perms(group: Group) -> dict[Key, np.ndarray]:
    """Canonical regular representation: channel j <-> element j of ``group.elements``;
    ``perm_g[j] = index(g^-1 h_j)`` (the left regular action, as e2cnn's regular_repr)."""
    keys = [(e.flip, e.rotation) for e in group.elements]
    index = {k: i for i, k in enumerate(keys)}
    n = group.rotations
    return {g: np.array([index[_mul(_inv(g, n), h, n)] for h in keys]) for g in keys}


# --- recording intermediate tensors ------------------------------------------------------------
class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, names: set[str],
                 sink: Callable[[str, torch.Tensor], None]) -> None:
        super().__init__(gm)
        self.names, self.sink = names, sink

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n.name in self.names and isinstance(out, torch.Tensor):
            self.sink(n.name, out.detach())
        return out


def _run(gm: fx.GraphModule, x: np.ndarray, names: set[str],
         sink: Callable[[str, torch.Tensor], None]) -> None:
    with torch.no_grad():
        _Recorder(gm, names, sink).run(torch.from_numpy(np.ascontiguousarray(x)))


# --- layouts from perms ------------------------------------------------------------------------
def _orbits(perms: list[np.ndarray], c: int) -> list[list[int]]:
    parent = list(range(c))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for p in perms:
        for j, i in enumerate(p.tolist()):
            ra, rb = find(i), find(j)
            if ra != rb:
                parent[ra] = rb
    groups: dict[int, list[int]] = {}
    for i in range(c):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values())


def _blocks(perms: list[np.ndarray], c: int) -> list[tuple[int, int, int]]:
    """Smallest contiguous ranges closed under ``perms``: (start, end, number of orbits)."""
    spans = sorted((min(o), max(o) + 1) for o in _orbits(perms, c))
    out: list[list[int]] = []
    for s, e in spans:
        if out and s < out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
            out[-1][2] += 1
        else:
            out.append([s, e, 1])
    return [tuple(b) for b in out]


def _kind(size: int, order: int) -> str:
    """Kind of one orbit (a transitive permutation representation) of ``size`` channels."""
    if size == 1:
        return "trivial"
    return "regular" if size == order else "quotient"


class _Reps:
    """Representation registry: one name per distinct (kind, size, perms)."""

    def __init__(self, group: Group) -> None:
        self.group = group
        self.reps: dict[str, Representation] = {}
        trivial_layout(self.reps, group, 0, True)  # registers "trivial"
        self._by_key: dict[tuple, str] = {
            ("trivial", 1, tuple((e.name, (0,)) for e in group.elements)): "trivial"}

    def name_for(self, kind: str, perms: dict[str, tuple[int, ...]]) -> str:
        size = len(next(iter(perms.values())))
        key = (kind, size, tuple((e.name, perms[e.name]) for e in self.group.elements))
        if key in self._by_key:
            return self._by_key[key]
        base = kind if kind in ("regular", "trivial") else f"{kind}{size}"
        name, i = base, 1
        while name in self.reps:
            i += 1
            name = f"{base}_{i}"
        self.reps[name] = Representation(name, size, kind, perms)
        self._by_key[key] = name
        return name


def layout_from_perms(perms: dict[Key, np.ndarray], group: Group, reps: _Reps,
                      channels: int, spatial: bool) -> Layout:
    """Layout of a tensor from one full channel permutation per element of ``group``: one
    field per orbit (its channels ascending), with a channel order where orbits interleave
    (strided fields, e.g. channel ``g*C + c`` of a grouped conv)."""
    keys = [(e.flip, e.rotation) for e in group.elements]
    orbits = _orbits([perms[k] for k in keys], channels)
    order = np.array([i for o in orbits for i in o], dtype=np.int64)
    pos = np.empty(channels, dtype=np.int64)
    pos[order] = np.arange(channels)
    fields, start = [], 0
    for orbit in orbits:
        idx = np.asarray(orbit)
        local = {e.name: tuple(int(i) - start for i in pos[perms[k][idx]])
                 for e, k in zip(group.elements, keys, strict=True)}
        fields.append((start, reps.name_for(_kind(len(orbit), group.order), local)))
        start += len(orbit)
    return Layout(tuple(fields), channels, spatial, tuple(order.tolist()))


# --- the discovery -----------------------------------------------------------------------------
@dataclass
class _Tensor:
    name: str
    shape: tuple[int, ...]
    module: str
    op: str
    args: list[str] = field(default_factory=list)
    gen_perms: dict[Key, np.ndarray] = field(default_factory=dict)
    view: View | None = None  # fixed by the first generator that matched
    broken: dict | None = None
    ties: int = 0

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def channels(self) -> int:
        return self.view.channels(self.shape) if self.view is not None else -1


def _module_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<top level>"
    path = list(stack.values())[-1][0]
    return path or "<top level>"


def _depends_on(graph: fx.Graph, source: str) -> set[str]:
    dep = {source}
    for n in graph.nodes:
        if any(a.name in dep for a in n.all_input_nodes):
            dep.add(n.name)
    return dep


def _batch_leading(node: fx.Node, batch_symbol: str | None) -> bool:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or val.dim() == 0:
        return False
    lead = val.shape[0]
    if batch_symbol is None:
        return True
    return isinstance(lead, torch.SymInt) and str(lead) == batch_symbol


def _pixels(view, shape: tuple[int, ...]) -> int:
    """Entries of ``view``'s spatial pair (1 without one): at 1 the pixel action is trivial,
    so a 1x1 map read as a pair and the same values read as channels are one layout (a
    global pool's ``(N, C, 1, 1, G)`` and its ``squeeze()``d ``(N, C, G)``)."""
    return 1 if view.pair is None else int(shape[view.pair[0]] * shape[view.pair[1]])


def _match_tensor(t: _Tensor, tensors: dict[str, _Tensor], moved_raw: np.ndarray,
                  base_raw: np.ndarray, el: Element, key: Key, tol: float) -> None:
    """Find ``t``'s channel permutation under generator ``el`` (and its view, if not fixed
    yet), or mark it broken with the best assignment's error."""
    views = [t.view] if t.view is not None else candidate_views(t.shape, el)
    tries = [(v, v.canon(moved_raw), reference(base_raw, v, el)) for v in views]
    # prefer the perm of the producer (same channels): consistent fields across ops even
    # where channels tie (dead ReLU channels, stacked identical copies)
    for arg in t.args:
        src = tensors.get(arg)
        if src is None or src.view is None or key not in src.gen_perms:
            continue
        src_shape = tensors[arg].shape
        for v, moved, ref in tries:
            same_action = v.spatial() == src.view.spatial() or (
                _pixels(v, t.shape) == 1 and _pixels(src.view, src_shape) == 1)
            if v.channels(t.shape) == src.channels and same_action \
                    and exact(moved, ref, src.gen_perms[key], tol):
                t.gen_perms[key], t.view = src.gen_perms[key], v
                return
    best = None
    for v, moved, ref in tries:
        if len(tries) > 1 and not norms_compatible(moved, ref, tol):
            continue
        m = match_channels(moved, ref, tol)
        if m.perm is not None:
            t.gen_perms[key], t.view = m.perm, v
            t.ties = max(t.ties, m.ties)
            return
        best = m if best is None or m.err < best.err else best
    if best is None:  # every view failed the norm test: report the most natural one
        best = match_channels(*tries[0][1:], tol)
    t.broken = {"element": el.name, "module": t.module, "op": t.op,
                "rel_err": round(best.err, 6), "channel": best.channel}


def discover_layouts(program: torch.export.ExportedProgram, group: Group,
                     input_shape: tuple[int, ...], *, probes: int = 4, seed: int = 0,
                     tol: float = DEFAULT_TOL, allow_broken: bool = False,
                     tap: str | None = None) -> tuple[SymmetrySpec, dict]:
    """SymmetrySpec of ``program`` (names as in ``program.graph``) found by probing.

    ``tap``: a node whose descendants need not be equivariant (``--tap``: the head after
    it reads group channels on purpose); they are listed, not raised.
    """
    t0 = time.perf_counter()
    graph = program.graph
    user_in = program.graph_signature.user_inputs[0]
    user_out = program.graph_signature.user_outputs[0]
    in_node = next(n for n in graph.nodes if n.name == user_in)
    in_val = in_node.meta.get("val")
    batch_symbol = str(in_val.shape[0]) if isinstance(in_val, torch.Tensor) and \
        isinstance(in_val.shape[0], torch.SymInt) else None
    dep = _depends_on(graph, user_in)
    after_tap = _depends_on(graph, tap) - {tap} if tap else set()
    tensors: dict[str, _Tensor] = {}
    unchecked: dict[str, str] = {}
    for n in graph.nodes:
        if n.op != "call_function" or n.name not in dep:
            continue
        val = n.meta.get("val")
        if not isinstance(val, torch.Tensor) or not val.is_floating_point():
            continue
        if val.dim() < 2:
            unchecked[n.name] = f"rank {val.dim()}: no channel axis"
            continue
        if not _batch_leading(n, batch_symbol):
            unchecked[n.name] = f"leading axis {val.shape[0]} is not the batch"
            continue
        if val.dim() > MAX_RANK:
            unchecked[n.name] = f"rank {val.dim()}"
            continue
        shape = (-1, *(int(d) for d in val.shape[1:]))
        tensors[n.name] = _Tensor(n.name, shape, _module_path(n), str(n.target),
                                  [a.name for a in n.all_input_nodes])

    hgroup, gens, step = exact_subgroup(group)
    gen_elements = {k: Element(k[0], k[1], group.rotations) for k in gens}
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((max(2, probes), *input_shape[1:])).astype(np.float32)
    gm = program.module()
    names = set(tensors)
    base: dict[str, np.ndarray] = {}
    _run(gm, x, names, lambda k, v: base.__setitem__(k, v.numpy().copy()))

    for key, el in gen_elements.items():
        def check(name: str, val: torch.Tensor, el=el, key=key) -> None:
            t = tensors[name]
            if t.broken is None:
                _match_tensor(t, tensors, val.numpy(), base[name], el, key, tol)

        _run(gm, apply_pixel_action(x, el), names, check)
    if not gen_elements:  # the trivial group (C1) moves nothing: every tensor as it is
        ident = Element(0, 0, group.rotations)
        for t in tensors.values():
            views = candidate_views(t.shape, ident)
            t.view = next((v for v in views if v.is_channel_first(t.shape)), views[0])

    # compose perms over the exact subgroup, checking they form a representation
    n = group.rotations
    h_keys = [(f, k) for f in ((0, 1) if group.has_flips else (0,)) for k in range(0, n, step)]
    full: dict[str, dict[Key, np.ndarray]] = {}
    for t in tensors.values():
        if t.broken is not None:
            continue
        perms: dict[Key, np.ndarray] = {(0, 0): np.arange(t.channels)}
        frontier = [(0, 0)]
        while frontier and t.broken is None:
            g = frontier.pop()
            for s in gens:
                sg = _mul(s, g, n)
                p = perms[g][t.gen_perms[s]]
                if sg not in perms:
                    perms[sg] = p
                    frontier.append(sg)
                elif not np.array_equal(perms[sg], p):
                    t.broken = {"element": Element(sg[0], sg[1], n).name, "module": t.module,
                                "op": t.op, "rel_err": None, "channel": None,
                                "why": "the generators' channel permutations do not form a "
                                       f"representation of {hgroup.name}"}
                    break
        if t.broken is None:
            full[t.name] = perms

    broken = {name: t.broken for name, t in tensors.items() if t.broken is not None}
    blocking = [nm for nm in tensors if nm in broken and nm not in after_tap]
    if blocking and not allow_broken:
        name = blocking[0]  # first in graph order
        b = broken[name]
        why = b.get("why") or (f"no channel permutation maps it onto its transform (best "
                               f"match off by {b['rel_err']:.2e} relative at channel "
                               f"{b['channel']})")
        raise EqdeployError(f"tensor {name} ({b['op']} in module {b['module']}) is not "
                            f"equivariant under {b['element']} of {group.name}: {why}",
                            "make that layer equivariant, check --group, or pass "
                            "--allow-broken to convert and report it anyway")

    # derive non-exact elements, or reduce the group to the exact subgroup
    spec_group, derived, reduced = group, False, None
    if hgroup.order != group.order:
        reg = regular_perms(group)
        all_keys = [(e.flip, e.rotation) for e in group.elements]
        derived_full: dict[str, dict[Key, np.ndarray]] = {}
        for name, perms in full.items():
            out = {k: np.empty(tensors[name].channels, dtype=np.int64) for k in all_keys}
            for start, end, n_orb in _blocks(list(perms.values()), tensors[name].channels):
                size = end - start
                if size == 1:
                    for k in all_keys:
                        out[k][start] = start
                    continue
                fits = size == group.order and n_orb == size // hgroup.order and all(
                    np.array_equal(perms[k][start:end] - start, reg[k]) for k in h_keys)
                if not fits:
                    reduced = (f"tensor {name} has a field at channels {start}..{end - 1} "
                               f"(size {size}) that is not a regular {group.name} field in "
                               f"the canonical order, so the perms of the non-exact elements "
                               f"cannot be derived; the spec uses the exact subgroup "
                               f"{hgroup.name}")
                    break
                for k in all_keys:
                    out[k][start:end] = start + reg[k]
            if reduced:
                break
            derived_full[name] = out
        if reduced is None:
            full, derived = derived_full, True
        else:
            spec_group = hgroup
            full = {name: {(k[0], k[1] // step): p for k, p in perms.items()}
                    for name, perms in full.items()}

    reps = _Reps(spec_group)
    layouts: dict[str, Layout] = {}
    stacked: dict[str, dict] = {}
    for name, perms in full.items():
        t = tensors[name]
        lay = layout_from_perms(perms, spec_group, reps, t.channels, t.view.spatial())
        if t.view.is_channel_first(t.shape):
            layouts[name] = lay
        else:  # the action lives on other axes: recorded, not read by any stage
            stacked[name] = {**t.view.to_json(t.shape), **lay.to_json()}
    input_layout = trivial_layout(reps.reps, spec_group, int(input_shape[1]),
                                  len(input_shape) == 4)
    layouts[user_in] = input_layout
    info: dict = {}
    if user_out in layouts:
        output_layout = layouts[user_out]
    else:
        out_val = next(nd for nd in graph.nodes if nd.name == user_out).meta["val"]
        output_layout = trivial_layout(reps.reps, spec_group, int(out_val.shape[1]),
                                       out_val.dim() == 4)
        info["output_action"] = ("assumed invariant: the output " + (
            "is not equivariant" + (f" (after the tap {tap})" if user_out in after_tap
                                    else "") if user_out in broken else
            "could not be checked"))
    spec = SymmetrySpec(spec_group, reps.reps, input_layout, output_layout, layouts, info={})
    spec.validate()
    info["discovery"] = {
        "group_requested": group.name, "group": spec_group.name,
        "exact_subgroup": hgroup.name,
        "generators": [gen_elements[k].name for k in gens],
        "probes": int(len(x)), "tolerance": tol,
        "tensors_checked": len(tensors), "tensors_with_layout": len(layouts) - 1,
        "spatial_false": sorted(nm for nm, t in tensors.items()
                                if nm in full and not t.view.spatial()),
        "tied_channels": {nm: t.ties for nm, t in tensors.items() if t.ties},
        "unchecked_tensors": unchecked, "stacked_layouts": stacked,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if derived:
        info["discovery"]["derived_elements"] = [
            e.name for e in group.elements if not e.exact]
        info["discovery"]["derived_note"] = (
            "perms of the non-exact elements derived from the canonical regular order "
            "(every field is trivial or a regular field on which the exact subgroup acts "
            "canonically); verified only by interpolated checks")
    if reduced:
        info["group_reduced"] = reduced
    if broken:
        info["broken_tensors"] = broken
    if tap:
        info["discovery"]["tap"] = tap
        info["discovery"]["not_equivariant_after_tap"] = [nm for nm in broken
                                                          if nm in after_tap]
    return spec, info


# --- export ------------------------------------------------------------------------------------
def _dynamic_export(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=4096)
    traced = example.repeat(2, *([1] * (example.dim() - 1)))[: max(2, example.shape[0])]
    return torch.export.export(module, (traced,), dynamic_shapes=({0: batch},))


def export_plain(model: nn.Module | torch.jit.ScriptModule, example: torch.Tensor,
                 rewrite: bool = True) -> tuple[torch.export.ExportedProgram, dict]:
    """torch.export (dynamic batch) with the rewrites; returns the program and info."""
    info: dict = {"framework": "torch"}
    t0 = time.perf_counter()
    if isinstance(model, torch.jit.ScriptModule):
        info["framework"] = "torchscript"
        module: nn.Module = torchscript_to_module(model, example)
    else:
        module = model.eval()
        info["trainable_parameters"] = int(sum(p.numel() for p in model.parameters()))
    try:
        program = _dynamic_export(module, example)
    except Exception as e:  # noqa: BLE001 - torch.export raises many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EqdeployError(f"torch.export failed on the model's forward ({first[:200]})",
                            "keep forward free of data-dependent Python control flow") from e
    info["source_multiply_adds"] = multiply_adds(program.graph)
    gm = program.module()
    drop_guards(gm)
    notes: list[dict] = []
    if rewrite:
        notes += [{"node": nm, "kind": "constant-folded", "note": "input-independent op "
                   "evaluated once (filter bank) -> constant parameter"}
                  for nm in fold_constants(gm)]
        notes += [{"node": nm, "kind": "field batch norm -> 4D batch norm", "note": "5D "
                   "batch_norm between reshapes, statistics repeated over each field"}
                  for nm in merge_field_batchnorm(gm)]
        fill_vals(gm)
        counts = [(merge_stacked_convs(gm), "stacked convs -> one conv2d", "conv2d layers "
                   "on one input (rotated kernels) stacked on a group axis -> one conv2d with "
                   "the weights concatenated")]
        notes += stacked_conv3d_to_grouped(gm)
        counts.append((fold_bias_adds(gm), "bias add folded into conv", "a constant added "
                       "after reshapes of a conv output (y + bias.view(1, C, 1, 1, 1)) -> "
                       "the conv's bias"))
    converted = convolution_to_conv2d(gm)
    converted += rewrite_windows(gm, info) if rewrite else 0
    if rewrite:
        counts += [
            (pool3d_to_pool2d(gm), "pool3d(1,k,k)->pool2d", "5D pooling of each stacked copy "
             "-> 2D pooling of the g-major (N, G*C, H, W) view"),
            (activations_before_reshapes(gm), "activation before reshape", "reshape -> relu "
             "became relu -> reshape, so the activation fuses into the conv before it"),
            (cancel_round_trips(gm), "layout round trips cancelled", "inverse permute/"
             "reshape pairs between per-copy layers removed (g-major order kept)"),
            (reductions_before_views(gm), "reduction before view", "a keepdim "
             "reduction of a permuted/unflattened tensor runs on the 4D tensor before it"),
            (shuffles_into_convs(gm), "channel shuffle into conv", "c-major copies "
             "reordered g-major by the conv that writes them (weight rows permuted)"),
            (explicit_squeezes(gm), "squeeze() -> squeeze(dims)", "the size-1 axes at "
             "export: a deployed batch of 1 keeps its batch axis")]
        notes += [{"kind": kind, "count": count, "note": note}
                  for count, kind, note in counts if count]
    if notes or converted:
        program = _dynamic_export(gm, example)
    info["rewrites"] = info.get("rewrites", []) + notes
    info["export_seconds"] = round(time.perf_counter() - t0, 3)
    info["deployed_parameters"] = int(sum(p.numel() for p in program.state_dict.values()))
    info["deployed_multiply_adds"] = multiply_adds(program.graph)
    info["input_shape"] = list(example.shape)
    return program, info


def discover_plain(model: nn.Module | torch.jit.ScriptModule | torch.export.ExportedProgram,
                   example: torch.Tensor, group_name: str, *, allow_broken: bool = False,
                   probes: int = 4, seed: int = 0, tol: float = DEFAULT_TOL,
                   rewrite: bool = True, tap: str | None = None) -> PlainModel:
    """Export a plain-PyTorch/TorchScript group-equivariant model and discover its spec.

    A model is exported and normalized (``eqdeploy.normalize``) before discovery, so every
    tensor of the canonical graph gets its layout by probing (a 4-D view the normalization
    makes of a 5-D stacked tensor has no counterpart to carry a layout from). An
    ``ExportedProgram`` (e.g. ``PlainModel.program`` of an e2cnn export) is used as is, so the
    discovered ``spec.tensors`` use its node names. ``tap``: a ``--tap`` layer
    (module path or node name); layers after it need not be equivariant.
    """
    group = Group(group_name.strip().upper())
    if isinstance(model, torch.export.ExportedProgram):
        program = model
        info = {"framework": "torch.export", "input_shape": list(example.shape)}
    else:
        program, info = export_plain(model, example, rewrite=rewrite)
        if rewrite:  # discover on the canonical graph: every tensor later stages see
            from eqdeploy.normalize import normalize_program

            t0 = time.perf_counter()
            program, counts = normalize_program(program, example)
            info.update(normalize=counts, normalize_seconds=round(time.perf_counter() - t0, 3))
    tap_node = None
    if tap:
        from eqdeploy.tap import resolve_tap

        tap_node = resolve_tap(program, tap)
    spec, dinfo = discover_layouts(program, group, tuple(example.shape), probes=probes,
                                   seed=seed, tol=tol, allow_broken=allow_broken,
                                   tap=tap_node)
    info.update(dinfo)
    return PlainModel(program, spec, example, info)
