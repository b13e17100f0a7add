"""Shared checks of the wild-zoo INT8 tests (issue 11), one conversion per model.

Each ``test_wild_zoo_*.py`` file star-imports this module (``__all__``: the ``test_*``
functions, collected there) and sets ``zoo = zoo_fixture_for([...its models])``: every
model is built (its committed trained weights), saved the way its registry entry says and
converted once with the CLI (``eqdeploy convert ... --int8 --target all``, in process, with
the digits of ``save.convert_argv``: calibration and held-out probes), and every test reads
that one report. What issue 11 requires of every zoo model:

- FP32 artifacts equal to the source (1e-4) and equivariant;
- INT8 in both runtimes: 0 probes changed under every exact group element;
- INT8 top-1 agreement with the FP32 source >= 0.97 on the model's 64 probes;
- INT8 runs in integers: no float op in the .tflite, none left by ORT, except the ops a
  model op becomes where the runtime has no integer kernel for it (``NO_INTEGER_KERNEL``),
  which the report then names, and nothing else.
"""

from __future__ import annotations

import json

import pytest

from eqdeploy.groups import Group
from eqdeploy.models.zoo import ZOO, build
from eqdeploy.models.zoo.save import convert_argv, save_as_user

EXT = {"onnxruntime": "onnx", "ai-edge-litert": "tflite"}
TOP1_MIN = 0.97
# model op (FP32 ONNX op type) -> the ops it leaves in float where a runtime has no integer
# kernel for it. ONNX Runtime has no quantized ELU (no QLinear op, no QDQ fusion): the Elu
# stays float between DequantizeLinear and QuantizeLinear. litert-torch lowers aten.elu
# through JAX to SELECT(x > 0, x, EXP(x) - 1), and its EXP and SUB stay float.
NO_INTEGER_KERNEL = {"onnxruntime": {"Elu": {"Elu"}},
                     "ai-edge-litert": {"Elu": {"EXP", "SUB"}}}
# float ops that ORT's float_compute_ops (linear ops) does not cover
FLOAT_ACTIVATIONS = {"Elu", "Sigmoid", "Tanh", "Softplus", "Exp", "Erf", "HardSigmoid"}


# every zoo file converts its models end to end: the full suite (CI) runs them, quick runs
# (-m "not slow") do not
pytestmark = pytest.mark.slow

__all__ = ["pytestmark", "test_fp32_artifacts_match_the_source",
           "test_int8_outputs_unchanged_under_every_exact_element",
           "test_int8_top1_agrees_with_fp32", "test_int8_runs_in_integers", "zoo_fixture_for"]


def converted(name: str, tmp_path_factory) -> dict:
    """Build zoo model ``name``, save it as its users would and convert it once."""
    from eqdeploy.cli import main

    entry = ZOO[name]
    d = tmp_path_factory.mktemp(entry.name)
    path, args = save_as_user(entry, build(entry.name), d)
    main(convert_argv(entry, path, args, d / "out"), standalone_mode=False)
    report = json.loads((d / "out" / f"{entry.name}.report.json").read_text())
    return {"entry": entry, "report": report, "dir": d / "out"}


def zoo_fixture_for(models: list[str]):
    """The module-scoped ``zoo`` fixture over ``models``: one conversion each."""

    @pytest.fixture(scope="module", params=models)
    def zoo(request, tmp_path_factory):
        return converted(request.param, tmp_path_factory)

    return zoo


def _row(zoo: dict, runtime: str, fp32: bool = False) -> dict:
    file = f"{zoo['entry'].name}{'.fp32' if fp32 else ''}.{EXT[runtime]}"
    return next(v for v in zoo["report"]["verification"] if v.get("artifact") == file)


def _artifact(zoo: dict, runtime: str) -> dict:
    file = f"{zoo['entry'].name}.{EXT[runtime]}"
    return next(a for a in zoo["report"]["artifacts"] if a["file"] == file)


def float_ops(art: dict) -> list[str]:
    """What an INT8 artifact computes in float: TFLite ops with a float32 output, ORT ops."""
    if art["target"] == "tflite":
        return list(art["float_ops"])
    return sorted(set(art["float_compute_ops"]) | (FLOAT_ACTIVATIONS & set(art["ort_ops"])))


def test_fp32_artifacts_match_the_source(zoo):
    exact = [e.name for e in Group(zoo["entry"].group).exact_elements]
    for runtime in EXT:
        row = _row(zoo, runtime, fp32=True)
        assert row["rel_err_vs_source"] <= 1e-4, runtime
        assert [r["element"] for r in row["equivariance"]] == exact
        assert max(r["rel_err_max"] for r in row["equivariance"]) <= 1e-4, runtime


@pytest.mark.parametrize("runtime", list(EXT))
def test_int8_outputs_unchanged_under_every_exact_element(runtime, zoo):
    row = _row(zoo, runtime)
    exact = [e.name for e in Group(zoo["entry"].group).exact_elements]
    assert [r["element"] for r in row["equivariance"]] == exact
    assert {r["element"]: r["changed"] for r in row["equivariance"]} == dict.fromkeys(exact, 0)
    assert all(r["probes"] == 64 for r in row["equivariance"])


# Known top-1 failures per (model, runtime), with what was measured; strict, so an entry
# goes when its model passes. None: with seeded random weights, rot_kernel_cnn (0.9375),
# wrn_d8_d4 (0.875 on noise probes), escnn_d8_steerable (0.953/0.938) and c8_steerable on
# LiteRT (0.969) failed on FP32 decisions that nearly tie; the zoo's models are trained
# (``eqdeploy.models.zoo.train``), calibrated on the bundled unlabelled digits and probed
# with held-out ones, and all agree >= 0.97.
NEAR_TIES: dict[tuple[str, str], str] = {}


@pytest.mark.parametrize("runtime", list(EXT))
def test_int8_top1_agrees_with_fp32(runtime, zoo, request):
    known = NEAR_TIES.get((zoo["entry"].name, runtime))
    if known is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=known))
    row = _row(zoo, runtime)
    assert row["top1_agreement_vs_source"] is not None
    assert row["top1_agreement_vs_source"] >= TOP1_MIN, zoo["entry"].name


def _model_ops(zoo: dict) -> set[str]:
    """Op types of the FP32 ONNX of the same graph: what the model computes."""
    import onnx

    path = zoo["dir"] / f"{zoo['entry'].name}.fp32.onnx"
    return {n.op_type for n in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize("runtime", list(EXT))
def test_int8_runs_in_integers(runtime, zoo):
    art = _artifact(zoo, runtime)
    assert art["precision"] == "int8"
    allowed = {op for model_op, ops in NO_INTEGER_KERNEL[runtime].items()
               if model_op in _model_ops(zoo) for op in ops}  # from this model's ops alone
    assert set(float_ops(art)) <= allowed, float_ops(art)
    if runtime == "onnxruntime":
        assert "QLinearConv" in art["ort_ops"]
