"""Never a lost file, never a false pass: output-folder safety, staging and signals, what the
input-size lint requires per group, measurement checks, reported casts/resizes, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from eqdeploy.errors import CheckFailed, EqdeployError, Interrupted
from eqdeploy.groups import Group
from eqdeploy.harness import measurable
from eqdeploy.outputs import (
    Staging,
    check_outputs,
    planned_outputs,
    plots_available,
    previous_outputs,
    signals_held,
)
from eqdeploy.spec import SymmetrySpec, trivial_layout
from eqdeploy.toplevel import HandledGroup

REPO = Path(__file__).resolve().parents[1]
ARCH = "eqdeploy.models.reference:c4_cnn"
INT8_ONNX = ["m.onnx", "m.onnx.eqdeploy.json", "m.onnx.probes.npz", "m.fp32.onnx",
             "m.fp32.onnx.eqdeploy.json", "m.fp32.onnx.probes.npz", "m.report.json",
             "m.report.md"]


def _report(folder: Path, name: str, files: list[str] | None = None, artifacts=()) -> None:
    rep = {"schema": "eqdeploy.convert", "version": 1,
           "artifacts": [{"file": a} for a in artifacts]}
    if files is not None:
        rep["files"] = files
    (folder / f"{name}.report.json").write_text(json.dumps(rep))


# --- what a conversion writes, and over what it never writes -----------------------------
def test_planned_outputs_name_every_file():
    assert planned_outputs("m", ["onnx"], True, False) == INT8_ONNX
    tap = planned_outputs("m", ["tflite"], False, True)
    assert tap[:6] == ["m.tflite", "m.tflite.eqdeploy.json", "m.tflite.probes.npz",
                       "m.tap.tflite", "m.tap.tflite.eqdeploy.json", "m.tap.tflite.probes.npz"]
    assert "m.tap.fp32.onnx" in planned_outputs("m", ["onnx", "tflite"], True, True)


def test_previous_outputs_from_the_report_only_plain_names(tmp_path):
    assert previous_outputs(tmp_path, "m") is None
    _report(tmp_path, "m", ["m.onnx", "../escape.txt", "/etc/passwd", "sub/x", "m.report.md"])
    assert previous_outputs(tmp_path, "m") == {"m.onnx", "m.report.md"}
    _report(tmp_path, "m", None, artifacts=["m.tflite"])  # a report from before "files"
    assert previous_outputs(tmp_path, "m") == {"m.tflite", "m.tflite.eqdeploy.json",
                                               "m.tflite.probes.npz", "m.report.json",
                                               "m.report.md"}
    (tmp_path / "m.report.json").write_text("{broken")
    assert previous_outputs(tmp_path, "m") is None


def test_stale_files_of_the_previous_conversion_and_foreign_files(tmp_path):
    for f in INT8_ONNX:
        (tmp_path / f).write_text("old")
    _report(tmp_path, "m", INT8_ONNX)
    fp32 = planned_outputs("m", ["onnx"], False, False)
    stale = check_outputs(tmp_path, "m", fp32, {})
    assert stale == ["m.fp32.onnx", "m.fp32.onnx.eqdeploy.json", "m.fp32.onnx.probes.npz"]
    (tmp_path / "m.tflite").write_text("the user's")
    with pytest.raises(EqdeployError, match="m.tflite exists and no eqdeploy report"):
        check_outputs(tmp_path, "m", planned_outputs("m", ["tflite"], False, False), {})
    assert check_outputs(tmp_path, "m", ["m.tflite"], {}, force=True)  # --force: replaced
    model = tmp_path / "m.fp32.onnx"  # an input that a previous report lists: kept
    assert "m.fp32.onnx" not in check_outputs(tmp_path, "m", fp32, {"model": model})
    with pytest.raises(EqdeployError, match="would overwrite the input model"):
        check_outputs(tmp_path, "m", INT8_ONNX, {"model": model}, force=True)
    link = tmp_path / "link.onnx"
    link.symlink_to(model)  # the same file under another name
    with pytest.raises(EqdeployError, match="would overwrite the input calibration"):
        check_outputs(tmp_path, "m", ["m.fp32.onnx"], {"calibration": link}, force=True)


def test_staging_commit_replaces_the_previous_conversion(tmp_path):
    for f in INT8_ONNX:
        (tmp_path / f).write_text("old")
    _report(tmp_path, "m", INT8_ONNX)
    (tmp_path / "notes.txt").write_text("the user's, not listed")
    stager = Staging(tmp_path, "m", {})
    with stager as staging:
        for f in planned_outputs("m", ["onnx"], False, False):
            (staging / f).write_text("new")
        removed = stager.commit()
    assert removed == ["m.fp32.onnx", "m.fp32.onnx.eqdeploy.json", "m.fp32.onnx.probes.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*planned_outputs("m", ["onnx"], False, False), "notes.txt"])
    assert all((tmp_path / f).read_text() == "new" for f in INT8_ONNX if "fp32" not in f)


def _raise(signum, _frame):
    raise Interrupted(signum)


def test_sigterm_while_staging_removes_it_and_leaves_the_folder_alone(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    old = signal.signal(signal.SIGTERM, _raise)  # what eqdeploy.toplevel installs
    try:
        with pytest.raises(Interrupted), Staging(tmp_path, "m", {}) as staging:
            (staging / "m.onnx").write_text("partial")
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises before this returns
    finally:
        signal.signal(signal.SIGTERM, old)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_signals_wait_until_the_files_are_in_place(tmp_path):
    moved = []
    with pytest.raises(KeyboardInterrupt), signals_held():
        os.kill(os.getpid(), signal.SIGINT)
        moved.append("all files")  # still runs: the signal is held back
    assert moved == ["all files"]


def test_staging_of_a_killed_run_is_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (tmp_path / f".eqdeploy-{dead}-abc").mkdir()
    (tmp_path / f".eqdeploy-{os.getpid()}-live").mkdir()  # this process: alive, kept
    with Staging(tmp_path, "m", {}):
        names = sorted(p.name for p in tmp_path.iterdir())
    assert f".eqdeploy-{dead}-abc" not in names and f".eqdeploy-{os.getpid()}-live" in names


# --- one handler, documented exit codes ---------------------------------------------------
@click.group(cls=HandledGroup)
def _demo():
    pass


@_demo.command()
@click.argument("what")
def fail(what):
    if what == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
    if what == "sigint":
        raise KeyboardInterrupt
    if what == "oserror":
        open("/proc/eqdeploy-none/x", "w")  # noqa: SIM115
    if what == "check":
        raise CheckFailed("equivariance broken", "fix the model")
    raise EqdeployError("bad input", "fix it")


@pytest.mark.parametrize("what,code,text", [
    ("sigterm", 143, "interrupted by SIGTERM"), ("sigint", 130, "interrupted by SIGINT"),
    ("oserror", 2, "cannot read or write /proc/eqdeploy-none/x (No such file or directory)"),
    ("check", 1, "equivariance broken -- fix the model"), ("input", 2, "bad input -- fix it")])
def test_handler_exit_codes(what, code, text):
    before = signal.getsignal(signal.SIGTERM)
    res = CliRunner().invoke(_demo, ["fail", what])
    assert res.exit_code == code and "Traceback" not in res.output, res.output
    assert res.output.startswith("Error: ") and text in res.output and \
        len(res.output.strip().splitlines()) == 1
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is put back


# --- the input-size lint checks what the group's exact elements need -----------------------
@pytest.fixture(scope="module")
def strided():
    """conv k3 s2 (no padding): aligned where (n - 3) % 2 == 0, i.e. odd sizes."""
    import torch

    ep = torch.export.export(torch.nn.Conv2d(1, 2, 3, stride=2).eval(),
                             (torch.zeros(1, 1, 33, 33),))
    return ep.graph_module, ep.graph_signature.user_inputs[0]


@pytest.mark.parametrize("group,size,exact,text", [
    ("C4", (32, 32), False, "input size 32 is misaligned at layer"),
    ("C4", (33, 33), True, "input size 33 is aligned: 90-degree rotations are exact"),
    ("C4", (33, 35), False, "90-degree rotations need square inputs (got 33x35)"),
    ("D4", (32, 32), False, "90-degree rotations and flips are not exact; exact sizes: 31, 33"),
    ("C1", (32, 30), True, "the group has no exact non-identity element: any input size"),
    ("C8", (33, 33), True, "90-degree rotations are exact"),  # its 45-degree ones: interpolated
    ("D1", (32, 33), True, "input width 33 is aligned: flips are exact"),
    ("D1", (33, 32), False, "input width 32 is misaligned at layer"),
    ("C2", (33, 35), True, "180-degree rotations are exact"),
    ("C2", (33, 34), False, "180-degree rotations are not exact"),
])
def test_lint_follows_the_groups_exact_elements(strided, group, size, exact, text):
    from eqdeploy.lint import lint_input_size, lint_message

    result = lint_input_size(*strided, *size, group=Group(group))
    assert result["exact"] is exact
    assert text in lint_message(result), lint_message(result)
    if group == "D1" and not exact:
        assert "exact widths: 31, 33" in lint_message(result)


def test_input_smaller_than_the_first_window(strided):
    from eqdeploy.lint import check_input_extent

    check_input_extent(*strided, 3, 3)
    with pytest.raises(EqdeployError, match="input width 2 is smaller than the 3x3 window"):
        check_input_extent(*strided, 3, 2)


# --- measurements that could not be made fail ---------------------------------------------
def _spec(group="C4"):
    g, reps = Group(group), {}
    return SymmetrySpec(g, reps, trivial_layout(reps, g, 1, True),
                        trivial_layout(reps, g, 2, False))


def test_probes_that_no_element_moves_compare_nothing():
    x = np.random.default_rng(0).integers(-9, 9, (3, 1, 5, 5)).astype(np.float32)
    measurable.check_probes_move(_spec(), x)
    symmetric = x + np.rot90(x, 1, (2, 3)) + np.rot90(x, 2, (2, 3)) + np.rot90(x, 3, (2, 3))
    assert np.array_equal(np.rot90(symmetric, 1, (2, 3)), symmetric)  # integers: exact sums
    measurable.check_probes_move(_spec("D1"), symmetric)  # a flip still moves them
    with pytest.raises(EqdeployError, match="compare nothing"):
        measurable.check_probes_move(_spec(), symmetric)
    with pytest.raises(EqdeployError, match="of shape \\(1, 1, 1\\) unchanged"):
        measurable.check_probes_move(_spec(), x[:, :, :1, :1])
    measurable.check_probes_move(_spec("C1"), x[:, :, :1, :1])  # no element: no rows at all


@pytest.mark.parametrize("y,text", [
    (np.array([[1.0, np.nan], [1.0, 2.0]]), "NaN or inf outputs on 1 of 2 probes"),
    (np.array([[1.0, np.inf]]), "NaN or inf outputs on 1 of 1 probes"),
    (np.zeros((4, 3)), "the value 0 everywhere"),
    (np.array([[1.0, 2.0]] * 3), "the same output for all 3 probes"),
])
def test_non_finite_or_constant_outputs_fail(y, text):
    with pytest.raises(CheckFailed, match=text) as err:
        measurable.check_outputs(y, "runtime")
    assert err.value.exit_code == 1
    measurable.check_outputs(np.array([[1.0, 2.0], [1.0, 3.0]]), "runtime")
    measurable.check_outputs(np.array([[5.0]]), "runtime")  # one value: nothing to tell


def test_non_finite_errors_fail():
    with pytest.raises(CheckFailed, match="under r1 is nan"):
        measurable.check_rows([{"element": "r1", "rel_err_max": float("nan"),
                                "rel_err_mean": 0.0}], "onnxruntime")


# --- casts, resizes and skipped files are reported -----------------------------------------
def test_float64_cast_and_image_folder_notes(tmp_path):
    from PIL import Image

    from eqdeploy.quantize.calibrate import load_calibration, read_inputs
    from eqdeploy.validate import Preflight

    x = np.random.default_rng(0).standard_normal((3, 1, 9, 9))
    np.savez(tmp_path / "c.npz", calib=x)
    notes: list[str] = []
    cal = load_calibration(tmp_path / "c.npz", (1, 1, 9, 9), notes=notes)
    assert cal.dtype == np.float32 and np.array_equal(cal, x.astype(np.float32))
    assert notes == ["calibration inputs c.npz 'calib': float64 cast to float32"]
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, size in enumerate([(9, 9), (12, 10), (12, 10)]):
        Image.fromarray(np.full(size[::-1], 40 * i, np.uint8)).save(imgs / f"{i}.png")
    (imgs / "notes.txt").write_text("not an image")
    plan = Preflight(tmp_path, [], {}, files={"probe": read_inputs(imgs, "probe")})
    plan.notes += plan.files["probe"].notes
    plan.against_model((1, 1, 9, 9))
    assert plan.notes == [f"probe folder {imgs}: skipped 1 non-image entry (notes.txt)",
                          f"probe folder {imgs}: 2 of 3 images centre-cropped and resized "
                          "from 12x10 to 9x9"]


# --- one real conversion, twice: the folder holds exactly what its report lists ------------
def test_conversion_replaces_a_previous_one_and_sidecars_are_reproducible(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = [f.replace("m.", "c4_cnn.") for f in INT8_ONNX]
    for f in stale:
        (out / f).write_text("from an earlier INT8 conversion")
    _report(out, "c4_cnn", stale)
    probes = tmp_path / "probes.npz"
    np.savez(probes, test=np.random.default_rng(0).standard_normal((6, 1, 29, 29)))
    args = ["convert", str(REPO / "examples" / "c4_cnn.pt"), "--arch", ARCH,
            "--input-shape", "1,1,29,29", "--target", "onnx", "--probes", str(probes),
            "--num-probes", "4", "-o", str(out)]
    from eqdeploy.cli import main

    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "removed 3 file(s) of the previous conversion" in res.output
    report = json.loads((out / "c4_cnn.report.json").read_text())
    listed = planned_outputs("c4_cnn", ["onnx"], False, False, plots=plots_available())
    assert report["files"] == sorted(listed) == sorted(p.name for p in out.iterdir())
    assert report["input_notes"] == ["probe inputs probes.npz 'test': float64 cast to float32"]
    first = {f: (out / f).read_bytes() for f in listed if not f.startswith("c4_cnn.report")}
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert {f: (out / f).read_bytes() for f in first} == first  # byte-reproducible


@pytest.mark.slow
def test_sigterm_during_a_conversion_leaves_no_staging(tmp_path):
    """A cancelled CI job: SIGTERM while the artifacts are being written exits 143 and
    leaves the output folder as it was (no hidden staging folder, no artifact)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "eqdeploy.cli", "convert",
                             str(REPO / "examples" / "c4_cnn.pt"), "--arch", ARCH,
                             "--input-shape", "1,1,29,29", "--target", "all", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if any(p.name.startswith(".eqdeploy-") for p in out.iterdir()):
            proc.send_signal(signal.SIGTERM)
            break
        time.sleep(0.02)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 143, output
    assert "Error: interrupted by SIGTERM" in output and "Traceback" not in output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
