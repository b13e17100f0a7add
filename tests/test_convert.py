"""End to end: reference models -> ONNX + TFLite FP32 artifacts, verified in each runtime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from eqdeploy.harness.runtime import open_artifact, read_spec, sidecar_path

REFERENCE = ["c4_cnn", "c8_residual", "d4_cnn"]


@pytest.mark.parametrize("name", REFERENCE)
def test_artifacts_match_source_and_stay_invariant(name, converted):
    report, outdir = converted[name]
    runtimes = {v["runtime"]: v for v in report["verification"]}
    assert set(runtimes) >= {"onnxruntime", "ai-edge-litert", "torch.export graph"}
    assert runtimes["torch.export graph"]["rel_err_vs_source"] <= 1e-5
    for rt in ("onnxruntime", "ai-edge-litert"):
        assert runtimes[rt]["rel_err_vs_source"] <= 1e-4, rt
    n_exact = {"c4_cnn": 3, "c8_residual": 3, "d4_cnn": 7}[name]
    for v in report["verification"]:
        assert len(v["equivariance"]) == n_exact
        assert max(r["rel_err_max"] for r in v["equivariance"]) <= 1e-5, v["runtime"]
    assert report["lint"]["exact"]


@pytest.mark.parametrize("name", REFERENCE)
def test_artifacts_carry_the_manifest_and_probes(name, converted):
    report, outdir = converted[name]
    assert (outdir / f"{name}.report.json").is_file()
    assert (outdir / f"{name}.report.md").read_text().startswith("# eqdeploy convert")
    assert not [p for p in outdir.iterdir() if p.name.startswith(".eqdeploy-")]
    for ext in ("onnx", "tflite"):
        art = outdir / f"{name}.{ext}"
        spec = read_spec(art)  # from the artifact itself, not the sidecar
        side = json.loads(sidecar_path(art).read_text())
        assert spec.to_json() == side["symmetry"]
        assert spec.group.name == report["model"]["group"]
        probes = np.load(f"{art}.probes.npz")
        y = open_artifact(art).run(probes["inputs"])
        assert np.abs(y - probes["reference"]).max() <= 1e-4 * np.abs(probes["reference"]).max()


def test_tflite_manifest_survives_without_sidecar(converted, tmp_path):
    _, outdir = converted["d4_cnn"]
    lone = tmp_path / "lone.tflite"
    lone.write_bytes((outdir / "d4_cnn.tflite").read_bytes())
    assert read_spec(lone).group.name == "D4"


def test_check_gates_on_a_convert_report(converted):
    from click.testing import CliRunner

    from eqdeploy.cli import main

    _, outdir = converted["c8_residual"]
    report = str(outdir / "c8_residual.report.json")
    ok = CliRunner().invoke(main, ["check", report, "--max-equivariance-error", "1e-5",
                                   "--min-top1-agreement", "0.99"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(main, ["check", report, "--max-equivariance-error", "1e-12"])
    assert bad.exit_code == 1 and "max_equivariance_error" in bad.output
    no_latency = CliRunner().invoke(main, ["check", report, "--max-p50-ms", "100"])
    assert no_latency.exit_code == 1  # convert reports carry no latency: never a silent pass
