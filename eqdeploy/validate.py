"""Check every ``convert`` argument before any heavy import or work (numpy only, no torch).

``preflight`` runs first in the CLI (before torch is imported) and again at the start of
``eqdeploy.convert.convert`` (API callers): option syntax and ranges, flags that need
``--int8``, the group name, the calibration and probe files (``calibration/README.md``'s
rules, read now, not after export), the output folder (created now; removed again if the
run fails and it is still empty) and what the run will write there (``eqdeploy.outputs``:
never over an input, never over files no eqdeploy report lists unless ``--force``).
``Preflight.against_model`` repeats the shape-dependent checks once the model's input
shape is known. Every failure is an ``EqdeployError`` naming the option and the fix.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eqdeploy.errors import EqdeployError
from eqdeploy.groups import Group
from eqdeploy.outputs import check_outputs, planned_outputs, plots_available

MAX_SIDE = 16384  # H, W
MAX_BATCH = 4096  # N: the artifact's fixed batch
MAX_SAMPLE_VALUES = 1 << 26  # C * H * W: 256 MB per input as float32
MAX_PROBE_VALUES = 1 << 28  # all probes together: 1 GB as float32
MAX_NORMALIZED = 1e6  # |(pixel - mean) / std| for pixels in [0, 1]
INT8_ONLY = ("--per-tensor", "--float-io", "--calibration", "--data-free", "--no-dfq",
             "--no-cle", "--no-absorb", "--no-bias-correction", "--orbit-agnostic",
             "--absorb-padded", "--ranges", "--explain", "--ort-weights")
SHAPE_EXAMPLE = "e.g. --input-shape 1,1,29,29"


# --- option values -------------------------------------------------------------------------
def check_mask_radius(value: float | None) -> float | None:
    """``--mask-radius``: a fraction of the inscribed disc in (0, 1]; None stays None."""
    if value is not None and not (math.isfinite(value) and 0.0 < value <= 1.0):
        raise EqdeployError(f"--mask-radius {value} is not in (0, 1]",
                            "pass a fraction of the inscribed disc, e.g. --mask-radius 0.9")
    return value


def parse_shape(value: str | None, option: str = "--input-shape"
                ) -> tuple[int, int, int, int] | None:
    """``N,C,H,W`` (or ``NxCxHxW``) -> a checked 4-tuple; None stays None."""
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 4:
        raise EqdeployError(f"{option} {value!r} is not N,C,H,W", SHAPE_EXAMPLE)
    check_shape(shape, option)
    return shape  # type: ignore[return-value]


def check_shape(shape: tuple[int, ...], option: str = "--input-shape") -> None:
    """Four positive integers of a size this machine can hold."""
    if len(shape) != 4 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                              for v in shape):
        raise EqdeployError(f"{option} {shape} is not N,C,H,W", SHAPE_EXAMPLE)
    n, c, h, w = (int(v) for v in shape)
    text = f"{option} {n},{c},{h},{w}"
    if min(n, c, h, w) < 1:
        raise EqdeployError(f"{text} has a size below 1", SHAPE_EXAMPLE)
    if max(h, w) > MAX_SIDE or n > MAX_BATCH:
        raise EqdeployError(f"{text} is out of range (H, W <= {MAX_SIDE}, N <= {MAX_BATCH})",
                            "pass the size the model runs at, " + SHAPE_EXAMPLE)
    if c * h * w > MAX_SAMPLE_VALUES:
        raise EqdeployError(f"{text} has {c * h * w:.3g} values per input "
                            f"({4 * c * h * w / 2**30:.3g} GiB as float32; the limit is "
                            f"{MAX_SAMPLE_VALUES * 4 // 2**20} MiB)",
                            "pass the size the model runs at, " + SHAPE_EXAMPLE)


def parse_norm(value: str | None, option: str = "--input-norm"
               ) -> tuple[list[float], list[float]] | None:
    """``MEAN[,..]:STD[,..]`` -> checked (means, stds); None stays None."""
    if value is None:
        return None
    try:
        mean, std = value.split(":")
        norm = ([float(v) for v in mean.split(",")], [float(v) for v in std.split(",")])
    except ValueError:
        raise EqdeployError(f"{option} {value!r} is not MEAN:STD",
                            "e.g. 0.1307:0.3081 or 0.485,0.456,0.406:0.229,0.224,0.225"
                            ) from None
    return check_norm(norm, None, f"{option} {value}")


def check_norm(norm: tuple[Any, Any] | None, channels: int | None, where: str = "--input-norm"
               ) -> tuple[list[float], list[float]] | None:
    """Finite means, finite stds > 0, one value or one per channel, pixels in [0, 1]
    normalized to a sane range."""
    if norm is None:
        return None
    mean, std = ([float(v) for v in np.atleast_1d(np.asarray(a, dtype=float))] for a in norm)
    if not mean or len(mean) != len(std):
        raise EqdeployError(f"{where}: {len(mean)} mean(s) but {len(std)} std(s)",
                            "give as many means as stds, e.g. 0.5,0.5,0.5:0.25,0.25,0.25")
    if not all(math.isfinite(v) for v in mean + std):
        raise EqdeployError(f"{where}: mean and std must be finite numbers",
                            "e.g. --input-norm 0.1307:0.3081")
    if min(std) <= 0:
        raise EqdeployError(f"{where}: std must be > 0 (got {min(std):g})",
                            "give the per-channel standard deviation of the training pixels")
    if channels is not None and len(mean) not in (1, channels):
        raise EqdeployError(f"{where} gives {len(mean)} channels but the model takes {channels}",
                            "give one mean and one std" if channels == 1 else
                            f"give 1 or {channels} means and stds")
    m, s = np.asarray(mean), np.asarray(std)
    reach = float(np.abs(np.stack([(0 - m) / s, (1 - m) / s])).max())
    if not reach <= MAX_NORMALIZED:
        raise EqdeployError(f"{where} maps pixels in [0, 1] to values up to {reach:.3g}",
                            "give mean and std in pixel units of [0, 1], e.g. 0.1307:0.3081")
    return mean, std


def check_probe_count(n: Any, shape: tuple[int, ...] | None) -> None:
    """``--num-probes`` at least 1 and, with the input shape, a size that fits in memory."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise EqdeployError(f"--num-probes {n} is out of range",
                            "give at least 1 (default 16)")
    if shape is not None and int(n) * int(np.prod(shape[1:])) > MAX_PROBE_VALUES:
        raise EqdeployError(f"--num-probes {n} at input {tuple(shape)} needs "
                            f"{4 * int(n) * int(np.prod(shape[1:])) / 2**30:.3g} GiB",
                            "give fewer probes (16 to a few hundred)")


def check_group(name: str | None) -> None:
    if name is not None:
        Group(name)  # "unknown group ..." with the names that exist


def check_arch(arch: str | None) -> None:
    """``package.module:factory`` syntax (importing it needs torch: done when loading)."""
    if arch is None:
        return
    module, _, attr = arch.partition(":")
    if not module or not attr or not all(p.isidentifier() for p in module.split(".")) \
            or not all(p.isidentifier() for p in attr.split(".")):
        raise EqdeployError(f"--arch {arch!r} is not of the form package.module:factory",
                            "e.g. --arch eqdeploy.models.reference:c4_cnn")


def int8_flags_of(options: Any) -> list[str]:
    """The INT8-only options ``options`` sets away from their defaults."""
    dfq = getattr(options, "dfq", None)
    return [flag for flag, on in (
        ("--per-tensor", options.per_tensor), ("--float-io", options.float_io),
        ("--calibration", options.calibration is not None),
        ("--data-free", options.data_free not in (None, "distilled")),
        ("--no-dfq", dfq is not None and not dfq.enabled),
        ("--no-cle", dfq is not None and not dfq.cle),
        ("--no-absorb", dfq is not None and not dfq.absorb),
        ("--no-bias-correction", dfq is not None and not dfq.bias_correction),
        ("--orbit-agnostic", dfq is not None and dfq.orbit_agnostic),
        ("--ort-weights", getattr(options, "ort_weights", "u8") != "u8")) if on]


def check_flags(options: Any, given: list[str]) -> None:
    """Options that would be silently ignored are refused."""
    int8_only = [f for f in INT8_ONLY if f in given]
    if int8_only and not options.int8:
        them = "it" if len(int8_only) == 1 else "them"
        raise EqdeployError(f"{', '.join(int8_only)} appl{'ies' if them == 'it' else 'y'} only "
                            "to INT8 conversions", f"add --int8, or drop {them}")
    if "--calibration" in given and "--data-free" in given:
        raise EqdeployError("--data-free chooses ranges without --calibration",
                            "drop one of the two")
    if options.float_io and "tflite" not in options.targets:
        raise EqdeployError("--float-io applies to the TFLite artifact (QDQ ONNX always has "
                            "float I/O)", "add --target tflite or all, or drop --float-io")
    if getattr(options, "ort_weights", "u8") != "u8" and "onnx" not in options.targets:
        raise EqdeployError("--ort-weights applies to the ONNX artifact",
                            "add --target onnx or all, or drop --ort-weights")
    if getattr(options, "allow_broken", False) and not options.group:
        raise EqdeployError("--allow-broken applies to layout discovery with --group",
                            "add --group NAME, or drop --allow-broken")
    if options.tap is not None and not str(options.tap).strip():
        raise EqdeployError("--tap '' names no layer", "give a module path, e.g. features.10")


# --- the output folder ---------------------------------------------------------------------
def check_outdir_text(text: str, option: str = "-o") -> None:
    if not str(text).strip():
        raise EqdeployError(f"{option} '' names no folder",
                            f"pass {option} DIR (e.g. {option} out/), or {option} . for this "
                            "folder")


def make_outdir(outdir: Path) -> list[Path]:
    """Create ``outdir`` (and parents) and prove it writable; returns the folders created,
    innermost first."""
    missing = []
    p = outdir
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    if p.exists() and not p.is_dir():
        what = "is a file" if p == outdir else f"cannot be created: {p} is a file"
        raise EqdeployError(f"output folder {outdir} {what}",
                            "pass -o with a folder path")
    try:
        outdir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=outdir):
            pass
    except OSError as e:
        remove_empty(missing)
        raise EqdeployError(f"output folder {outdir} cannot be created or written ({e.strerror})",
                            "pass -o with a folder you can write to") from None
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed run created, innermost first, while they are empty."""
    for d in folders:
        try:
            d.rmdir()
        except OSError:
            return


# --- everything at once --------------------------------------------------------------------
@dataclass
class Preflight:
    """What the checks found: the outputs planned, the inputs (never written over), the
    folders created, notes to report (casts, skipped and resized images)."""

    outdir: Path
    outputs: list[str]
    inputs: dict[str, Path]  # role -> path
    created: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: dict[str, Any] = field(default_factory=dict)  # role -> calibrate.Inputs

    def against_model(self, shape: tuple[int, ...], norm: Any = None) -> list[str]:
        """The checks that need the model's input shape (known once it is loaded); returns
        the notes they add (images that will be resized)."""
        check_shape(tuple(shape), "the model's input shape")
        if norm is not None:
            check_norm(norm, int(shape[1]))
        added = []
        for inputs in self.files.values():
            inputs.check_shape(tuple(shape))
            added += [n for n in inputs.notes if n not in self.notes]
        self.notes += added
        return added

    def undo(self) -> None:
        """After a failure: remove the output folders this run created, if still empty."""
        remove_empty(self.created)


def preflight(model_path: str | Path, options: Any, given: list[str] | None = None
              ) -> Preflight:
    """Run every check that needs no model; creates the output folder (``undo`` removes it).
    ``given``: the INT8-only flags set on the command line (default: read from options)."""
    from eqdeploy.quantize.calibrate import read_inputs
    from eqdeploy.targets import TARGETS

    model_path = Path(model_path)
    if not model_path.is_file():
        raise EqdeployError(f"{model_path} " + ("is a folder" if model_path.is_dir()
                                                else "does not exist"),
                            "pass the path of a saved model file")
    if model_path.stat().st_size == 0:
        raise EqdeployError(f"{model_path} is empty", "save the model again")
    for t in options.targets:
        if t not in TARGETS:
            raise EqdeployError(f"unknown target {t!r}", f"use one of {sorted(TARGETS)} or all")
    shape = tuple(options.input_shape) if options.input_shape is not None else None
    if shape is not None:
        check_shape(shape)
    check_probe_count(options.probes, shape)
    check_norm(options.input_norm, shape[1] if shape else None)
    check_group(options.group)
    check_arch(options.arch)
    check_flags(options, int8_flags_of(options) if given is None else given)
    inputs = {"model": model_path}
    files = {}
    for role, path in (("calibration", options.calibration), ("probe", options.probe_inputs)):
        if path is not None:
            files[role] = read_inputs(path, role)
            if shape is not None:
                files[role].check_shape(shape)
            inputs[role] = Path(path)
    outdir = Path(options.outdir)
    outputs = planned_outputs(model_path.stem, list(options.targets), bool(options.int8),
                              bool(options.tap), plots=plots_available())
    check_outputs(outdir, model_path.stem, outputs, inputs, getattr(options, "force", False))
    plan = Preflight(outdir, outputs, inputs,
                     notes=[n for f in files.values() for n in f.notes], files=files)
    plan.created = make_outdir(outdir)
    return plan
