"""Compare host vs emulated-arm64 `eqdeploy bench` results; write results.json + results.md.

Called by run_arm64_bench.sh as ``python compare.py RUN_DIR RESULTS_DIR``. Exit 0 when the
equivariance numbers, fidelity numbers and raw outputs are identical, 1 otherwise.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import sys
from pathlib import Path

import numpy as np

EQ_FIELDS = ("element", "degrees", "changed", "rel_err_max", "rel_err_mean", "top1_agreement",
             "probes")
NOTE = ("Timings under qemu-user emulation are NOT latency figures: qemu translates every "
        "aarch64 instruction (XNNPACK's NEON kernels included) on an x86-64 host, so the "
        "emulated latency says nothing about a Raspberry Pi or a phone. Only correctness "
        "(equivariance, fidelity, raw outputs) is compared. Measure latency on the device.")
TFLITE_RUNTIME_NOTE = (
    "tflite-runtime 2.14.0 is the last release (ai-edge-litert replaces it). It ships "
    "cp38-cp311 wheels for manylinux_2_34_aarch64 (and armv7l: 32-bit Raspberry Pi OS, which "
    "ai-edge-litert 2.3.0 has no wheels for), so it installs on Raspberry Pi OS / Debian "
    "bookworm (glibc 2.36) but not on bullseye (glibc 2.31), and not on Python 3.12+. It is "
    "built against numpy 1.x, so that environment must pin numpy<2 (numpy 1.26.4 here). "
    "eqdeploy's harness falls back to it when ai-edge-litert is missing; the symmetry manifest "
    "then comes from the sidecar (the embedded-metadata reader uses ai_edge_litert's schema).")


def _load(p: Path):
    return json.loads(p.read_text()) if p.is_file() else None


def _meta(run: Path) -> dict:
    out = {}
    for line in (run / "meta.env").read_text().splitlines():
        k, _, v = line.partition("=")
        out[k] = v
    return out


def _steps(run: Path) -> list[dict]:
    rows = []
    for line in (run / "steps.tsv").read_text().splitlines():
        name, status, secs = line.split("\t")
        rows.append({"step": name, "status": status, "seconds": float(secs)})
    return rows


def _host_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _eq_rows(report: dict) -> list[dict]:
    return [{k: r.get(k) for k in EQ_FIELDS} for r in report["equivariance"]["rows"]]


def _raw_compare(a_path: Path, b_path: Path) -> dict:
    a, b = np.load(a_path), np.load(b_path)
    out = {}
    for k in a.files:
        x, y = a[k], b[k] if k in b.files else None
        same = y is not None and x.dtype == y.dtype and x.shape == y.shape and \
            x.tobytes() == y.tobytes()
        d = {"identical": bool(same), "dtype": str(x.dtype), "shape": list(x.shape)}
        if y is not None and not same and x.shape == y.shape:
            diff = np.abs(x.astype(np.int64 if x.dtype.kind in "iu" else np.float64) - y)
            d["differing_values"] = int((diff != 0).sum())
            d["max_abs_diff"] = float(diff.max())
        out[k] = d
    return out


def _compare(host: dict, other: dict, run: Path, host_raw: str, other_raw: str) -> dict:
    eq_same = _eq_rows(host) == _eq_rows(other) and \
        host["equivariance"]["summary"] == other["equivariance"]["summary"]
    fid_same = host["fidelity"] == other["fidelity"]
    raw = _raw_compare(run / host_raw, run / other_raw)
    raw_same = all(v["identical"] for v in raw.values())
    return {"equivariance_identical": eq_same, "fidelity_identical": fid_same,
            "raw_outputs_bit_identical": raw_same,
            "artifact_sha256_identical": host["artifact"]["sha256"] == other["artifact"]["sha256"],
            "raw_outputs": raw}


def _side(report: dict, raw_info: dict | None) -> dict:
    s = report["system"]
    lat = report["latency"]
    return {"system": s, "runtime": report["runtime"],
            "raw_dump": raw_info,
            "equivariance": report["equivariance"], "fidelity": report["fidelity"],
            "latency_ms": {k: lat.get(k) for k in ("runtime_import_ms", "init_ms", "first_ms",
                                                   "min_ms", "p50_ms", "p90_ms", "p99_ms",
                                                   "mean_ms", "runs", "warmup")},
            "peak_rss_bytes": report["memory"]["peak_rss_bytes"]}


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.6g}"
    return "—" if x is None else str(x)


def _markdown(res: dict) -> str:
    h, e, m = res["host"], res["emulated"], res["emulation"]
    v = res["verdict"]
    ok = "yes" if v["all_identical"] else "**NO**"
    lines = [
        "# eqdeploy bench on emulated arm64 (qemu-user, Cortex-A72) vs the x86-64 host",
        "",
        f"Generated {res['created']} by `benchmarks/arm64/run_arm64_bench.sh`. "
        "Raw data: `results.json`.",
        "",
        f"> **{NOTE}**",
        "",
        "## Verdict",
        "",
        f"- Equivariance numbers identical (changed counts, rel. errors, top-1 agreement per "
        f"group element): **{v['equivariance_identical']}**",
        f"- Fidelity numbers identical (vs FP32 reference): **{v['fidelity_identical']}**",
        f"- Raw int8 outputs bit-identical (probes and every exact transform, "
        f"{res['probes']} probes each): **{v['raw_outputs_bit_identical']}**",
        f"- Same artifact (sha256 {res['artifact']['sha256'][:16]}…): "
        f"**{v['artifact_sha256_identical']}**",
        f"- torch in the emulated environment: **{m['torch']}**",
        f"- All identical: {ok}",
        "",
        "## Artifact",
        "",
        f"`{res['artifact']['name']}` ({res['artifact']['size_bytes']} bytes, "
        f"{res['artifact']['input_dtype']} in / {res['artifact']['output_dtype']} out), "
        f"from `eqdeploy convert examples/c4_cnn.pt --arch eqdeploy.models.reference:c4_cnn "
        f"--input-shape 1,1,29,29 --int8` on the host. Group {res['group']}; probes: "
        f"{res['probes']} bundled (`c4_cnn.tflite.probes.npz`).",
        "",
        "## Machines",
        "",
        "| | host | emulated |",
        "|---|---|---|",
        f"| machine | {h['system']['machine']} | {e['system']['machine']} |",
        f"| CPU | {res['host_cpu']} | {e['system']['cpu_model']} "
        f"(qemu `-cpu {m['qemu_cpu']}`, fake /proc/cpuinfo) |",
        f"| ISA features (as reported) | "
        f"{', '.join(k for k, x in h['system']['isa'].items() if x) or '—'} | "
        f"{', '.join(k for k, x in e['system']['isa'].items() if x) or '—'} |",
        f"| cores seen | {h['system']['cores']} | {e['system']['cores']} |",
        f"| OS | {h['system']['os']} | {e['system']['os']} (Debian "
        f"{m['rootfs_debian_version']} rootfs, libc6 {m['rootfs_libc6']}) |",
        f"| Python | {h['system']['python']} | {e['system']['python']} |",
        f"| numpy | {h['system']['numpy']} | {e['system']['numpy']} |",
        f"| runtime | {h['runtime']['name']} {h['runtime']['version']} | "
        f"{e['runtime']['name']} {e['runtime']['version']} |",
        f"| threads | {h['runtime']['threads']} | {e['runtime']['threads']} |",
        "",
        f"Emulator: {m['qemu_version']}; rootfs second stage: {m['rootfs_second_stage']}; "
        f"aarch64 wheels: `{m['wheels']}` + eqdeploy (--no-deps).",
        "",
        "## Equivariance per group element (host | emulated)",
        "",
        "| element | deg | changed | rel_err_max | rel_err_mean | top-1 across orbit |",
        "|---|---|---|---|---|---|",
    ]
    for a, b in zip(h["equivariance"]["rows"], e["equivariance"]["rows"], strict=True):
        lines.append(
            f"| {a['element']} | {a['degrees']} | {a['changed']} \\| {b['changed']} | "
            f"{_fmt(a['rel_err_max'])} \\| {_fmt(b['rel_err_max'])} | "
            f"{_fmt(a['rel_err_mean'])} \\| {_fmt(b['rel_err_mean'])} | "
            f"{_fmt(a.get('top1_agreement'))} \\| {_fmt(b.get('top1_agreement'))} |")
    hf, ef = h["fidelity"] or {}, e["fidelity"] or {}
    lines += [
        "",
        f"Compared on: {h['equivariance']['compared_on']}.",
        "",
        "## Fidelity vs the FP32 reference (host | emulated)",
        "",
        "| metric | host | emulated |",
        "|---|---|---|",
    ]
    for k in ("max_abs_error", "max_abs_error_steps", "rel_err_max", "top1_agreement"):
        lines.append(f"| {k} | {_fmt(hf.get(k))} | {_fmt(ef.get(k))} |")
    lines += [
        "",
        "## Raw outputs (bit for bit)",
        "",
        "| input | dtype | shape | identical |",
        "|---|---|---|---|",
    ]
    for k, d in res["raw_outputs"].items():
        lines.append(f"| {'probes' if k == 'e' else k + '·probes'} | {d['dtype']} | "
                     f"{d['shape']} | {d['identical']} |")
    lines += [
        "",
        "## Step durations",
        "",
        f"Host: {m.get('host_cores')} cores, load average {m.get('host_loadavg_start')} at the "
        f"start and {m.get('host_loadavg_end')} at the end (a shared machine: other jobs "
        "inflate these durations, the conversion most).",
        "",
        "| step | status | seconds |",
        "|---|---|---|",
    ]
    for s in res["steps"]:
        lines.append(f"| {s['step']} | {s['status']} | {s['seconds']:.1f} |")
    lines += [f"| **total** | | {res['total_seconds']:.1f} |", ""]
    hl, el = h["latency_ms"], e["latency_ms"]
    lines += [
        "## Timings (for the record only — emulated ones are NOT latency figures)",
        "",
        "| | host | emulated (qemu) |",
        "|---|---|---|",
    ]
    for k in ("init_ms", "first_ms", "min_ms", "p50_ms", "p99_ms"):
        lines.append(f"| {k} | {_fmt(hl.get(k))} | {_fmt(el.get(k))} |")
    lines.append(f"| runs / warmup | {hl['runs']} / {hl['warmup']} | "
                 f"{el['runs']} / {el['warmup']} |")
    mat = res.get("raw_output_matrix") or []
    if mat:
        lines += ["## Raw int8 outputs across runtimes and CPUs", "",
                  "Probes and their r1/r2/r3 transforms, all output values; a difference is "
                  "counted in output quantization steps.", "",
                  "| a | b | differing values | max diff (steps) |", "|---|---|---|---|"]
        for r in mat:
            lines.append(f"| {r['a']} | {r['b']} | {r['differing']} / {r['values']} | "
                         f"{r['max_abs_diff_steps']} |")
        ctl = res.get("control")
        if ctl:
            if ctl.get("failed"):
                lines += ["", f"Negative control (`-cpu {ctl['qemu_cpu']}`): the run failed."]
            else:
                lines += ["", f"Negative control (`-cpu {ctl['qemu_cpu']}`, qemu's default): raw "
                          "outputs bit-identical to the host: "
                          f"**{ctl['raw_outputs_bit_identical_to_host']}**"
                          + (", and the int8 outputs that change under each rotation "
                             "(of " + str(res["probes"]) + " probes; 0 with -cpu cortex-a72): "
                             + ", ".join(f"{k} {v}" for k, v in
                                         ctl.get("changed_per_element", {}).items())
                             if ctl.get("changed_per_element") else "") + " — "
                          + ("the comparison above can fail, and `-cpu cortex-a72` is needed."
                             if not ctl["raw_outputs_bit_identical_to_host"] else
                             "this qemu build did not reproduce DESIGN.md's -cpu max problem.")]
        lines.append("")
    t = res.get("tflite_runtime")
    lines += ["", "## tflite-runtime 2.14 as an alternative on the Pi", "", TFLITE_RUNTIME_NOTE,
              ""]
    if t:
        lines += [
            f"Tried here under the same emulation ({t['wheels']}): runtime "
            f"{t['runtime']['name']} {t['runtime']['version']}, numpy {t['numpy']}; "
            f"equivariance identical to the host: **{t['equivariance_identical']}**, fidelity "
            f"identical: **{t['fidelity_identical']}**, raw outputs bit-identical: "
            f"**{t['raw_outputs_bit_identical']}**.",
            "",
        ]
        if t.get("x86_host"):
            x = t["x86_host"]
            lines += [f"The same tflite-runtime 2.14.0 on the x86 host: equivariance identical to "
                      f"the ai-edge-litert host run: **{x['equivariance_identical']}**, raw "
                      f"outputs bit-identical: **{x['raw_outputs_bit_identical']}** (see the "
                      "matrix above: tflite-runtime differs from ai-edge-litert 2.3 by at most "
                      "a step in a few outputs, on both architectures, so an INT8 budget should "
                      "not demand bit-equality across runtime versions; invariance itself held "
                      "exactly with both).", ""]
    else:
        lines += ["Not exercised in this run (ARM64_TFLITE_RUNTIME=0).", ""]
    return "\n".join(lines)


def main() -> int:
    run, out = Path(sys.argv[1]), Path(sys.argv[2])
    host, emu = _load(run / "host.bench.json"), _load(run / "emu.bench.json")
    meta, steps = _meta(run), _steps(run)
    cmp = _compare(host, emu, run, "host.raw.npz", "emu.raw.npz")
    verdict = {k: v for k, v in cmp.items() if k != "raw_outputs"}
    verdict["all_identical"] = all(verdict.values())
    res = {
        "schema": "eqdeploy.arm64-emulation",
        "version": 1,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "note": NOTE,
        "verdict": verdict,
        "artifact": {k: host["artifact"][k] for k in ("name", "size_bytes", "sha256",
                                                      "input_dtype", "output_dtype")},
        "group": host["symmetry"]["group"],
        "probes": host["probes"]["count"],
        "host_cpu": _host_cpu(),
        "host": _side(host, _load(run / "host.raw.json")),
        "emulated": _side(emu, _load(run / "emu.raw.json")),
        "emulation": {"qemu_version": meta.get("qemu_version"), "qemu_cpu": meta.get("qemu_cpu"),
                      "rootfs_second_stage": meta.get("rootfs_second_stage"),
                      "rootfs_debian_version": meta.get("rootfs_debian_version"),
                      "rootfs_libc6": meta.get("rootfs_libc6"),
                      "python": meta.get("emu_python"), "torch": meta.get("emu_torch"),
                      "wheels": meta.get("wheels"), "host_kernel": meta.get("host_kernel"),
                      "host_cores": meta.get("host_cores"),
                      "host_loadavg_start": meta.get("host_loadavg_start"),
                      "host_loadavg_end": meta.get("host_loadavg_end")},
        "raw_outputs": cmp["raw_outputs"],
        "steps": steps,
        "total_seconds": float(meta.get("total_seconds", "nan")),
        "tflite_runtime": None,
    }
    tfl = _load(run / "tflrt.bench.json")
    if tfl is not None:
        c = _compare(host, tfl, run, "host.raw.npz", "tflrt.raw.npz")
        res["tflite_runtime"] = {
            "wheels": meta.get("tflrt_wheels"), "runtime": tfl["runtime"],
            "numpy": tfl["system"]["numpy"],
            **{k: v for k, v in c.items() if k != "raw_outputs"},
            "equivariance": tfl["equivariance"], "fidelity": tfl["fidelity"],
            "note": TFLITE_RUNTIME_NOTE}
    tx = _load(run / "tflrt_x86.bench.json")
    if tx is not None and res["tflite_runtime"] is not None:
        c = _compare(host, tx, run, "host.raw.npz", "tflrt_x86.raw.npz")
        res["tflite_runtime"]["x86_host"] = {
            "runtime": tx["runtime"], "numpy": tx["system"]["numpy"],
            **{k: v for k, v in c.items() if k != "raw_outputs"}}
    # raw int8 outputs on the probes, every configuration against every other
    configs = {"ai-edge-litert x86 (host)": "host.raw.npz",
               "ai-edge-litert arm64 (qemu)": "emu.raw.npz",
               "tflite-runtime x86 (host)": "tflrt_x86.raw.npz",
               "tflite-runtime arm64 (qemu)": "tflrt.raw.npz",
               f"ai-edge-litert arm64 (qemu -cpu {meta.get('control_cpu')}, control)":
                   "control.raw.npz"}
    configs = {k: v for k, v in configs.items() if (run / v).is_file()}
    matrix = []
    names = list(configs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            xa, xb = np.load(run / configs[a]), np.load(run / configs[b])
            da = np.concatenate([xa[k].ravel() for k in xa.files]).astype(np.int64)
            db = np.concatenate([xb[k].ravel() for k in xa.files]).astype(np.int64)
            d = np.abs(da - db)
            matrix.append({"a": a, "b": b, "values": int(d.size),
                           "differing": int((d != 0).sum()), "max_abs_diff_steps": int(d.max())})
    res["raw_output_matrix"] = matrix
    if (run / "control.raw.npz").is_file():
        c = _compare(host, host, run, "host.raw.npz", "control.raw.npz")
        res["control"] = {"qemu_cpu": meta.get("control_cpu"),
                          "raw_outputs_bit_identical_to_host": c["raw_outputs_bit_identical"],
                          "raw_outputs": c["raw_outputs"]}
        if host["equivariance"]["output_action"] == "invariant":
            # invariant output: rho_out(g) is the identity, so g changed a probe's output iff
            # its raw output row differs from the untransformed one
            ctl = np.load(run / "control.raw.npz")
            res["control"]["changed_per_element"] = {
                k: int((ctl[k] != ctl["e"]).reshape(len(ctl["e"]), -1).any(1).sum())
                for k in ctl.files if k != "e"}
    elif meta.get("control_cpu"):
        res["control"] = {"qemu_cpu": meta.get("control_cpu"), "failed": True}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "results.md").write_text(_markdown(res))
    print(f"equivariance identical: {verdict['equivariance_identical']}; fidelity identical: "
          f"{verdict['fidelity_identical']}; raw outputs bit-identical: "
          f"{verdict['raw_outputs_bit_identical']}")
    for a, b in zip(host["equivariance"]["rows"], emu["equivariance"]["rows"], strict=True):
        print(f"  {a['element']}: host changed={a['changed']} max={a['rel_err_max']:.6g} | "
              f"arm64 changed={b['changed']} max={b['rel_err_max']:.6g}")
    if res["tflite_runtime"]:
        t = res["tflite_runtime"]
        print(f"tflite-runtime {t['runtime']['version']}: equivariance identical "
              f"{t['equivariance_identical']}, raw bit-identical {t['raw_outputs_bit_identical']}")
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0 if verdict["all_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
