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
   value within ``tol`` relative to the tensor's largest value). 4D tensors are tried with
   the spatial action first, then with the channels alone (rot90-stacking models permute
   copies without rotating the maps; their layout then has ``spatial=False``). 5D
   ``(N, C, G, H, W)`` tensors are read as ``(N, C*G, H, W)``; they are listed in
   ``info["discovery"]["stacked_layouts"]`` but not in ``spec.tensors`` (no stage reads them).
3. The perms of every element of H are composed from the generators' perms along words
   (``p_{s g} = p_g[p_s]``), checking that they form a representation (a closed word
   gives the identity).
4. Fields are the smallest contiguous channel ranges closed under the group (the union of
   the orbits that overlap). A range that is one orbit of size |group| is ``regular``, one
   smaller orbit ``quotient``, a fixed channel ``trivial``, several interleaved orbits
   ``other`` (still a permutation representation, but one scale for all of it).

Groups without an exact pixel action for every element (C8, C12, D8, ...): only H (C4, D4,
C2, ...) is discovered. The perms of the other elements are derived when every field is a
fixed channel (trivial) or a block of |G| channels on which H acts exactly as on the
canonical regular representation (channel i <-> element i in ``Group.elements`` order,
the e2cnn/escnn order); the spec then keeps G, its non-exact perms are marked as derived in
``info``, and their correctness is measured only by the interpolated checks. Otherwise the
spec's group becomes H and ``info["group_reduced"]`` says why (which tensor and field).

A tensor with no permutation is not equivariant: ``EqdeployError`` naming the aten node and
the module path that produced it, or, with ``allow_broken=True``, an entry of
``info["broken_tensors"]`` (the tensor then has no layout).

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

from eqdeploy.adapters.rewrites import (
    activations_before_reshapes,
    convolution_to_conv2d,
    drop_guards,
    fold_constants,
    merge_field_batchnorm,
    pool3d_to_pool2d,
    rewrite_stacked_conv3d,
    stacked_conv3d_to_conv2d,
)
from eqdeploy.adapters.torchscript import torchscript_to_module
from eqdeploy.adapters.unfold import rewrite_windows
from eqdeploy.errors import EqdeployError
from eqdeploy.export import PlainModel
from eqdeploy.groups import Element, Group, apply_pixel_action
from eqdeploy.spec import Layout, Representation, SymmetrySpec, trivial_layout

DEFAULT_TOL = 1e-4
_MATCH_COLUMNS = 4096

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


# --- channel matching --------------------------------------------------------------------------
@dataclass
class _Match:
    perm: np.ndarray | None
    err: float  # worst relative error of the best assignment
    channel: int  # channel with the worst error
    ties: int  # channels with an exactly indistinguishable partner


def _as_channels(t: np.ndarray) -> np.ndarray:
    c = t.shape[1]
    return np.moveaxis(t, 1, 0).reshape(c, -1).astype(np.float64)


def _exact(moved: np.ndarray, ref: np.ndarray, perm: np.ndarray, tol: float) -> bool:
    scale = max(float(np.abs(moved).max(initial=0.0)), float(np.abs(ref).max(initial=0.0)),
                1e-30)
    return float(np.abs(moved - ref[:, perm]).max(initial=0.0)) <= tol * scale


def match_channels(moved: np.ndarray, ref: np.ndarray, tol: float) -> _Match:
    """The permutation pi with ``moved[:, j] == ref[:, pi[j]]`` within ``tol`` (relative to
    the largest magnitude), or ``perm=None`` with the best assignment's error."""
    a, b = _as_channels(moved), _as_channels(ref)
    c = a.shape[0]
    scale = max(float(np.abs(a).max(initial=0.0)), float(np.abs(b).max(initial=0.0)), 1e-30)
    atol = tol * scale
    ident = np.abs(a - b).max(axis=1, initial=0.0)
    if ident.max(initial=0.0) <= atol:
        return _Match(np.arange(c), float(ident.max(initial=0.0)) / scale, 0, 0)
    cols = a.shape[1]
    sel = np.linspace(0, cols - 1, min(cols, _MATCH_COLUMNS)).round().astype(np.int64)
    sa, sb = a[:, sel], b[:, sel]
    dist = (sa ** 2).sum(1)[:, None] + (sb ** 2).sum(1)[None, :] - 2.0 * sa @ sb.T
    dist = np.maximum(dist, 0.0) / (len(sel) * scale * scale)
    tie_eps = (tol * tol) * 1e-3
    ties = int(((dist < tie_eps).sum(1) > 1).sum())
    pi = dist.argmin(1)
    if len(set(pi.tolist())) != c or ties:
        from scipy.optimize import linear_sum_assignment

        # prefer the identity among (numerically) exact ties: dead or duplicate channels
        cost = np.where(dist < tie_eps, 0.0, dist) + tie_eps * (1 - np.eye(c))
        _, pi = linear_sum_assignment(cost)
    err = np.abs(a - b[pi]).max(axis=1) / scale
    worst = int(err.argmax())
    ok = float(err[worst]) <= tol
    return _Match(pi if ok else None, float(err[worst]), worst, ties)


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


def _kind(size: int, orbits: int, order: int) -> str:
    if size == 1:
        return "trivial"
    if orbits > 1:
        return "other"
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
    """Layout of a tensor from one full channel permutation per element of ``group``."""
    keys = [(e.flip, e.rotation) for e in group.elements]
    fields = []
    for start, end, n_orbits in _blocks([perms[k] for k in keys], channels):
        local = {e.name: tuple(int(i) - start for i in perms[k][start:end])
                 for e, k in zip(group.elements, keys, strict=True)}
        kind = _kind(end - start, n_orbits, group.order)
        fields.append((start, reps.name_for(kind, local)))
    return Layout(tuple(fields), channels, spatial)


# --- the discovery -----------------------------------------------------------------------------
@dataclass
class _Tensor:
    name: str
    ndim: int
    channels: int
    module: str
    op: str
    args: list[str] = field(default_factory=list)
    gen_perms: dict[Key, np.ndarray] = field(default_factory=dict)
    spatial: bool | None = None
    broken: dict | None = None
    ties: int = 0


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


def _spatial_ref(base: np.ndarray, element: Element) -> np.ndarray | None:
    """``spatial_g`` of a 4D ``(N, C, H, W)`` array, None if the action cannot be exact."""
    q = element.quarter_turns
    if base.ndim != 4 or (q % 2 == 1 and base.shape[-1] != base.shape[-2]):
        return None
    return apply_pixel_action(base, element)


def _as_4d(t: np.ndarray) -> np.ndarray:
    return t.reshape(t.shape[0], -1, *t.shape[-2:]) if t.ndim == 5 else t


def discover_layouts(program: torch.export.ExportedProgram, group: Group,
                     input_shape: tuple[int, ...], *, probes: int = 4, seed: int = 0,
                     tol: float = DEFAULT_TOL, allow_broken: bool = False
                     ) -> tuple[SymmetrySpec, dict]:
    """SymmetrySpec of ``program`` (names as in ``program.graph``) found by probing."""
    t0 = time.perf_counter()
    graph = program.graph
    user_in = program.graph_signature.user_inputs[0]
    user_out = program.graph_signature.user_outputs[0]
    in_node = next(n for n in graph.nodes if n.name == user_in)
    in_val = in_node.meta.get("val")
    batch_symbol = str(in_val.shape[0]) if isinstance(in_val, torch.Tensor) and \
        isinstance(in_val.shape[0], torch.SymInt) else None
    dep = _depends_on(graph, user_in)
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
        if val.dim() > 5:
            unchecked[n.name] = f"rank {val.dim()}"
            continue
        ch = int(val.shape[1]) * (int(val.shape[2]) if val.dim() == 5 else 1)
        tensors[n.name] = _Tensor(n.name, val.dim(), ch, _module_path(n), str(n.target),
                                  [a.name for a in n.all_input_nodes])

    hgroup, gens, step = exact_subgroup(group)
    gen_elements = {k: Element(k[0], k[1], group.rotations) for k in gens}
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((max(2, probes), *input_shape[1:])).astype(np.float32)
    gm = program.module()
    names = set(tensors)
    base: dict[str, np.ndarray] = {}
    _run(gm, x, names, lambda k, v: base.__setitem__(k, _as_4d(v.numpy().copy())))

    for key, el in gen_elements.items():
        def check(name: str, val: torch.Tensor, el=el, key=key) -> None:
            t = tensors[name]
            if t.broken is not None:
                return
            moved = _as_4d(val.numpy())
            ref = base[name]
            tries = []
            sref = _spatial_ref(ref, el) if t.spatial in (None, True) else None
            if sref is not None:
                tries.append((True, sref))
            if t.spatial in (None, False):
                tries.append((False, ref))
            # prefer the perm of the producer (same channels): consistent fields across
            # ops even where channels tie (dead ReLU channels, stacked identical copies)
            for arg in t.args:
                src = tensors.get(arg)
                if src is None or src.channels != t.channels or key not in src.gen_perms:
                    continue
                for spatial, r in tries:
                    if spatial == src.spatial and _exact(moved, r, src.gen_perms[key], tol):
                        t.gen_perms[key], t.spatial = src.gen_perms[key], spatial
                        return
            best = None
            for spatial, r in tries:
                m = match_channels(moved, r, tol)
                if m.perm is not None:
                    t.gen_perms[key], t.spatial = m.perm, spatial
                    t.ties = max(t.ties, m.ties)
                    return
                best = m if best is None or m.err < best.err else best
            t.broken = {"element": el.name, "module": t.module, "op": t.op,
                        "rel_err": None if best is None else round(best.err, 6),
                        "channel": None if best is None else best.channel}

        _run(gm, apply_pixel_action(x, el), names, check)

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
    if broken and not allow_broken:
        name = next(nm for nm in tensors if nm in broken)  # first in graph order
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
        spatial = bool(t.spatial) if t.ndim >= 4 else False
        lay = layout_from_perms(perms, spec_group, reps, t.channels, spatial)
        if t.ndim in (2, 4):
            layouts[name] = lay
        else:
            stacked[name] = lay.to_json()
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
        info["output_action"] = ("assumed invariant: the output " +
                                 ("is not equivariant" if user_out in broken else
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
                                if t.spatial is False and nm in full),
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
        if rewrite:
            module, done = rewrite_stacked_conv3d(module, example)
            info["rewrites"] = [r.to_json() for r in done]
    try:
        program = _dynamic_export(module, example)
    except Exception as e:  # noqa: BLE001 - torch.export raises many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EqdeployError(f"torch.export failed on the model's forward ({first[:200]})",
                            "keep forward free of data-dependent Python control flow") from e
    gm = program.module()
    drop_guards(gm)
    folded = fold_constants(gm) if rewrite else []
    merged = merge_field_batchnorm(gm) if rewrite else []
    stacked = stacked_conv3d_to_conv2d(gm) if rewrite else 0
    converted = convolution_to_conv2d(gm)
    converted += rewrite_windows(gm, info) if rewrite else 0
    pools = pool3d_to_pool2d(gm) if rewrite else 0
    moved = activations_before_reshapes(gm) if rewrite else 0
    if folded or merged or stacked or converted or pools or moved:
        program = _dynamic_export(gm, example)
        info.setdefault("rewrites", []).extend(
            {"node": nm, "kind": "constant-folded", "note": "input-independent op evaluated "
             "once (filter bank) -> constant parameter"} for nm in folded)
        info["rewrites"].extend(
            {"node": nm, "kind": "field batch norm -> 4D batch norm", "note": "5D batch_norm "
             "between reshapes, statistics repeated over each field"} for nm in merged)
        info["rewrites"].extend(
            {"kind": kind, "count": count, "note": note} for count, kind, note in [
                (stacked, "conv3d(1,k,k)->conv2d", "graph-level: (1, k, k) conv3d over "
                 "stacked copies -> block-diagonal conv2d"),
                (pools, "pool3d(1,k,k)->pool2d", "5D pooling of each stacked copy -> 2D "
                 "pooling of the (N, C*G, H, W) view"),
                (moved, "activation before reshape", "reshape -> relu became relu -> "
                 "reshape, so the activation fuses into the conv before it")] if count)
    info["export_seconds"] = round(time.perf_counter() - t0, 3)
    info["deployed_parameters"] = int(sum(p.numel() for p in program.state_dict.values()))
    info["input_shape"] = list(example.shape)
    return program, info


def discover_plain(model: nn.Module | torch.jit.ScriptModule | torch.export.ExportedProgram,
                   example: torch.Tensor, group_name: str, *, allow_broken: bool = False,
                   probes: int = 4, seed: int = 0, tol: float = DEFAULT_TOL,
                   rewrite: bool = True) -> PlainModel:
    """Export a plain-PyTorch/TorchScript group-equivariant model and discover its spec.

    An ``ExportedProgram`` (e.g. ``PlainModel.program`` of an e2cnn export) is used as is,
    so the discovered ``spec.tensors`` use its node names.
    """
    group = Group(group_name.strip().upper())
    if isinstance(model, torch.export.ExportedProgram):
        program = model
        info = {"framework": "torch.export", "input_shape": list(example.shape)}
    else:
        program, info = export_plain(model, example, rewrite=rewrite)
    spec, dinfo = discover_layouts(program, group, tuple(example.shape), probes=probes,
                                   seed=seed, tol=tol, allow_broken=allow_broken)
    info.update(dinfo)
    return PlainModel(program, spec, example, info)
