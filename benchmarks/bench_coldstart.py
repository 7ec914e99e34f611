"""Cold start of `e3elastic predict` on one CIF: process start to first result.

    python benchmarks/bench_coldstart.py [--model default] [--cif examples/silicon.cif]

Runs the command in fresh processes: first with an empty JAX compilation cache (a first run on
a new machine), then twice with the cache that run filled (every later run). Prints a table and
writes benchmarks/results/coldstart.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
    ap.add_argument("--cif", default=str(Path(__file__).parents[1] / "examples" / "silicon.cif"))
    args = ap.parse_args()
    cmd = [sys.executable, "-m", "e3elastic.cli", "predict", args.cif, "--model", args.model]
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, E3ELASTIC_JAX_CACHE=cache)
        cold = _time(cmd, env)
        warm = [_time(cmd, env) for _ in range(2)]
    env = dict(os.environ, E3ELASTIC_JAX_CACHE="off")
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import e3elastic.inference, jax, pymatgen.core"],
        env=env,
        check=True,
    )
    imports = time.perf_counter() - t
    result = {
        "command": " ".join(cmd[1:]),
        "empty_cache_s": cold,
        "warm_cache_s": min(warm),
        "imports_only_s": imports,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    print("| run | seconds to first result |")
    print("|---|---|")
    print(f"| empty compilation cache | {cold:.1f} |")
    print(f"| warm compilation cache | {min(warm):.1f} |")
    print(f"| (imports alone) | {imports:.1f} |")
    out = Path(__file__).parent / "results" / "coldstart.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
