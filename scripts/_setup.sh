#!/usr/bin/env bash
# Create .venv beside the repository if it is absent and install e3elastic into it.
# Usage: source scripts/_setup.sh [EXTRAS]   (EXTRAS e.g. "dev"; empty for runtime only)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
VENV="${E3ELASTIC_VENV:-$ROOT/.venv}"
EXTRAS="${1:-}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "e3elastic: creating virtual environment in $VENV" >&2
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip >&2
fi
SPEC="$ROOT"
[ -n "$EXTRAS" ] && SPEC="$ROOT[$EXTRAS]"
# Reinstall only when pyproject.toml changed since the last install into this venv.
STAMP="$VENV/.e3elastic-installed-${EXTRAS:-base}"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    echo "e3elastic: installing $SPEC (first run takes a minute or two)" >&2
    "$VENV/bin/python" -m pip install -q -e "$SPEC" >&2
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
