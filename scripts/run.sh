#!/usr/bin/env bash
# Set up (first run only) and run e3elastic's main job.
# Extra arguments are passed to `e3elastic`; with none, the default job runs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/_setup.sh" ""
cd "$ROOT"
if [ "$#" -gt 0 ]; then
    exec e3elastic "$@"
fi
exec e3elastic predict "$ROOT"/examples/*.cif
