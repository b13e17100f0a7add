"""Calibration and probe inputs: an ``.npz``/``.npy`` array or a folder of images.

Arrays must already be the model's input, by the rules of ``calibration/README.md``
(``eqdeploy.input_arrays``: key, rank 4, float32 or a reported cast, finite, ``N >= 1``).
Images (PNG, JPEG, BMP, TIFF) are read with Pillow in sorted filename order, converted to C
channels (L or RGB), centre-cropped/resized to H x W, scaled to [0, 1] and normalized with
the given mean/std; other files are skipped. What was cast, resized or skipped is appended
to ``notes``. ``read_inputs`` checks a file without the model (before any heavy work);
``load_calibration`` also checks it against the model's input shape. numpy (+ Pillow).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eqdeploy.errors import EqdeployError
from eqdeploy.input_arrays import (
    CALIBRATION_KEYS,
    PROBE_KEYS,
    check_inputs,
    expected,
    pick_key,
    read_arrays,
)
from eqdeploy.input_arrays import check_shape as check_array_shape

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


@dataclass
class Inputs:
    """A checked calibration/probe source: an array, or the image files of a folder."""

    path: Path
    role: str  # "calibration" | "probe"
    array: np.ndarray | None = None
    images: list[Path] | None = None
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) per image
    notes: list[str] = field(default_factory=list)

    def check_shape(self, shape: tuple[int, ...]) -> None:
        """Against the model's input ``shape``; notes which images will be resized."""
        if self.array is not None:
            check_array_shape(self.array, shape, f"{self.role} file {self.path}")
            return
        channels, h, w = shape[1:]
        if channels not in (1, 3):
            raise EqdeployError(f"the model takes {channels} channels; images give 1 or 3",
                                f"pass an .npz of {self.role} inputs {expected(shape)} instead")
        resized = sorted({f"{sw}x{sh}" for sw, sh in self.sizes if (sw, sh) != (w, h)})
        if resized:
            count = sum((sw, sh) != (w, h) for sw, sh in self.sizes)
            note = (f"{self.role} folder {self.path}: {count} of {len(self.sizes)} images "
                    f"centre-cropped and resized from {', '.join(resized)} to {w}x{h}")
            if note not in self.notes:
                self.notes.append(note)


def read_inputs(path: str | Path, role: str = "calibration",
                keys: tuple[str, ...] | None = None,
                shape: tuple[int, ...] | None = None) -> Inputs:
    """Read and check ``path`` by the format rules (``shape``: the model's input, if known;
    ``Inputs.check_shape`` checks it later otherwise)."""
    path = Path(path)
    if not path.exists():
        raise EqdeployError(f"{role} path {path} does not exist",
                            "pass a folder of images or an .npz of inputs")
    if path.is_dir():
        return _image_folder(path, role)
    arrays = read_arrays(path, role, shape)
    if keys is not None and "" not in arrays:  # an explicit key order (API callers)
        key = next((k for k in keys if k in arrays), None) or pick_key(arrays, path, role)
    else:
        key = pick_key(arrays, path, role)
    out = Inputs(path, role)
    out.array = check_inputs(arrays[key], path, role, key, out.notes, shape)
    return out


def _image_folder(folder: Path, role: str) -> Inputs:
    from PIL import Image, UnidentifiedImageError

    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    files = [p for p in entries if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise EqdeployError(f"{role} folder {folder} has no images",
                            "add PNG/JPEG files or pass an .npz of inputs")
    out = Inputs(folder, role, images=files)
    for f in files:
        try:
            with Image.open(f) as img:
                img.verify()
            with Image.open(f) as img:
                out.sizes.append(img.size)
        except (OSError, UnidentifiedImageError, SyntaxError):
            raise EqdeployError(f"{role} image {f} is unreadable",
                                "remove it or replace it with a PNG/JPEG") from None
    skipped = [p.name for p in entries if p not in files]
    if skipped:
        shown = ", ".join(skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        out.notes.append(f"{role} folder {folder}: skipped {len(skipped)} non-image "
                         f"entr{'y' if len(skipped) == 1 else 'ies'} ({shown})")
    return out


def _images_to_array(inputs: Inputs, shape: tuple[int, ...], mean, std) -> np.ndarray:
    from PIL import Image

    channels, h, w = shape[1:]
    out = []
    for f in inputs.images or []:
        with Image.open(f) as src:
            img = src.convert("L" if channels == 1 else "RGB")
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
                     keys: tuple[str, ...] | None = None, role: str = "calibration",
                     notes: list[str] | None = None) -> np.ndarray:
    """Inputs shaped like ``shape`` (N, C, H, W) from ``path``. ``role`` picks the key rule
    and names the file in errors ("calibration": exactly one of ``calib``/``inputs``;
    "probe": ``inputs``, else ``test``, else ``calib``); ``keys`` overrides the key order."""
    inputs = read_inputs(path, role, keys, shape)
    inputs.check_shape(shape)
    if notes is not None:
        notes.extend(inputs.notes)
    if inputs.array is not None:
        return inputs.array
    return _images_to_array(inputs, shape, mean, std)


__all__ = ["CALIBRATION_KEYS", "IMAGE_SUFFIXES", "PROBE_KEYS", "Inputs", "load_calibration",
           "read_inputs"]
