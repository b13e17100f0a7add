"""Save a zoo model the way a user of its style would, and say how to convert the file.

``dill``: ``torch.save(model, f, pickle_module=dill)`` (e2cnn/escnn models: plain pickle
fails on their local lambdas); ``pickle``: ``torch.save(model, f)``; ``state_dict``:
``torch.save(model.state_dict(), f)``, converted with ``--arch <factory>``;
``torchscript``: ``torch.jit.trace(model, x).save(f)``, converted with ``--group``.
``convert_argv`` is the ``eqdeploy convert`` command line the zoo's benchmark and tests run:
64 probes, the bundled MNIST test digits (and their normalization) for 1x29x29 models.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from eqdeploy.datasets import MNIST29, MNIST_MEAN, MNIST_STD
from eqdeploy.errors import EqdeployError
from eqdeploy.models.zoo import SAVE_FORMATS, ZooModel


def save_as_user(entry: ZooModel, model: nn.Module, directory: Path,
                 how: str | None = None) -> tuple[Path, list[str]]:
    """Write ``model`` to ``directory/<name>.pt`` as ``how`` (default: the entry's way);
    returns the file and the ``eqdeploy convert`` arguments it needs besides the file."""
    how = how or entry.save
    if how not in SAVE_FORMATS:
        raise EqdeployError(f"unknown save format {how!r}", f"use one of {SAVE_FORMATS}")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{entry.name}.pt"
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


PROBES = 64


def probe_args(entry: ZooModel) -> list[str]:
    """Probe inputs for the zoo's conversions: MNIST digits where the input is a 29x29
    digit, else seeded noise."""
    args = ["--num-probes", str(PROBES)]
    if entry.input_shape[1:] == (1, 29, 29):
        args += ["--probes", str(MNIST29), "--input-norm", f"{MNIST_MEAN}:{MNIST_STD}"]
    return args


def convert_argv(entry: ZooModel, path: Path, file_args: list[str], outdir: Path,
                 int8: bool = True, target: str = "all") -> list[str]:
    """``eqdeploy convert`` arguments for a file saved by ``save_as_user``."""
    return ["convert", str(path), *file_args, *probe_args(entry), *(["--int8"] if int8 else []),
            "--target", target, "-o", str(outdir)]
