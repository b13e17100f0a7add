"""Dump an artifact's raw outputs on its probes and on every exact group transform of them.

Runs with numpy + one runtime + eqdeploy's base install only (it is run both on the host and
inside the emulated arm64 rootfs by run_arm64_bench.sh). Writes an .npz with one array per
group element ("e" = the probes themselves), in the artifact's own output dtype (int8 for a
fully-integer INT8 model), so two machines can be compared bit for bit.

    python3 raw_outputs.py ARTIFACT OUT.npz [--threads N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform

import numpy as np

from eqdeploy.harness.probes import load_probes
from eqdeploy.harness.runtime import open_artifact, read_spec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("out")
    ap.add_argument("--threads", type=int, default=None)
    a = ap.parse_args()
    runner = open_artifact(a.artifact, a.threads)
    spec = read_spec(a.artifact)
    probes = load_probes(a.artifact, runner.input_shape, None, None)
    x = probes.inputs
    outs = {"e": runner.run_raw(runner.quantize_input(x))}
    for g in spec.group.exact_elements:
        outs[g.name] = runner.run_raw(runner.quantize_input(spec.act(x, spec.input, g)))
    np.savez(a.out, **outs)
    digest = {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest()
              for k, v in outs.items()}
    print(json.dumps({"machine": platform.machine(), "runtime": runner.runtime,
                      "runtime_version": runner.runtime_version, "numpy": np.__version__,
                      "output_dtype": runner.output_dtype, "probes": int(len(x)),
                      "sha256": digest}))


if __name__ == "__main__":
    main()
