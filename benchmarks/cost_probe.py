"""Instruments one conversion process: stage clock, import timer, call ledger, stack sampler.

Installed first thing in a fresh process (stdlib only, nothing heavy imported), so that
``import torch`` and everything after it is seen:

- ``Clock``: wall (``perf_counter``, CLOCK_MONOTONIC: comparable across processes), CPU
  (``process_time``: all threads) and reaped children's CPU at each stage mark;
- ``ImportTimer``: wraps ``importlib._bootstrap._find_and_load`` (what both the ``import``
  statement and ``importlib.import_module`` call for a module not yet loaded) and adds up
  wall and CPU of the outermost import on the main thread, per top-level package;
- ``Ledger``: wraps named functions (third-party converters and eqdeploy stages, patched
  on the module or class as soon as that module is imported) and records every call with
  its wall, CPU, the imports inside it and the chain of wrapped callers;
- ``Sampler``: a thread that reads the main thread's stack every few ms and charges the
  elapsed wall and CPU to (stage, innermost own function, what it called), like a sampling
  profiler (pyinstrument-style), at about 1% overhead.
"""

from __future__ import annotations

import functools
import resource
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable

OWN_PREFIXES = ("eqdeploy", "cost_child", "cost_twins", "__main__")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Clock:
    """Stage marks: (label, wall, cpu, children cpu, import wall, import cpu)."""

    def __init__(self, imports: ImportTimer) -> None:
        self.imports = imports
        self.marks: list[tuple] = []
        self.stage = "startup"

    def mark(self, label: str) -> None:
        self.stage = label
        self.marks.append((label, time.perf_counter(), time.process_time(), children_cpu(),
                           self.imports.wall, self.imports.cpu))

    def segments(self) -> list[dict]:
        """Each stage from its mark to the next (the last mark ends the run)."""
        out = []
        for a, b in zip(self.marks, self.marks[1:], strict=False):
            out.append({"stage": a[0], "wall": b[1] - a[1], "cpu": b[2] - a[2],
                        "children_cpu": b[3] - a[3], "import_wall": b[4] - a[4],
                        "import_cpu": b[5] - a[5]})
        return out


class ImportTimer:
    """Wall and CPU of outermost imports on the main thread, in total and, exclusive of
    the imports nested in them, per top-level package."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self.count = 0
        self.by_package: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        self.after_import: list[Callable[[], None]] = []
        self._stack: list[list[float]] = []  # [start wall, start cpu, nested wall, nested cpu]
        self._main = threading.get_ident()

    def install(self) -> None:
        bootstrap = sys.modules["_frozen_importlib"]
        original = bootstrap._find_and_load

        def timed(name, import_):
            if threading.get_ident() != self._main:
                return original(name, import_)
            self._stack.append([time.perf_counter(), time.process_time(), 0.0, 0.0])
            try:
                return original(name, import_)
            finally:
                w0, c0, nested_w, nested_c = self._stack.pop()
                dw, dc = time.perf_counter() - w0, time.process_time() - c0
                acc = self.by_package[name.split(".")[0]]
                acc[0] += dw - nested_w
                acc[1] += dc - nested_c
                if self._stack:
                    self._stack[-1][2] += dw
                    self._stack[-1][3] += dc
                else:
                    self.wall += dw
                    self.cpu += dc
                    self.count += 1
                    for hook in self.after_import:
                        hook()

        bootstrap._find_and_load = timed

    def summary(self, top: int = 15) -> dict:
        pkgs = sorted(self.by_package.items(), key=lambda kv: -kv[1][0])[:top]
        return {"wall": self.wall, "cpu": self.cpu, "count": self.count,
                "by_package": {k: {"wall": v[0], "cpu": v[1]} for k, v in pkgs}}


class Ledger:
    """Every call of the wrapped functions: label, chain of wrapped callers, wall, CPU."""

    def __init__(self, clock: Clock, imports: ImportTimer) -> None:
        self.clock, self.imports = clock, imports
        self.stack: list[str] = []
        self.calls: dict[tuple, list[float]] = defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0.0])
        self.pending: dict[str, list[tuple[str, str]]] = defaultdict(list)
        imports.after_import.append(self._apply_pending)

    def wrap(self, label: str, fn: Callable, mark: str | None = None,
             detail: Callable | None = None) -> Callable:
        """``fn`` recorded as ``label`` (plus ``detail(args, kwargs)`` when given); ``mark``
        starts that stage on every call."""
        if getattr(fn, "_cost_wrapped", False) and mark is None:
            return fn

        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            if threading.get_ident() != self.imports._main:
                return fn(*args, **kwargs)
            if mark is not None:
                self.clock.mark(mark)
            name = label if detail is None else f"{label} {detail(args, kwargs)}"
            path = (self.clock.stage, *self.stack, name)
            self.stack.append(name)
            w, c = time.perf_counter(), time.process_time()
            iw, ic = self.imports.wall, self.imports.cpu
            try:
                return fn(*args, **kwargs)
            finally:
                self.stack.pop()
                acc = self.calls[path]
                acc[0] += 1
                acc[1] += time.perf_counter() - w
                acc[2] += time.process_time() - c
                acc[3] += self.imports.wall - iw
                acc[4] += self.imports.cpu - ic

        wrapped._cost_wrapped = True
        return wrapped

    def watch(self, module: str, attr: str, label: str | None = None,
              detail: Callable | None = None) -> None:
        """Wrap ``module.attr`` (``attr`` may be ``Class.method`` or ``DICT[key]``) as soon
        as ``module`` is imported."""
        self.pending[module].append((attr, label or f"{module.split('.')[-1]}.{attr}", None,
                                     detail))
        self._apply_pending()

    def mark_on(self, module: str, attr: str, stage: str) -> None:
        """Start stage ``stage`` whenever ``module.attr`` is called."""
        self.pending[module].append((attr, f"[{stage}]", stage, None))
        self._apply_pending()

    def _apply_pending(self) -> None:
        for module in [m for m in self.pending if m in sys.modules]:
            mod = sys.modules[module]
            if getattr(mod, "__spec__", None) is not None and getattr(
                    mod.__spec__, "_initializing", False):
                continue  # still executing: its attributes may not exist yet
            for attr, label, mark, detail in self.pending.pop(module):
                self._patch(mod, attr, label, mark, detail)

    def _patch(self, mod, attr: str, label: str, mark: str | None = None,
               detail: Callable | None = None) -> None:
        if "[" in attr:  # a dict entry, e.g. CHECKS[onnx]
            name, key = attr.rstrip("]").split("[")
            table = getattr(mod, name, None)
            if isinstance(table, dict) and key in table:
                table[key] = self.wrap(label, table[key], mark, detail)
            return
        owner, _, name = attr.rpartition(".")
        target = getattr(mod, owner, None) if owner else mod
        if target is None or not hasattr(target, name):
            return
        raw = target.__dict__.get(name) if isinstance(target, type) else getattr(target, name)
        if isinstance(raw, (staticmethod, classmethod)) or raw is None:
            return
        setattr(target, name, self.wrap(label, raw, mark, detail))

    def records(self) -> list[dict]:
        return [{"stage": p[0], "path": list(p[1:]), "calls": v[0], "wall": v[1],
                 "cpu": v[2], "import_wall": v[3], "import_cpu": v[4]}
                for p, v in sorted(self.calls.items(), key=lambda kv: -kv[1][1])]


def _label(frame) -> str:
    mod = frame.f_globals.get("__name__", "?")
    return f"{mod}.{getattr(frame.f_code, 'co_qualname', frame.f_code.co_name)}"


class Sampler(threading.Thread):
    """Charges elapsed wall/CPU to (stage, innermost own function, the callee it is in)."""

    def __init__(self, clock: Clock, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.clock, self.interval = clock, interval
        self.main = threading.get_ident()
        self.acc: dict[tuple, list[float]] = defaultdict(lambda: [0.0, 0.0, 0])
        self.halt = threading.Event()

    def run(self) -> None:
        last_w, last_c = time.perf_counter(), time.process_time()
        while not self.halt.wait(self.interval):
            frame = sys._current_frames().get(self.main)
            w, c = time.perf_counter(), time.process_time()
            if frame is not None:
                acc = self.acc[(self.clock.stage, *self.classify(frame))]
                acc[0] += w - last_w
                acc[1] += c - last_c
                acc[2] += 1
            last_w, last_c = w, c

    @staticmethod
    def classify(frame) -> tuple[str, str]:
        """(innermost own function, the function it called that is running); imports as
        ("<import>", package of the innermost module being imported)."""
        chain = []
        while frame is not None:
            if frame.f_globals.get("__name__") != __name__:  # skip this module's wrappers
                chain.append(frame)
            frame = frame.f_back
        chain.reverse()  # outermost first
        loading = [f for f in chain if f.f_code.co_name == "_find_and_load" and
                   f.f_globals.get("__name__") in ("importlib._bootstrap", "_frozen_importlib")]
        if loading:
            return "<import>", str(loading[-1].f_locals.get("name", "?")).split(".")[0]
        own = [i for i, f in enumerate(chain)
               if f.f_globals.get("__name__", "").startswith(OWN_PREFIXES)]
        if not own:
            return "<no own frame>", _label(chain[-1]) if chain else "?"
        i = own[-1]
        callee = _label(chain[i + 1]) if i + 1 < len(chain) else "<itself>"
        return _label(chain[i]), callee

    def records(self) -> list[dict]:
        return [{"stage": k[0], "own": k[1], "callee": k[2], "wall": v[0], "cpu": v[1],
                 "samples": v[2]}
                for k, v in sorted(self.acc.items(), key=lambda kv: -kv[1][0])]


# --- what to wrap ------------------------------------------------------------------------------
THIRD_PARTY = [
    ("torch.export", "export", "torch.export.export"),
    ("torch.export.exported_program", "ExportedProgram.module", "ExportedProgram.module"),
    ("torch.export.exported_program", "ExportedProgram.run_decompositions",
     "ExportedProgram.run_decompositions"),
    ("torch.onnx", "export", "torch.onnx.export"),
    ("litert_torch", "convert", "litert_torch.convert"),
    ("onnxruntime.quantization", "quantize_static", "ort.quantize_static"),
    ("torchao.quantization.pt2e.quantize_pt2e", "prepare_pt2e", "prepare_pt2e"),
    ("torchao.quantization.pt2e.quantize_pt2e", "convert_pt2e", "convert_pt2e"),
    ("onnxruntime.capi.onnxruntime_inference_collection", "InferenceSession.__init__",
     "ort.InferenceSession()"),
    ("ai_edge_litert.interpreter", "Interpreter.__init__", "litert.Interpreter()"),
    ("onnx.checker", "check_model", "onnx.check_model"),
    ("torch.serialization", "load", "torch.load"),
]

EQDEPLOY = [
    ("eqdeploy.convert", "load_model", "load_model"),
    ("eqdeploy.convert", "export_equivariant", "export_equivariant"),
    ("eqdeploy.convert", "discover_plain", "discover_plain"),
    ("eqdeploy.export", "_trace_types", "export._trace_types"),
    ("eqdeploy.adapters.geometric", "symmetrize", "adapter: symmetrize filters"),
    ("eqdeploy.export", "_clean_reexport", "export._clean_reexport"),
    ("eqdeploy.export", "assign_layouts", "export.assign_layouts"),
    ("eqdeploy.export", "PlainModel.static_program", "PlainModel.static_program"),
    ("eqdeploy.convert", "normalize", "normalize"),
    ("eqdeploy.normalize.support", "CHECKS[onnx]", "lowering check onnx"),
    ("eqdeploy.normalize.support", "CHECKS[tflite]", "lowering check tflite"),
    ("eqdeploy.convert", "lint_input_size", "lint_input_size"),
    ("eqdeploy.convert", "read_input_norm", "read_input_norm"),
    ("eqdeploy.convert", "_probes", "probes"),
    ("eqdeploy.convert", "_runtime_row", "verify rows (_runtime_row)", lambda a, k: a[0]),
    ("eqdeploy.convert", "equivariance_table", "equivariance_table"),
    ("eqdeploy.convert", "run_dfq", "run_dfq"),
    ("eqdeploy.convert", "fold_batchnorm", "fold_batchnorm"),
    ("eqdeploy.convert", "distill_inputs", "distill_inputs"),
    ("eqdeploy.convert", "load_calibration", "load_calibration"),
    ("eqdeploy.convert", "compute_qparams", "compute_qparams"),
    ("eqdeploy.convert", "simulate_with", "simulate_with"),
    ("eqdeploy.convert", "_emit_artifact", "_emit_artifact"),
    ("eqdeploy.convert", "_verified", "_verified (open, check, verify, sidecar)",
     lambda a, k: "INT8" if k.get("quant") else "FP32"),
    ("eqdeploy.convert", "open_artifact", "open_artifact"),
    ("eqdeploy.convert", "sha256_file", "sha256_file"),
    ("eqdeploy.convert", "convert_markdown", "convert_markdown"),
    ("eqdeploy.convert", "system_info", "system_info"),
    ("eqdeploy.targets.onnx_target", "emit", "onnx FP32 emit"),
    ("eqdeploy.targets.onnx_target", "emit_int8", "onnx INT8 emit"),
    ("eqdeploy.targets.onnx_int8", "fp32_model", "onnx_int8.fp32_model"),
    ("eqdeploy.targets.onnx_int8", "compare_qparams", "onnx_int8.compare_qparams"),
    ("eqdeploy.targets.onnx_int8", "optimized_ops", "onnx_int8.optimized_ops"),
    ("eqdeploy.targets.tflite_target", "emit", "tflite FP32 emit"),
    ("eqdeploy.targets.tflite_target", "emit_int8", "tflite INT8 emit"),
    ("eqdeploy.targets.tflite_target", "with_metadata", "tflite with_metadata"),
    ("eqdeploy.targets.tflite_int8", "force_parameters", "tflite_int8.force_parameters"),
]


class Probe:
    """Everything above, installed together; ``result()`` is JSON-ready."""

    def __init__(self, eqdeploy: bool, interval: float = 0.005) -> None:
        self.start = time.perf_counter()
        self.imports = ImportTimer()
        self.clock = Clock(self.imports)
        self.ledger = Ledger(self.clock, self.imports)
        self.sampler = Sampler(self.clock, interval)
        self.watch = THIRD_PARTY + (EQDEPLOY if eqdeploy else [])

    def install(self) -> None:
        self.imports.install()
        for module, attr, label, *detail in self.watch:
            self.ledger.watch(module, attr, label, *detail)
        self.clock.mark("startup")
        self.sampler.start()

    def result(self) -> dict:
        self.clock.mark("end")
        self.sampler.halt.set()
        self.sampler.join()
        self_ru = resource.getrusage(resource.RUSAGE_SELF)
        return {"process_start": self.start, "segments": self.clock.segments(),
                "imports": self.imports.summary(), "ledger": self.ledger.records(),
                "samples": self.sampler.records(),
                "self_cpu": self_ru.ru_utime + self_ru.ru_stime,
                "children_cpu": children_cpu(),
                "self_maxrss_bytes": self_ru.ru_maxrss * 1024,
                "unpatched": {m: [a for a, *_ in v] for m, v in self.ledger.pending.items()}}
