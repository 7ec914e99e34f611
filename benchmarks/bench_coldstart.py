"""Cold start of `e3elastic predict` on one CIF: process start to first result.

    python benchmarks/bench_coldstart.py [--model default] [--cif examples/silicon.cif]

Runs the command in fresh processes: first with empty caches (JAX compilation cache and the
e3elastic cache of model shapes: a first run on a new machine), then with the caches that run
filled (every later run), alternating with a bare JAX start
(``python -c "import jax.numpy as j; j.zeros(1)"``) so the ratio of the two comes from one run.
Prints a table and writes benchmarks/results/coldstart.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time(cmd, env) -> float:
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--cif", default=str(Path(__file__).parents[1] / "examples" / "silicon.cif"))
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "e3elastic.cli", "predict", args.cif, "--model", args.model]
    bare = [sys.executable, "-c", "import jax.numpy as j; j.zeros(1)"]
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, E3ELASTIC_CACHE=cache, E3ELASTIC_JAX_CACHE=f"{cache}/jax")
        cold = _time(cmd, env)
        warm, jax_only = [], []
        for _ in range(args.rounds):
            warm.append(_time(cmd, env))
            jax_only.append(_time(bare, env))
    env = dict(os.environ, E3ELASTIC_JAX_CACHE="off")
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import e3elastic.inference, jax, pymatgen.core"],
        env=env,
        check=True,
    )
    imports = time.perf_counter() - t
    ratios = [w / b for w, b in zip(warm, jax_only, strict=True)]
    result = {
        "command": " ".join(cmd[1:]),
        "empty_cache_s": cold,
        "warm_cache_s": min(warm),
        "warm_cache_median_s": statistics.median(warm),
        "bare_jax_start_median_s": statistics.median(jax_only),
        "warm_over_bare_jax_median": statistics.median(ratios),
        "imports_only_s": imports,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print("| run | seconds to first result |")
    print("|---|---|")
    print(f"| empty caches (first run on a machine) | {cold:.1f} |")
    print(f"| warm caches (median of {args.rounds}) | {statistics.median(warm):.2f} |")
    print(f"| bare JAX start, same rounds (median) | {statistics.median(jax_only):.2f} |")
    print(f"| warm / bare JAX (median of per-round ratios) | {statistics.median(ratios):.2f}x |")
    print(f"| (imports alone) | {imports:.1f} |")
    out = Path(__file__).parent / "results" / "coldstart.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
