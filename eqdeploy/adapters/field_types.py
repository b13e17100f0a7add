"""Read groups, representations and tensor layouts off e2cnn/escnn field types.

A permutation representation's matrix ``P = rep(g)`` has one-hot rows, so
``perm = P.round().argmax(1)`` (output channel j <- input channel perm[j]), and
``ft.transform(x, g) == spatial_g(x)[:, perm]`` holds exactly.

A model that restricts its fields to a subgroup (``RestrictionModule``) has one group, the
smallest (``model_group``); field types over a larger gspace are read through that
subgroup (an element rotating by k of M steps is the gspace's rotation by k * N / M), and
their representations are named ``<larger group>:<name>``, as e2cnn names restricted ones.
"""

from __future__ import annotations

import math

import numpy as np

from eqdeploy.errors import EqdeployError
from eqdeploy.groups import Element, Group
from eqdeploy.spec import Layout, Representation


def _is_escnn(gspace) -> bool:
    return type(gspace).__module__.split(".")[0] == "escnn"


def _escnn_group_of(gspace) -> Group:
    """escnn has one gspace class for all planar groups: read its orders and flip axis."""
    n = getattr(gspace, "rotations_order", None)
    if getattr(gspace, "dimensionality", 2) != 2 or n is None or n <= 0:
        raise EqdeployError(f"the model's group {gspace.name} is continuous or not planar",
                            "use rot2dOnR2(N) or flipRot2dOnR2(N) with N > 0")
    if gspace.flips_order:
        axis2 = gspace._sg_id[0]  # twice the flip axis; the default axis pi/2 gives pi
        if not math.isclose(axis2 % (2 * math.pi), math.pi):
            raise EqdeployError(f"the model's flip axis is {axis2 / 2:.4f} rad",
                                "build the gspace with the default axis pi/2")
        return Group(f"D{n}")
    return Group(f"C{n}")


def group_of(gspace) -> Group:
    """The finite planar group of an e2cnn/escnn gspace."""
    if _is_escnn(gspace):
        return _escnn_group_of(gspace)
    fiber = gspace.fibergroup
    order = fiber.order()
    if order is None or order <= 0:
        raise EqdeployError(f"the model's group {gspace.name} is continuous",
                            "use a finite group (C_N or D_N, N > 0): only finite groups "
                            "have permutation fields that survive quantization")
    flips = "Flip" in type(gspace).__name__ or "flip" in type(gspace).__name__
    axis = getattr(gspace, "axis", math.pi / 2)
    if flips and not math.isclose(axis, math.pi / 2):
        raise EqdeployError(f"the model's flip axis is {axis:.4f} rad",
                            "build the gspace with the default axis pi/2")
    if flips:
        rotations = order // 2
        return Group(f"D{rotations}")
    return Group(f"C{order}")


def model_group(gspaces) -> Group:
    """The one group of a model whose field types live on ``gspaces``: the smallest, which
    every other one must contain (restriction only ever goes to a subgroup)."""
    groups = {g.name: g for g in (group_of(s) for s in gspaces)}
    smallest = min(groups.values(), key=lambda g: g.order)
    for g in groups.values():
        if g.rotations % smallest.rotations or (smallest.has_flips and not g.has_flips):
            raise EqdeployError(f"the model's field types use the groups {sorted(groups)}, "
                                f"and {smallest.name} is not a subgroup of {g.name}",
                                "restrict fields only to subgroups (RestrictionModule)")
    return smallest


def _rotation_order(gspace) -> int:
    if _is_escnn(gspace):
        return max(int(gspace.rotations_order), 1)
    name = type(gspace).__name__
    if name == "FlipRot2dOnR2":
        return int(gspace.fibergroup.rotation_order)
    return 1 if name == "Flip2dOnR2" else int(gspace.fibergroup.order())


def framework_element(gspace, element: Element):
    """The library's element for ``element`` (of the gspace's group or a subgroup of it):
    e2cnn int or (flip, rotation) tuple, escnn ``GroupElement``."""
    n = _rotation_order(gspace)
    flips = bool(gspace.flips_order) if _is_escnn(gspace) else "Flip" in type(gspace).__name__
    if n % element.order or (element.flip and not flips):
        raise EqdeployError(f"the group element {element.name} ({element.order} rotations) is "
                            f"not in the field type's group {gspace.name}",
                            "report this model to eqdeploy")
    rotation = element.rotation * (n // element.order)
    if _is_escnn(gspace):
        if flips and n > 1:
            value = (element.flip, rotation)
        elif flips:  # flip2dOnR2: a C2 whose element 1 is the flip
            value = element.flip
        else:
            value = rotation
        return gspace.fibergroup.element(value, "int")
    name = type(gspace).__name__
    if name in ("Flip2dOnR2",):
        return element.flip
    if name in ("FlipRot2dOnR2",):
        return (element.flip, rotation)
    return rotation


def _kind(rep) -> str:
    name = rep.name
    if rep.is_trivial():
        return "trivial"
    if name.startswith("regular"):
        return "regular"
    if name.startswith("quotient"):
        return "quotient"
    if name.startswith("irrep"):
        return "irrep"
    return "other"


def _permutation_kind(perms: dict[str, tuple[int, ...]], size: int, order: int) -> str:
    """Kind of a permutation representation from its orbits: one orbit of |G| channels is
    regular, a smaller single orbit a quotient, several orbits 'other'."""
    if size == 1:
        return "trivial"
    orbit, frontier = {0}, [0]
    while frontier:
        i = frontier.pop()
        for p in perms.values():
            if p[i] not in orbit:
                orbit.add(p[i])
                frontier.append(p[i])
    if len(orbit) < size:
        return "other"
    return "regular" if size == order else "quotient"


def representation_of(rep, group: Group, gspace) -> Representation:
    """Our Representation for an e2cnn/escnn representation, perms if it permutes; a
    representation of a larger group than ``group`` is read through ``group``."""
    perms: dict[str, tuple[int, ...]] | None = {}
    for el in group.elements:
        m = np.asarray(rep(framework_element(gspace, el)), dtype=np.float64)
        p = m.round().argmax(1)
        is_perm = np.allclose(m, np.eye(rep.size)[p], atol=1e-6) and len(set(p)) == rep.size
        if not is_perm:
            perms = None
            break
        perms[el.name] = tuple(int(i) for i in p)
    native = group_of(gspace).name == group.name
    if native:
        return Representation(rep.name, rep.size, _kind(rep), perms)
    kind = "other" if perms is None else _permutation_kind(perms, rep.size, group.order)
    return Representation(rep_name(rep, group, gspace), rep.size, kind, perms)


def rep_name(rep, group: Group, gspace) -> str:
    """The representation's name in a model over ``group``: e2cnn/escnn's own name, with the
    larger group's name in front where the gspace's group is larger than the model's."""
    outer = group_of(gspace).name
    return rep.name if outer == group.name or rep.name.startswith(f"{outer}:") \
        else f"{outer}:{rep.name}"


def layout_of(field_type, group: Group, reps: dict[str, Representation],
              spatial: bool = True) -> Layout:
    """Layout of a tensor of ``field_type``; registers its representations in ``reps``."""
    fields = []
    start = 0
    for rep in field_type.representations:
        name = rep_name(rep, group, field_type.gspace)
        if name not in reps:
            reps[name] = representation_of(rep, group, field_type.gspace)
        fields.append((start, name))
        start += rep.size
    return Layout(tuple(fields), start, spatial)


def exact_channel_perms(field_type, group: Group) -> dict[str, np.ndarray] | None:
    """Channel permutation of every exact element (identity included) on ``field_type``;
    None if a field is not a permutation representation."""
    reps: dict[str, Representation] = {}
    layout = layout_of(field_type, group, reps)
    out = {}
    for el in group.elements:
        if not el.exact:
            continue
        perm = np.empty(layout.channels, dtype=np.int64)
        for start, name in layout.fields:
            rep = reps[name]
            if rep.perms is None:
                return None
            perm[start:start + rep.size] = start + np.asarray(rep.perms[el.name])
        out[el.name] = perm
    return out
