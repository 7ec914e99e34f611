#!/usr/bin/env bash
# Train a deep ensemble: the same config with different seeds, one run folder per member.
# Usage: scripts/train_ensemble.sh OUT_DIR N_MEMBERS [extra `e3elastic train` arguments]
# Then: python scripts/ensemble_calibration.py OUT_DIR   (test-split calibration)
set -euo pipefail
OUT="${1:?output folder}"; N="${2:?number of members}"; shift 2
for k in $(seq 0 $((N - 1))); do
    e3elastic train --workdir "$OUT/run_$k" --seed "$k" --resume "$@"
    mkdir -p "$OUT/members"
    rm -rf "$OUT/members/member_$k"
    cp -r "$OUT/run_$k/best" "$OUT/members/member_$k"
done
