"""Calibration inputs for activation ranges: an ``.npz``/``.npy`` array or a folder of images.

Arrays must already be the model's input: float32 ``(N, C, H, W)`` after normalization
(``.npz`` key ``calib`` or ``inputs``, or the only array; probe files: ``inputs``, then
``test``, then ``calib``). Images (PNG, JPEG, BMP, TIFF) are
read with Pillow, converted to C channels (L or RGB), centre-cropped/resized to H x W, scaled
to [0, 1] and normalized with the given mean/std. Errors name the file and the expected shape.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from eqdeploy.errors import EqdeployError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def _shape(shape: tuple[int, ...]) -> str:
    return "(N, " + ", ".join(str(s) for s in shape[1:]) + ")"


def _from_array(path: Path, shape: tuple[int, ...], keys: tuple[str, ...]) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise EqdeployError(f"calibration file {path} is unreadable ({e})",
                            f"pass an .npz/.npy with float32 inputs {_shape(shape)}") from None
    if isinstance(data, np.lib.npyio.NpzFile):
        names = list(data.keys())
        key = next((k for k in keys if k in names), names[0] if len(names) == 1 else None)
        if key is None:
            raise EqdeployError(f"calibration file {path} has arrays {names} but none of "
                                f"{list(keys)}", f"store the inputs under the key '{keys[0]}'")
        data = data[key]
    x = np.asarray(data)
    if x.ndim == 3 and shape[1] == 1:
        x = x[:, None]
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape[1:]) or len(x) == 0:
        raise EqdeployError(f"calibration file {path} holds shape {x.shape}",
                            f"the model expects inputs {_shape(shape)} with N >= 1")
    if not np.issubdtype(x.dtype, np.floating):
        raise EqdeployError(f"calibration file {path} holds {x.dtype} values",
                            "store float32 inputs, already normalized as the model expects")
    return x.astype(np.float32)


def _from_images(folder: Path, shape: tuple[int, ...], mean, std) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise EqdeployError(f"calibration folder {folder} has no images",
                            f"add PNG/JPEG files or pass an .npz of inputs {_shape(shape)}")
    channels, h, w = shape[1:]
    if channels not in (1, 3):
        raise EqdeployError(f"the model takes {channels} channels; images give 1 or 3",
                            "pass an .npz with the inputs instead")
    out = []
    for f in files:
        try:
            img = Image.open(f).convert("L" if channels == 1 else "RGB")
        except (OSError, UnidentifiedImageError):
            raise EqdeployError(f"calibration image {f} is unreadable",
                                "remove it or replace it with a PNG/JPEG") from None
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((w, h), Image.BILINEAR)
        a = np.asarray(img, dtype=np.float32) / 255.0
        out.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
    x = np.stack(out)
    mean = np.asarray(mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(std, np.float32).reshape(1, -1, 1, 1)
    return ((x - mean) / std).astype(np.float32)


def load_calibration(path: str | Path, shape: tuple[int, ...], mean=0.0, std=1.0,
                     keys: tuple[str, ...] = ("calib", "inputs")) -> np.ndarray:
    """Calibration inputs shaped like ``shape`` (N, C, H, W) from ``path``; ``keys``: the
    ``.npz`` arrays to look for, in order (probes prefer ``inputs``, then ``test``)."""
    path = Path(path)
    if not path.exists():
        raise EqdeployError(f"calibration path {path} does not exist",
                            "pass a folder of images or an .npz of inputs")
    if path.is_dir():
        return _from_images(path, shape, mean, std)
    return _from_array(path, shape, keys)
