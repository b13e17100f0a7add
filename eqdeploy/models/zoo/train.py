"""Brief, seeded CPU training of a zoo model on the bundled labelled digits.

A random classifier's FP32 decisions nearly tie (its logits barely depend on the digit), so
INT8 rounding flips many of them although the conversion is accurate; a user's trained
model has real margins. ``train_on_digits`` gives a zoo model those margins the same way
for every model: ``EPOCHS`` epochs of Adam (one-cycle learning rate, batch 32, seeded) on
the 448 labelled digits the conversions do not probe with (``test[PROBES:]`` of the bundled
MNIST set; the probes are ``test[:PROBES]``), laid out for the model's input
(``common.digit_images``), then BatchNorm statistics measured again on the unlabelled
``calib`` digits (``common.measure_batchnorm``). That takes 15 s to 4 min per model on two
CPU cores, too long for the tests' fixtures, so ``main`` writes each model's trained state
(parameters and BatchNorm statistics, 20-100 KiB) to ``weights/<name>.pt``, which
``build`` loads. Regenerate: ``python -m eqdeploy.models.zoo.train [--only NAME,..]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

PROBES = 64  # the conversions probe with test[:PROBES]: never trained on
EPOCHS = 30


def training_digits(shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Labelled digits ``test[PROBES:]`` laid out as ``shape`` (C, H, W) inputs, and labels."""
    from eqdeploy.datasets import MNIST29
    from eqdeploy.models.zoo.common import digit_images

    with np.load(MNIST29) as data:
        x, y = data["test"][PROBES:], data["test_labels"][PROBES:]
    return digit_images(torch.from_numpy(x), shape), torch.from_numpy(y.astype(np.int64))


def train_on_digits(model: nn.Module, input_shape: tuple[int, ...], seed: int = 0,
                    epochs: int = EPOCHS, batch: int = 32, lr: float = 1e-2) -> nn.Module:
    """Train ``model`` (10 outputs, inputs ``input_shape`` (N, C, H, W)) for ``epochs``
    epochs on ``training_digits``, seeded; re-measure its BatchNorm statistics on the
    ``calib`` digits; returns it in eval mode."""
    from eqdeploy.models.zoo.common import measure_batchnorm

    x, y = training_digits(tuple(input_shape[1:]))
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * (len(x) // batch))
        model.train()
        for _ in range(epochs):
            order = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x) - batch + 1, batch):
                pick = order[i:i + batch]
                opt.zero_grad()
                F.cross_entropy(model(x[pick]), y[pick]).backward()
                opt.step()
                sched.step()
    return measure_batchnorm(model, (64, *input_shape[1:]), seed=seed)


WEIGHTS = Path(__file__).resolve().parent / "weights"


def weights_file(name: str) -> Path:
    """The committed trained state of zoo model ``name``."""
    return WEIGHTS / f"{name}.pt"


def learned_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What training changed: the parameters and the BatchNorm running statistics (not the
    buffers a model rebuilds from them, such as e2cnn's sampled bases and expanded filters)."""
    keep = {name for name, _ in model.named_parameters()}
    for prefix, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            keep |= {f"{prefix}.{b}" if prefix else b for b, _ in m.named_buffers(recurse=False)}
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k in keep}


def probe_accuracy(model: nn.Module, input_shape: tuple[int, ...]) -> float:
    """FP32 top-1 accuracy on the held-out labelled digits ``test[:PROBES]`` (the probes)."""
    from eqdeploy.datasets import MNIST29
    from eqdeploy.models.zoo.common import digit_images

    with np.load(MNIST29) as data:
        x, y = data["test"][:PROBES], data["test_labels"][:PROBES]
    with torch.no_grad():
        out = model(digit_images(torch.from_numpy(x), tuple(input_shape[1:])))
    return float((out.argmax(1).numpy() == y).mean())


def main(argv: list[str] | None = None) -> None:
    """Regenerate ``weights/<name>.pt`` for every zoo model (or ``--only``)."""
    import argparse
    import time

    from eqdeploy.models.zoo import ZOO, build

    parser = argparse.ArgumentParser(prog="python -m eqdeploy.models.zoo.train",
                                     description=main.__doc__)
    parser.add_argument("--only", default=None, help="comma-separated zoo model names")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(ZOO)
    WEIGHTS.mkdir(exist_ok=True)
    for name in names:
        entry = ZOO[name]
        model = build(name, trained=False)
        start = time.perf_counter()
        train_on_digits(model, entry.input_shape, epochs=args.epochs)
        seconds = time.perf_counter() - start
        torch.save(learned_state(model), weights_file(name))
        size = weights_file(name).stat().st_size
        print(f"{name}: {args.epochs} epochs {seconds:.1f} s, FP32 accuracy on the "
              f"{PROBES} held-out probe digits {probe_accuracy(model, entry.input_shape):.3f}, "
              f"{size / 1024:.0f} KiB", flush=True)


if __name__ == "__main__":
    main()
