"""The wild zoo: equivariant models written the way public sources write them (issue 11).

Each module follows one public style (its docstring names the source and the patterns it
reproduces); every model is small (MNIST/CIFAR-sized inputs, aligned odd sizes) and, like
a user's model, trained: ``build`` loads its committed state (``weights/<name>.pt``, a few
dozen KiB each), written by ``python -m eqdeploy.models.zoo.train``, which trains every zoo
model the same way from its seeded random initialisation (``train.train_on_digits``:
30 epochs of Adam on the bundled labelled MNIST digits the conversions do not probe with,
laid out for its input, then BatchNorm statistics measured on the unlabelled digits).
Random weights give FP32 decisions that nearly tie, which INT8 rounding flips although
the conversion is accurate; the zoo's conversions (``save.convert_argv``) calibrate on the
unlabelled digits and probe with held-out ones, as a user of a trained model would.
``ZOO`` lists each model with its factory (also its ``--arch`` value), the group its
conversion verifies, its input shape, how a user saves it and the CLI flags its conversion
needs; ``build`` makes one, ``eqdeploy.models.zoo.save.save_as_user`` saves it as the user
would.

Importing this package imports neither e2cnn nor escnn (the factories are named by string):
the model modules import their library the way a user's file does, without eqdeploy's
e2cnn patches, which eqdeploy applies when it loads or builds a model.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from torch import nn

SAVE_FORMATS = ("dill", "pickle", "state_dict", "torchscript")


@dataclass(frozen=True)
class ZooModel:
    """One zoo entry."""

    name: str
    factory: str  # "package.module:function", the --arch value for state-dict checkpoints
    group: str  # the group whose exact elements the conversion verifies
    input_shape: tuple[int, int, int, int]
    save: str  # one of SAVE_FORMATS: how a user of this style saves the model
    flags: tuple[str, ...]  # CLI flags the conversion needs (besides --arch / --input-shape)
    source: str  # the public source it is written after
    patterns: tuple[str, ...]  # what it reproduces that INT8 conversion must handle
    framework: str  # "e2cnn" | "escnn" | "plain torch"


_FRAMEWORKS = {"e2cnn_steerable": "e2cnn", "e2wrn": "e2cnn", "escnn_steerable": "escnn"}


def _entry(name: str, module: str, function: str, group: str, size: int, save: str,
           source: str, patterns: tuple[str, ...], channels: int = 1,
           discover: bool = False) -> ZooModel:
    flags = ("--group", group) if discover or save == "torchscript" else ()
    return ZooModel(name, f"eqdeploy.models.zoo.{module}:{function}", group,
                    (1, channels, size, size), save, flags, source, patterns,
                    _FRAMEWORKS.get(module, "plain torch"))


_E2CNN_NB = "QUVA-Lab/e2cnn examples/model.ipynb"
_E2WRN = "QUVA-Lab/e2cnn examples/e2wrn.py"
_GROUPY = "tscohen/GrouPy layer API, PyTorch-port style (adambielski/GrouPy)"
_RESNET = "torchvision resnet.py / kuangliu pytorch-cifar on GrouPy-style P4 layers"

ZOO: dict[str, ZooModel] = {e.name: e for e in [
    _entry("c8_steerable", "e2cnn_steerable", "c8_steerable", "C8", 29, "dill", _E2CNN_NB,
           ("MaskModule", "PointwiseAvgPoolAntialiased", "GroupPooling", "ReLU(inplace=True)",
            "torch head Linear-BatchNorm1d-ELU(inplace=True)")),
    _entry("c16_steerable", "e2cnn_steerable", "c16_steerable", "C16", 29, "state_dict",
           _E2CNN_NB + " (C16 variant)",
           ("MaskModule", "PointwiseAvgPoolAntialiased", "F.adaptive_max_pool2d(x, 1)")),
    _entry("wrn_d4", "e2wrn", "wrn_d4", "D4", 33, "state_dict", _E2WRN,
           ("flip group (D4) from --arch", "EquivariantModule subclass", "out += shortcut",
            "ReLU(inplace=True)", "PointwiseDropout", "F.avg_pool2d(out, (w, h))"),
           channels=3),
    _entry("wrn_d8_d4", "e2wrn", "wrn_d8_d4", "D4", 33, "dill", _E2WRN + " (r=2)",
           ("flip group (D8) from a dill pickle", "RestrictionModule", "DisentangleModule",
            "lambda x: x", "out += shortcut"), channels=3),
    _entry("escnn_d8_steerable", "escnn_steerable", "d8_steerable", "D8", 29, "state_dict",
           "QUVA-Lab/escnn examples/model.ipynb (over D8)",
           ("escnn flip group (dill cannot pickle its gspace: state dict + --arch)",
            "escnn MaskModule", "PointwiseAvgPoolAntialiased", "GroupPooling",
            "torch head Linear-BatchNorm1d-ELU(inplace=True)")),
    _entry("groupy_p4cnn", "groupy", "p4cnn", "C4", 29, "pickle", _GROUPY,
           ("filter bank gathered by index each forward", "bias after a 5-D view",
            "BatchNorm3d", "x.view(b, c, g, h, w).max(dim=2)[0]"), discover=True),
    _entry("groupy_p4mcnn", "groupy", "p4mcnn", "D4", 29, "state_dict", _GROUPY,
           ("filter bank gathered by index each forward", "bias after a 5-D view",
            "x, _ = torch.max(x, 2)", "nn.AdaptiveMaxPool2d(1)"), discover=True),
    _entry("rot_kernel_cnn", "rot_kernel", "rot_kernel_cnn", "C4", 29, "torchscript",
           "rotate-the-kernel tutorial CNN (RotConv2d)",
           ("rotation stack on the last axis", "y + bias.view(1, C, 1, 1, 1)",
            ".max(dim=-1).values", "squeeze(2).squeeze(2) -> (b, c, 4)")),
    _entry("p4_resnet_inplace", "resnets", "p4_resnet_inplace", "C4", 29, "pickle", _RESNET,
           ("out += identity", "out.add_(shortcut)", "F.relu(x, inplace=True)",
            "nn.ReLU(inplace=True)"), discover=True),
    _entry("p4_preact_resnet", "resnets", "p4_preact_resnet", "C4", 29, "state_dict",
           _RESNET + " (PreActBlock)",
           ("identity shortcut", "BatchNorm after a residual sum", "out += shortcut"),
           discover=True),
    _entry("p4_silu_resnet", "resnets", "p4_silu_resnet", "C4", 29, "torchscript",
           _RESNET + " (SiLU)", ("nn.SiLU / F.silu", "x * torch.sigmoid(gate)",
                                 "identity shortcut")),
]}


def factory(entry: ZooModel):
    """The entry's factory function (imports its module, and so its library)."""
    module, _, attr = entry.factory.partition(":")
    return getattr(importlib.import_module(module), attr)


def build(name: str, seed: int = 0, trained: bool = True) -> nn.Module:
    """Zoo model ``name`` in eval mode: with ``trained``, its committed trained state
    (``weights/<name>.pt``, written by ``python -m eqdeploy.models.zoo.train``); else its
    seeded random weights with BatchNorm statistics warmed on its kind of images
    (``common.warm_batchnorm`` with ``seed``)."""
    import torch

    from eqdeploy.adapters import e2cnn_compat
    from eqdeploy.errors import EqdeployError
    from eqdeploy.models.zoo.common import warm_batchnorm
    from eqdeploy.models.zoo.train import weights_file

    entry = ZOO[name]
    if entry.framework == "e2cnn":
        e2cnn_compat.install_on_import()  # building needs the numpy-2 patches, as loading does
    model = factory(entry)()
    if not trained:
        return warm_batchnorm(model, (8, *entry.input_shape[1:]), seed=seed)
    path = weights_file(name)
    if not path.is_file():
        raise EqdeployError(f"trained weights of zoo model {name!r} not found at {path}",
                            "regenerate them: python -m eqdeploy.models.zoo.train --only "
                            f"{name} (or build(name, trained=False))")
    model.train()  # e2cnn/escnn convs drop their expanded filters, rebuilt on eval()
    state = model.state_dict()  # the buffers the model rebuilds (bases), then the learned
    state.update(torch.load(path, weights_only=True))
    model.load_state_dict(state)
    return model.eval()
