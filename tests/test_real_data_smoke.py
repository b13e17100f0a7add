"""Smoke test of benchmarks/real_data.py: its code on a tiny configuration, so it cannot rot.

Runs on small IDX files written here in the Fashion-MNIST format (the Debian package is not
needed): 256 training and 100 test images, one epoch, the e2cnn C4 model; one eqdeploy INT8
conversion (ONNX + TFLite), the stock paths, latency, RESULTS.md + JSON + PNG. Nothing here
depends on the benchmark's published results. The tests of the run are slow (about 30 s); the
quick suite keeps the pure ones.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from real_data import data, evaluate, pipeline, report, run, train  # noqa: E402

from eqdeploy.convert import ConvertOptions  # noqa: E402
from eqdeploy.errors import EqdeployError  # noqa: E402


def _write_idx(path: Path, a: np.ndarray) -> None:
    header = bytes([0, 0, 8, a.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in a.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + a.astype(np.uint8).tobytes())


def _fake_fashion(folder: Path, n_train: int = 256, n_test: int = 100) -> Path:
    """Blobs whose position and size depend on the class, 28x28, in the IDX format."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:28, :28]
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n)
        r = 3 + labels[:, None, None] * 0.9
        img = 255 * ((yy - 13.5) ** 2 + (xx - 13.5) ** 2 < r ** 2) * rng.uniform(0.5, 1, (n, 1, 1))
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", img)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return folder


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real_data")
    cfg = dataclasses.replace(run.SMOKE, fashion_dir=_fake_fashion(tmp / "fashion"))
    results = run.run(cfg, tmp / "cache", echo=lambda s: None)
    results["meta"]["smoke"] = True
    paths = report.write_all(results, tmp / "out", smoke=True)
    return cfg, results, paths, tmp


def _row(results, variant, runtime):
    rows = [r for r in results["rows"] if r["variant"] == variant and r["runtime"] == runtime]
    assert len(rows) == 1, (variant, runtime, [(r["variant"], r["runtime"]) for r in
                                              results["rows"]])
    return rows[0]


@pytest.mark.slow
def test_rows_measure_every_path(smoke):
    _, results, _, _ = smoke
    fp32 = _row(results, "FP32", "torch")
    assert fp32["n"] == 100
    assert fp32["flips_rot90"] == 0  # exact rotations of an e2cnn C4 model: same class
    assert fp32["equiv_err_rot90_max"] < 1e-4
    for rt in ("onnxruntime", "ai-edge-litert"):
        r = _row(results, report.DEFAULT, rt)
        assert r["changed_rot90"] == 0  # eqdeploy's promise: bit-exact under exact rotations
        assert 0.0 <= r["acc_upright"] <= 1.0 and 0.0 <= r["top1_vs_fp32"] <= 1.0
        assert r["bytes"] > 0
    for variant, rt in (("stock ORT quantize_static", "onnxruntime"),
                        ("stock litert-torch PT2E", "ai-edge-litert")):
        r = _row(results, variant, rt)
        assert r["n"] == 100 and np.isfinite(r["interp_err_mean"])


@pytest.mark.slow
def test_cost_latency_and_files(smoke):
    _, results, paths, _ = smoke
    entry = results["models"]["fashion_mnist/e2cnn_c4"]
    c = entry["cost"]
    assert 0 < c["trainable_params"] < c["expanded_params"] and c["macs"] > 0
    conv = entry["conversions"]["per-channel (default)"]
    stages = [s["stage"] for s in conv["stages"]]
    assert any(s.startswith("emit INT8 onnx") for s in stages)
    assert any(s.startswith("emit INT8 tflite") for s in stages)
    lat = results["latency"]
    assert lat["twin_max_abs_diff"] < 1e-4  # the hand-written twin is the same function
    assert len(lat["stats"]) == 11 and all(v["p50_ms"] > 0 for v in lat["stats"].values())
    md = paths["markdown"].read_text()
    for title in ("Table 1", "Table 3", "Table 5", "Table 6", "Smoke configuration"):
        assert title in md
    assert json.loads(paths["json"].read_text())["rows"] == json.loads(
        json.dumps(results["rows"], default=str))


@pytest.mark.slow
def test_training_is_cached(smoke):
    cfg, _, _, tmp = smoke
    ds = data.load_fashion_mnist(cfg.size, cfg.fashion_train, cfg.fashion_dir)
    mdef = run.MODELS["e2cnn_c4"]
    model, meta = train.trained(mdef, ds, cfg.schedule, tmp / "cache", echo=lambda s: None)
    assert meta["cached"] is True
    ts = data.test_sets(ds, 8)
    again, _ = train.trained(mdef, ds, cfg.schedule, tmp / "cache", echo=lambda s: None)
    a = evaluate.torch_predictor(model)(ts.upright)[0]
    assert np.array_equal(a, evaluate.torch_predictor(again)(ts.upright)[0])
    other = dataclasses.replace(cfg.schedule, seed=1)
    assert train.cache_key(mdef, ds, other) != train.cache_key(mdef, ds, cfg.schedule)


def test_schemes_are_valid_convert_options():
    for name, opts in pipeline.SCHEMES.items():
        o = dataclasses.replace(ConvertOptions(), **opts)
        assert o.per_tensor == name.startswith("per-tensor")
    assert pipeline.SCHEMES["per-tensor naive"]["dfq"].enabled is False


def test_rotations_and_mask():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (3, 1, 33, 33)).astype(np.float32)
    assert np.allclose(data.rotate(x, 90.0), np.rot90(x, 1, axes=(-2, -1)), atol=1e-3)
    disc = data.disc_mask(33)
    assert disc[16, 0] and disc[0, 16] and not disc[0, 0]
    m = x * disc
    r = data.rotate(m, 45.0)
    assert np.abs(r.sum() - m.sum()) / m.sum() < 0.02  # the disc rotates into itself
    assert data.pad(np.zeros((2, 28, 28), np.uint8), 33).shape == (2, 1, 33, 33)
    with pytest.raises(EqdeployError, match="odd size"):
        data.pad(np.zeros((1, 28, 28), np.uint8), 32)


def test_missing_dataset_names_the_package(tmp_path):
    with pytest.raises(EqdeployError, match="apt-get install -y dataset-fashion-mnist"):
        data.load_fashion_mnist(directory=tmp_path)


def test_unmeasurable_outputs_fail():
    x = np.zeros((4, 1, 5, 5), np.float32)
    ts = data.TestSets(np.zeros(4, np.int64), x, [x] * 3, x, x, np.zeros(4))
    nan = lambda x: (np.full((len(x), 10), np.nan, np.float32),) * 2  # noqa: E731
    const = lambda x: (np.ones((len(x), 10), np.float32),) * 2  # noqa: E731
    with pytest.raises(ValueError, match="non-finite"):
        evaluate.evaluate(nan, ts)
    with pytest.raises(ValueError, match="do not depend on the input"):
        evaluate.evaluate(const, ts)
