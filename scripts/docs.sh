#!/usr/bin/env bash
# Set up (first run only) and build the manual (docs/, mkdocs) into site/, failing on any
# broken link or reference. Extra arguments go to `mkdocs build` (e.g. `-d /tmp/site`);
# `scripts/docs.sh serve` previews it at http://127.0.0.1:8000 instead.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/_setup.sh" "docs"
cd "$ROOT"
if [ "${1:-}" = "serve" ]; then
    shift
    exec mkdocs serve "$@"
fi
exec mkdocs build --strict "$@"
