"""Property-based tests (hypothesis): the CLI's argument parsers, SymmetrySpec JSON
round-trip, budget parsing and report reading. Any input either parses to what was meant
or fails with an EqdeployError (a one-line message, exit 2), never another exception."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from eqdeploy.errors import EqdeployError
from eqdeploy.groups import Group
from eqdeploy.report import check as chk
from eqdeploy.spec import Layout, Representation, SymmetrySpec
from eqdeploy.validate import MAX_NORMALIZED, parse_norm, parse_shape

FAST = settings(max_examples=100, deadline=None)


def _parsed_or_none(parse, text: str, option: str):
    """The parsed value, or None after a one-line EqdeployError that names the option."""
    try:
        return parse(text)
    except EqdeployError as e:
        assert option in str(e) and "\n" not in str(e)
        return None


# --- --input-shape ------------------------------------------------------------------------
@FAST
@given(st.tuples(*[st.integers(1, 64)] * 4), st.sampled_from([",", "x"]))
def test_shape_round_trip(shape, sep):
    assert parse_shape(sep.join(str(v) for v in shape)) == shape


@FAST
@given(st.text(alphabet="0123456789,x-+ .e", max_size=24))
def test_shape_text_parses_or_fails_with_one_line(text):
    shape = _parsed_or_none(parse_shape, text, "--input-shape")
    assert shape is None or (len(shape) == 4 and all(isinstance(v, int) and v >= 1
                                                     for v in shape))


# --- --input-norm -------------------------------------------------------------------------
finite = st.floats(-10, 10, allow_nan=False)
positive = st.floats(1e-3, 10, allow_nan=False)


@FAST
@given(st.integers(1, 4).flatmap(lambda n: st.tuples(st.lists(finite, min_size=n, max_size=n),
                                                     st.lists(positive, min_size=n,
                                                              max_size=n))))
def test_norm_round_trip(norm):
    mean, std = norm
    text = ",".join(repr(v) for v in mean) + ":" + ",".join(repr(v) for v in std)
    assert parse_norm(text) == (mean, std)


@FAST
@given(st.text(alphabet="0123456789,:.-einfa", max_size=24))
def test_norm_text_parses_or_fails_with_one_line(text):
    norm = _parsed_or_none(parse_norm, text, "--input-norm")
    if norm is None:
        return
    mean, std = norm
    assert len(mean) == len(std) >= 1 and min(std) > 0
    assert all(math.isfinite(v) for v in mean + std)
    m, s = np.asarray(mean), np.asarray(std)
    assert np.abs(np.stack([-m / s, (1 - m) / s])).max() <= MAX_NORMALIZED


# --- SymmetrySpec JSON --------------------------------------------------------------------
groups = st.sampled_from(["C1", "C2", "C4", "C8", "D1", "D2", "D4"]).map(Group)


@st.composite
def specs(draw):
    g = draw(groups)
    names = [e.name for e in g.elements]
    reps = {"trivial": Representation("trivial", 1, "trivial", {n: (0,) for n in names})}
    for i in range(draw(st.integers(0, 3))):
        size = draw(st.integers(1, 6))
        kind = draw(st.sampled_from(["regular", "quotient", "irrep", "other"]))
        perms = None if kind in ("irrep", "other") else {
            n: tuple(draw(st.permutations(range(size)))) for n in names}
        reps[f"rep{i}"] = Representation(f"rep{i}", size, kind, perms)

    def layout():
        fields, start = [], 0
        for name in draw(st.lists(st.sampled_from(sorted(reps)), min_size=1, max_size=6)):
            fields.append((start, name))
            start += reps[name].size
        return Layout(tuple(fields), start, draw(st.booleans()))

    tensors = {f"t{i}": layout() for i in range(draw(st.integers(0, 3)))}
    return SymmetrySpec(g, reps, layout(), layout(), tensors,
                        draw(st.dictionaries(st.text(max_size=5), st.integers(), max_size=2)))


@FAST
@given(specs())
def test_spec_json_round_trip(spec):
    spec.validate()
    back = SymmetrySpec.loads(spec.dumps())
    assert back.to_json() == spec.to_json()
    assert back.representations == spec.representations
    assert (back.input, back.output, back.tensors) == (spec.input, spec.output, spec.tensors)
    back.validate()


@FAST
@given(specs(), st.integers(0, 400), st.binary(min_size=1, max_size=3))
def test_damaged_spec_json_fails_with_one_line(spec, cut, junk):
    text = spec.dumps()
    damaged = text[:cut % len(text)] + junk.decode("latin-1")
    try:
        SymmetrySpec.loads(damaged)
    except EqdeployError as e:
        assert "\n" not in str(e)


# --- budgets and reports ------------------------------------------------------------------
values = st.one_of(st.floats(allow_nan=True), st.integers(-5, 10**9), st.booleans(),
                   st.text(max_size=3), st.none())


@FAST
@given(st.dictionaries(st.sampled_from(sorted(chk.BUDGETS) + ["max_p50", "x"]), values,
                       max_size=4))
def test_budgets_validate_or_fail_with_one_line(budgets):
    try:
        out = chk.validate_budgets(budgets)
    except EqdeployError as e:
        assert "\n" not in str(e)
        return
    for key, value in out.items():
        assert key in chk.BUDGETS and math.isfinite(value) and value >= 0
        if key in chk.INTEGER_BUDGETS:
            assert isinstance(value, int)
        if key in chk.FRACTION_BUDGETS:
            assert value <= 1


@FAST
@given(st.dictionaries(st.sampled_from(sorted(chk.BUDGETS)),
                       st.floats(0, 1, allow_nan=False), min_size=1))
def test_budget_toml_round_trip(tmp_path_factory, budgets):
    budgets = {k: (round(v * 1000) if k in chk.INTEGER_BUDGETS else v)
               for k, v in budgets.items()}
    path = tmp_path_factory.mktemp("b") / "b.toml"
    path.write_text("[budgets]\n" + "".join(f"{k} = {v!r}\n" for k, v in budgets.items()))
    assert chk.load_budgets(path) == budgets


json_values = st.recursive(st.none() | st.booleans() | st.floats() | st.integers() |
                           st.text(max_size=4),
                           lambda inner: st.lists(inner, max_size=3) |
                           st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=12)


@FAST
@given(st.sampled_from(["eqdeploy.bench", "eqdeploy.convert"]), st.dictionaries(
    st.sampled_from(["artifact", "latency", "equivariance", "fidelity", "verification",
                     "artifacts"]), json_values, max_size=6))
def test_malformed_reports_fail_with_one_line(schema, body):
    report = {"schema": schema, "version": 1, **body}
    try:
        rows = chk.check_report(json.loads(json.dumps(report)), {"max_size_bytes": 10})
    except EqdeployError as e:
        assert "\n" not in str(e)
        return
    assert len(rows) == 1
    if rows[0].value is None:  # not measured: fails, never passes
        assert not rows[0].ok


@FAST
@given(json_values, specs())
def test_any_json_as_a_manifest_fails_with_one_line(value, spec):
    for text in (json.dumps(value), json.dumps({**spec.to_json(), "input": value}),
                 json.dumps({**spec.to_json(), "representations": value})):
        try:
            SymmetrySpec.loads(text)
        except EqdeployError as e:
            assert "\n" not in str(e)
