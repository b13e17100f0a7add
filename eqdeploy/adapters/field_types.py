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


def group_of(gspace) -> Group:
    """The finite planar group of an e2cnn/escnn gspace."""
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
    """The e2cnn element (int or (flip, rotation) tuple) for ``element``."""
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
