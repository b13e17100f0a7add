"""SymmetrySpec permutations reproduce e2cnn's FieldType.transform exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eqdeploy.adapters import e2cnn_compat

e2cnn_compat.install()
from e2cnn import gspaces  # noqa: E402
from e2cnn import nn as enn  # noqa: E402

from eqdeploy.adapters.field_types import framework_element, group_of, layout_of  # noqa: E402
from eqdeploy.errors import EqdeployError  # noqa: E402
from eqdeploy.groups import Group  # noqa: E402
from eqdeploy.spec import SymmetrySpec  # noqa: E402

GSPACES = {
    "C4": lambda: gspaces.Rot2dOnR2(4),
    "C8": lambda: gspaces.Rot2dOnR2(8),
    "D4": lambda: gspaces.FlipRot2dOnR2(4),
    "D2": lambda: gspaces.FlipRot2dOnR2(2),
    "D1": lambda: gspaces.Flip2dOnR2(),
}


def _field_type(gs):
    reps = [gs.regular_repr, gs.trivial_repr, gs.regular_repr]
    if gs.fibergroup.order() >= 4 and type(gs).__name__ == "Rot2dOnR2":
        reps.append(gs.quotient_repr(2))
    return enn.FieldType(gs, reps)


@pytest.mark.parametrize("name", sorted(GSPACES))
def test_layout_action_equals_field_type_transform(name):
    gs = GSPACES[name]()
    group = group_of(gs)
    assert group.name == name
    ft = _field_type(gs)
    reps: dict = {}
    layout = layout_of(ft, group, reps)
    spec = SymmetrySpec(group, reps, layout, layout)
    spec.validate()
    x = torch.randn(3, ft.size, 7, 7)
    checked = 0
    for el in group.elements:
        if not el.exact:
            continue
        expect = enn.GeometricTensor(x, ft).transform(framework_element(gs, el)).tensor.numpy()
        assert np.array_equal(spec.act(x.numpy(), layout, el), expect), el.name
        checked += 1
    assert checked == len([e for e in group.elements if e.exact])


def test_irrep_fields_have_no_permutation():
    gs = gspaces.Rot2dOnR2(4)
    ft = enn.FieldType(gs, [gs.irrep(1), gs.regular_repr])
    reps: dict = {}
    layout = layout_of(ft, Group("C4"), reps)
    assert reps["irrep_1"].perms is None and reps["irrep_1"].kind == "irrep"
    spec = SymmetrySpec(Group("C4"), reps, layout, layout)
    assert spec.channel_perm(layout, Group("C4").elements[1]) is None


def test_spec_json_round_trip_and_version_check():
    gs = gspaces.FlipRot2dOnR2(4)
    reps: dict = {}
    layout = layout_of(_field_type(gs), Group("D4"), reps)
    spec = SymmetrySpec(Group("D4"), reps, layout, layout, {"t": layout})
    again = SymmetrySpec.loads(spec.dumps())
    assert again.to_json() == spec.to_json()
    assert again.tensors["t"] == layout and again.input == layout
    v1 = spec.to_json()  # version 1 spelled every field out; still read
    v1["version"] = 1
    for lay in (v1["input"], v1["output"], *v1["tensors"].values()):
        del lay["runs"]
        lay["fields"] = [list(f) for f in layout.fields]
    assert SymmetrySpec.from_json(v1).tensors["t"] == layout
    bad = spec.to_json()
    bad["version"] = 99
    with pytest.raises(EqdeployError, match="version 99"):
        SymmetrySpec.from_json(bad)
    with pytest.raises(EqdeployError, match="malformed"):
        SymmetrySpec.loads("{not json")


def test_continuous_group_is_refused():
    gs = gspaces.Rot2dOnR2(-1, maximum_frequency=2)
    with pytest.raises(EqdeployError, match="continuous"):
        group_of(gs)


def test_unknown_group_name():
    with pytest.raises(EqdeployError, match="unknown group"):
        Group("Q7")
