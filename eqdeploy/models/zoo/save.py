"""Save a zoo model the way a user of its style would, and say how to convert the file.

``dill``: ``torch.save(model, f, pickle_module=dill)`` (e2cnn/escnn models: plain pickle
fails on their local lambdas); ``pickle``: ``torch.save(model, f)``; ``state_dict``:
``torch.save(model.state_dict(), f)``, converted with ``--arch <factory>``;
``torchscript``: ``torch.jit.trace(model, x).save(f)``, converted with ``--group``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

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
