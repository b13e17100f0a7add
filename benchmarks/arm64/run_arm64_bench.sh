#!/usr/bin/env bash
# Prove `eqdeploy bench` runs on a Pi-class arm64 machine, without a board:
#
#   benchmarks/arm64/run_arm64_bench.sh
#
# 1. builds (or reuses) an arm64 Debian bookworm rootfs (debootstrap --foreign, minbase,
#    python3) under $ARM64_ROOT (default /tmp/eqdeploy-arm64); the second stage runs in a
#    qemu chroot when binfmt_misc has an aarch64 handler, else the downloaded .debs are
#    unpacked by hand (enough to run python3.11 under qemu-user);
# 2. installs aarch64 wheels (numpy, click, ai-edge-litert -- pinned to the host's versions)
#    with pip --target --platform manylinux_2_28_aarch64 (+ the older manylinux tags: pip does
#    not widen a --platform tag, and ai-edge-litert 2.3.0 ships manylinux_2_27_aarch64 wheels
#    only), plus eqdeploy itself (--no-deps, pure python): base install + one runtime, no torch;
# 3. gives the rootfs a real proc/ dir holding a fake Cortex-A72 /proc/cpuinfo (LiteRT reads
#    it; qemu-user's -L prefix redirects the open there);
# 4. converts examples/c4_cnn.pt to an INT8 .tflite on the host (the project venv);
# 5. runs `eqdeploy bench` and a raw-output dump on the host and under
#    `qemu-aarch64-static -cpu cortex-a72` (NOT the default -cpu max: XNNPACK int8 results are
#    wrong there), and compares: equivariance rows and fidelity must be identical, raw int8
#    outputs bit for bit;
# 6. writes benchmarks/arm64/results.json and results.md.
#
# Exit status 0 when everything matched, 1 when a number differs, 2 on a setup failure.
# Environment: ARM64_ROOT (cache dir), EQD_VENV (host venv, default <repo>/.venv),
# ARM64_RUNS / ARM64_WARMUP (bench runs under emulation, default 20 / 2), ARM64_CPU
# (default cortex-a72), ARM64_MIRROR (default http://deb.debian.org/debian),
# ARM64_TFLITE_RUNTIME (1: also bench with tflite-runtime 2.14 + numpy 1.26, the default),
# ARM64_CONTROL_CPU (negative control: raw outputs under this -cpu, default max; empty: skip),
# ARM64_RESULTS (where results.* go, default this directory).
# Needs root (debootstrap) and the apt packages debootstrap + qemu-user-static (installed if
# missing and apt-get is available).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
ROOT="${ARM64_ROOT:-/tmp/eqdeploy-arm64}"
VENV="${EQD_VENV:-$REPO/.venv}"
RUNS="${ARM64_RUNS:-20}"
WARMUP="${ARM64_WARMUP:-2}"
CPU="${ARM64_CPU:-cortex-a72}"
MIRROR="${ARM64_MIRROR:-http://deb.debian.org/debian}"
RESULTS="${ARM64_RESULTS:-$HERE}"
RFS="$ROOT/rootfs"
SITE="$RFS/opt/eqdeploy/site"        # aarch64 wheels (cached)
EQSITE="$RFS/opt/eqdeploy/eqdeploy"  # eqdeploy itself (reinstalled every run)
RUN="$ROOT/run"
STEPS="$RUN/steps.tsv"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
# step NAME STATUS SECONDS  -> one line of $STEPS (read by the report)
step() { printf '%s\t%s\t%.2f\n' "$1" "$2" "$3" >>"$STEPS"; }

HOSTPY="$VENV/bin/python"
[ -x "$HOSTPY" ] || die "no host venv at $VENV (set EQD_VENV)"

mkdir -p "$ROOT" "$RESULTS"
rm -rf "$RUN"; mkdir -p "$RUN"
: >"$STEPS"
T_ALL=$(now)
LOAD_START="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---- 0. host tools --------------------------------------------------------------------
t=$(now)
if ! command -v debootstrap >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
    [ "$(id -u)" = 0 ] || die "install debootstrap and qemu-user-static (needs root)"
    log "installing debootstrap qemu-user-static"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap qemu-user-static >/dev/null
    step tools_install ran "$(since "$t")"
else
    step tools_install cached "$(since "$t")"
fi
QEMU="$(command -v qemu-aarch64-static)"

# ---- 1. rootfs ------------------------------------------------------------------------
t=$(now)
if [ -f "$RFS/.eqdeploy-rootfs-ok" ]; then
    log "reusing rootfs $RFS"
    step debootstrap cached "$(since "$t")"
    step second_stage cached 0
else
    [ "$(id -u)" = 0 ] || die "debootstrap needs root"
    rm -rf "$RFS"
    log "debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 bookworm"
    mkdir -p "$ROOT/debs"  # .deb cache: a rebuild does not download again
    debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 \
        --cache-dir="$ROOT/debs" bookworm "$RFS" "$MIRROR" >"$ROOT/debootstrap.log" 2>&1 \
        || { tail -20 "$ROOT/debootstrap.log" >&2; die "debootstrap failed (log: $ROOT/debootstrap.log)"; }
    step debootstrap ran "$(since "$t")"
    t=$(now)
    if [ -r /proc/sys/fs/binfmt_misc/qemu-aarch64 ] \
        && grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
        log "second stage in a qemu chroot (binfmt_misc handles aarch64)"
        cp "$QEMU" "$RFS/usr/bin/"
        chroot "$RFS" /debootstrap/debootstrap --second-stage >"$ROOT/second-stage.log" 2>&1 \
            || die "second stage failed (log: $ROOT/second-stage.log)"
        SECOND=chroot
    else
        # No binfmt_misc (containers): unpack every downloaded .deb by hand. No maintainer
        # scripts run, which python3.11 under qemu-user does not need.
        log "no binfmt_misc handler for aarch64: unpacking the .debs by hand"
        n=0
        for deb in "$RFS"/var/cache/apt/archives/*.deb; do
            dpkg-deb -x "$deb" "$RFS"; n=$((n + 1))
        done
        log "unpacked $n .debs"
        SECOND="dpkg-deb -x ($n packages)"
    fi
    [ -x "$RFS/usr/bin/python3.11" ] || die "no usr/bin/python3.11 in the rootfs"
    echo "$SECOND" >"$RFS/.eqdeploy-rootfs-ok"
    step second_stage "ran: $SECOND" "$(since "$t")"
fi

# ---- 2. fake /proc/cpuinfo (a real proc/ dir; qemu -L redirects /proc/cpuinfo here) ---
if mountpoint -q "$RFS/proc"; then die "$RFS/proc is a mount point; unmount it first"; fi
mkdir -p "$RFS/proc"
{
    for i in 0 1 2 3; do
        cat <<EOF
processor	: $i
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

EOF
    done
} >"$RFS/proc/cpuinfo"

# ---- 3. aarch64 wheels + eqdeploy -------------------------------------------------------
NUMPY_V="$("$HOSTPY" -c 'import importlib.metadata as m; print(m.version("numpy"))')"
LITERT_V="$("$HOSTPY" -c 'import importlib.metadata as m; print(m.version("ai-edge-litert"))')"
CLICK_V="$("$HOSTPY" -c 'import importlib.metadata as m; print(m.version("click"))')"
WANT="numpy==$NUMPY_V click==$CLICK_V ai-edge-litert==$LITERT_V"
t=$(now)
if [ -f "$SITE/.eqdeploy-wheels" ] && [ "$(cat "$SITE/.eqdeploy-wheels")" = "$WANT" ]; then
    log "reusing aarch64 wheels ($WANT)"
    step wheels cached "$(since "$t")"
else
    log "pip install --target --platform manylinux_2_28_aarch64: $WANT"
    rm -rf "$SITE"; mkdir -p "$SITE"
    # shellcheck disable=SC2086
    "$HOSTPY" -m pip install -q --disable-pip-version-check --target "$SITE" \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
        --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
        --python-version 3.11 --implementation cp --abi cp311 --only-binary=:all: $WANT >"$ROOT/pip-wheels.log" 2>&1 \
        || { tail -20 "$ROOT/pip-wheels.log" >&2; die "aarch64 wheel install failed"; }
    echo "$WANT" >"$SITE/.eqdeploy-wheels"
    step wheels ran "$(since "$t")"
fi
t=$(now)
SRC="$RUN/src"  # a clean copy: no build/ or egg-info litter in the work tree
mkdir -p "$SRC"
cp "$REPO/pyproject.toml" "$REPO/README.md" "$SRC/"
( cd "$REPO" && tar cf - --exclude='__pycache__' --exclude='*.pyc' --exclude='weights' eqdeploy ) \
    | tar xf - -C "$SRC"
rm -rf "$EQSITE"; mkdir -p "$EQSITE"
"$HOSTPY" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
    --target "$EQSITE" "$SRC" >"$ROOT/pip-eqdeploy.log" 2>&1 \
    || { tail -20 "$ROOT/pip-eqdeploy.log" >&2; die "eqdeploy install failed"; }
cp "$HERE/raw_outputs.py" "$RFS/opt/eqdeploy/"
step eqdeploy_install ran "$(since "$t")"

# qemu-user is not a chroot: host paths stay visible, -L makes the loader, libraries and any
# absolute path that exists under the rootfs (here /proc/cpuinfo) come from the rootfs.
EMU=(env -i HOME=/root LANG=C.UTF-8 PATH=/usr/bin:/bin TF_CPP_MIN_LOG_LEVEL=3
     PYTHONPATH="$EQSITE:$SITE" PYTHONDONTWRITEBYTECODE=1
     "$QEMU" -cpu "$CPU" -L "$RFS" "$RFS/usr/bin/python3.11")
HOSTRUN=(env TF_CPP_MIN_LOG_LEVEL=3 PYTHONDONTWRITEBYTECODE=1 "$HOSTPY")

t=$(now)
"${EMU[@]}" -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])' \
    >"$RUN/emu-python.txt" 2>&1 || { cat "$RUN/emu-python.txt" >&2; die "python3.11 does not start under qemu"; }
if "${EMU[@]}" -c 'import torch' >/dev/null 2>&1; then TORCH_EMU=importable; else TORCH_EMU=absent; fi
step emu_python_smoke ran "$(since "$t")"
log "emulated: $(cat "$RUN/emu-python.txt"); torch $TORCH_EMU"

# ---- 4. INT8 artifact on the host -------------------------------------------------------
t=$(now)
ART="$RUN/artifact"
log "eqdeploy convert examples/c4_cnn.pt --int8 (host)"
( cd "$REPO" && TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/eqdeploy" convert examples/c4_cnn.pt \
    --arch eqdeploy.models.reference:c4_cnn --input-shape 1,1,29,29 --int8 -o "$ART" ) \
    >"$RUN/convert.log" 2>&1 || { tail -20 "$RUN/convert.log" >&2; die "convert failed"; }
TFL="$ART/c4_cnn.tflite"
[ -f "$TFL" ] && [ -f "$TFL.eqdeploy.json" ] && [ -f "$TFL.probes.npz" ] \
    || die "convert did not write c4_cnn.tflite + sidecar + probes"
step convert_host ran "$(since "$t")"

# ---- 5. bench + raw outputs, host then emulated -----------------------------------------
BENCH=(-m eqdeploy.cli bench "$TFL" --runs "$RUNS" --warmup "$WARMUP" --threads 1)

# bench_and_dump TAG RAW_SCRIPT PYTHON...: `eqdeploy bench` and a raw-output dump of the
# artifact in one environment, into $RUN/TAG.{bench.json,bench.txt,raw.npz,raw.json}.
bench_and_dump() {
    local tag=$1 raw=$2 t; shift 2
    t=$(now)
    "$@" "${BENCH[@]}" --json "$RUN/$tag.bench.json" >"$RUN/$tag.bench.txt" 2>&1 \
        || { cat "$RUN/$tag.bench.txt" >&2; die "$tag: eqdeploy bench failed"; }
    step "bench_$tag" ran "$(since "$t")"
    t=$(now)
    "$@" "$raw" "$TFL" "$RUN/$tag.raw.npz" --threads 1 >"$RUN/$tag.raw.json" 2>"$RUN/$tag.raw.err" \
        || { cat "$RUN/$tag.raw.err" >&2; die "$tag: raw-output dump failed"; }
    step "raw_$tag" ran "$(since "$t")"
}

log "host: eqdeploy bench"
bench_and_dump host "$HERE/raw_outputs.py" "${HOSTRUN[@]}"
log "emulated ($CPU): eqdeploy bench -- slow, timings are not latency figures"
bench_and_dump emu "$RFS/opt/eqdeploy/raw_outputs.py" "${EMU[@]}"

# ---- 5b. tflite-runtime 2.14 (numpy<2) as the alternative runtime ----------------------
TFLRT_WANT="numpy==1.26.4 click==$CLICK_V tflite-runtime==2.14.0"
if [ "${ARM64_TFLITE_RUNTIME:-1}" = 1 ]; then
    TSITE="$RFS/opt/eqdeploy/site-tflite-runtime"
    t=$(now)
    if [ -f "$TSITE/.eqdeploy-wheels" ] && [ "$(cat "$TSITE/.eqdeploy-wheels")" = "$TFLRT_WANT" ]; then
        step wheels_tflite_runtime cached "$(since "$t")"
    else
        log "pip install --target (aarch64): $TFLRT_WANT"
        rm -rf "$TSITE"; mkdir -p "$TSITE"
        # shellcheck disable=SC2086
        "$HOSTPY" -m pip install -q --disable-pip-version-check --target "$TSITE" \
            --platform manylinux_2_34_aarch64 --platform manylinux_2_28_aarch64 \
            --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 \
            --platform manylinux2014_aarch64 \
            --python-version 3.11 --implementation cp --abi cp311 --only-binary=:all: \
            $TFLRT_WANT >"$ROOT/pip-tflite-runtime.log" 2>&1 \
            || { tail -20 "$ROOT/pip-tflite-runtime.log" >&2; die "tflite-runtime wheel install failed"; }
        echo "$TFLRT_WANT" >"$TSITE/.eqdeploy-wheels"
        step wheels_tflite_runtime ran "$(since "$t")"
    fi
    TEMU=(env -i HOME=/root LANG=C.UTF-8 PATH=/usr/bin:/bin TF_CPP_MIN_LOG_LEVEL=3
          PYTHONPATH="$EQSITE:$TSITE" PYTHONDONTWRITEBYTECODE=1
          "$QEMU" -cpu "$CPU" -L "$RFS" "$RFS/usr/bin/python3.11")
    log "emulated ($CPU): eqdeploy bench with tflite-runtime 2.14"
    bench_and_dump tflrt "$RFS/opt/eqdeploy/raw_outputs.py" "${TEMU[@]}"
    # the same runtime on the x86 host (python -S: no venv site-packages, so no
    # ai-edge-litert): tells a runtime-version difference from an architecture one
    XSITE="$ROOT/host-site-tflite-runtime"
    t=$(now)
    if ! { [ -f "$XSITE/.eqdeploy-wheels" ] && [ "$(cat "$XSITE/.eqdeploy-wheels")" = "$TFLRT_WANT" ]; }; then
        rm -rf "$XSITE"; mkdir -p "$XSITE"
        # shellcheck disable=SC2086
        "$HOSTPY" -m pip install -q --disable-pip-version-check --target "$XSITE" \
            --only-binary=:all: $TFLRT_WANT >"$ROOT/pip-tflite-runtime-x86.log" 2>&1 \
            || { tail -20 "$ROOT/pip-tflite-runtime-x86.log" >&2; die "x86 tflite-runtime install failed"; }
        echo "$TFLRT_WANT" >"$XSITE/.eqdeploy-wheels"
    fi
    step wheels_tflite_runtime_x86 done "$(since "$t")"
    XRUN=(env -i HOME=/root LANG=C.UTF-8 PATH=/usr/bin:/bin TF_CPP_MIN_LOG_LEVEL=3
          PYTHONPATH="$EQSITE:$XSITE" PYTHONDONTWRITEBYTECODE=1 "$HOSTPY" -S)
    bench_and_dump tflrt_x86 "$HERE/raw_outputs.py" "${XRUN[@]}"
fi

# ---- 5c. negative control: qemu's default -cpu max (DESIGN: wrong XNNPACK int8 results) --
# Shows the bit-for-bit comparison can fail. ARM64_CONTROL_CPU= (empty) skips it.
CONTROL_CPU="${ARM64_CONTROL_CPU-max}"
if [ -n "$CONTROL_CPU" ]; then
    t=$(now)
    log "negative control: raw outputs under -cpu $CONTROL_CPU"
    CEMU=(env -i HOME=/root LANG=C.UTF-8 PATH=/usr/bin:/bin TF_CPP_MIN_LOG_LEVEL=3
          PYTHONPATH="$EQSITE:$SITE" PYTHONDONTWRITEBYTECODE=1
          "$QEMU" -cpu "$CONTROL_CPU" -L "$RFS" "$RFS/usr/bin/python3.11")
    "${CEMU[@]}" "$RFS/opt/eqdeploy/raw_outputs.py" "$TFL" "$RUN/control.raw.npz" --threads 1 \
        >"$RUN/control.raw.json" 2>"$RUN/control.raw.err" \
        || log "control run failed (recorded): $(tail -1 "$RUN/control.raw.err")"
    step control_cpu_"$CONTROL_CPU" ran "$(since "$t")"
fi

# ---- 6. compare + report ----------------------------------------------------------------
{
    echo "qemu_version=$("$QEMU" --version | head -1)"
    echo "qemu_cpu=$CPU"
    echo "control_cpu=$CONTROL_CPU"
    echo "rootfs=$RFS"
    echo "rootfs_second_stage=$(cat "$RFS/.eqdeploy-rootfs-ok")"
    echo "rootfs_debian_version=$(cat "$RFS/etc/debian_version" 2>/dev/null || echo unknown)"
    libc_v="$(awk '/^Package: libc6$/{f=1} f&&/^Version:/{print $2; exit}' "$RFS/var/lib/dpkg/status" 2>/dev/null)"
    [ -n "$libc_v" ] || libc_v="$(dpkg-deb -f "$(ls "$RFS"/var/cache/apt/archives/libc6_*.deb | head -1)" Version 2>/dev/null || echo unknown)"
    echo "rootfs_libc6=$libc_v"
    echo "emu_python=$(cat "$RUN/emu-python.txt")"
    echo "emu_torch=$TORCH_EMU"
    echo "wheels=$WANT"
    echo "tflrt_wheels=$TFLRT_WANT"
    echo "host_kernel=$(uname -srm)"
    echo "host_cores=$(nproc)"
    echo "host_loadavg_start=$LOAD_START"
    echo "host_loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "total_seconds=$(since "$T_ALL")"
} >"$RUN/meta.env"
"$HOSTPY" "$HERE/compare.py" "$RUN" "$RESULTS"
