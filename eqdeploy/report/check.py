"""``eqdeploy check``: compare a report with budgets (a target profile's ``[budgets]``) for CI.

Each report schema has a small function that maps it to the metrics budgets name
(``METRIC_EXTRACTORS``); a metric missing from the report fails its budget, so a gate
never passes on data that was not measured. A metric that cannot exist for the model (the
interpolated-element metrics of a group whose every element is exact, e.g. C4) is
``NotApplicable``: its budget holds and the table says why. stdlib only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from eqdeploy.errors import EqdeployError

# budget key -> (metric, "max" = value must be <= budget | "min" = value must be >= budget)
BUDGETS: dict[str, tuple[str, str]] = {
    "max_equivariance_error": ("equivariance_error", "max"),
    "max_changed_outputs": ("changed_outputs", "max"),
    "min_top1_agreement": ("top1_agreement", "min"),
    "min_orbit_top1_agreement": ("orbit_top1_agreement", "min"),
    "max_p50_ms": ("p50_ms", "max"),
    "max_p99_ms": ("p99_ms", "max"),
    "max_size_bytes": ("size_bytes", "max"),
    "max_interpolated_error": ("interpolated_error", "max"),
    "max_interpolated_error_ratio": ("interpolated_error_ratio", "max"),
    "min_rotation_top1": ("rotation_top1", "min"),
}
INTEGER_BUDGETS = ("max_changed_outputs", "max_size_bytes")
FRACTION_BUDGETS = ("min_top1_agreement", "min_orbit_top1_agreement", "min_rotation_top1")
INTERPOLATED_METRICS = ("interpolated_error", "interpolated_error_ratio", "rotation_top1")


class NotApplicable(str):
    """A metric the model cannot have (the reason is the string): its budget holds."""


class BudgetRow(NamedTuple):
    name: str  # budget key, e.g. "max_p50_ms"
    value: float | int | NotApplicable | None  # measured; None when the report lacks it (fails)
    budget: float | int
    ok: bool


# --- metric extraction, one small function per report schema -------------------------------
def _no_interpolated(group: str) -> dict[str, NotApplicable]:
    why = NotApplicable(f"every element of {group} is exact")
    return dict.fromkeys(INTERPOLATED_METRICS, why)


def _bench_interpolated(r: dict) -> dict[str, Any]:
    """Worst interpolated element: error, ratio to the FP32 reference, top-1 f(x) = f(g.x)."""
    interp = r["equivariance"].get("interpolated")
    if interp is not None and not interp["elements"]:
        return _no_interpolated(r.get("symmetry", {}).get("group", "the group"))
    s = (interp or {}).get("summary") or {}
    return {"interpolated_error": s.get("rel_err_max"),
            "interpolated_error_ratio": s.get("ratio_vs_fp32_max"),
            "rotation_top1": s.get("top1_agreement_min")}


def _convert_interpolated(r: dict, rows: list[dict], int8: bool) -> dict[str, Any]:
    """Worst over the deployed artifacts' interpolated rows; the ratio is each INT8 row's to
    its FP32 artifact, or for FP32 deployments the artifact's to the source model."""
    info = r.get("interpolated")
    if info is not None and not info["elements"]:
        return _no_interpolated(r["model"]["group"])
    interp = [e for v in rows for e in v.get("interpolated", [])]
    if int8:
        ratios = [e.get("ratio_vs_fp32") for e in interp]
    else:
        src = {e["element"]: e["rel_err_max"] for e in r["verification"][0].get("interpolated", [])}
        ratios = [e["rel_err_max"] / src[e["element"]] if src.get(e["element"]) else None
                  for e in interp]
    agree = [e["top1_agreement"] for e in interp if "top1_agreement" in e]
    return {"interpolated_error": max((e["rel_err_max"] for e in interp), default=None),
            "interpolated_error_ratio": None if not ratios or None in ratios else max(ratios),
            "rotation_top1": min(agree) if agree else None}


def _bench_metrics(r: dict) -> dict[str, Any]:
    """``eqdeploy.bench`` v1 (see bench_schema.md)."""
    eq = r["equivariance"]["summary"] or {}
    fid = r.get("fidelity") or {}
    return {
        "equivariance_error": eq.get("rel_err_max"),
        "changed_outputs": eq.get("changed_max"),
        "top1_agreement": fid.get("top1_agreement"),
        "orbit_top1_agreement": eq.get("top1_agreement_min"),
        "p50_ms": r["latency"]["p50_ms"],
        "p99_ms": r["latency"]["p99_ms"],
        "size_bytes": r["artifact"]["size_bytes"],
        **_bench_interpolated(r),
    }


def _convert_metrics(r: dict) -> dict[str, Any]:
    """``eqdeploy.convert`` v1: worst case over the deployed artifacts (the INT8 ones when
    the FP32 counterparts were written beside them); no latency."""
    precision = "int8" if any(a.get("precision") == "int8" for a in r["artifacts"]) \
        else "fp32"
    deployed = [a for a in r["artifacts"] if a.get("precision", "fp32") == precision]
    files = {a["file"] for a in deployed}
    rows = [v for v in r["verification"] if v.get("artifact") in files]
    if not any("artifact" in v for v in r["verification"]):  # reports before rows named files
        runtimes = {a["runtime"] for a in deployed}
        rows = [v for v in r["verification"] if v["runtime"] in runtimes]
    eq = [e for v in rows for e in v["equivariance"]]
    top1 = [v["top1_agreement_vs_source"] for v in rows
            if v.get("top1_agreement_vs_source") is not None]
    orbit = [e["top1_agreement"] for e in eq if "top1_agreement" in e]
    return {
        "equivariance_error": max((e["rel_err_max"] for e in eq), default=None),
        "changed_outputs": max((e["changed"] for e in eq), default=None),
        "top1_agreement": min(top1) if top1 else None,
        "orbit_top1_agreement": min(orbit) if orbit else None,
        "p50_ms": None,
        "p99_ms": None,
        "size_bytes": max((a["bytes"] for a in deployed), default=None),
        **_convert_interpolated(r, rows, precision == "int8"),
    }


# schema -> (supported versions, extractor)
METRIC_EXTRACTORS: dict[str, tuple[tuple[int, ...], Callable[[dict], dict[str, Any]]]] = {
    "eqdeploy.bench": ((1,), _bench_metrics),
    "eqdeploy.convert": ((1,), _convert_metrics),
}


def report_metrics(report: Any, where: str = "report") -> dict[str, Any]:
    """The budget metrics of a report dict of any supported schema."""
    if not isinstance(report, dict) or "schema" not in report:
        raise EqdeployError(f"{where} is not an eqdeploy report (no 'schema' key)",
                            "pass the JSON written by 'eqdeploy bench --json' or 'convert'")
    schema, version = report["schema"], report.get("version")
    if schema not in METRIC_EXTRACTORS:
        raise EqdeployError(f"{where} has schema {schema!r}, which check does not read",
                            f"pass a report of schema {' or '.join(sorted(METRIC_EXTRACTORS))}")
    versions, extract = METRIC_EXTRACTORS[schema]
    if version not in versions:
        raise EqdeployError(f"{where}: {schema} version {version!r} is not supported",
                            f"this eqdeploy reads version {versions}; upgrade eqdeploy")
    try:
        metrics = extract(report)
    except (KeyError, TypeError, AttributeError, IndexError) as e:
        raise EqdeployError(f"{where} is a malformed {schema} report ({type(e).__name__}: {e})",
                            "regenerate it with the same eqdeploy version") from None
    for name, value in metrics.items():
        if value is not None and not isinstance(value, NotApplicable) and (
                isinstance(value, bool) or not isinstance(value, (int, float))):
            raise EqdeployError(f"{where} is a malformed {schema} report ({name} = {value!r} is "
                                "not a number)", "regenerate it with the same eqdeploy version")
    return metrics


# --- budgets -----------------------------------------------------------------------------
def validate_budgets(budgets: Any, where: str = "budgets") -> dict[str, float | int]:
    """Known keys only, non-negative finite numbers, integers and fractions where due."""
    if not isinstance(budgets, dict):
        raise EqdeployError(f"{where} is not a table of budgets", "see targets/README.md")
    out: dict[str, float | int] = {}
    for key, value in budgets.items():
        if key not in BUDGETS:
            raise EqdeployError(f"{where}: unknown budget {key!r}",
                                f"use one of {', '.join(BUDGETS)}")
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not math.isfinite(value) or value < 0):
            raise EqdeployError(f"{where}: budget {key} = {value!r} is not a non-negative number",
                                "give a number, e.g. max_p50_ms = 25.0")
        if key in INTEGER_BUDGETS and value != int(value):
            raise EqdeployError(f"{where}: budget {key} = {value!r} is not a whole number",
                                "give an integer")
        if key in FRACTION_BUDGETS and value > 1:
            raise EqdeployError(f"{where}: budget {key} = {value!r} is above 1",
                                "give a fraction, e.g. 0.99")
        out[key] = int(value) if key in INTEGER_BUDGETS else float(value)
    return out


def _toml():
    try:
        import tomllib  # Python >= 3.11

        return tomllib
    except ImportError:
        pass
    try:
        import tomli

        return tomli
    except ImportError:
        raise EqdeployError("reading a TOML profile needs Python 3.11+ or tomli",
                            "pip install tomli, or give the budgets as --max-... options"
                            ) from None


def load_profile(path: str | Path) -> dict:
    """A target profile (TOML) as a dict; one-line errors for missing or invalid files."""
    path = Path(path)
    if not path.is_file() and not path.suffix and Path("targets", f"{path}.toml").is_file():
        path = Path("targets", f"{path}.toml")  # a bare profile name
    if not path.is_file():
        raise EqdeployError(f"budget file {path} does not exist",
                            "pass one of the profiles in targets/, e.g. targets/x86-ci.toml")
    toml = _toml()
    try:
        return toml.loads(path.read_text(encoding="utf-8"))
    except (toml.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EqdeployError(f"{path} is not valid TOML ({str(e).splitlines()[0]})",
                            "fix the file; see targets/README.md") from None


def load_budgets(path: str | Path) -> dict[str, float | int]:
    """The ``[budgets]`` table of a target profile, validated."""
    profile = load_profile(path)
    if "budgets" not in profile:
        raise EqdeployError(f"{path} has no [budgets] table", "see targets/README.md")
    return validate_budgets(profile["budgets"], f"{path} [budgets]")


def load_report(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise EqdeployError(f"report {path} does not exist",
                            "write one with 'eqdeploy bench ARTIFACT --json REPORT'")
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise EqdeployError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})",
                            "regenerate it with 'eqdeploy bench --json'") from None
    except UnicodeDecodeError:
        raise EqdeployError(f"{path} is not a text file", "pass the JSON report") from None
    report_metrics(report, str(path))  # validates schema and shape
    return report


# --- the check ---------------------------------------------------------------------------
def check_report(report: dict, budgets: dict, where: str = "report") -> list[BudgetRow]:
    """One row per budget: measured value, budget, whether it holds (missing value: fails)."""
    metrics = report_metrics(report, where)
    rows = []
    for key, budget in validate_budgets(budgets).items():
        metric, direction = BUDGETS[key]
        value = metrics.get(metric)
        ok = isinstance(value, NotApplicable) or (
            value is not None and (value <= budget if direction == "max" else value >= budget))
        rows.append(BudgetRow(key, value, budget, bool(ok)))
    return rows


def _fmt(v: float | int | NotApplicable | None) -> str:
    if v is None:
        return "missing"
    if isinstance(v, NotApplicable):
        return f"n/a ({v})"
    if isinstance(v, int):
        return str(v)
    return f"{v:.4g}"


def format_table(rows: list[BudgetRow]) -> str:
    """A plain-text table of the rows; missing values say so."""
    head = ("budget", "value", "limit", "result")
    body = [(r.name, _fmt(r.value),
             ("<= " if BUDGETS[r.name][1] == "max" else ">= ") + _fmt(r.budget),
             "ok" if r.ok else ("FAIL (not in report)" if r.value is None else "FAIL"))
            for r in rows]
    widths = [max(len(x[i]) for x in (head, *body)) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
             for line in (head, tuple("-" * w for w in widths), *body)]
    return "\n".join(lines)
