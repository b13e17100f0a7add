"""eqdeploy check: budgets from target profiles / options against bench reports, for CI."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from eqdeploy.errors import EqdeployError
from eqdeploy.harness.cli import check as check_cmd
from eqdeploy.report import check as chk

REPO = Path(__file__).resolve().parents[1]
PROFILES = sorted((REPO / "targets").glob("*.toml"))

BASE = {
    "schema": "eqdeploy.bench", "version": 1,
    "artifact": {"size_bytes": 1_000_000},
    "latency": {"p50_ms": 10.0, "p99_ms": 20.0},
    "equivariance": {"summary": {"rel_err_max": 1e-6, "changed_max": 0,
                                 "top1_agreement_min": 1.0}},
    "fidelity": {"top1_agreement": 0.99},
}
ALL_HOLD = {"max_equivariance_error": 1e-3, "max_changed_outputs": 0, "min_top1_agreement": 0.98,
            "min_orbit_top1_agreement": 1.0, "max_p50_ms": 10.0, "max_p99_ms": 25.0,
            "max_size_bytes": 1_000_000}


def report(**changes) -> dict:
    """BASE with dotted-path changes, e.g. report(**{"latency.p50_ms": 12.0})."""
    r = copy.deepcopy(BASE)
    for path, value in changes.items():
        *parents, leaf = path.split(".")
        node = r
        for p in parents:
            node = node[p]
        node[leaf] = value
    return r


def test_all_budgets_hold_including_boundaries():
    rows = chk.check_report(report(), ALL_HOLD)
    assert [r.name for r in rows] == list(ALL_HOLD)
    assert all(r.ok for r in rows)  # equal to the budget holds
    assert rows[0] == ("max_equivariance_error", 1e-6, 1e-3, True)  # a plain tuple too


@pytest.mark.parametrize("change, failing", [
    ({"latency.p50_ms": 10.5}, "max_p50_ms"),
    ({"latency.p99_ms": 30.0}, "max_p99_ms"),
    ({"equivariance.summary.rel_err_max": 2e-3}, "max_equivariance_error"),
    ({"equivariance.summary.changed_max": 1}, "max_changed_outputs"),
    ({"fidelity.top1_agreement": 0.5}, "min_top1_agreement"),
    ({"equivariance.summary.top1_agreement_min": 0.75}, "min_orbit_top1_agreement"),
    ({"artifact.size_bytes": 1_000_001}, "max_size_bytes"),
    ({"fidelity": None}, "min_top1_agreement"),  # not measured: fails, never passes silently
    ({"equivariance.summary": None}, "max_equivariance_error"),
])
def test_each_violation_fails_only_its_row(change, failing):
    rows = chk.check_report(report(**change), ALL_HOLD)
    bad = {r.name for r in rows if not r.ok}
    assert failing in bad
    assert bad <= {failing, "max_changed_outputs", "min_orbit_top1_agreement"}


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def _invoke(args):
    return CliRunner().invoke(check_cmd, [str(a) for a in args])


def test_cli_exit_codes_and_table(tmp_path):
    rep = _write(tmp_path, "r.json", json.dumps(report()))
    budget = _write(tmp_path, "b.toml", "[target]\nname = 'x'\n[budgets]\nmax_p50_ms = 11.0\n"
                                        "max_changed_outputs = 0\n")
    ok = _invoke([rep, "--budget", budget])
    assert ok.exit_code == 0, ok.output
    assert re.search(r"max_p50_ms\s+10\s+<= 11\s+ok", ok.output)
    bad = _invoke([rep, "--budget", budget, "--max-p50-ms", "9.5"])  # inline overrides file
    assert bad.exit_code == 1
    assert re.search(r"max_p50_ms\s+10\s+<= 9.5\s+FAIL", bad.output)
    assert "FAILED: 1 of 2 budgets (max_p50_ms)" in bad.output
    missing = _invoke([_write(tmp_path, "nofid.json", json.dumps(report(fidelity=None))),
                       "--min-top1-agreement", "0.9"])
    assert missing.exit_code == 1 and "FAIL (not in report)" in missing.output


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.name)
def test_shipped_profiles_parse_and_are_documented(profile):
    budgets = chk.load_budgets(profile)
    assert set(budgets) >= {"max_equivariance_error", "max_changed_outputs",
                            "min_top1_agreement", "max_p50_ms", "max_p99_ms", "max_size_bytes"}
    data = chk.load_profile(profile)
    readme = (REPO / "targets" / "README.md").read_text()
    for table in ("target", "quantization", "budgets"):
        assert table in data, f"{profile.name} lacks [{table}]"
        for key in data[table]:
            assert f"`{key}`" in readme, f"{profile.name}: [{table}] {key} undocumented"
    assert data["target"]["format"] in ("tflite", "onnx")
    assert f"`{profile.name}`" in readme


def test_bare_profile_name_resolves_under_targets(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    rep = _write(tmp_path, "r.json", json.dumps(report(**{"latency.p99_ms": 1e4})))
    res = _invoke([rep, "--budget", "x86-ci"])
    assert res.exit_code == 1 and re.search(r"max_p99_ms\s+1e\+04\s+<= 250\s+FAIL", res.output)


def _one_line_error(args) -> str:
    res = _invoke(args)
    assert res.exit_code == 2, res.output  # malformed input: 2, a violated budget: 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    return lines[0]


@pytest.mark.parametrize("content, expect", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "not an eqdeploy report"),
    (json.dumps({"schema": "something.else", "version": 1}), "does not read"),
    (json.dumps({**BASE, "version": 99}), "version 99"),
    (json.dumps({k: v for k, v in BASE.items() if k != "latency"}), "malformed"),
    (json.dumps(report(**{"latency.p50_ms": "fast"})), "not a number"),
])
def test_malformed_reports_give_one_line_errors(tmp_path, content, expect):
    rep = _write(tmp_path, "bad.json", content)
    msg = _one_line_error([rep, "--max-p50-ms", "1"])
    assert expect in msg


@pytest.mark.parametrize("content, expect", [
    ("[budgets\nmax_p50_ms = 1", "not valid TOML"),
    ("[target]\nname = 'x'\n", "no [budgets]"),
    ("[budgets]\nmax_p50 = 1.0\n", "unknown budget 'max_p50'"),
    ("[budgets]\nmax_p50_ms = -1.0\n", "non-negative"),
    ("[budgets]\nmax_p50_ms = '10'\n", "non-negative number"),
    ("[budgets]\nmax_changed_outputs = 0.5\n", "whole number"),
    ("[budgets]\nmin_top1_agreement = 98\n", "above 1"),
    ("budgets = 3\n", "not a table"),
])
def test_malformed_budgets_give_one_line_errors(tmp_path, content, expect):
    rep = _write(tmp_path, "r.json", json.dumps(report()))
    bud = _write(tmp_path, "bad.toml", content)
    msg = _one_line_error([rep, "--budget", bud])
    assert expect in msg and "bad.toml" in msg


def test_missing_files_and_no_budgets(tmp_path):
    rep = _write(tmp_path, "r.json", json.dumps(report()))
    assert "does not exist" in _one_line_error([tmp_path / "nope.json", "--max-p50-ms", "1"])
    assert "does not exist" in _one_line_error([rep, "--budget", tmp_path / "nope.toml"])
    assert "no budgets given" in _one_line_error([rep])


def test_new_schema_needs_only_an_extractor(monkeypatch):
    conv = {"schema": "eqdeploy.future", "version": 1, "size": 5}
    with pytest.raises(EqdeployError, match="does not read"):
        chk.check_report(conv, {"max_size_bytes": 10})
    monkeypatch.setitem(chk.METRIC_EXTRACTORS, "eqdeploy.future",
                        ((1,), lambda r: {"size_bytes": r["size"]}))
    assert chk.check_report(conv, {"max_size_bytes": 10}) == [("max_size_bytes", 5, 10, True)]

