"""Save a zoo model the way a user of its style would, and say how to convert the file.

``dill``: ``torch.save(model, f, pickle_module=dill)`` (e2cnn/escnn models: plain pickle
fails on their local lambdas); ``pickle``: ``torch.save(model, f)``; ``state_dict``:
``torch.save(model.state_dict(), f)``, converted with ``--arch <factory>``;
``torchscript``: ``torch.jit.trace(model, x).save(f)``, converted with ``--group``.
``convert_argv`` is the ``eqdeploy convert`` command line the zoo's benchmark and tests run,
as a user converting a trained digit model with its data would: the digits' normalization,
activation ranges calibrated on the bundled unlabelled ``calib`` digits, and 64 probes, the
first 64 bundled ``test`` digits (held out from the zoo's training, ``train.PROBES``). The
bundled file serves as is for 1x29x29 models; for other inputs a digit fits (3x33x33),
``save_as_user`` writes both splits laid out for the input (``common.digit_images``) beside
the model as ``<name>.digits.npz`` (keys ``test`` and ``calib``, as the bundled file).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from eqdeploy.datasets import MNIST29, MNIST_MEAN, MNIST_STD
from eqdeploy.errors import EqdeployError
from eqdeploy.models.zoo import SAVE_FORMATS, ZooModel
from eqdeploy.models.zoo.train import PROBES


def save_as_user(entry: ZooModel, model: nn.Module, directory: Path,
                 how: str | None = None) -> tuple[Path, list[str]]:
    """Write ``model`` to ``directory/<name>.pt`` as ``how`` (default: the entry's way);
    returns the file and the ``eqdeploy convert`` arguments it needs besides the file."""
    how = how or entry.save
    if how not in SAVE_FORMATS:
        raise EqdeployError(f"unknown save format {how!r}", f"use one of {SAVE_FORMATS}")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{entry.name}.pt"
    write_digits(entry, directory)
    model = model.eval()
    shape = ",".join(str(n) for n in entry.input_shape)
    args = ["--input-shape", shape, *entry.flags]
    if how == "dill":
        import dill

        torch.save(model, path, pickle_module=dill)
    elif how == "pickle":
        torch.save(model, path)
    elif how == "state_dict":
        torch.save(model.state_dict(), path)
        args += ["--arch", entry.factory]
    else:
        with torch.no_grad():
            traced = torch.jit.trace(model, torch.randn(*entry.input_shape), check_trace=False)
        traced.save(str(path))
        if "--group" not in args:
            args += ["--group", entry.group]
    return path, args


def digits_file(entry: ZooModel, directory: Path) -> Path | None:
    """Where ``save_as_user`` writes the digits laid out for the entry's input; ``None``
    when the bundled file serves as is (1x29x29) or no digit fits the input."""
    from eqdeploy.models.zoo.common import digit_images

    shape = tuple(entry.input_shape[1:])
    if shape == (1, 29, 29) or digit_images(torch.zeros(1, 1, 29, 29), shape) is None:
        return None
    return directory / f"{entry.name}.digits.npz"


def write_digits(entry: ZooModel, directory: Path) -> None:
    """The first ``PROBES`` bundled test digits (``test``) and the calibration digits
    (``calib``) laid out for the entry's input, as ``digits_file``, where the bundled file
    does not serve."""
    import numpy as np

    from eqdeploy.models.zoo.common import digit_images

    path = digits_file(entry, directory)
    if path is None:
        return
    shape = tuple(entry.input_shape[1:])
    with np.load(MNIST29) as data:
        test, calib = (torch.from_numpy(data[k]) for k in ("test", "calib"))
    np.savez(path, test=digit_images(test[:PROBES], shape).numpy(),
             calib=digit_images(calib, shape).numpy())


def data_args(entry: ZooModel, directory: Path) -> list[str]:
    """Inputs of the zoo's conversions of a model saved in ``directory``: the bundled MNIST
    digits (laid out for the input where it is not 1x29x29, ``digits_file``) as probes and
    calibration, with their normalization; seeded noise probes, data-free ranges where no
    digit fits."""
    args = ["--num-probes", str(PROBES)]
    layout = digits_file(entry, directory)
    if layout is not None or entry.input_shape[1:] == (1, 29, 29):
        digits = str(layout or MNIST29)
        args += ["--probes", digits, "--calibration", digits,
                 "--input-norm", f"{MNIST_MEAN}:{MNIST_STD}"]
    return args


def convert_argv(entry: ZooModel, path: Path, file_args: list[str], outdir: Path,
                 int8: bool = True, target: str = "all") -> list[str]:
    """``eqdeploy convert`` arguments for a file saved by ``save_as_user``."""
    data = data_args(entry, path.parent)
    if not int8 and "--calibration" in data:  # an INT8-only option
        i = data.index("--calibration")
        data = data[:i] + data[i + 2:]
    return ["convert", str(path), *file_args, *data,
            *(["--int8"] if int8 else []), "--target", target, "-o", str(outdir)]
