"""``--tap LAYER``: a head that reads group channels without pooling has logits with no
group action; the tapped feature map (spatial action + channel permutation) carries the
proof, in artifacts cut from the same graph with the same INT8 parameters."""

from __future__ import annotations

import numpy as np
import pytest

from eqdeploy.errors import EqdeployError

N = 29


@pytest.fixture(scope="module")
def flat_model(tmp_path_factory):
    import dill
    import torch

    from eqdeploy.models.reference import c4_flat_head

    path = tmp_path_factory.mktemp("flat") / "flat.pt"
    torch.save(c4_flat_head(), path, pickle_module=dill)
    return path


def _convert(path, outdir, **kw):
    from eqdeploy.convert import ConvertOptions, convert

    return convert(path, ConvertOptions(outdir=outdir, input_shape=(1, 1, N, N), **kw))


@pytest.fixture(scope="module")
def int8_tapped(flat_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("flat_int8")
    return _convert(flat_model, out, targets=["onnx", "tflite"], int8=True,
                    tap="features"), out


def _spec(artifact):
    from eqdeploy.harness.runtime import read_spec

    return read_spec(artifact)  # the manifest embedded in the artifact


def _row(report, artifact):
    return next(v for v in report["verification"] if v.get("artifact") == artifact)


def test_without_tap_the_flat_head_is_refused(flat_model, tmp_path):
    with pytest.raises(EqdeployError, match="not equivariant.*--tap LAYER"):
        _convert(flat_model, tmp_path / "out", targets=["onnx"])
    assert not (tmp_path / "out" / "flat.onnx").exists()


@pytest.mark.parametrize("artifact", ["flat.tap.onnx", "flat.tap.tflite"])
def test_int8_tap_is_bit_exact_and_matches_simulation(artifact, int8_tapped):
    report, outdir = int8_tapped
    row = _row(report, artifact)
    assert row["tap"] == "features"
    assert [r["element"] for r in row["equivariance"]] == ["r1", "r2", "r3"]
    assert [r["changed"] for r in row["equivariance"]] == [0, 0, 0]
    assert row["max_steps_vs_simulation"] <= 1.0 + 1e-3
    # the tapped tensor is a feature map of regular fields: spatial action + permutation
    spec = _spec(outdir / artifact)
    assert spec.output.spatial is True
    assert {spec.representations[r].kind for _, r in spec.output.fields} == {"regular"}


def test_main_artifact_records_that_its_output_has_no_action(int8_tapped):
    report, outdir = int8_tapped
    assert report["model"]["output_action"].startswith("none")
    for artifact in ("flat.onnx", "flat.tflite"):
        assert _row(report, artifact)["equivariance"] == []
        spec = _spec(outdir / artifact)
        assert [spec.representations[r].kind for _, r in spec.output.fields] == ["other"]


def test_fp32_tap_artifact_equals_the_source_feature_map(flat_model, tmp_path):
    from eqdeploy.harness.runtime import open_artifact

    report = _convert(flat_model, tmp_path, targets=["onnx"], tap="features.5")
    row = _row(report, "flat.tap.onnx")
    assert row["rel_err_vs_source"] <= 1e-5
    assert max(r["rel_err_max"] for r in row["equivariance"]) <= 1e-5
    probes = np.load(tmp_path / "flat.tap.onnx.probes.npz")
    y = open_artifact(tmp_path / "flat.tap.onnx").run(probes["inputs"])
    assert y.ndim == 4 and y.shape[1] == 16  # 4 regular C4 fields, a spatial map


def test_unknown_tap_names_the_layers(flat_model, tmp_path):
    with pytest.raises(EqdeployError, match="no layer of that name.*features"):
        _convert(flat_model, tmp_path, targets=["onnx"], tap="nonexistent.layer")
