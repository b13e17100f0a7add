"""Run the bad-input corpus (``tests/corpus.py``) once and tabulate it: per case the command,
the exit code, the one-line message and how long the failure took (in process, after a
warm-up import), with machine info. Writes benchmarks/results/bad_input_corpus.{json,md}.

    PYTHONPATH=. .venv/bin/python benchmarks/bad_input_corpus.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import corpus  # noqa: E402

from eqdeploy.harness.sysinfo import system_info  # noqa: E402

OUT = Path(__file__).parent / "results"


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "corpus"
        files = corpus.build(d)
        sys.path.insert(0, str(d))
        t0 = time.perf_counter()
        for case in corpus.CASES:
            res = corpus.run(case, files, Path(tmp) / "out" / case.id)
            line = res.error_lines[0] if res.error_lines else res.output.strip().splitlines()[-1]
            rows.append({"case": case.id, "command": case.args[0], "stage": case.stage,
                         "in_issue": case.issue, "exit_code": res.code,
                         "expected_code": case.code, "seconds": round(res.seconds, 3),
                         "message": line.replace(tmp, "<tmp>").replace(str(REPO), "<repo>")})
            print(f"{res.seconds:7.3f}s  {res.code}  {case.id}", file=sys.stderr)
        total = time.perf_counter() - t0
    results = {"machine": system_info(), "total_seconds": round(total, 2), "cases": rows}
    OUT.mkdir(exist_ok=True)
    (OUT / "bad_input_corpus.json").write_text(json.dumps(results, indent=1))
    m = results["machine"]
    lines = ["# Bad-input corpus", "",
             f"{len(rows)} cases in {total:.1f} s (in process, one Python), on {m['cpu_model']}, "
             f"{m.get('cpu_count', '?')} cores. Stage: how far the command got before it "
             "failed (preflight = before torch is imported).", "",
             "| case | stage | exit | seconds | message |", "|---|---|---|---|---|"]
    for r in rows:
        msg = r["message"].replace("|", "\\|")
        lines.append(f"| {r['case']}{' (issue)' if r['in_issue'] else ''} | {r['stage']} | "
                     f"{r['exit_code']} | {r['seconds']:.3f} | {msg} |")
    (OUT / "bad_input_corpus.md").write_text("\n".join(lines) + "\n")
    bad = [r["case"] for r in rows if r["exit_code"] != r["expected_code"]]
    if bad:
        raise SystemExit(f"unexpected exit codes: {bad}")


if __name__ == "__main__":
    main()
