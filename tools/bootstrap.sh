#!/usr/bin/env bash
# Create .venv and install eqdeploy with its conversion stack (and test tools with --dev).
# torch is pinned to 2.13.0 first: on this project's machines that is a CPU wheel on disk,
# and it satisfies the package's torch range so nothing larger is downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="convert"
[[ "${1:-}" == "--dev" ]] && extras="convert,dev"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/pip install -q torch==2.13.0
.venv/bin/pip install -q -e ".[${extras}]"
if [[ -x tools/install_escnn.sh && "${EQDEPLOY_SKIP_ESCNN:-0}" != 1 ]]; then
  tools/install_escnn.sh .venv/bin/python
fi
echo "eqdeploy installed in .venv ($(.venv/bin/eqdeploy --version))"
