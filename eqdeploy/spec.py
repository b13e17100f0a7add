"""SymmetrySpec: how the group acts on the input, the output and every intermediate tensor.

The value every stage after export passes along, serialized as versioned JSON into the
artifacts (ONNX ``metadata_props``, TFLite metadata) and a sidecar file. numpy only.

A tensor's layout is a list of fields ``(start, representation)``; a representation is
named once and carries, per group element, the channel permutation it induces when it is
a permutation representation (regular, quotient, trivial), else ``None`` (irreps).
The action of an exact element g on a tensor is ``spatial_g(x)[:, perm_g]``, where
``perm_g[j]`` is the input channel that output channel j takes.

Fields tile the channel axis in order, unless the layout has a channel ``order`` (strided
fields, e.g. a grouped conv's output ``g*C + c`` whose orbits are ``{c, C + c, ...}``):
then fields tile the *positions* of ``order`` and field channel j is tensor channel
``order[start + j]``. ``field_channels`` gives every field's channels either way; use it
(``field_slices`` is for contiguous layouts only). Manifest version 3 adds ``order``; a
manifest without strided layouts is still written as version 2.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from eqdeploy.errors import EqdeployError
from eqdeploy.groups import Element, Group, apply_pixel_action

SCHEMA = "eqdeploy.symmetry"
SCHEMA_VERSION = 3  # 3: strided layouts (``order``); 2: runs of fields; 1: explicit fields
CONTIGUOUS_VERSION = 2  # written when no layout has an ``order`` (older readers read it)
READABLE_VERSIONS = (1, 2, 3)
KINDS = ("trivial", "regular", "quotient", "irrep", "other")


@dataclass(frozen=True)
class Representation:
    """A field type: size, kind and, for permutation representations, one perm per element."""

    name: str
    size: int
    kind: str
    perms: dict[str, tuple[int, ...]] | None  # element name -> permutation, None if not one

    @property
    def is_permutation(self) -> bool:
        return self.perms is not None

    def to_json(self) -> dict:
        perms = None if self.perms is None else {k: list(v) for k, v in self.perms.items()}
        return {"size": self.size, "kind": self.kind, "perms": perms}

    @classmethod
    def from_json(cls, name: str, d: dict) -> Representation:
        perms = d.get("perms")
        return cls(name, int(d["size"]), d["kind"],
                   None if perms is None else {k: tuple(v) for k, v in perms.items()})


@dataclass(frozen=True)
class Layout:
    """Fields of one tensor's channel axis; ``spatial`` says whether it has H, W axes."""

    fields: tuple[tuple[int, str], ...]  # (start position, representation name)
    channels: int
    spatial: bool = True
    order: tuple[int, ...] | None = None  # channel at each position; None: the identity

    def __post_init__(self) -> None:
        if self.order is not None:
            order = tuple(int(i) for i in self.order)
            object.__setattr__(self, "order", None if order == tuple(range(len(order)))
                               else order)

    @property
    def strided(self) -> bool:
        return self.order is not None

    def to_json(self) -> dict:
        """Run-length form: consecutive fields of one representation as ``[name, count]``
        (a ResNet18's manifest shrinks from ~36 kB to ~3 kB); ``order`` only if strided."""
        runs: list[list] = []
        for _, rep in self.fields:
            if runs and runs[-1][0] == rep:
                runs[-1][1] += 1
            else:
                runs.append([rep, 1])
        out = {"channels": self.channels, "spatial": self.spatial, "runs": runs}
        if self.order is not None:
            out["order"] = list(self.order)
        return out

    @classmethod
    def from_json(cls, d: dict, sizes: dict[str, int] | None = None) -> Layout:
        """Read a layout: ``runs`` (versions 2, 3; needs the representations' ``sizes``) or
        the explicit ``fields`` list of version 1; ``order`` when present (version 3)."""
        order = tuple(int(i) for i in d["order"]) if d.get("order") is not None else None
        if "fields" in d:
            return cls(tuple((int(s), str(r)) for s, r in d["fields"]), int(d["channels"]),
                       bool(d.get("spatial", True)), order)
        fields, start = [], 0
        for rep, count in d["runs"]:
            for _ in range(int(count)):
                fields.append((start, str(rep)))
                start += (sizes or {})[rep]
        return cls(tuple(fields), int(d["channels"]), bool(d.get("spatial", True)), order)


@dataclass
class SymmetrySpec:
    """Group, representations and tensor layouts of one exported model."""

    group: Group
    representations: dict[str, Representation]
    input: Layout
    output: Layout
    tensors: dict[str, Layout] = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    # circular mask of the interpolated (non-exact) elements, as a fraction of the inscribed
    # disc of each grid (eqdeploy/harness/rotate.py); manifests without it mean 1.0
    mask_radius: float = 1.0

    # --- actions ---------------------------------------------------------------------------
    def channel_perm(self, layout: Layout, element: Element) -> np.ndarray | None:
        """Full channel permutation of ``element`` on ``layout``, None if not a permutation."""
        perm = np.empty(layout.channels, dtype=np.int64)
        for start, rname in layout.fields:
            rep = self.representations[rname]
            if rep.perms is None:
                return None
            perm[start:start + rep.size] = start + np.asarray(rep.perms[element.name])
        if layout.order is None:
            return perm
        order = np.asarray(layout.order, dtype=np.int64)
        out = np.empty_like(perm)
        out[order] = order[perm]  # position j holds channel order[j]
        return out

    def act(self, x: np.ndarray, layout: Layout, element: Element) -> np.ndarray:
        """Apply an exact element to a batch ``(N, C[, H, W])`` laid out as ``layout``."""
        perm = self.channel_perm(layout, element)
        if perm is None:
            raise ValueError("layout has non-permutation fields; no exact channel action")
        if layout.spatial:
            x = apply_pixel_action(x, element)
        return np.ascontiguousarray(x[:, perm])

    def output_is_invariant(self) -> bool:
        return all(self.representations[r].kind == "trivial" for _, r in self.output.fields)

    def field_slices(self, layout: Layout) -> list[tuple[int, int]]:
        """(start, end) channel ranges of the fields of a contiguous ``layout``."""
        if layout.strided:
            raise ValueError("strided layout: its fields are not channel ranges; use "
                             "SymmetrySpec.field_channels")
        return [(s, s + self.representations[r].size) for s, r in layout.fields]

    def field_channels(self, layout: Layout) -> list[np.ndarray]:
        """The channels of each field of ``layout`` (index arrays, in field order; channel
        j of a field is element j of its array), contiguous or strided."""
        order = np.arange(layout.channels) if layout.order is None else \
            np.asarray(layout.order, dtype=np.int64)
        return [order[s:s + self.representations[r].size] for s, r in layout.fields]

    def layouts(self) -> list[tuple[str, Layout]]:
        """(name, layout) of the input, the output and every listed tensor."""
        return [("input", self.input), ("output", self.output), *self.tensors.items()]

    # --- JSON ------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION if any(lay.strided for _, lay in self.layouts())
            else CONTIGUOUS_VERSION,
            "group": self.group.to_json(),
            "representations": {k: v.to_json() for k, v in self.representations.items()},
            "input": self.input.to_json(),
            "output": self.output.to_json(),
            "tensors": {k: v.to_json() for k, v in self.tensors.items()},
            "info": self.info,
            "mask_radius": self.mask_radius,
        }

    def dumps(self) -> str:
        return json.dumps(self.to_json(), separators=(",", ":"))

    @classmethod
    def from_json(cls, d: dict) -> SymmetrySpec:
        if d.get("schema") != SCHEMA:
            raise EqdeployError("not an eqdeploy symmetry manifest",
                                "pass an artifact written by 'eqdeploy convert'")
        if d.get("version") not in READABLE_VERSIONS:
            raise EqdeployError(f"symmetry manifest version {d.get('version')} is not supported",
                                f"this eqdeploy reads versions {READABLE_VERSIONS}; "
                                "upgrade eqdeploy")
        reps = {k: Representation.from_json(k, v) for k, v in d["representations"].items()}
        sizes = {k: r.size for k, r in reps.items()}
        return cls(Group(d["group"]["name"]), reps, Layout.from_json(d["input"], sizes),
                   Layout.from_json(d["output"], sizes),
                   {k: Layout.from_json(v, sizes) for k, v in d.get("tensors", {}).items()},
                   d.get("info", {}), float(d.get("mask_radius", 1.0)))

    @classmethod
    def loads(cls, text: str | bytes) -> SymmetrySpec:
        try:
            return cls.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            raise EqdeployError(f"malformed symmetry manifest ({e})",
                                "re-run 'eqdeploy convert' to regenerate it") from None

    def validate(self) -> None:
        """Check internal consistency: fields tile each layout, perms are permutations."""
        names = [e.name for e in self.group.elements]
        for rep in self.representations.values():
            if rep.kind not in KINDS:
                raise EqdeployError(f"representation {rep.name} has unknown kind {rep.kind}")
            if rep.perms is not None:
                if sorted(rep.perms) != sorted(names):
                    raise EqdeployError(f"representation {rep.name} lacks perms for some elements")
                for p in rep.perms.values():
                    if sorted(p) != list(range(rep.size)):
                        raise EqdeployError(f"representation {rep.name} has a non-permutation")
        for lname, lay in self.layouts():
            if lay.order is not None and sorted(lay.order) != list(range(lay.channels)):
                raise EqdeployError(f"layout of {lname} has a channel order that is not a "
                                    f"permutation of its {lay.channels} channels")
            pos = 0
            for start, rname in lay.fields:
                if start != pos or rname not in self.representations:
                    raise EqdeployError(f"layout of {lname} has a gap or unknown field {rname}")
                pos += self.representations[rname].size
            if pos != lay.channels:
                raise EqdeployError(f"layout of {lname} covers {pos} of {lay.channels} channels")


def trivial_layout(spec_reps: dict[str, Representation], group: Group, channels: int,
                   spatial: bool) -> Layout:
    """A layout of ``channels`` invariant scalars; registers the trivial representation."""
    if "trivial" not in spec_reps:
        ident = (0,)
        spec_reps["trivial"] = Representation("trivial", 1, "trivial",
                                              {e.name: ident for e in group.elements})
    return Layout(tuple((i, "trivial") for i in range(channels)), channels, spatial)


def opaque_layout(spec_reps: dict[str, Representation], channels: int, spatial: bool
                  ) -> Layout:
    """One field of kind ``other`` over all ``channels``: the group has no known action here
    (e.g. logits of a head that reads every group channel); registers the representation."""
    name = f"opaque_{channels}"
    spec_reps.setdefault(name, Representation(name, channels, "other", None))
    return Layout(((0, name),), channels, spatial)
