"""Model loading: every supported format, and one-line errors for the others."""

from __future__ import annotations

import pickle

import pytest
import torch

from eqdeploy.errors import EqdeployError
from eqdeploy.load import load_model

ARCH = "eqdeploy.models.reference:c4_cnn"


@pytest.fixture(scope="module")
def c4():
    from eqdeploy.models.reference import c4_cnn

    return c4_cnn()


def _same(a, b):
    x = torch.randn(2, 1, 29, 29)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_plain_pickle_fails_for_e2cnn_models(c4, tmp_path):
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        torch.save(c4, tmp_path / "m.pt")


@pytest.mark.parametrize("pickler", ["dill", "cloudpickle"])
def test_whole_model_pickles(pickler, c4, tmp_path):
    mod = __import__(pickler)
    path = tmp_path / "m.pt"
    try:
        torch.save(c4, path, pickle_module=mod)
    except Exception as e:  # cloudpickle cannot save every e2cnn model
        assert pickler == "cloudpickle", e
        return
    loaded = load_model(path)
    assert loaded.format in ("pickle", "dill", "cloudpickle")
    assert _same(loaded.module, c4)


def test_state_dict_with_arch(c4, tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(c4.state_dict(), path)
    loaded = load_model(path, ARCH)
    assert loaded.format == "state_dict+arch" and _same(loaded.module, c4)
    with pytest.raises(EqdeployError, match="state-dict checkpoint.*--arch"):
        load_model(path)


def test_state_dict_of_another_model_names_the_mismatch(c4, tmp_path):
    path = tmp_path / "sd.pt"
    torch.save(c4.state_dict(), path)
    with pytest.raises(EqdeployError, match="does not fit --arch"):
        load_model(path, "eqdeploy.models.reference:d4_cnn")


def test_pt2_round_trip(c4, tmp_path):
    from eqdeploy.export import export_equivariant
    from eqdeploy.export_pt2 import save_pt2

    plain = export_equivariant(c4, torch.zeros(1, 1, 29, 29))
    path = tmp_path / "m.pt2"
    save_pt2(plain, path)
    loaded = load_model(path)
    assert loaded.format == "pt2"
    assert loaded.spec.to_json() == plain.spec.to_json()
    assert loaded.info["input_shape"] == [1, 1, 29, 29]
    assert _same(loaded.program.module(), c4)


def test_pt2_without_manifest_is_refused(c4, tmp_path):
    path = tmp_path / "bare.pt2"
    ep = torch.export.export(torch.nn.Conv2d(1, 2, 3), (torch.zeros(1, 1, 5, 5),))
    torch.export.save(ep, path)
    with pytest.raises(EqdeployError, match="no eqdeploy symmetry manifest"):
        load_model(path)


@pytest.mark.parametrize("content,match", [
    (b"", "is empty"),
    (b"hello world, not a model", "not a torch checkpoint"),
    (b"PK\x03\x04garbage" * 10, "truncated or damaged"),
])
def test_corrupt_files(content, match, tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(EqdeployError, match=match):
        load_model(path)


def test_torchscript_is_recognised(c4, tmp_path):
    path = tmp_path / "ts.pt"
    torch.jit.trace(c4, torch.zeros(1, 1, 29, 29)).save(str(path))
    loaded = load_model(path)
    assert loaded.format == "torchscript"
    assert isinstance(loaded.module, torch.jit.ScriptModule)


def test_missing_file_and_bad_arch(tmp_path):
    with pytest.raises(EqdeployError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    path = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(1)}, path)
    with pytest.raises(EqdeployError, match="package.module:factory"):
        load_model(path, "nocolon")
    with pytest.raises(EqdeployError, match="cannot import"):
        load_model(path, "no_such_pkg.mod:f")
