"""Shared fixtures: reference models and their conversions (computed once per session)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REFERENCE = ["c4_cnn", "c8_residual", "d4_cnn"]


@pytest.fixture(scope="session")
def reference_models():
    from eqdeploy.models import reference as R

    return {name: getattr(R, name)() for name in REFERENCE}


@pytest.fixture(scope="session")
def converted(tmp_path_factory, reference_models):
    """Each reference model saved as a dill pickle and converted to ONNX + TFLite."""
    import dill
    import torch

    from eqdeploy.convert import ConvertOptions, convert
    from eqdeploy.models.reference import EXACT_SIZES

    out = {}
    for name, model in reference_models.items():
        d = tmp_path_factory.mktemp(name)
        path = d / f"{name}.pt"
        torch.save(model, path, pickle_module=dill)
        n = EXACT_SIZES[name]
        opts = ConvertOptions(targets=["onnx", "tflite"], outdir=d / "out",
                              input_shape=(1, 1, n, n))
        out[name] = (convert(path, opts), d / "out")
    return out
