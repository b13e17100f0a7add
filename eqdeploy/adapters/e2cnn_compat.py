"""Make e2cnn 0.2.3 run on numpy 2 and torch >= 2.x (flip groups and 1-element bases).

Three upstream breaks, each fixed at its narrowest point:
- ``ndarray.tostring`` (removed in numpy 2) in the ``__hash__`` of the irreps bases;
- ``np.array(x, copy=False)`` (an error in numpy 2 when a copy is needed) in
  ``e2cnn.kernels.utils``;
- ``uint8`` masks used for boolean indexing in ``SingleBlockBasisExpansion`` (torch 2.x
  accepts only bool masks).
``install()`` is idempotent and must run before e2cnn builds a convolution basis or
hashes one (walking a flip-group model's modules hashes its basis expansions; unpickling
one does too). ``install_on_import()`` makes that hold on every path: it patches now if
e2cnn is imported, else the moment anything imports it (a factory module, an unpickler
resolving e2cnn classes), without importing e2cnn itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import types

import numpy as np
import torch


def _array_no_copy_false(obj, *args, copy=True, **kwargs):
    if copy is False:
        return np.asarray(obj, *args, **kwargs)
    return np.array(obj, *args, copy=copy, **kwargs)


def _module_with(module: types.ModuleType, **overrides) -> types.ModuleType:
    """A copy of ``module``'s namespace with ``overrides`` (bound into one e2cnn module)."""
    proxy = types.ModuleType(f"{module.__name__}_e2cnn_compat")
    proxy.__dict__.update({k: getattr(module, k) for k in dir(module) if not k.startswith("__")})
    proxy.__dict__.update(overrides)
    return proxy


def _irreps_hash(self) -> int:
    gamma = self.gamma.tobytes() if isinstance(self.gamma, np.ndarray) else self.gamma
    return hash(self.in_irrep) + hash(self.out_irrep) + hash(self.mu.tobytes()) + hash(gamma)


def install() -> None:
    """Patch e2cnn in place (no-op when already patched or when e2cnn is absent)."""
    try:
        import e2cnn.kernels.irreps_basis as irreps_basis
        import e2cnn.kernels.utils as kernel_utils
        import e2cnn.nn.modules.r2_conv.basisexpansion_singleblock as singleblock
    except ImportError:
        return
    if getattr(kernel_utils, "_eqdeploy_patched", False):
        return
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        kernel_utils.np = _module_with(np, array=_array_no_copy_false)
        for cls in vars(irreps_basis).values():
            if isinstance(cls, type) and "__hash__" in vars(cls):
                cls.__hash__ = _irreps_hash
    # the expansion's masks become bool end to end (it only indexes and compares them)
    singleblock.np = _module_with(np, uint8=np.bool_)
    singleblock.torch = _module_with(torch, uint8=torch.bool)
    kernel_utils._eqdeploy_patched = True


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """One-shot import hook: lets e2cnn import as usual, then runs ``install()``."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "e2cnn":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_patch(module: types.ModuleType) -> None:
            exec_module(module)
            install()

        spec.loader.exec_module = exec_then_patch  # this spec's own loader instance
        return spec


def install_on_import() -> None:
    """Patch e2cnn now if it is imported, else as soon as it is (idempotent, cheap)."""
    if "e2cnn" in sys.modules:
        install()
    elif not any(isinstance(f, _PatchAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchAfterImport())
