"""The rules of ``calibration/README.md`` for input arrays (calibration and probe files).

An ``.npz`` holds the inputs under one key (calibration: exactly one of ``calib`` /
``inputs``; probes: ``inputs``, else ``test``, else ``calib``), or an ``.npy`` holds them
alone: rank 4 ``(N, C, H, W)``, ``N >= 1``, finite, float32 (float16/float64 are cast to
float32 and the cast is reported; integers are refused: they are raw pixels, not the
model's normalized input). numpy only: used by ``convert`` and by ``bench`` on a device.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from eqdeploy.errors import EqdeployError

CALIBRATION_KEYS = ("calib", "inputs")  # exactly one of them
PROBE_KEYS = ("inputs", "test", "calib")  # the first one present


def expected(shape: tuple[int, ...] | None, rank: int = 4) -> str:
    """``(N, 1, 29, 29)`` for a known model input, ``(N, C, H, W)`` otherwise."""
    if shape is None:
        return "(N, C, H, W)" if rank == 4 else f"rank {rank}"
    return "(N, " + ", ".join(str(s) for s in shape[1:]) + ")"


def read_arrays(path: Path, role: str, shape: tuple[int, ...] | None = None
                ) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` (an ``.npy``: under the key ``""``), read without pickle."""
    if not path.is_file():
        raise EqdeployError(f"{role} file {path} does not exist",
                            f"pass an .npz with float32 inputs {expected(shape)}")
    with open(path, "rb") as fh:
        head = fh.read(6)
    if not (head.startswith(b"PK") or head == b"\x93NUMPY"):
        raise EqdeployError(f"{role} file {path} is unreadable (not an .npz or .npy file)",
                            f"pass an .npz/.npy with float32 inputs {expected(shape)}, written "
                            "with numpy.savez")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            return {"": data}
        with data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EqdeployError(f"{role} file {path} is unreadable ({why[:160]})",
                            f"pass an .npz/.npy with float32 inputs {expected(shape)}, written "
                            "with numpy.savez") from None


def pick_key(arrays: dict[str, np.ndarray], path: Path, role: str) -> str:
    """The key holding the inputs, by the role's rule."""
    if "" in arrays:
        return ""
    names = sorted(arrays)
    if role == "calibration":
        present = [k for k in CALIBRATION_KEYS if k in arrays]
        if len(present) == 2:
            raise EqdeployError(f"calibration file {path} has both 'calib' and 'inputs'",
                                "keep the calibration inputs under exactly one of them")
        if present:
            return present[0]
        wanted = "'calib' or 'inputs'"
    else:
        for k in PROBE_KEYS:
            if k in arrays:
                return k
        wanted = "'inputs', 'test' or 'calib'"
    raise EqdeployError(f"{role} file {path} has arrays {names or 'none'} but no {wanted}",
                        f"save the inputs under {wanted.split(' or ')[0].split(', ')[0]}")


def check_inputs(x: np.ndarray, path: Path, role: str, key: str, notes: list[str],
                 shape: tuple[int, ...] | None = None, rank: int = 4) -> np.ndarray:
    """Rank, N >= 1, dtype (cast reported in ``notes``), finiteness; ``shape``: the model's
    input (C, H, W must match) when known. Returns float32."""
    what = f"{role} file {path}" + (f" '{key}'" if key else "")
    if x.ndim != rank:
        fix = ("add the channel axis (x[:, None])" if x.ndim == rank - 1
               else f"store the inputs as {expected(shape, rank)}")
        raise EqdeployError(f"{what} holds shape {x.shape}, rank {x.ndim}: expected "
                            f"{expected(shape, rank)}", fix)
    if len(x) == 0:
        raise EqdeployError(f"{what} holds shape {x.shape}: no inputs (N = 0)",
                            f"store at least one input {expected(shape, rank)}")
    if np.issubdtype(x.dtype, np.floating):
        if x.dtype != np.float32:
            notes.append(f"{role} inputs {path.name}" + (f" '{key}'" if key else "")
                         + f": {x.dtype} cast to float32")
    else:
        raise EqdeployError(f"{what} holds {x.dtype} values (raw pixels?)",
                            "store float32 inputs, already normalized as the model expects")
    with np.errstate(over="ignore"):
        x = x.astype(np.float32)
    bad = int((~np.isfinite(x)).sum())
    if bad:
        raise EqdeployError(f"{what} holds {bad} NaN or inf value(s) (after the cast to float32)",
                            "give finite inputs, normalized as the model expects")
    if shape is not None:
        check_shape(x, shape, what)
    check_varied(x, what, role)
    return x


def check_varied(x: np.ndarray, what: str, role: str) -> None:
    """Probes that every pixel action leaves unchanged (each one constant over its pixels)
    compare nothing; calibration inputs that are one value everywhere give empty ranges."""
    if role == "calibration" and x.size and x.min() == x.max():
        raise EqdeployError(f"{what} holds the value {x.flat[0]:g} everywhere: the activation "
                            "ranges would be empty", "give real inputs from the data")
    if role == "probe" and x.ndim >= 3:
        flat = x.reshape(len(x), x.shape[1], -1)
        if (flat.max(-1) == flat.min(-1)).all():
            raise EqdeployError(f"{what}: every probe is constant over its pixels, so "
                                "rotations and flips leave it unchanged and the equivariance "
                                "check would compare nothing",
                                "give probes with spatial structure (real images)")


def check_shape(x: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    """C, H, W of ``x`` against the model's input ``shape``."""
    if tuple(x.shape[1:]) != tuple(shape[1:]):
        raise EqdeployError(f"{what} holds shape {x.shape}",
                            f"the model expects inputs {expected(shape)} with N >= 1")
