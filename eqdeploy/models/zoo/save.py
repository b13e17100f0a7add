"""Save a zoo model the way a user of its style would, and say how to convert the file.

``dill``: ``torch.save(model, f, pickle_module=dill)`` (e2cnn/escnn models: plain pickle
fails on their local lambdas); ``pickle``: ``torch.save(model, f)``; ``state_dict``:
``torch.save(model.state_dict(), f)``, converted with ``--arch <factory>``;
``torchscript``: ``torch.jit.trace(model, x).save(f)``, converted with ``--group``.
``convert_argv`` is the ``eqdeploy convert`` command line the zoo's benchmark and tests run:
64 probes, the first 64 bundled MNIST test digits (held out from the zoo's training,
``train.PROBES``) and their normalization: the bundled file itself for 1x29x29 models; for
other inputs a digit fits (3x33x33), ``save_as_user`` writes them laid out for the input
(``common.digit_images``) beside the model as ``<name>.probes.digits.npz``.
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
    write_digit_probes(entry, directory)
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


def digit_probes_file(entry: ZooModel, directory: Path) -> Path | None:
    """Where ``save_as_user`` writes the digit probes laid out for the entry's input;
    ``None`` when the bundled file serves as is (1x29x29) or no digit fits the input."""
    from eqdeploy.models.zoo.common import digit_images

    shape = tuple(entry.input_shape[1:])
    if shape == (1, 29, 29) or digit_images(torch.zeros(1, 1, 29, 29), shape) is None:
        return None
    return directory / f"{entry.name}.probes.digits.npz"


def write_digit_probes(entry: ZooModel, directory: Path) -> None:
    """The first ``PROBES`` bundled test digits laid out for the entry's input, as
    ``digit_probes_file`` (key ``inputs``), where the bundled file does not serve."""
    import numpy as np

    from eqdeploy.models.zoo.common import digit_images

    path = digit_probes_file(entry, directory)
    if path is None:
        return
    with np.load(MNIST29) as data:
        digits = torch.from_numpy(data["test"][:PROBES])
    np.savez(path, inputs=digit_images(digits, tuple(entry.input_shape[1:])).numpy())


def probe_args(entry: ZooModel, directory: Path) -> list[str]:
    """Probe inputs for the zoo's conversions of a model saved in ``directory``: the
    bundled MNIST test digits, laid out for the input where it is not 1x29x29
    (``digit_probes_file``), with their normalization; seeded noise where no digit fits."""
    args = ["--num-probes", str(PROBES)]
    layout = digit_probes_file(entry, directory)
    if layout is not None or entry.input_shape[1:] == (1, 29, 29):
        args += ["--probes", str(layout or MNIST29), "--input-norm", f"{MNIST_MEAN}:{MNIST_STD}"]
    return args


def convert_argv(entry: ZooModel, path: Path, file_args: list[str], outdir: Path,
                 int8: bool = True, target: str = "all") -> list[str]:
    """``eqdeploy convert`` arguments for a file saved by ``save_as_user``."""
    return ["convert", str(path), *file_args, *probe_args(entry, path.parent),
            *(["--int8"] if int8 else []), "--target", target, "-o", str(outdir)]
