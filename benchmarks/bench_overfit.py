"""Time to overfit one crystal: the ``tiny`` config fitted to an MgO-like cubic tensor.

    python benchmarks/bench_overfit.py [--repeats 3] [--tol 0.01] [--max-steps 2000]

The same fit as ``tests/test_train.py::test_overfit_one_crystal`` (rock-salt MgO, Adam with a
cosine schedule from 1e-2, relative Frobenius error checked every 25 steps), timed here rather
than asserted there: a wall-clock bound in the test suite fails on a busy machine. The first
repeat includes compilation. Prints a table and writes benchmarks/results/overfit.json with the
device and versions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _env import environment


def _mgo():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    ).get_primitive_structure()


def overfit(tol: float, max_steps: int) -> dict:
    """Steps and seconds (from building the steps to reaching ``tol``) of one fit."""
    import optax

    from e3elastic import config as cfg
    from e3elastic import graph as G
    from e3elastic import tensors
    from e3elastic.network.model import batch_inputs
    from e3elastic.training import train

    t0 = time.perf_counter()
    target = np.zeros((6, 6))
    target[:3, :3] = 95.0
    target[np.arange(3), np.arange(3)] = 297.0
    target[3:, 3:] = 155.0 * np.eye(3)  # MgO-like, GPa
    x = tensors.voigt_to_irreps(target)
    config = cfg.tiny()
    stats = {"shift": np.zeros(21), "scale": np.full(21, np.abs(x).max())}
    g = G.structure_to_graph(_mgo(), config.model.cutoff, id="MgO")
    b = G.pad_batch(
        [g], G.Bucket(g.n_node + 1, g.n_edge, 2), ((x - stats["shift"]) / stats["scale"])[None]
    )
    inp, tgt = batch_inputs(b, np.float32), b.targets.astype(np.float32)
    params = train.init_params(config, inp, seed=0)
    tx = optax.adam(optax.cosine_decay_schedule(1e-2, max_steps, 0.01))
    opt = tx.init(params)
    step, predict = train.make_steps(train.create_model(config), tx)
    c_true = tensors.voigt_to_cartesian(target)
    rel, steps = np.inf, 0
    for steps in range(1, max_steps + 1):
        params, opt, _loss, _ = step(params, opt, inp, tgt)
        if steps % 25 == 0:
            y = stats["shift"] + stats["scale"] * np.asarray(predict(params, inp), np.float64)[0]
            rel = np.linalg.norm(tensors.irreps_to_cartesian(y) - c_true) / np.linalg.norm(c_true)
            if rel < tol:
                break
    return {"steps": steps, "rel_error": float(rel), "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tol", type=float, default=0.01)
    ap.add_argument("--max-steps", type=int, default=2000)
    args = ap.parse_args()
    from e3elastic import runtime

    runtime.enable_compilation_cache()
    runs = [overfit(args.tol, args.max_steps) for _ in range(args.repeats)]
    print("| repeat | steps | rel. error | seconds |\n|---|---|---|---|")
    for k, r in enumerate(runs):
        print(f"| {k}{' (compiles)' if k == 0 else ''} | {r['steps']} | {r['rel_error']:.4f} "
              f"| {r['seconds']:.1f} |")  # fmt: skip
    out = Path(__file__).parent / "results" / "overfit.json"
    out.write_text(json.dumps({"env": environment(), "args": vars(args), "runs": runs}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
