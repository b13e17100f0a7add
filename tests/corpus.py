"""The bad-input corpus (issue 12): every case found, plus more, built small at test time.

``build(folder)`` writes every input file (a few kB each; the models are the bundled C4
state dict, two damaged copies of it, and hand-built ONNX graphs of a few nodes) and
returns the placeholders ``CASES`` use. Each case runs one CLI command in process and
expects an exit code and a phrase of the one ``Error:`` line. ``stage`` says how far the
command gets: ``preflight`` (before torch is imported), ``load``, ``export`` (the model is
exported, nothing emitted), ``device`` (bench/verify/check, numpy + onnxruntime only).
Used by ``tests/test_bad_inputs.py`` and ``benchmarks/bad_input_corpus.py`` (timings).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "examples" / "c4_cnn.pt"  # C4 state dict, 1x29x29 input
ARCH = "eqdeploy.models.reference:c4_cnn"
SHAPE = "1,1,29,29"


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]  # the command and its arguments, with {placeholders}
    code: int
    match: str  # a phrase of the Error: line
    stage: str = "preflight"
    issue: bool = False  # listed in issue 12 itself

    def argv(self, files: dict[str, str], out: Path) -> list[str]:
        return [a.format(**files, o=out) for a in self.args]

    def phrase(self, files: dict[str, str], out: Path) -> str:
        return self.match.format(**files, o=out)


def _c(id_, args, code, match, stage="preflight", issue=False) -> Case:
    return Case(id_, tuple(args), code, match, stage, issue)


CONV = ("convert", "{model}", "--arch", ARCH)
CONV_SHAPE = (*CONV, "--input-shape", SHAPE, "-o", "{o}")
INT8 = (*CONV_SHAPE, "--int8", "--target", "onnx")
BENCH = ("bench", "{mean_onnx}", "--runs", "2", "--warmup", "0")

CASES: list[Case] = [
    # --- the model file --------------------------------------------------------------------
    _c("model-missing", ["convert", "{d}/nope.pt", "-o", "{o}"], 2, "does not exist"),
    _c("model-empty", ["convert", "{empty}", "-o", "{o}"], 2, "is empty"),
    _c("model-is-folder", ["convert", "{d}", "-o", "{o}"], 2, "is a directory"),
    _c("model-truncated", ["convert", "{trunc}", "-o", "{o}"], 2, "truncated or damaged",
       "load", True),
    _c("model-truncated-arch", ["convert", "{trunc}", "--arch", ARCH, "-o", "{o}"], 2,
       "truncated or damaged", "load", True),
    _c("model-dict-pickle", ["convert", "{dict_pickle}", "-o", "{o}"], 2, "holds a dict",
       "load", True),
    _c("model-garbage", ["convert", "{garbage}", "-o", "{o}"], 2, "not a torch checkpoint",
       "load"),
    _c("model-state-dict-without-arch", ["convert", "{model}", "-o", "{o}"], 2,
       "state-dict checkpoint", "load"),
    # --- --arch ------------------------------------------------------------------------------
    _c("arch-syntax", ["convert", "{model}", "--arch", "nocolon", "-o", "{o}"], 2,
       "package.module:factory"),
    _c("arch-missing-module", ["convert", "{model}", "--arch", "no_such_pkg.mod:f", "-o",
                               "{o}"], 2, "cannot import", "load"),
    _c("arch-raises", ["convert", "{model}", "--arch", "corpus_arch:raises", "-o", "{o}"], 2,
       "raised ValueError: boom", "load", True),
    _c("arch-needs-argument", ["convert", "{model}", "--arch", "corpus_arch:needs", "-o",
                               "{o}"], 2, "cannot be called without arguments", "load", True),
    _c("arch-not-callable", ["convert", "{model}", "--arch", "corpus_arch:not_callable", "-o",
                             "{o}"], 2, "not a factory", "load", True),
    _c("arch-returns-int", ["convert", "{model}", "--arch", "corpus_arch:returns_int", "-o",
                            "{o}"], 2, "returned an int", "load"),
    # --- --input-shape -------------------------------------------------------------------------
    _c("shape-three-dims", [*CONV, "--input-shape", "1,1,29", "-o", "{o}"], 2,
       "--input-shape '1,1,29' is not N,C,H,W"),
    _c("shape-text", [*CONV, "--input-shape", "abc", "-o", "{o}"], 2, "is not N,C,H,W"),
    _c("shape-zero", [*CONV, "--input-shape", "0,1,29,29", "-o", "{o}"], 2, "size below 1"),
    _c("shape-negative", [*CONV, "--input-shape", "1,1,-3,29", "-o", "{o}"], 2,
       "size below 1"),
    _c("shape-absurd", [*CONV, "--input-shape", "1,1,100000,100000", "-o", "{o}"], 2,
       "--input-shape 1,1,100000,100000 is out of range", issue=True),
    _c("shape-too-many-values", [*CONV, "--input-shape", "1,4096,4096,8", "-o", "{o}"], 2,
       "values per input"),
    _c("shape-one-pixel", [*CONV, "--input-shape", "1,1,1,1", "-o", "{o}"], 2,
       "smaller than the 5x5 window of layer features.0", "export", True),
    # --- --input-norm --------------------------------------------------------------------------
    _c("norm-inf-std", [*CONV_SHAPE, "--input-norm", "0:inf"], 2, "must be finite", issue=True),
    _c("norm-nan-std", [*CONV_SHAPE, "--input-norm", "0:nan"], 2, "must be finite", issue=True),
    _c("norm-overflow-mean", [*CONV_SHAPE, "--input-norm", "1e999:1"], 2, "must be finite",
       issue=True),
    _c("norm-zero-std", [*CONV_SHAPE, "--input-norm", "0:0"], 2, "std must be > 0"),
    _c("norm-negative-std", [*CONV_SHAPE, "--input-norm", "0:-1"], 2, "std must be > 0"),
    _c("norm-text", [*CONV_SHAPE, "--input-norm", "abc"], 2, "is not MEAN:STD"),
    _c("norm-count-mismatch", [*CONV_SHAPE, "--input-norm", "0.1,0.2:0.3"], 2,
       "2 mean(s) but 1 std(s)"),
    _c("norm-tiny-std", [*CONV_SHAPE, "--input-norm", "0:1e-9"], 2, "maps pixels in [0, 1]"),
    _c("norm-3-channels-shape", [*CONV_SHAPE, "--input-norm", "0.5,0.5,0.5:1,1,1"], 2,
       "gives 3 channels but the model takes 1", issue=True),
    _c("norm-3-channels-model", [*CONV, "--input-norm", "0.5,0.5,0.5:1,1,1", "-o", "{o}"], 2,
       "gives 3 channels but the model takes 1", "load", True),
    # --- probes count, flags, group, tap ---------------------------------------------------
    _c("num-probes-zero", [*CONV_SHAPE, "--num-probes", "0"], 2, "--num-probes 0 is out of range",
       issue=True),
    _c("num-probes-negative", [*CONV_SHAPE, "--num-probes", "-3"], 2,
       "--num-probes -3 is out of range", issue=True),
    _c("num-probes-huge", [*CONV_SHAPE, "--num-probes", "1000000000"], 2, "GiB"),
    _c("int8-flags-without-int8", [*CONV_SHAPE, "--per-tensor", "--float-io", "--no-cle",
                                   "--calibration", "{d}/missing.npz"], 2,
       "--per-tensor, --float-io, --calibration, --no-cle apply only to INT8", issue=True),
    _c("data-free-without-int8", [*CONV_SHAPE, "--data-free", "bn-stats"], 2,
       "--data-free applies only to INT8"),
    _c("float-io-onnx-only", [*INT8, "--float-io"], 2, "--float-io applies to the TFLite"),
    _c("calibration-and-data-free", [*INT8, "--calibration", "{cal_ok}", "--data-free",
                                     "distilled"], 2, "--data-free chooses ranges without"),
    _c("allow-broken-without-group", [*CONV_SHAPE, "--allow-broken"], 2,
       "--allow-broken applies to layout discovery"),
    _c("group-unknown", [*CONV_SHAPE, "--group", "Q7"], 2, "unknown group 'Q7'", issue=True),
    _c("tap-empty", [*CONV_SHAPE, "--tap", ""], 2, "--tap '' names no layer"),
    # --- the output folder -------------------------------------------------------------------
    _c("outdir-empty", [*CONV, "--input-shape", SHAPE, "-o", ""], 2, "-o '' names no folder",
       issue=True),
    _c("outdir-proc", [*CONV, "--input-shape", SHAPE, "-o", "/proc/eqdeploy-x"], 2,
       "output folder /proc/eqdeploy-x cannot be created", issue=True),
    _c("outdir-under-a-file", [*CONV, "--input-shape", SHAPE, "-o", "{empty}/sub"], 2,
       "is a file", issue=True),
    _c("outdir-is-a-file", [*CONV, "--input-shape", SHAPE, "-o", "{empty}"], 2, "is a file"),
    _c("output-over-input-model", ["convert", "{clobber}/c4_cnn.onnx", "--arch", ARCH,
                                   "--input-shape", SHAPE, "--target", "onnx", "-o",
                                   "{clobber}"], 2, "would overwrite the input model file",
       issue=True),
    _c("output-over-input-calibration", ["convert", "{model}", "--arch", ARCH, "--input-shape",
                                         SHAPE, "--int8", "--target", "onnx", "--calibration",
                                         "{clobber}/c4_cnn.onnx.probes.npz", "-o", "{clobber}"],
       2, "would overwrite the input calibration file"),
    _c("output-over-unlisted-file", [*CONV, "--input-shape", SHAPE, "-o", "{foreign}"], 2,
       "exists and no eqdeploy report in"),
    # --- calibration files (read before any heavy import) ------------------------------------
    _c("cal-missing", [*INT8, "--calibration", "{d}/missing.npz"], 2, "does not exist"),
    _c("cal-rank-3", [*INT8, "--calibration", "{cal_3d}"], 2, "rank 3", issue=True),
    _c("cal-key-foo", [*INT8, "--calibration", "{cal_foo}"], 2, "no 'calib' or 'inputs'",
       issue=True),
    _c("cal-both-keys", [*INT8, "--calibration", "{cal_both}"], 2,
       "has both 'calib' and 'inputs'", issue=True),
    _c("cal-nan", [*INT8, "--calibration", "{cal_nan}"], 2, "NaN or inf", issue=True),
    _c("cal-inf", [*INT8, "--calibration", "{cal_inf}"], 2, "NaN or inf", issue=True),
    _c("cal-float64-overflow", [*INT8, "--calibration", "{cal_f64_big}"], 2,
       "after the cast to float32"),
    _c("cal-uint8", [*INT8, "--calibration", "{cal_u8}"], 2, "uint8 values"),
    _c("cal-no-inputs", [*INT8, "--calibration", "{cal_n0}"], 2, "no inputs (N = 0)"),
    _c("cal-wrong-size", [*INT8, "--calibration", "{cal_28}"], 2, "holds shape (4, 1, 28, 28)"),
    _c("cal-wrong-size-model", [*CONV, "--int8", "--calibration", "{cal_28}", "-o", "{o}"], 2,
       "holds shape (4, 1, 28, 28)", "load", True),
    _c("cal-garbage", [*INT8, "--calibration", "{garbage}"], 2, "is unreadable"),
    _c("cal-constant", [*INT8, "--calibration", "{cal_const}"], 2, "everywhere"),
    _c("cal-empty-folder", [*INT8, "--calibration", "{empty_dir}"], 2, "has no images"),
    _c("cal-bad-image", [*INT8, "--calibration", "{bad_images}"], 2, "bad.png is unreadable"),
    # --- probe files ---------------------------------------------------------------------------
    _c("probes-nan", [*CONV_SHAPE, "--probes", "{probe_nan}"], 2,
       "probe file", issue=True),
    _c("probes-constant", [*CONV_SHAPE, "--probes", "{probe_const}"], 2,
       "constant over its pixels"),
    _c("probes-no-key", [*CONV_SHAPE, "--probes", "{cal_foo}"], 2,
       "no 'inputs', 'test' or 'calib'"),
    _c("probes-wrong-size", [*CONV_SHAPE, "--probes", "{probe_28}"], 2,
       "probe file {d}/probe_28.npz holds shape (4, 1, 28, 28)"),
    # --- checks that need the model: a verification that could not measure fails ------------
    _c("weights-nan", ["convert", "{nan_sd}", "--arch", ARCH, "--input-shape", SHAPE, "-o",
                       "{o}"], 1, "NaN or inf outputs on 16 of 16 probes", "export"),
    _c("output-constant", ["convert", "{const_sd}", "--arch", ARCH, "--input-shape", SHAPE,
                           "-o", "{o}"], 1, "the same output for all 16 probes", "export"),
    # --- bench, verify, check on hand-built ONNX graphs (numpy + onnxruntime) ----------------
    _c("bench-runs-huge", ["bench", "{mean_onnx}", "--runs", "99999999999999999999"], 2,
       "is not in the range", "device", True),
    _c("bench-runs-zero", ["bench", "{mean_onnx}", "--runs", "0"], 2, "is not in the range",
       "device"),
    _c("bench-warmup-negative", ["bench", "{mean_onnx}", "--warmup", "-1"], 2,
       "is not in the range", "device"),
    _c("bench-threads-zero", ["bench", "{mean_onnx}", "--threads", "0"], 2,
       "is not in the range", "device"),
    _c("bench-json-unwritable", [*BENCH, "--json", "/proc/eqdeploy-x/r.json"], 2,
       "--json /proc/eqdeploy-x/r.json: its folder cannot be written", "device", True),
    _c("bench-json-over-artifact", [*BENCH, "--json", "{mean_onnx}"], 2,
       "would overwrite the input artifact", "device"),
    _c("bench-json-md-same-file", [*BENCH, "--json", "{o}/r", "--md", "{o}/r"], 2,
       "name the same file", "device"),
    _c("bench-plots-without-matplotlib", [*BENCH, "--plots", "{o}"], 2,
       "--plots needs matplotlib", "device", True),
    _c("bench-probes-nan", [*BENCH, "--probes", "{probe9_nan}"], 2, "NaN or inf", "device"),
    _c("bench-probes-constant", [*BENCH, "--probes", "{probe9_const}"], 2,
       "constant over its pixels", "device"),
    _c("bench-nan-outputs", ["bench", "{nan_onnx}", "--runs", "2"], 1,
       "gives NaN or inf outputs", "device"),
    _c("bench-constant-outputs", ["bench", "{zero_onnx}", "--runs", "2"], 1,
       "the value 0 everywhere", "device"),
    _c("bench-missing-artifact", ["bench", "{d}/none.onnx"], 2, "does not exist", "device"),
    _c("bench-garbage-artifact", ["bench", "{garbage_onnx}"], 2, "is not a valid ONNX model",
       "device"),
    _c("bench-bad-sidecar", ["bench", "{badside_onnx}"], 2, "is not an eqdeploy manifest",
       "device"),
    _c("verify-broken", ["verify", "{corner_onnx}"], 1, "equivariance NOT verified", "device"),
    _c("verify-nan", ["verify", "{nan_onnx}"], 1, "gives NaN or inf outputs", "device"),
    _c("verify-nothing-to-compare", ["verify", "{c1_onnx}"], 1, "nothing to verify", "device"),
    _c("check-violated", ["check", "{bench_json}", "--max-p50-ms", "0"], 1, "", "device",
       True),
    _c("check-malformed-report", ["check", "{garbage}", "--max-p50-ms", "1"], 2,
       "not valid JSON", "device", True),
    _c("check-malformed-budget", ["check", "{bench_json}", "--budget", "{bad_toml}"], 2,
       "not valid TOML", "device", True),
    _c("check-no-budget", ["check", "{bench_json}"], 2, "no budgets given", "device"),
    _c("check-missing-report", ["check", "{d}/none.json", "--max-p50-ms", "1"], 2,
       "does not exist", "device"),
    # --- export --------------------------------------------------------------------------------
    _c("export-missing", ["export", "{d}/nope.pt"], 2, "does not exist"),
    _c("export-bad-shape", ["export", "{model}", "--input-shape", "1,1"], 2,
       "--input-shape '1,1' is not N,C,H,W"),
    _c("export-over-input", ["export", "{model}", "--arch", ARCH, "-o", "{model}"], 2,
       "would overwrite the input model"),
    _c("export-unwritable", ["export", "{model}", "--arch", ARCH, "-o",
                             "/proc/eqdeploy-x/m.pt2"], 2, "its folder cannot be written"),
]

ARCH_MODULE = '''\
def raises():
    raise ValueError("boom")


def needs(width):
    return width


not_callable = 3


def returns_int():
    return 3
'''


def _onnx(path: Path, kind: str, size: int = 9) -> None:
    """A two-output classifier of a few nodes: ``mean`` (global mean and max: invariant),
    ``corner`` (a corner pixel: not invariant), ``nan`` (times NaN), ``zero`` (times 0)."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, size, size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])
    const = {"nan": np.nan, "zero": 0.0}.get(kind, 1.0)
    nodes = [helper.make_node("Mul", ["x", "k"], ["xs"]),
             helper.make_node("GlobalAveragePool", ["xs"], ["a"]),
             helper.make_node("Flatten", ["a"], ["af"])]
    if kind == "corner":
        nodes += [helper.make_node("Slice", ["xs", "s0", "s1", "ax"], ["b"]),
                  helper.make_node("Flatten", ["b"], ["bf"])]
    else:
        nodes += [helper.make_node("GlobalMaxPool", ["xs"], ["b"]),
                  helper.make_node("Flatten", ["b"], ["bf"])]
    nodes.append(helper.make_node("Concat", ["af", "bf"], ["y"], axis=1))
    inits = [helper.make_tensor("k", TensorProto.FLOAT, [], [const]),
             helper.make_tensor("s0", TensorProto.INT64, [2], [0, 0]),
             helper.make_tensor("s1", TensorProto.INT64, [2], [1, 1]),
             helper.make_tensor("ax", TensorProto.INT64, [2], [2, 3])]
    graph = helper.make_graph(nodes, kind, [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _sidecar(artifact: Path, group: str = "C4") -> None:
    from eqdeploy.groups import Group
    from eqdeploy.spec import SymmetrySpec, trivial_layout

    g, reps = Group(group), {}
    spec = SymmetrySpec(g, reps, trivial_layout(reps, g, 1, True),
                        trivial_layout(reps, g, 2, False))
    Path(f"{artifact}.eqdeploy.json").write_text(json.dumps(
        {"symmetry": spec.to_json(), "artifact": {"file": artifact.name}}))


def _npz(path: Path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


def build(d: Path) -> dict[str, str]:
    """Write every input of the corpus into ``d``; returns the placeholders."""
    import torch
    from PIL import Image

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 29, 29)).astype(np.float32)
    f: dict[str, str] = {"d": str(d), "model": str(MODEL)}
    (d / "empty.pt").write_bytes(b"")
    f["empty"] = str(d / "empty.pt")
    raw = MODEL.read_bytes()
    (d / "trunc.pt").write_bytes(raw[: len(raw) // 3])  # the "[Errno 22]" cut of the issue
    f["trunc"] = str(d / "trunc.pt")
    import pickle

    (d / "dict.pkl").write_bytes(pickle.dumps({"lr": 0.1, "epochs": 3}))
    f["dict_pickle"] = str(d / "dict.pkl")
    (d / "garbage.bin").write_bytes(b"hello, not a model or an npz")
    f["garbage"] = str(d / "garbage.bin")
    (d / "corpus_arch.py").write_text(ARCH_MODULE)
    sd = torch.load(MODEL, weights_only=True)
    nan = {k: v.clone() for k, v in sd.items()}
    nan["features.9.batch_norm_[4].running_mean"].fill_(float("nan"))
    torch.save(nan, d / "nan_sd.pt")
    const = {k: (torch.zeros_like(v) if k in ("head.weights", "head.filter") else v)
             for k, v in sd.items()}
    torch.save(const, d / "const_sd.pt")
    f["nan_sd"], f["const_sd"] = str(d / "nan_sd.pt"), str(d / "const_sd.pt")

    f["cal_ok"] = _npz(d / "cal_ok.npz", calib=x)
    f["cal_3d"] = _npz(d / "cal_3d.npz", calib=x[:, 0])
    f["cal_foo"] = _npz(d / "cal_foo.npz", foo=x)
    f["cal_both"] = _npz(d / "cal_both.npz", calib=x, inputs=x)
    f["cal_nan"] = _npz(d / "cal_nan.npz", calib=np.where(x > 2, np.nan, x))
    f["probe_nan"] = _npz(d / "probe_nan.npz", inputs=np.where(x > 2, np.nan, x))
    f["cal_inf"] = _npz(d / "cal_inf.npz", calib=np.where(x > 2, np.inf, x))
    f["cal_f64_big"] = _npz(d / "cal_f64.npz", calib=x.astype(np.float64) * 1e300)
    f["cal_u8"] = _npz(d / "cal_u8.npz", calib=(x > 0).astype(np.uint8) * 255)
    f["cal_n0"] = _npz(d / "cal_n0.npz", calib=x[:0])
    f["cal_28"] = _npz(d / "cal_28.npz", calib=x[:, :, :28, :28])
    f["probe_28"] = _npz(d / "probe_28.npz", inputs=x[:, :, :28, :28])
    f["cal_const"] = _npz(d / "cal_const.npz", calib=np.full_like(x, 0.5))
    f["probe_const"] = _npz(d / "probe_const.npz", inputs=np.ones_like(x) * x[:, :, :1, :1])
    (d / "empty_dir").mkdir()
    f["empty_dir"] = str(d / "empty_dir")
    imgs = d / "bad_images"
    imgs.mkdir()
    Image.fromarray((rng.random((29, 29)) * 255).astype(np.uint8)).save(imgs / "a.png")
    (imgs / "bad.png").write_bytes(b"not a png")
    f["bad_images"] = str(imgs)

    clobber = d / "clobber"  # a model and a calibration file named like the outputs
    clobber.mkdir()
    shutil.copy(MODEL, clobber / "c4_cnn.onnx")
    np.savez(clobber / "c4_cnn.onnx.probes.npz", calib=x)
    f["clobber"] = str(clobber)
    foreign = d / "foreign"  # a user's file of an output's name, no eqdeploy report
    foreign.mkdir()
    (foreign / "c4_cnn.tflite").write_bytes(b"the user's own file")
    f["foreign"] = str(foreign)

    for kind in ("mean", "corner", "nan", "zero"):
        _onnx(d / f"{kind}.onnx", kind)
        _sidecar(d / f"{kind}.onnx")
        f[f"{kind}_onnx"] = str(d / f"{kind}.onnx")
    shutil.copy(d / "mean.onnx", d / "c1.onnx")
    _sidecar(d / "c1.onnx", "C1")
    f["c1_onnx"] = str(d / "c1.onnx")
    (d / "garbage.onnx").write_bytes(b"not an onnx model")
    _sidecar(d / "garbage.onnx")
    f["garbage_onnx"] = str(d / "garbage.onnx")
    shutil.copy(d / "mean.onnx", d / "badside.onnx")
    Path(f"{d / 'badside.onnx'}.eqdeploy.json").write_text("{not json")
    f["badside_onnx"] = str(d / "badside.onnx")
    p9 = rng.standard_normal((6, 1, 9, 9)).astype(np.float32)
    f["probe9_nan"] = _npz(d / "probe9_nan.npz", inputs=np.where(p9 > 1.5, np.nan, p9))
    f["probe9_const"] = _npz(d / "probe9_const.npz", inputs=np.zeros_like(p9))
    (d / "bench.json").write_text(json.dumps(
        {"schema": "eqdeploy.bench", "version": 1, "artifact": {"size_bytes": 10},
         "latency": {"p50_ms": 1.0, "p99_ms": 2.0},
         "equivariance": {"summary": {"rel_err_max": 0.0, "changed_max": 0}},
         "fidelity": None}))
    f["bench_json"] = str(d / "bench.json")
    (d / "bad.toml").write_text("[budgets\nmax_p50_ms = 1")
    f["bad_toml"] = str(d / "bad.toml")
    return f


@dataclass
class Result:
    code: int
    output: str
    seconds: float
    exception: BaseException | None

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.output.splitlines() if ln.startswith("Error:")]


def run(case: Case, files: dict[str, str], out: Path) -> Result:
    """Run ``case`` in process (click's test runner); ``out`` is its output folder."""
    from click.testing import CliRunner

    from eqdeploy.cli import main

    t = time.perf_counter()
    res = CliRunner().invoke(main, case.argv(files, out))
    return Result(res.exit_code, res.output, time.perf_counter() - t, res.exception)


def snapshot(*folders: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folders`` (hidden ones too) with size and mtime."""
    seen = {}
    for top in folders:
        if not top.exists():
            continue
        for p in [top, *top.rglob("*")]:
            if "__pycache__" in p.parts:
                continue
            st = p.stat()  # a folder's mtime moves when a file comes and goes again: skip it
            seen[str(p)] = (st.st_size, st.st_mtime_ns) if p.is_file() else (-1, 0)
    return seen
