"""Read groups, representations and tensor layouts off e2cnn/escnn field types.

A permutation representation's matrix ``P = rep(g)`` has one-hot rows, so
``perm = P.round().argmax(1)`` (output channel j <- input channel perm[j]), and
``ft.transform(x, g) == spatial_g(x)[:, perm]`` holds exactly.
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


def framework_element(gspace, element: Element):
    """The library's element for ``element``: e2cnn int or (flip, rotation) tuple, escnn
    ``GroupElement``."""
    if _is_escnn(gspace):
        if gspace.flips_order and gspace.rotations_order > 1:
            value = (element.flip, element.rotation)
        elif gspace.flips_order:  # flip2dOnR2: a C2 whose element 1 is the flip
            value = element.flip
        else:
            value = element.rotation
        return gspace.fibergroup.element(value, "int")
    name = type(gspace).__name__
    if name in ("Flip2dOnR2",):
        return element.flip
    if name in ("FlipRot2dOnR2",):
        return (element.flip, element.rotation)
    return element.rotation


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


def representation_of(rep, group: Group, gspace) -> Representation:
    """Our Representation for an e2cnn/escnn representation, perms if it permutes."""
    perms: dict[str, tuple[int, ...]] | None = {}
    for el in group.elements:
        m = np.asarray(rep(framework_element(gspace, el)), dtype=np.float64)
        p = m.round().argmax(1)
        is_perm = np.allclose(m, np.eye(rep.size)[p], atol=1e-6) and len(set(p)) == rep.size
        if not is_perm:
            perms = None
            break
        perms[el.name] = tuple(int(i) for i in p)
    return Representation(rep.name, rep.size, _kind(rep), perms)


def layout_of(field_type, group: Group, reps: dict[str, Representation],
              spatial: bool = True) -> Layout:
    """Layout of a tensor of ``field_type``; registers its representations in ``reps``."""
    fields = []
    start = 0
    for rep in field_type.representations:
        if rep.name not in reps:
            reps[rep.name] = representation_of(rep, group, field_type.gspace)
        fields.append((start, rep.name))
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
