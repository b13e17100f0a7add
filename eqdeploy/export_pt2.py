"""``.pt2`` hand-off: a PlainModel saved with its manifest, loadable without e2cnn/escnn.

Used by ``eqdeploy export`` in the model's own environment (e.g. escnn pinned to numpy 1),
then ``eqdeploy convert model.pt2`` where the conversion stack lives.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from eqdeploy.export import PlainModel
from eqdeploy.spec import SCHEMA


def save_pt2(plain: PlainModel, path: str | Path) -> None:
    """Write ``plain`` (program + manifest + export info) atomically to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{path.name}")  # torch wants the .pt2 suffix
    try:
        torch.export.save(plain.program, str(tmp), extra_files={
            SCHEMA: plain.spec.dumps(),
            "eqdeploy.info": json.dumps(plain.info, default=str)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
