"""Bundled real data: 1024 MNIST digits at 29x29 (numpy only; no torch import).

``calibration/mnist29.npz`` (see ``calibration/README.md``) holds 512 calibration digits
(``calib``) and 512 held-out test digits with labels (``test``, ``test_labels``), float32
``(N, 1, 29, 29)`` already normalized with the MNIST mean/std. It lives in the repository's
``calibration/`` folder beside the package, so it is found from a source checkout or an
editable install (``pip install -e .``), not from a wheel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eqdeploy.errors import EqdeployError

CALIBRATION_DIR = Path(__file__).resolve().parents[1] / "calibration"
MNIST29 = CALIBRATION_DIR / "mnist29.npz"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
BACKGROUND = -MNIST_MEAN / MNIST_STD  # a normalized zero pixel (padding value)
BASE_SIZE = 29


def normalize_mnist(u8: np.ndarray) -> np.ndarray:
    """Raw 0..255 pixels -> the normalized float32 input the reference models take."""
    return ((np.asarray(u8, np.float32) / 255.0 - MNIST_MEAN) / MNIST_STD).astype(np.float32)


def load_mnist29(split: str = "calib", size: int = BASE_SIZE
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Bundled MNIST digits as ``(x, labels)``.

    ``x``: float32 ``(N, 1, size, size)``, normalized (``(p / 255 - 0.1307) / 0.3081``),
    the digit centred on the centre pixel; ``size`` > 29 pads with the normalized background
    on every side (33 for ``c8_residual``), so ``size - 29`` must be even.
    ``labels``: int64 ``(N,)`` for ``split="test"``, ``None`` for ``split="calib"``.
    """
    if split not in ("calib", "test"):
        raise EqdeployError(f"unknown MNIST split {split!r}", "use split='calib' or 'test'")
    if size < BASE_SIZE or (size - BASE_SIZE) % 2:
        raise EqdeployError(f"cannot give the 29x29 digits at size {size}",
                            "use an odd size >= 29 (29 for c4_cnn/d4_cnn, 33 for c8_residual)")
    if not MNIST29.is_file():
        raise EqdeployError(f"bundled MNIST digits not found at {MNIST29}",
                            "use a source checkout or editable install (pip install -e .), "
                            "or regenerate with python tools/train_reference.py --extract-only")
    with np.load(MNIST29, allow_pickle=False) as data:
        x = np.asarray(data[split], dtype=np.float32)
        labels = data["test_labels"].astype(np.int64) if split == "test" else None
    p = (size - BASE_SIZE) // 2
    if p:
        x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=np.float32(BACKGROUND))
    return np.ascontiguousarray(x), labels
