"""Bundled MNIST digits and the trained reference models: shapes, accuracy, invariance."""

from __future__ import annotations

import numpy as np
import pytest

from eqdeploy.datasets import BACKGROUND, MNIST_MEAN, MNIST_STD, load_mnist29
from eqdeploy.errors import EqdeployError

REFERENCE = ["c4_cnn", "c8_residual", "d4_cnn"]
N_TEST = 256
# c8_residual classifies from only 4 invariant features (Linear(4, 10) head): 50 epochs of
# rotated MNIST give 0.87-0.88 on the bundled test digits, so its bar is lower
MIN_ACCURACY = {"c4_cnn": 0.9, "c8_residual": 0.85, "d4_cnn": 0.9}


@pytest.mark.parametrize("split", ["calib", "test"])
def test_loader_shapes_dtypes_and_normalization(split):
    x, labels = load_mnist29(split)
    assert x.shape == (512, 1, 29, 29) and x.dtype == np.float32
    assert np.isfinite(x).all()
    # normalized MNIST pixels: background (p=0) and ink up to p=255
    assert x.min() == pytest.approx(-MNIST_MEAN / MNIST_STD, abs=1e-5)
    assert x.max() == pytest.approx((1 - MNIST_MEAN) / MNIST_STD, abs=1e-5)
    assert np.allclose(x[:, :, 0, :], BACKGROUND) and np.allclose(x[:, :, :, 0], BACKGROUND)
    raw = (x * MNIST_STD + MNIST_MEAN) * 255
    assert np.abs(raw - np.rint(raw)).max() < 1e-3  # 8-bit pixels, nothing else
    if split == "test":
        assert labels.shape == (512,) and labels.dtype == np.int64
        assert set(np.unique(labels)) == set(range(10))
    else:
        assert labels is None


def test_loader_pads_with_background_for_larger_sizes():
    x29, _ = load_mnist29("test")
    x33, labels = load_mnist29("test", size=33)
    assert x33.shape == (512, 1, 33, 33) and x33.dtype == np.float32 and labels is not None
    assert np.array_equal(x33[:, :, 2:-2, 2:-2], x29)
    ring = np.ones((33, 33), bool)
    ring[2:-2, 2:-2] = False
    assert np.allclose(x33[:, :, ring], BACKGROUND)


@pytest.mark.parametrize("kwargs", [{"split": "train"}, {"size": 28}, {"size": 32}])
def test_loader_bad_arguments_are_one_line_errors(kwargs):
    with pytest.raises(EqdeployError) as e:
        load_mnist29(**kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name", REFERENCE)
def test_trained_reference_model_accuracy_and_rot90_invariance(name):
    torch = pytest.importorskip("torch")
    from eqdeploy.harness.equivariance import relative_error
    from eqdeploy.models import reference as R

    assert (R.WEIGHTS_DIR / f"{name}.pt").is_file(), "trained weights are bundled"
    model = getattr(R, name)()
    assert not model.training
    n = R.EXACT_SIZES[name]
    x, labels = load_mnist29("test", size=n)
    x, labels = x[:N_TEST], labels[:N_TEST]
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
        y90 = model(torch.from_numpy(np.ascontiguousarray(np.rot90(x, 1, (2, 3))))).numpy()
    accuracy = float((y.argmax(1) == labels).mean())
    assert accuracy >= MIN_ACCURACY[name], f"{name}: test accuracy {accuracy:.3f}"
    assert relative_error(y90, y).max() <= 1e-5
