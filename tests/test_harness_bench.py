"""eqdeploy bench on tiny real artifacts (ONNX, FP32 and INT8 TFLite) of C4-invariant nets.

The fixtures build an exactly C4-invariant classifier (rot90-symmetrized conv kernel, ReLU,
global mean pool, linear) and a deliberately non-invariant one, export them, and write
the sidecar + probe files that `eqdeploy convert` would write.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from eqdeploy.errors import EqdeployError
from eqdeploy.groups import Group
from eqdeploy.harness.bench import SCHEMA, run_bench
from eqdeploy.harness.cli import bench as bench_cmd
from eqdeploy.spec import Layout, Representation, SymmetrySpec, trivial_layout

REPO = Path(__file__).resolve().parents[1]
SIZE, CLASSES = 9, 5


def _spec(group: str = "C4", out_channels: int = CLASSES) -> SymmetrySpec:
    g, reps = Group(group), {}
    return SymmetrySpec(g, reps, trivial_layout(reps, g, 1, True),
                        trivial_layout(reps, g, out_channels, False))


def _write_sidecar(artifact: Path, spec: SymmetrySpec) -> None:
    Path(f"{artifact}.eqdeploy.json").write_text(json.dumps(
        {"symmetry": spec.to_json(), "artifact": {"file": artifact.name}}))


def _torch_model(invariant: bool):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.Generator().manual_seed(0)
            w = torch.randn(8, 1, 3, 3, generator=g)
            if invariant:
                w = sum(torch.rot90(w, k, (2, 3)) for k in range(4)) / 4
            self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.lin = torch.nn.Linear(8, CLASSES)
            with torch.no_grad():
                self.conv.weight.copy_(w)
                self.conv.bias.copy_(torch.randn(8, generator=g) * 0.1)
                self.lin.weight.copy_(torch.randn(CLASSES, 8, generator=g))
                self.lin.bias.zero_()

        def forward(self, x):
            return self.lin(torch.relu(self.conv(x)).mean((2, 3)))

    return Net().eval()


def _lifting_model():
    """C4 lifting conv: 4 output channels = one kernel at 0/90/180/270 degrees (a regular field)."""
    import torch

    class Lift(torch.nn.Module):
        def __init__(self):
            super().__init__()
            w = torch.randn(1, 1, 3, 3, generator=torch.Generator().manual_seed(2))
            self.register_buffer("w", torch.cat([torch.rot90(w, k, (2, 3)) for k in range(4)]))

        def forward(self, x):
            return torch.relu(torch.nn.functional.conv2d(x, self.w, padding=1))

    return Lift().eval()


def _regular_spec(perm_sign: int) -> SymmetrySpec:
    """Input trivial, output one C4 regular field: channel j of r_k.y takes channel j - k."""
    g, reps = Group("C4"), {}
    inp = trivial_layout(reps, g, 1, True)
    reps["regular"] = Representation("regular", 4, "regular", {
        e.name: tuple((j - perm_sign * e.rotation) % 4 for j in range(4)) for e in g.elements})
    return SymmetrySpec(g, reps, inp, Layout(((0, "regular"),), 4, True))


def _int8_tflite(model, path: Path, calib: np.ndarray) -> None:
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    x = torch.from_numpy(calib[:1])
    q = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), q)
    for xi in calib:
        prepared(torch.from_numpy(xi[None]))
    converted = convert_pt2e(prepared, fold_quantize=False)
    litert_torch.convert(converted, (x,), quant_config=QuantConfig(pt2e_quantizer=q)).export(
        str(path))


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """Artifacts + sidecars + probes, and torch's own numbers for the same probes."""
    torch = pytest.importorskip("torch")
    litert_torch = pytest.importorskip("litert_torch")
    d = tmp_path_factory.mktemp("artifacts")
    inv, non = _torch_model(True), _torch_model(False)
    rng = np.random.default_rng(1)
    probes = rng.standard_normal((12, 1, SIZE, SIZE)).astype(np.float32)
    x1 = torch.from_numpy(probes[:1])
    out = {"dir": d, "probes": probes}
    with torch.no_grad():
        ref_inv = inv(torch.from_numpy(probes)).numpy()
        ref_non = non(torch.from_numpy(probes)).numpy()
        # torch's own invariance error of the non-invariant net, per exact element
        out["torch_err_non"] = {}
        for k in (1, 2, 3):
            yk = non(torch.rot90(torch.from_numpy(probes), k, (2, 3))).numpy()
            err = np.linalg.norm(yk - ref_non, axis=1) / np.linalg.norm(ref_non, axis=1)
            out["torch_err_non"][f"r{k}"] = err
        torch.onnx.export(inv, (x1,), str(d / "inv.onnx"), dynamo=True, external_data=False)
        litert_torch.convert(inv, (x1,)).export(str(d / "inv.tflite"))
        litert_torch.convert(non, (x1,)).export(str(d / "non.tflite"))
        _int8_tflite(inv, d / "inv_int8.tflite", probes)
        torch.onnx.export(_lifting_model(), (x1,), str(d / "lift.onnx"), dynamo=True,
                          external_data=False)
    _write_sidecar(d / "lift.onnx", _regular_spec(+1))
    for name in ("inv.onnx", "inv.tflite", "non.tflite", "inv_int8.tflite"):
        _write_sidecar(d / name, _spec())
    labels = ref_inv.argmax(1)
    labels[:3] = (labels[:3] + 1) % CLASSES  # 3 of 12 wrong: accuracy 0.75 vs reference
    np.savez(d / "inv.tflite.probes.npz", inputs=probes, reference=ref_inv, labels=labels)
    np.savez(d / "inv_int8.tflite.probes.npz", inputs=probes, reference=ref_inv)
    np.savez(d / "non_probes.npz", inputs=probes, reference=ref_non)
    out["ref_inv"], out["labels"] = ref_inv, labels
    return out


def test_fp32_tflite_invariant_with_bundled_probes(art):
    path = art["dir"] / "inv.tflite"
    r = run_bench(path, runs=30, warmup=3)
    assert r["schema"] == SCHEMA and r["version"] == 1
    assert r["artifact"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert r["artifact"]["size_bytes"] == path.stat().st_size
    assert r["probes"]["source"] == "bundled" and r["probes"]["count"] == 12
    rows = r["equivariance"]["rows"]
    assert [row["element"] for row in rows] == ["r1", "r2", "r3"]
    for row in rows:
        assert row["rel_err_max"] < 1e-5 and row["top1_agreement"] == 1.0
    assert r["equivariance"]["compared_on"] == "float outputs"
    fid = r["fidelity"]
    assert fid["max_abs_error"] < 1e-4 and fid["top1_agreement"] == 1.0
    assert r["accuracy"]["top1"] == pytest.approx(0.75)
    assert r["accuracy"]["reference_top1"] == pytest.approx(0.75)
    lat = r["latency"]
    assert len(lat["samples_ms"]) == 30
    assert 0 < lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"]
    assert r["runtime"]["name"] in ("ai-edge-litert", "tflite-runtime")
    assert r["memory"]["peak_rss_bytes"] > 0
    json.dumps(r)  # JSON-ready


def test_non_invariant_model_errors_match_torch(art):
    r = run_bench(art["dir"] / "non.tflite", runs=5, warmup=1,
                  probes_path=art["dir"] / "non_probes.npz")
    assert r["probes"]["source"] == "file"
    for row in r["equivariance"]["rows"]:
        torch_err = art["torch_err_non"][row["element"]]
        assert row["rel_err_max"] > 1e-2
        assert row["changed"] == 12
        assert row["rel_err_max"] == pytest.approx(torch_err.max(), rel=1e-4)
        assert row["rel_err_mean"] == pytest.approx(torch_err.mean(), rel=1e-4)
    assert r["equivariance"]["summary"]["changed_max"] == 12


def test_int8_tflite_counts_raw_integer_outputs(art):
    r = run_bench(art["dir"] / "inv_int8.tflite", runs=5, warmup=1)
    assert r["artifact"]["integer_io"] and r["artifact"]["output_dtype"] == "int8"
    assert r["artifact"]["output_quantization"]["scale"] > 0
    assert r["equivariance"]["compared_on"] == "int8 outputs"
    for row in r["equivariance"]["rows"]:  # orbit-symmetric kernel, exact int arithmetic
        assert row["changed"] == 0 and row["rel_err_max"] == 0.0
    fid = r["fidelity"]
    assert fid["max_abs_error_steps"] is not None and fid["max_abs_error_steps"] < 20
    assert fid["top1_agreement"] >= 0.75


def test_onnx_synthetic_probes_are_labelled(art):
    r = run_bench(art["dir"] / "inv.onnx", runs=5, warmup=1)
    assert r["runtime"]["name"] == "onnxruntime"
    assert r["probes"]["source"] == "synthetic" and "synthetic" in r["probes"]["note"]
    assert r["fidelity"] is None and r["accuracy"] is None
    assert r["equivariance"]["summary"]["rel_err_max"] < 1e-5


def test_equivariant_feature_map_output(art, tmp_path):
    """A spatial output with a regular field: rho_out(g) permutes channels, and it matters."""
    r = run_bench(art["dir"] / "lift.onnx", runs=3, warmup=0)
    eq = r["equivariance"]
    assert eq["output_action"] == "equivariant" and r["artifact"]["output_shape"] == [1, 4, 9, 9]
    for row in eq["rows"]:
        assert row["rel_err_max"] < 1e-5 and "top1_agreement" not in row
    wrong = tmp_path / "lift.onnx"  # same model, sidecar with the permutations reversed
    shutil.copy(art["dir"] / "lift.onnx", wrong)
    _write_sidecar(wrong, _regular_spec(-1))
    rows = run_bench(wrong, runs=3, warmup=0)["equivariance"]["rows"]
    assert rows[0]["rel_err_max"] > 0.1 and rows[1]["rel_err_max"] < 1e-5  # r2 = its inverse


def test_cli_writes_json_and_markdown(art, tmp_path):
    js, md = tmp_path / "r.json", tmp_path / "r.md"
    args = [str(art["dir"] / "inv.tflite"), "--runs", "10", "--warmup", "1", "--threads", "1",
            "--json", str(js), "--md", str(md), "--plots", str(tmp_path / "plots")]
    try:
        import matplotlib  # noqa: F401
    except ImportError:  # refused before measuring, nothing written; then without --plots
        res = CliRunner().invoke(bench_cmd, args)
        assert res.exit_code == 2 and "--plots needs matplotlib" in res.output, res.output
        assert not js.exists() and not md.exists()
        args = args[:-2]
    res = CliRunner().invoke(bench_cmd, args)
    assert res.exit_code == 0, res.output
    assert "r1" in res.output and "p50" in res.output
    report = json.loads(js.read_text())
    assert report["schema"] == "eqdeploy.bench" and report["runtime"]["threads"] == 1
    text = md.read_text()
    assert "## Equivariance" in text and "| r3 | 90" not in text and "| r3 | 270 |" in text
    plots = report["plots"]
    if "--plots" in args:
        assert all(Path(f).is_file() for f in plots["files"]) and len(plots["files"]) == 2
    else:
        assert plots is None


def test_check_gates_real_bench_reports(art, tmp_path):
    """check reads what bench writes: the INT8 invariant net passes, the broken one fails."""
    from eqdeploy.harness.cli import check as check_cmd

    budgets = ["--max-equivariance-error", "1e-3", "--max-changed-outputs", "0",
               "--min-top1-agreement", "0.7", "--max-size-bytes", "100000"]
    for name, probes, code in (("inv_int8.tflite", [], 0),
                               ("non.tflite", ["--probes", str(art["dir"] / "non_probes.npz")],
                                1)):
        js = tmp_path / f"{name}.json"
        res = CliRunner().invoke(bench_cmd, [str(art["dir"] / name), "--runs", "3",
                                             "--json", str(js), *probes])
        assert res.exit_code == 0, res.output
        res = CliRunner().invoke(check_cmd, [str(js), *budgets])
        assert res.exit_code == code, res.output
    assert "max_equivariance_error" in res.output.split("FAILED")[1]


def _one_line_error(args: list[str]) -> str:
    res = CliRunner().invoke(bench_cmd, args)
    assert res.exit_code == 2, res.output  # a bad input file
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


def test_bad_probe_files_give_one_line_errors(art, tmp_path):
    a = str(art["dir"] / "inv.tflite")
    bad_shape = tmp_path / "shape.npz"
    np.savez(bad_shape, inputs=np.zeros((4, 1, 8, 8), np.float32))
    msg = _one_line_error([a, "--probes", str(bad_shape)])
    assert "shape.npz" in msg and "(N, 1, 9, 9)" in msg
    no_key = tmp_path / "nokey.npz"
    np.savez(no_key, x=np.zeros((4, 1, 9, 9), np.float32))
    assert "no 'inputs'" in _one_line_error([a, "--probes", str(no_key)])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    assert "garbage.npz" in _one_line_error([a, "--probes", str(garbage)])
    bad_ref = tmp_path / "ref.npz"
    np.savez(bad_ref, inputs=art["probes"], reference=np.zeros((12, 3), np.float32))
    assert "reference" in _one_line_error([a, "--probes", str(bad_ref)])
    labels = tmp_path / "labels.npy"
    np.save(labels, np.zeros(5, np.int64))
    assert "labels" in _one_line_error([a, "--labels", str(labels)])
    assert "does not exist" in _one_line_error([a, "--probes", str(tmp_path / "none.npz")])


def test_missing_or_mismatched_sidecar(art, tmp_path):
    lone = tmp_path / "lone.tflite"
    shutil.copy(art["dir"] / "inv.tflite", lone)
    assert "no sidecar" in _one_line_error([str(lone)])
    _write_sidecar(lone, _spec(out_channels=7))
    assert "7 channels" in _one_line_error([str(lone)])
    with pytest.raises(EqdeployError, match="--runs"):
        run_bench(art["dir"] / "inv.tflite", runs=0)


def test_bench_path_imports_no_torch(art):
    """The bench/check modules and a full bench run leave torch & co. unimported."""
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from eqdeploy.harness.cli import bench, check\n"
        "import eqdeploy.report.markdown, eqdeploy.report.plots\n"
        f"r = CliRunner().invoke(bench, [{str(art['dir'] / 'inv_int8.tflite')!r}, '--runs', '3'])\n"
        "assert r.exit_code == 0, r.output\n"
        "heavy = ('torch', 'e2cnn', 'escnn', 'onnx', 'litert_torch')\n"
        "bad = [m for m in heavy if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]


def test_fresh_venv_base_install_runs_bench_without_torch(art, tmp_path):
    """Base install (numpy, click) + ai-edge-litert only: bench works, torch is absent."""
    t0 = time.time()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    src = tmp_path / "src"  # a clean copy: no build/ or egg-info litter in the work tree
    shutil.copytree(REPO / "eqdeploy", src / "eqdeploy",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for args in (["numpy", "click", "ai-edge-litert"], ["--no-deps", str(src)]):
        res = subprocess.run(pip + args, capture_output=True, text=True, env=env, timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
    work = tmp_path / "device"
    work.mkdir()
    for name in ("inv_int8.tflite", "inv_int8.tflite.eqdeploy.json",
                 "inv_int8.tflite.probes.npz"):
        shutil.copy(art["dir"] / name, work / name)
    res = subprocess.run([py, "-m", "eqdeploy.harness.cli", "bench", "inv_int8.tflite",
                          "--runs", "5", "--json", "r.json"],
                         capture_output=True, text=True, env=env, cwd=work, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((work / "r.json").read_text())
    assert report["probes"]["source"] == "bundled"
    assert report["equivariance"]["summary"]["changed_max"] == 0
    res = subprocess.run([py, "-m", "eqdeploy.harness.cli", "check", "r.json",
                          "--max-changed-outputs", "0"], capture_output=True, text=True,
                         env=env, cwd=work, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    res = subprocess.run([py, "-c", "import torch"], capture_output=True, env=env, cwd=work)
    assert res.returncode != 0, "torch is importable in the base-install venv"
    print(f"fresh venv test: {time.time() - t0:.1f} s")
