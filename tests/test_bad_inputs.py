"""The bad-input corpus (``tests/corpus.py``): every case fails with the documented exit code,
one ``Error:`` line naming the cause, no traceback, and nothing new or changed on disk."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import corpus
import pytest

CASES = {c.id: c for c in corpus.CASES}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    sys.path.insert(0, str(d))  # corpus_arch, the module of the bad --arch factories
    yield corpus.build(d)
    sys.path.remove(str(d))


@pytest.mark.parametrize("case_id", list(CASES))
def test_bad_input_fails_cleanly(case_id, files, tmp_path):
    case = CASES[case_id]
    if case_id == "bench-plots-without-matplotlib" and importlib.util.find_spec("matplotlib"):
        pytest.skip("matplotlib is installed here")
    out = tmp_path / "out"
    before = corpus.snapshot(tmp_path, corpus.Path(files["d"]))
    res = corpus.run(case, files, out)
    assert res.code == case.code, res.output
    assert "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
    if case.args[0] == "check" and case.code == 1:  # a violated budget: the table says why
        assert "FAILED: 1 of 1 budgets (max_p50_ms)" in res.output and not res.error_lines
    else:
        assert len(res.error_lines) == 1, res.output
        assert case.phrase(files, out) in res.error_lines[0], res.output
        assert " -- " in res.error_lines[0] or "Try '" in res.output  # the fix, or click's hint
    assert corpus.snapshot(tmp_path, corpus.Path(files["d"])) == before  # nothing new, nothing
    assert not out.exists()  # changed, no output folder left behind


def test_corpus_covers_every_stage_and_code():
    """The corpus keeps its promise: most cases fail before torch, all three codes occur."""
    stages = [c.stage for c in corpus.CASES]
    assert stages.count("preflight") > len(stages) / 2
    assert {c.code for c in corpus.CASES} == {1, 2}
    assert len([c for c in corpus.CASES if c.issue]) >= 30


def test_preflight_cases_fail_before_torch_is_imported(files):
    """Argument and input-file errors come in a fraction of a second: torch is never
    imported (a fresh interpreter runs every preflight case of the corpus)."""
    ids = [c.id for c in corpus.CASES if c.stage == "preflight" and c.args[0] == "convert"]
    code = textwrap.dedent(f"""
        import json, sys, time
        sys.path.insert(0, {str(corpus.REPO / 'tests')!r})
        import corpus
        files = json.loads({__import__('json').dumps(files)!r})
        cases = {{c.id: c for c in corpus.CASES}}
        for i in {ids!r}:
            res = corpus.run(cases[i], files, corpus.Path({str(files['d'])!r}) / "none")
            assert res.code == cases[i].code, (i, res.output)
        heavy = [m for m in ("torch", "e2cnn", "onnx", "litert_torch") if m in sys.modules]
        assert not heavy, heavy
        print(len({ids!r}))
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert int(res.stdout.split()[-1]) == len(ids) >= 40


def test_late_checks_fail_before_export(files, tmp_path):
    """Errors that need the loaded model (its channel count, its input size) come right
    after loading: the export stage never starts."""
    for case in corpus.CASES:
        if case.stage == "load" and case.args[0] == "convert":
            res = corpus.run(case, files, tmp_path / "out")
            assert "export to a plain graph" not in res.output, (case.id, res.output)


def test_debug_shows_the_traceback_and_internal_errors_exit_3(files, tmp_path, monkeypatch):
    case = CASES["model-truncated"]
    res = corpus.run(corpus.Case("debug", (*case.args, "--debug"), 2, "", "load"), files,
                     tmp_path / "o")
    assert res.code == 2 and "Traceback" in res.output and len(res.error_lines) == 1

    def boom(*args, **kwargs):
        raise ZeroDivisionError("an eqdeploy bug")

    monkeypatch.setattr("eqdeploy.validate.preflight", boom)
    res = corpus.run(CASES["model-missing"], files, tmp_path / "o")
    assert res.code == 3 and "Traceback" not in res.output, res.output
    assert res.error_lines == ["Error: internal error (ZeroDivisionError: an eqdeploy bug) -- "
                               "this is a bug in eqdeploy: run again with --debug and report "
                               "the traceback"]
    res = corpus.run(corpus.Case("d", ("--debug", *CASES["model-missing"].args), 3, ""), files,
                     tmp_path / "o")
    assert res.code == 3 and "ZeroDivisionError: an eqdeploy bug" in res.output
    assert "Traceback" in res.output
