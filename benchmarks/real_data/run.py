"""The benchmark run: train (cached) -> FP32 -> eqdeploy INT8 / stock INT8 -> evaluate ->
cost -> latency, into one results dict (``report.py`` turns it into RESULTS.md + figures)."""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from eqdeploy.harness.runtime import open_artifact
from eqdeploy.harness.sysinfo import system_info

from . import cost
from .data import FASHION_DIR, Dataset, TestSets, load_fashion_mnist, load_mnist, test_sets
from .evaluate import evaluate, runner_predictor, torch_predictor
from .latency import interleaved
from .models import MODELS, ModelDef, escnn_resnet18, plain_c4_twin, stock_export
from .pipeline import SCHEMES, Conversion, eqdeploy_convert, one_line, save_model, stock_paths
from .train import Schedule, trained

RUNTIME = {"onnx": "onnxruntime", "tflite": "ai-edge-litert"}
VERSIONS = ("torch", "e2cnn", "escnn", "onnx", "onnxruntime", "onnxscript", "litert-torch",
            "ai-edge-litert", "torchao", "numpy", "scipy")


@dataclass
class Config:
    """What to run; ``FULL`` is the published configuration, ``SMOKE`` the test's."""

    size: int = 33
    fashion_dir: Path = FASHION_DIR  # the IDX files of Debian's dataset-fashion-mnist
    fashion_train: int | None = 12000
    test_n: int | None = None  # None: the full 10,000 Fashion-MNIST test images
    mnist: bool = True
    mnist_test: int = 1000
    schedule: Schedule = Schedule(epochs=3)
    mnist_schedule: Schedule = Schedule(epochs=6)
    n_calib: int = 256
    probes: int = 8
    table1: tuple[str, ...] = ("plain_cnn", "rotstack_c4", "e2cnn_c4", "e2cnn_c8")
    table2: tuple[str, ...] = ("mnv2_plain", "mnv2_c4", "mnv2_c8", "mnv2_c12")
    table3: tuple[str, ...] = ("rotstack_c4", "e2cnn_c4", "e2cnn_c8", "mnv2_c8")
    table4: tuple[str, ...] = ("p4cnn", "g_p4cnn", "gc_p4cnn")
    schemes: tuple[str, ...] = tuple(SCHEMES)
    escnn: tuple[str, ...] = ("C4",)
    latency_model: str | None = "e2cnn_c4"
    latency_rounds: int = 400
    threads: int = 2
    extra: dict = field(default_factory=dict)


FULL = Config()
SMOKE = Config(fashion_train=256, test_n=100, mnist=False,
               schedule=Schedule(epochs=1, batch=32), n_calib=16, probes=2,
               table1=("e2cnn_c4",), table2=(), table3=("e2cnn_c4",), table4=(), escnn=(),
               latency_model="e2cnn_c4", latency_rounds=3)


def versions() -> dict:
    out = {}
    for name in VERSIONS:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    try:
        out["eqdeploy_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=Path(__file__).parent, check=False).stdout.strip() or None
    except OSError:
        out["eqdeploy_commit"] = None
    return out


def _row(ds: str, mdef: ModelDef, variant: str, runtime: str, metrics: dict, **extra) -> dict:
    return {"dataset": ds, "model": mdef.key, "label": mdef.label, "group": mdef.symmetry,
            "variant": variant, "runtime": runtime, **extra, **metrics}


def _eval_artifacts(paths: dict[str, Path], ts: TestSets, ref: np.ndarray) -> dict[str, dict]:
    """Evaluate several artifacts, two at a time (the runtimes release the GIL)."""
    def one(path: Path) -> dict:
        r = open_artifact(path, threads=1)
        m = evaluate(runner_predictor(r), ts, ref)
        return {**m, "bytes": path.stat().st_size, "runtime_version": r.runtime_version}

    with ThreadPoolExecutor(2) as pool:
        futures = {k: pool.submit(one, p) for k, p in paths.items()}
        return {k: f.result() for k, f in futures.items()}


def _conversion_summary(conv: Conversion) -> dict:
    rep = conv.report
    arts = {a["file"]: {k: a.get(k) for k in ("target", "precision", "bytes", "fp32_bytes",
                                               "size_ratio_vs_fp32", "seconds", "float_ops",
                                               "float_compute_ops", "float_tensors")}
            for a in rep["artifacts"]}
    ver = [{k: v.get(k) for k in ("runtime", "artifact", "rel_err_vs_source",
                                    "top1_agreement_vs_source", "max_steps_vs_simulation")}
           for v in rep["verification"]]
    return {"wall_s": conv.wall_s, "cpu_s": conv.cpu_s, "stages": conv.stages,
            "baseline_rss_mb": round(conv.baseline_rss_mb, 1),
            "timings_seconds": rep["timings_seconds"], "artifacts": arts,
            "verification": ver, "lint": rep["lint"].get("exact")}


class Bench:
    """One run's state: data, test sets, results; each ``table_*``/step fills ``results``."""

    def __init__(self, cfg: Config, cache: Path, echo=print) -> None:
        self.cfg, self.cache, self.echo = cfg, cache, echo
        self.work = cache / "work"
        self.results: dict = {"rows": [], "models": {}, "latency": None, "notes": []}
        self.datasets: dict[str, Dataset] = {}
        self.tests: dict[str, TestSets] = {}
        self.trained: dict[tuple[str, str], tuple[Path, np.ndarray]] = {}
        self.conversions: dict[tuple[str, str, str], Conversion] = {}

    # -- data ---------------------------------------------------------------------------------
    def load(self) -> None:
        cfg = self.cfg
        fm = load_fashion_mnist(cfg.size, cfg.fashion_train, cfg.fashion_dir)
        self.datasets[fm.name] = fm
        if cfg.mnist:
            mn = load_mnist(cfg.size, cfg.mnist_test)
            self.datasets[mn.name] = mn
        for name, ds in self.datasets.items():
            t = time.perf_counter()
            self.tests[name] = test_sets(ds, cfg.test_n if name == "fashion_mnist" else None)
            self.results.setdefault("datasets", {})[name] = {
                "source": ds.source, "n_train": len(ds.train), "n_test": len(self.tests[name]),
                "size": cfg.size, "mean": ds.mean, "std": ds.std,
                "test_sets_seconds": round(time.perf_counter() - t, 1)}

    def calibration(self, ds: Dataset) -> tuple[Path, np.ndarray]:
        """The same calibration images for eqdeploy and the stock paths (training split)."""
        x = ds.normalize(ds.train.images[-self.cfg.n_calib:])
        path = self.work / ds.name / "calib.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, calib=x)
        return path, x

    # -- per model ----------------------------------------------------------------------------
    def model(self, ds_name: str, key: str) -> tuple[Path, np.ndarray]:
        """Train (or load) ``key`` on ``ds_name``; FP32 evaluation and cost; cached per run."""
        if (ds_name, key) in self.trained:
            return self.trained[(ds_name, key)]
        mdef, ds, ts = MODELS[key], self.datasets[ds_name], self.tests[ds_name]
        sched = self.cfg.mnist_schedule if ds_name == "mnist" else self.cfg.schedule
        model, meta = trained(mdef, ds, sched, self.cache, self.echo)
        t = time.perf_counter()
        fp32 = evaluate(torch_predictor(model), ts)
        eval_s = round(time.perf_counter() - t, 1)
        ref = torch_predictor(model)(ts.upright)[0]
        self.results["rows"].append(_row(ds_name, mdef, "FP32", "torch", fp32))
        entry = {"label": mdef.label, "framework": mdef.framework, "group": mdef.symmetry,
                 "train": meta, "fp32_eval_seconds": eval_s,
                 "cost": self._cost(model, mdef, ds_name)}
        self.results["models"][f"{ds_name}/{key}"] = entry
        path = save_model(model, self.work / ds_name / key / f"{key}.pt")
        self.trained[(ds_name, key)] = (path, ref)
        self.echo(f"  {ds_name}/{key}: FP32 acc {fp32['acc_upright']:.4f} upright, "
                  f"{fp32['acc_rot90']:.4f} at 90°, {fp32['acc_angle']:.4f} at random angles")
        return path, ref

    def _cost(self, model: torch.nn.Module, mdef: ModelDef, ds_name: str = "") -> dict:
        example = torch.zeros(1, 1 if mdef.framework != "escnn" else 3, self.cfg.size,
                              self.cfg.size)
        if mdef.framework in ("e2cnn", "escnn"):
            from eqdeploy.export import export_equivariant

            program = export_equivariant(model, example).program
        else:
            program = torch.export.export(model.eval(), (example,))
        return {"trainable_params": cost.trainable_params(model), **cost.graph_cost(program)}

    def convert(self, ds_name: str, key: str, scheme: str,
                targets: list[str]) -> Conversion | None:
        ck = (ds_name, key, scheme)
        if ck in self.conversions:
            return self.conversions[ck]
        path, _ = self.model(ds_name, key)
        cal, _ = self.calibration(self.datasets[ds_name])
        ds = self.datasets[ds_name]
        outdir = path.parent / scheme.replace(" ", "_").replace("(", "").replace(")", "")
        try:
            conv = eqdeploy_convert(path, MODELS[key], outdir, self.cfg.size,
                                    (ds.mean, ds.std), cal, targets, self.cfg.probes,
                                    **SCHEMES[scheme])
        except Exception as e:  # noqa: BLE001 - a failed conversion is a result of the table
            self.echo(f"  {ds_name}/{key}: eqdeploy INT8 {scheme} FAILED: {one_line(e)}")
            self.results["models"][f"{ds_name}/{key}"].setdefault("conversions", {})[
                scheme] = {"error": one_line(e)}
            self.conversions[ck] = None
            return None
        self.conversions[ck] = conv
        self.results["models"][f"{ds_name}/{key}"].setdefault("conversions", {})[scheme] = \
            _conversion_summary(conv)
        self.echo(f"  {ds_name}/{key}: eqdeploy INT8 {scheme} converted in {conv.wall_s} s")
        return conv

    def eqdeploy_int8(self, ds_name: str, key: str, scheme: str = "per-channel (default)",
                      targets: tuple[str, ...] = ("onnx", "tflite")) -> None:
        conv = self.convert(ds_name, key, scheme, list(targets))
        _, ref = self.model(ds_name, key)
        mdef = MODELS[key]
        if conv is None:
            err = self.results["models"][f"{ds_name}/{key}"]["conversions"][scheme]["error"]
            for t in targets:
                self.results["rows"].append(_row(ds_name, mdef, f"eqdeploy INT8 {scheme}",
                                                 RUNTIME[t], {"error": err}, scheme=scheme))
            return
        res = _eval_artifacts({t: conv.artifact(t) for t in targets}, self.tests[ds_name], ref)
        for t, m in res.items():
            self.results["rows"].append(_row(ds_name, mdef, f"eqdeploy INT8 {scheme}",
                                             RUNTIME[t], m, scheme=scheme))

    def stock(self, ds_name: str, key: str) -> None:
        path, ref = self.model(ds_name, key)
        mdef = MODELS[key]
        module = _fresh(path)
        if mdef.framework == "e2cnn":
            module = stock_export(module)
        _, cal = self.calibration(self.datasets[ds_name])
        example = torch.from_numpy(cal[:1])
        arts = stock_paths(module, example, cal, path.parent / "stock")
        res = _eval_artifacts({k: v["path"] for k, v in arts.items() if "path" in v},
                              self.tests[ds_name], ref)
        for k, a in arts.items():
            runtime = "onnxruntime" if "ORT" in k else "ai-edge-litert"
            m = res.get(k) or {"error": a["error"]}
            self.results["rows"].append(_row(ds_name, mdef, k, runtime, m,
                                             convert_seconds=a["seconds"]))
        self.echo(f"  {ds_name}/{key}: stock paths done")

    # -- tables -------------------------------------------------------------------------------
    def table1(self) -> None:
        for ds_name in self.datasets:
            for key in self.cfg.table1:
                self.eqdeploy_int8(ds_name, key)

    def table2(self) -> None:
        for key in self.cfg.table2:
            for scheme in self.cfg.schemes:
                default = scheme == "per-channel (default)"
                if not default or ("fashion_mnist", key, scheme) not in self.conversions:
                    self.eqdeploy_int8("fashion_mnist", key, scheme,
                                       ("onnx", "tflite") if default else ("tflite",))

    def table3(self) -> None:
        for key in self.cfg.table3:
            if ("fashion_mnist", key, "per-channel (default)") not in self.conversions:
                self.eqdeploy_int8("fashion_mnist", key)
            self.stock("fashion_mnist", key)

    def table4(self) -> None:
        for key in self.cfg.table4:
            self.eqdeploy_int8("fashion_mnist", key)

    def escnn_cost(self) -> None:
        for group in self.cfg.escnn:
            mdef = escnn_resnet18(group)
            try:
                model = mdef.build()
            except Exception as e:  # noqa: BLE001 - escnn is an optional extra
                self.results["notes"].append(f"{mdef.label} skipped: {type(e).__name__}: {e}")
                continue
            path = save_model(model, self.work / "escnn" / f"{mdef.key}.pt")
            conv = eqdeploy_convert(path, mdef, path.parent / "int8", self.cfg.size, (0.5, 0.25),
                                    None, ["onnx", "tflite"], self.cfg.probes, channels=3)
            self.results["models"][f"random/{mdef.key}"] = {
                "label": mdef.label + " (random init, settled BN)", "framework": "escnn",
                "group": group, "cost": self._cost(model, mdef),
                "conversions": {"per-channel (default)": _conversion_summary(conv)}}
            self.echo(f"  {mdef.label}: converted in {conv.wall_s} s")

    def latency(self) -> None:
        key = self.cfg.latency_model
        if key is None:
            return
        path, _ = self.model("fashion_mnist", key)
        conv = self.convert("fashion_mnist", key, "per-channel (default)", ["onnx", "tflite"])
        if conv is None:
            self.results["notes"].append(f"latency skipped: the conversion of {key} failed")
            return
        model = _fresh(path)
        twin = plain_c4_twin(_fresh(path))
        x = torch.from_numpy(self.tests["fashion_mnist"].upright[:1])
        with torch.no_grad():
            twin_err = float((twin(x) - model(x)).abs().max())
        from eqdeploy.export import export_equivariant

        exported = export_equivariant(model, x).module()
        _, cal = self.calibration(self.datasets["fashion_mnist"])
        stock = {k: v.get("path") for k, v in
                 stock_paths(twin, x, cal, path.parent / "twin_stock").items()}
        arts = {"eqdeploy ORT FP32": conv.artifact("onnx", True),
                "eqdeploy ORT INT8": conv.artifact("onnx"),
                "eqdeploy LiteRT FP32": conv.artifact("tflite", True),
                "eqdeploy LiteRT INT8": conv.artifact("tflite"),
                "plain twin ORT FP32 (stock)": stock.get("stock ORT FP32"),
                "plain twin ORT INT8 (stock quantize_static)":
                    stock.get("stock ORT quantize_static"),
                "plain twin LiteRT FP32 (stock)": stock.get("stock LiteRT FP32"),
                "plain twin LiteRT INT8 (stock PT2E)": stock.get("stock litert-torch PT2E")}
        arts = {k: p for k, p in arts.items() if p is not None}
        xn = x.numpy()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            cands = {"e2cnn eager": lambda: _no_grad(model, x),
                     "exported torch (eqdeploy graph)": lambda: _no_grad(exported, x),
                     "plain twin eager": lambda: _no_grad(twin, x)}
            for name, p in arts.items():
                r = open_artifact(p, threads=1)
                xi = r.quantize_input(xn)
                cands[name] = (lambda r=r, xi=xi: r.run_raw(xi))
            stats = interleaved(cands, self.cfg.latency_rounds)
        finally:
            torch.set_num_threads(threads)
        self.results["latency"] = {
            "model": key, "label": MODELS[key].label, "batch": 1, "threads": 1,
            "rounds": self.cfg.latency_rounds, "twin_max_abs_diff": twin_err,
            "bytes": {k: p.stat().st_size for k, p in arts.items()}, "stats": stats}
        self.echo(f"  latency of {key}: " + ", ".join(
            f"{k} {v['p50_ms']:.3f}" for k, v in stats.items()))


def _needed(cfg: Config) -> list[tuple[str, str]]:
    """(dataset, model) pairs the tables train, in the order they are used."""
    pairs = [("fashion_mnist", k) for k in (*cfg.table1, *cfg.table2, *cfg.table3, *cfg.table4,
                                            *((cfg.latency_model,) if cfg.latency_model else ()))]
    if cfg.mnist:
        pairs += [("mnist", k) for k in cfg.table1]
    return list(dict.fromkeys(pairs))


def _train_one(cfg: Config, cache: Path, ds_name: str, key: str) -> tuple[str, bool]:
    """(progress line, whether it trained rather than loaded the cache)."""
    torch.set_num_threads(1)
    ds = (load_fashion_mnist(cfg.size, cfg.fashion_train, cfg.fashion_dir)
          if ds_name == "fashion_mnist" else load_mnist(cfg.size, cfg.mnist_test))
    sched = cfg.mnist_schedule if ds_name == "mnist" else cfg.schedule
    _, meta = trained(MODELS[key], ds, sched, cache, echo=lambda s: None)
    return (f"  {ds_name}/{key}: " + ("cached" if meta["cached"] else
                                      f"trained in {meta['wall_seconds']} s"),
            not meta["cached"])


def pretrain(cfg: Config, cache: Path, echo=print) -> list[str]:
    """Train every model the tables need, ``cfg.threads`` at a time in worker processes
    (one torch thread each: small models train faster side by side than on two threads);
    returns the ``dataset/model`` pairs trained (not found in the cache)."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pairs = _needed(cfg)
    if cfg.threads <= 1 or len(pairs) == 1:  # one at a time, in this process
        threads = torch.get_num_threads()
        done = [_train_one(cfg, cache, d, k) for d, k in pairs]
        torch.set_num_threads(threads)
    else:
        with ProcessPoolExecutor(max(1, cfg.threads),
                                 mp_context=mp.get_context("spawn")) as pool:
            done = list(pool.map(_train_one, *zip(*[(cfg, cache, d, k) for d, k in pairs],
                                                  strict=True)))
    for line, _ in done:
        echo(line)
    return [f"{d}/{k}" for (d, k), (_, fresh) in zip(pairs, done, strict=True) if fresh]


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the training workers)."""
    import resource

    own, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                 resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _fresh(path: Path) -> torch.nn.Module:
    """A new copy of the saved model (e2cnn models cannot be deep-copied in eval mode)."""
    import dill

    return torch.load(path, pickle_module=dill, weights_only=False).eval()


def _no_grad(f, x):
    with torch.no_grad():
        return f(x)


def run(cfg: Config, cache: Path, echo=print) -> dict:
    """Everything, in the order that reuses the most; returns the results dict."""
    t0, c0 = time.perf_counter(), _cpu_seconds()
    torch.set_num_threads(cfg.threads)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    b = Bench(cfg, cache, echo)
    fresh: list[str] = []
    steps = [("training", lambda: fresh.extend(pretrain(cfg, cache, echo))), ("test sets", b.load),
             ("table 1", b.table1), ("table 2", b.table2), ("table 3", b.table3),
             ("table 4", b.table4), ("escnn cost", b.escnn_cost), ("latency", b.latency)]
    timing = {}
    for name, step in steps:
        echo(f"{name} ...")
        t = time.perf_counter()
        step()
        timing[name] = round(time.perf_counter() - t, 1)
    b.results["meta"] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": system_info(),
        "platform": platform.platform(), "versions": versions(),
        "config": {k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v)
                   for k, v in dataclasses.asdict(cfg).items()},
        "step_seconds": timing, "wall_seconds": round(time.perf_counter() - t0, 1),
        "cpu_seconds": round(_cpu_seconds() - c0, 1),
        "trained_this_run": fresh,
        "load_average_end": os.getloadavg() if hasattr(os, "getloadavg") else None}
    return b.results
