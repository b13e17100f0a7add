"""`eqdeploy bench` on an FP32 .onnx in a fresh venv: base install + onnxruntime, no torch.

The ONNX twin of ``test_fresh_venv_base_install_runs_bench_without_torch`` in
test_harness_bench.py (which does the same with ai-edge-litert and an INT8 .tflite). The
model, sidecar and SymmetrySpec helpers are that module's.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from test_harness_bench import CLASSES, REPO, SIZE, _spec, _torch_model, _write_sidecar


@pytest.fixture(scope="module")
def onnx_artifact(tmp_path_factory):
    """inv.onnx (exactly C4-invariant, FP32) + sidecar + bundled probes with FP32 reference."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    d = tmp_path_factory.mktemp("onnx_artifact")
    model = _torch_model(True)
    probes = np.random.default_rng(3).standard_normal((8, 1, SIZE, SIZE)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(probes)).numpy()
        torch.onnx.export(model, (torch.from_numpy(probes[:1]),), str(d / "inv.onnx"),
                          dynamo=True, external_data=False)
    _write_sidecar(d / "inv.onnx", _spec())
    np.savez(d / "inv.onnx.probes.npz", inputs=probes, reference=ref)
    return d


def test_fresh_venv_onnxruntime_runs_bench_without_torch(onnx_artifact, tmp_path):
    """Base install (numpy, click) + onnxruntime only: bench and check work, torch is absent."""
    t0 = time.time()
    venv = tmp_path / "venv"
    # --without-pip + the outer pip (--python) keeps this fast: ensurepip alone takes 5-40 s
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    py, eqd = str(venv / "bin" / "python"), str(venv / "bin" / "eqdeploy")
    src = tmp_path / "src"  # a clean copy: no build/ or egg-info litter in the work tree
    shutil.copytree(REPO / "eqdeploy", src / "eqdeploy",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "weights"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # eqdeploy as a wheel built here (pure python), as a user would get it from an index
    res = subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w",
                                str(tmp_path / "dist"), str(src)],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("eqdeploy-*.whl")
    for args in (["numpy", "click", "onnxruntime"], ["--no-deps", str(wheel)]):
        res = subprocess.run(pip[:3] + ["--python", py, "install", "-q"] + args,
                             capture_output=True, text=True, env=env, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run(pip[:3] + ["--python", py, "list", "--format=freeze"],
                         capture_output=True, text=True, env=env, timeout=60)
    installed = {line.split("==")[0].lower() for line in res.stdout.split()}
    assert {"numpy", "click", "onnxruntime", "eqdeploy"} <= installed, installed
    assert not installed & {"torch", "ai-edge-litert", "tflite-runtime", "onnx"}, installed

    work = tmp_path / "device"  # only what would be copied to a device
    work.mkdir()
    for name in ("inv.onnx", "inv.onnx.eqdeploy.json", "inv.onnx.probes.npz"):
        shutil.copy(onnx_artifact / name, work / name)
    res = subprocess.run([eqd, "bench", "inv.onnx", "--runs", "5", "--warmup", "1",
                          "--json", "r.json", "--md", "r.md"],
                         capture_output=True, text=True, env=env, cwd=work, timeout=120)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    report = json.loads((work / "r.json").read_text())
    assert report["runtime"]["name"] == "onnxruntime"
    assert report["artifact"]["format"] == "onnx" and not report["artifact"]["integer_io"]
    assert report["artifact"]["output_shape"] == [1, CLASSES]
    assert report["probes"]["source"] == "bundled" and report["probes"]["count"] == 8
    eq = report["equivariance"]
    assert [r["element"] for r in eq["rows"]] == ["r1", "r2", "r3"]
    assert eq["compared_on"] == "float outputs"
    assert eq["summary"]["rel_err_max"] < 1e-5 and eq["summary"]["top1_agreement_min"] == 1.0
    assert report["fidelity"]["max_abs_error"] < 1e-4
    assert report["fidelity"]["top1_agreement"] == 1.0
    assert "## Equivariance" in (work / "r.md").read_text()

    res = subprocess.run([eqd, "check", "r.json", "--max-equivariance-error", "1e-4",
                          "--min-top1-agreement", "1.0"],
                         capture_output=True, text=True, env=env, cwd=work, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run([py, "-c", "import torch"], capture_output=True, env=env, cwd=work)
    assert res.returncode != 0, "torch is importable in the onnxruntime venv"
    res = subprocess.run([py, "-c", "import ai_edge_litert"], capture_output=True, env=env,
                         cwd=work)
    assert res.returncode != 0, "ai-edge-litert leaked into the onnxruntime-only venv"
    # about 30 s on 2 loaded cores, plus ~20 s for the fixture's torch import + ONNX export
    print(f"fresh onnxruntime venv test: {time.time() - t0:.1f} s")
