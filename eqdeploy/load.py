"""Load a model file whatever its format, without the user naming it.

Formats: ``.pt2`` ExportedProgram with an embedded eqdeploy manifest (the hand-off from
``eqdeploy export`` in another environment); a state-dict checkpoint with ``--arch
package.module:factory`` (``weights_only=True``: the safe path); a whole pickled module
(``torch.save(model)`` with pickle or dill, or a plain ``pickle.dump``/``dill.dump``; files
saved with cloudpickle load through pickle, which only needs cloudpickle importable).
Unpickling runs code from the file: load only files you trust. TorchScript files
(``torch.jit.trace`` or ``torch.jit.script``, then ``save``) load with ``torch.jit.load``;
they carry no field types, so ``convert`` needs ``--group`` to discover their layouts, and
``eqdeploy.adapters.torchscript`` turns their graph into an exportable module.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from eqdeploy.adapters import e2cnn_compat
from eqdeploy.errors import EqdeployError
from eqdeploy.spec import SCHEMA, SymmetrySpec


@dataclass
class Loaded:
    """What a model file held: a module, or an exported program with its manifest."""

    format: str  # "pt2" | "state_dict+arch" | "pickle" | "dill" | "torchscript"
    module: nn.Module | None = None
    program: torch.export.ExportedProgram | None = None
    spec: SymmetrySpec | None = None
    info: dict | None = None


def _factory(arch: str):
    module_name, _, attr = arch.partition(":")
    if not module_name or not attr:
        raise EqdeployError(f"--arch {arch!r} is not of the form package.module:factory",
                            "e.g. --arch eqdeploy.models.reference:c4_cnn")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise EqdeployError(f"cannot import --arch {arch} ({e})",
                            "check the module is importable (PYTHONPATH) and the name exists"
                            ) from None


def _a(noun: str) -> str:
    return ("an " if noun[:1].lower() in "aeiou" else "a ") + noun


def _build(arch: str) -> nn.Module:
    """Call the ``--arch`` factory; its failures become one line naming it."""
    factory = _factory(arch)
    if not callable(factory):
        raise EqdeployError(f"--arch {arch} is {_a(type(factory).__name__)}, not a factory",
                            "name a function or class that builds the model")
    try:
        inspect.signature(factory).bind()
    except TypeError as e:
        raise EqdeployError(f"--arch {arch} cannot be called without arguments ({e})",
                            "name a factory whose arguments all have defaults (wrap yours in "
                            "a module-level function)") from None
    except ValueError:  # no signature to inspect (a builtin): just call it
        pass
    try:
        model = factory()
    except EqdeployError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code: any failure is theirs to see
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise EqdeployError(f"--arch {arch} raised {type(e).__name__}: {first}",
                            "fix the factory (--debug shows its traceback)") from e
    if not isinstance(model, nn.Module):
        raise EqdeployError(f"--arch {arch} returned {_a(type(model).__name__)}",
                            "the factory must return an nn.Module")
    return model


def _check_archive(path: Path, head: bytes) -> None:
    """A zip checkpoint (torch.save, .pt2, TorchScript) must be complete: a truncated copy
    otherwise fails deep inside torch with an unrelated message."""
    if not head.startswith(b"PK"):
        return
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if info.header_offset + info.compress_size > size:
                    raise zipfile.BadZipFile(f"{info.filename} runs past the end")
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise EqdeployError(f"{path} is truncated or damaged ({size} bytes: its zip archive "
                            f"cannot be read: {str(e)[:120]})",
                            "copy the file again, or save it again with torch.save") from None


def _state_dict(obj) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    return None


def _load_state(model: nn.Module, state: dict, arch: str) -> None:
    """Strict load; e2cnn/escnn keep expanded filters as buffers only in eval mode, so a
    checkpoint saved in the other mode is retried with the mode flipped."""
    first = None
    for train in (model.training, not model.training):
        model.train(train)
        try:
            model.load_state_dict(state)
            return
        except RuntimeError as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            first = first or (lines[1] if len(lines) > 1 else lines[0])
    raise EqdeployError(f"the checkpoint does not fit --arch {arch} ({first[:200]})",
                        "pass the factory that built the checkpoint's model")


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and \
        any("/code/" in n for n in names)


def _load_pt2(path: Path) -> Loaded:
    extra = {SCHEMA: "", "eqdeploy.info": ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as e:  # noqa: BLE001
        raise EqdeployError(f"{path} is not a readable .pt2 ExportedProgram ({e})",
                            "re-save it with torch.export.save or 'eqdeploy export'") from None
    if not extra[SCHEMA]:
        raise EqdeployError(f"{path} has no eqdeploy symmetry manifest",
                            "write it with 'eqdeploy export' in the model's environment")
    import json

    info = json.loads(extra["eqdeploy.info"]) if extra["eqdeploy.info"] else {}
    return Loaded("pt2", program=program, spec=SymmetrySpec.loads(extra[SCHEMA]), info=info)


def _unpickle(path: Path, zipped: bool) -> Loaded:
    picklers: list[tuple[str, object]] = [("pickle", pickle)]
    with contextlib.suppress(ImportError):
        picklers.append(("dill", importlib.import_module("dill")))
    attempts = [(name, lambda m=mod: torch.load(str(path), weights_only=False, pickle_module=m,
                                                  map_location="cpu")) for name, mod in picklers]
    if not zipped:  # a plain pickle.dump / dill.dump, not written by torch.save

        def plain(m):
            with open(path, "rb") as fh:
                return m.load(fh)

        attempts += [(name, lambda m=mod: plain(m)) for name, mod in picklers]
    errors, missing = [], None
    for name, load in attempts:
        try:
            obj = load()
        except ModuleNotFoundError as e:  # the pickle names a module this Python lacks
            missing = missing or e.name
            errors.append(f"{name}: {e}")
            continue
        except Exception as e:  # noqa: BLE001 - any failure means "try the next pickler"
            errors.append(f"{name}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
            continue
        if isinstance(obj, nn.Module):
            return Loaded(name, module=obj)
        if _state_dict(obj) is not None:
            raise EqdeployError(f"{path} is a state-dict checkpoint, not a whole model",
                                "pass --arch package.module:factory that builds the model")
        raise EqdeployError(f"{path} holds {_a(type(obj).__name__)}, not a torch module",
                            "save the model with torch.save(model) or pass --arch")
    if missing:
        raise EqdeployError(f"{path} needs the module {missing!r} to unpickle, which is not "
                            "installed", f"install {missing} or put the model's code on "
                            "PYTHONPATH (the pickle refers to it)")
    raise EqdeployError(f"cannot read {path} as a model file ({'; '.join(errors)[:300]})",
                        "save with torch.save(model, f, pickle_module=dill), or save a "
                        "state_dict and pass --arch package.module:factory")


def load_model(path: str | Path, arch: str | None = None) -> Loaded:
    """Load ``path``; ``arch`` names a factory for state-dict checkpoints."""
    e2cnn_compat.install_on_import()  # before an unpickler or a factory touches e2cnn
    path = Path(path)
    if not path.is_file():
        raise EqdeployError(f"{path} does not exist", "pass the path of a saved model")
    if path.stat().st_size == 0:
        raise EqdeployError(f"{path} is empty", "save the model again")
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError as e:
        raise EqdeployError(f"cannot read {path} ({e.strerror})", "check the permissions") from None
    _check_archive(path, head)
    if path.suffix == ".pt2":
        return _load_pt2(path)
    if _is_torchscript(path):
        try:
            script = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise EqdeployError(f"cannot read TorchScript file {path} "
                                f"({str(e).strip().splitlines()[0][:160]})",
                                "save it again with torch.jit.trace(model, x).save(path)"
                                ) from None
        return Loaded("torchscript", module=script.eval())
    if arch is not None:
        model = _build(arch)
        try:
            obj = torch.load(str(path), weights_only=True, map_location="cpu")
        except Exception as e:  # noqa: BLE001
            raise EqdeployError(f"{path} is not a weights-only checkpoint "
                                f"({str(e).splitlines()[0][:160]})",
                                "save model.state_dict() with torch.save") from None
        state = _state_dict(obj)
        if state is None:
            raise EqdeployError(f"{path} holds no state dict of tensors",
                                "save model.state_dict() with torch.save")
        _load_state(model, state, arch)
        return Loaded("state_dict+arch", module=model.eval())
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise EqdeployError(f"{path} is not a torch checkpoint (unknown header {head!r})",
                            "pass a file written by torch.save or torch.export.save")
    return _unpickle(path, zipped=head.startswith(b"PK"))
