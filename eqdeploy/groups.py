"""Planar symmetry groups (C_N, D_N) and their exact pixel actions, in numpy only.

Element order and naming follow e2cnn/escnn: C_N elements are rotations ``k`` (angle
``2*pi*k/N``); D_N elements are ``(f, k)``: flip ``f`` then rotation ``k``. On the square
grid only multiples of 90 degrees and the axis flips act exactly on pixels; the spatial
action of an exact element on an ``(..., H, W)`` array is ``rot90(flip_W^f(x), q)`` with
``q = 4k/N`` quarter turns (the flip mirrors W, as e2cnn's default flip axis does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from eqdeploy.errors import EqdeployError

_GROUP_NAME = re.compile(r"^(C|D)(\d+)$")


@dataclass(frozen=True)
class Element:
    """One group element: ``flip`` then a rotation by ``rotation`` steps of ``2*pi/N``."""

    flip: int
    rotation: int
    order: int  # N, the number of rotations

    @property
    def name(self) -> str:
        return f"f{self.flip}r{self.rotation}" if self.flip else f"r{self.rotation}"

    @property
    def degrees(self) -> float:
        return 360.0 * self.rotation / self.order

    @property
    def quarter_turns(self) -> int | None:
        """Quarter turns of the exact pixel action, or None if the rotation is not exact."""
        if (4 * self.rotation) % self.order:
            return None
        return (4 * self.rotation) // self.order

    @property
    def exact(self) -> bool:
        return self.quarter_turns is not None

    @property
    def is_identity(self) -> bool:
        return self.flip == 0 and self.rotation == 0

    def to_json(self) -> dict:
        q = self.quarter_turns
        return {
            "name": self.name,
            "flip": self.flip,
            "rotation": self.rotation,
            "degrees": self.degrees,
            "pixel_action": None if q is None else {"flip_w": bool(self.flip), "rot90": q},
        }


@dataclass(frozen=True)
class Group:
    """A planar group C_N (rotations) or D_N (rotations and flips)."""

    name: str

    def __post_init__(self) -> None:
        if not _GROUP_NAME.match(self.name) or int(self.name[1:]) < 1:
            raise EqdeployError(
                f"unknown group {self.name!r}",
                "use C<N> (rotations, e.g. C4, C8) or D<N> (rotations and flips, e.g. D1, D4)",
            )

    @property
    def rotations(self) -> int:
        return int(self.name[1:])

    @property
    def has_flips(self) -> bool:
        return self.name[0] == "D"

    @property
    def order(self) -> int:
        return self.rotations * (2 if self.has_flips else 1)

    @property
    def elements(self) -> list[Element]:
        flips = (0, 1) if self.has_flips else (0,)
        return [Element(f, k, self.rotations) for f in flips for k in range(self.rotations)]

    @property
    def exact_elements(self) -> list[Element]:
        """Non-identity elements with an exact pixel action."""
        return [e for e in self.elements if e.exact and not e.is_identity]

    def element(self, name: str) -> Element:
        for e in self.elements:
            if e.name == name:
                return e
        raise EqdeployError(f"group {self.name} has no element {name!r}",
                            f"use one of {[e.name for e in self.elements]}")

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "order": self.order,
            "rotations": self.rotations,
            "flips": self.has_flips,
            "elements": [e.to_json() for e in self.elements],
        }


def apply_pixel_action(x: np.ndarray, element: Element, spatial_axes: tuple[int, int] = (-2, -1)
                       ) -> np.ndarray:
    """Apply an exact element to the spatial axes (H, W) of ``x``; raises if not exact."""
    q = element.quarter_turns
    if q is None:
        raise ValueError(f"element {element.name} has no exact pixel action")
    if element.flip:
        x = np.flip(x, axis=spatial_axes[1])
    return np.ascontiguousarray(np.rot90(x, q, axes=spatial_axes))
