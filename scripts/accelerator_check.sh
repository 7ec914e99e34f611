#!/usr/bin/env bash
# Install e3elastic with the accelerator build of jaxlib and check that JAX uses the device.
# Usage: scripts/accelerator_check.sh [cuda|tpu|cpu]     (default: cuda)
# Creates .venv if needed, installs the matching extra, then runs `e3elastic doctor`: the
# devices JAX sees, compile time and crystals/s of a short training, a prediction, memory.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
kind="${1:-cuda}"
case "$kind" in
    cuda|tpu) extra="[$kind]" ;;
    cpu) extra="" ;;
    *) echo "usage: $0 [cuda|tpu|cpu]" >&2; exit 2 ;;
esac
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${extra}"
exec .venv/bin/e3elastic doctor
