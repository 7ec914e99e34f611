#!/usr/bin/env bash
# Set up (first run only) and run the test suite. Extra arguments go to pytest; the exit
# status is pytest's, so a run that collects no tests (5) fails.
# The real-data tests read $E3ELASTIC_DATA (default ../shared/data) and skip when it is absent.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/_setup.sh" "dev"
cd "$ROOT"
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    # a selection that runs nothing (a typo in -k, a wrong path) must not pass as green
    echo "e3elastic: pytest collected no tests (exit 5); that is a failure" >&2
fi
exit "$rc"
