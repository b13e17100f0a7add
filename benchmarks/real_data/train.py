"""Seeded CPU training, cached by a hash of (architecture, data, seed, schedule).

Adam, batch ``batch``, peak rate ``lr`` with 5% linear warm-up and cosine decay, upright
images (no augmentation: equivariant models are invariant by construction, the plain ones
are not, and table 1 shows it). e2cnn models train in e2cnn's train mode, whose cost is the
basis expansion per step (independent of the batch), so a batch of 128 keeps it small. The
eval-mode state_dict lands in ``<cache>/<dataset>-<model>-<hash>.pt`` with a ``.json`` log;
a later run with the same key loads it instead of training.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from .data import Dataset
from .models import ModelDef

CACHE_VERSION = 1  # bump when the training procedure itself changes


@dataclass(frozen=True)
class Schedule:
    epochs: float = 3.0
    batch: int = 128
    lr: float = 3e-3
    seed: int = 0


def cache_key(mdef: ModelDef, ds: Dataset, sched: Schedule) -> str:
    torch.manual_seed(sched.seed)
    arch = repr(mdef.build())  # the module tree: layers, widths, field types
    blob = json.dumps({"v": CACHE_VERSION, "model": mdef.key, "arch": arch,
                       "data": ds.fingerprint(), "n_train": len(ds.train),
                       "schedule": asdict(sched)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _fit(model: torch.nn.Module, ds: Dataset, sched: Schedule, log: list) -> None:
    x = torch.from_numpy(ds.normalize(ds.train.images))
    y = torch.from_numpy(ds.train.labels)
    gen = torch.Generator().manual_seed(sched.seed)
    per_epoch = math.ceil(len(x) / sched.batch)
    total = max(1, round(sched.epochs * per_epoch))
    opt = torch.optim.Adam(model.parameters(), lr=sched.lr)
    model.train()
    step, perm = 0, torch.randperm(len(x), generator=gen)
    running = []
    while step < total:
        i = (step % per_epoch) * sched.batch
        if step % per_epoch == 0 and step:
            perm = torch.randperm(len(x), generator=gen)
        p = step / total
        f = p / 0.05 if p < 0.05 else 0.5 * (1 + math.cos(math.pi * (p - 0.05) / 0.95))
        for group in opt.param_groups:
            group["lr"] = sched.lr * max(f, 0.01)
        b = perm[i:i + sched.batch]
        loss = torch.nn.functional.cross_entropy(model(x[b]), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        running.append(float(loss.detach()))
        step += 1
        if step % per_epoch == 0 or step == total:
            log.append({"step": step, "epoch": round(step / per_epoch, 2),
                        "loss": round(float(np.mean(running)), 4)})
            running = []
    model.eval()


def trained(mdef: ModelDef, ds: Dataset, sched: Schedule, cache: Path,
            echo=print) -> tuple[torch.nn.Module, dict]:
    """The trained model (eval mode) and its training record, from the cache when present."""
    key = cache_key(mdef, ds, sched)
    path = cache / f"{ds.name}-{mdef.key}-{key}.pt"
    meta_path = path.with_suffix(".json")
    torch.manual_seed(sched.seed)
    model = mdef.build()
    if path.is_file() and meta_path.is_file():
        model.eval()  # e2cnn keeps its expanded filters as buffers in eval mode only
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        meta = json.loads(meta_path.read_text())
        meta["cached"] = True
        return model, meta
    echo(f"  training {mdef.key} on {len(ds.train)} {ds.name} images, "
         f"{sched.epochs} epochs ...")
    log: list = []
    t0, c0 = time.perf_counter(), time.process_time()
    _fit(model, ds, sched, log)
    meta = {"key": key, "model": mdef.key, "dataset": ds.name, "n_train": len(ds.train),
            "schedule": asdict(sched), "wall_seconds": round(time.perf_counter() - t0, 1),
            "cpu_seconds": round(time.process_time() - c0, 1),
            "torch_threads": torch.get_num_threads(), "log": log}
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    meta_path.write_text(json.dumps(meta, indent=1))
    meta["cached"] = False
    echo(f"  trained {mdef.key}: {meta['wall_seconds']} s, loss {log[-1]['loss']}")
    return model, meta
