"""What machine a benchmark ran on: CPU model, ISA features, OS, Python, numpy, peak RSS.

Latency figures mean little without this (no VNNI on x86 or no dotprod on arm means INT8 is
not faster than FP32 there). Reads ``/proc/cpuinfo`` where it exists; stdlib + numpy only.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

# ISA features the report names, by architecture: report key -> cpuinfo flag names.
X86_FEATURES = {"avx2": ("avx2",), "avx512f": ("avx512f",), "avx512_vnni": ("avx512_vnni",),
                "avx_vnni": ("avx_vnni",), "fma": ("fma",)}
ARM_FEATURES = {"neon": ("neon", "asimd"), "dotprod": ("asimddp",), "i8mm": ("i8mm",),
                "sve": ("sve",), "fp16": ("fphp", "asimdhp")}

# ARM "CPU part" ids of the cores found on Raspberry Pis and common phones.
ARM_PARTS = {0xD03: "Cortex-A53", 0xD04: "Cortex-A35", 0xD05: "Cortex-A55",
             0xD07: "Cortex-A57", 0xD08: "Cortex-A72", 0xD09: "Cortex-A73",
             0xD0A: "Cortex-A75", 0xD0B: "Cortex-A76", 0xD0D: "Cortex-A77",
             0xD41: "Cortex-A78", 0xD44: "Cortex-X1", 0xD46: "Cortex-A510",
             0xD47: "Cortex-A710", 0xD48: "Cortex-X2", 0xD4D: "Cortex-A715",
             0xD80: "Cortex-A520", 0xD81: "Cortex-A720", 0xD82: "Cortex-X4"}


def parse_cpuinfo(text: str) -> dict:
    """Model name and flag set from the text of ``/proc/cpuinfo`` (x86 or arm)."""
    keys: dict[str, str] = {}
    parts: list[str] = []
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip().lower(), value.strip()
        if key == "cpu part":
            parts.append(value)
        keys.setdefault(key, value)
    flags = set((keys.get("flags") or keys.get("features") or "").split())
    model = keys.get("model name", "")
    cores = []
    for p in dict.fromkeys(parts):  # unique, in order (big.LITTLE lists several)
        try:
            cores.append(ARM_PARTS.get(int(p, 16), p))
        except ValueError:
            cores.append(p)
    if cores and (not model or model.lower().startswith("arm")):
        model = " + ".join(cores)  # arm64 cpuinfo has no model name, 32-bit a generic one
    model = model or keys.get("hardware", "")
    return {"model": model, "flags": flags, "arm_cores": cores, "board": keys.get("model", "")}


def isa_features(flags: set[str], machine: str) -> dict[str, bool]:
    """The report's ISA features for this architecture, each True/False."""
    m = machine.lower()
    if m in ("aarch64", "arm64") or m.startswith("arm"):
        table = ARM_FEATURES
    elif m in ("x86_64", "amd64", "i386", "i686", "x86"):
        table = X86_FEATURES
    else:
        return {}
    feats = {k: any(f in flags for f in names) for k, names in table.items()}
    if m in ("aarch64", "arm64") and not flags:
        feats["neon"] = True  # mandatory on AArch64 even where cpuinfo is unreadable
    return feats


def peak_rss_bytes() -> int | None:
    """Peak resident set size of this process, or None where ``resource`` is missing."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS: bytes; else KiB


def system_info(cpuinfo_path: str | Path = "/proc/cpuinfo") -> dict:
    """A JSON-ready description of this machine."""
    import numpy as np

    machine = platform.machine()
    try:
        info = parse_cpuinfo(Path(cpuinfo_path).read_text(errors="replace"))
    except OSError:
        info = {"model": "", "flags": set(), "arm_cores": [], "board": ""}
    board = ""
    try:  # Raspberry Pi and other device-tree boards name themselves here
        board = Path("/proc/device-tree/model").read_bytes().rstrip(b"\0").decode(errors="replace")
    except OSError:
        board = info["board"] if "raspberry" in info["board"].lower() else ""
    system = platform.system()
    if system == "Linux" and ("ANDROID_ROOT" in os.environ or "TERMUX_VERSION" in os.environ):
        system = "Android"
    return {
        "cpu_model": info["model"] or platform.processor() or "unknown",
        "board": board or None,
        "machine": machine,
        "cores": os.cpu_count(),
        "isa": isa_features(info["flags"], machine),
        "os": f"{system} {platform.release()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
