"""Training-step speed of the first working version against the current default, in one run.

    python benchmarks/bench_speedup.py [--n 128] [--rounds 3] [--steps 8]

"first" is the default config as first trained (``model.even_last_layer=false``: the last
interaction block also makes the 1o/3o features that the readout discards); "current" is the
default config. Both train on the same padded batches of the first ``--n`` matminer 2015
structures. Rounds alternate between the two, so load from other processes hits both alike;
the best round of each is reported. Prints a table and writes benchmarks/results/speedup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from _env import environment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args()

    import jax

    from e3elastic import config as cfg
    from e3elastic import data, graph
    from e3elastic.network.model import batch_inputs
    from e3elastic.training import train

    variants = {
        "first": cfg.default().override(["model.even_last_layer=false"]),
        "current": cfg.default(),
    }
    base = variants["current"]
    folder = Path(os.environ.get("E3ELASTIC_DATA", "../shared/data"))
    recs = data.read_file(folder / "matminer_elastic_tensor_2015.json.gz").records[: args.n]
    graphs = [graph.structure_to_graph(r.structure, base.model.cutoff, id=r.id) for r in recs]
    targets = np.random.default_rng(0).normal(size=(len(graphs), 21))
    buckets = graph.make_buckets(graphs, base.data.batch_size, base.data.n_buckets)
    batches = list(graph.batches(graphs, targets, batch_size=base.data.batch_size, buckets=buckets))
    inputs = [(batch_inputs(b, np.float32), b.targets.astype(np.float32)) for b in batches]
    state, compile_s = {}, {}
    for name, config in variants.items():
        net = train.create_model(config)
        params = train.init_params(config, inputs[0][0], 0)
        tx, _ = train.create_optimizer(config, len(batches))
        opt = tx.init(params)
        step, _ = train.make_steps(net, tx)
        t = time.perf_counter()
        seen = set()
        for b, (inp, tgt) in zip(batches, inputs, strict=True):
            if tuple(b.bucket) not in seen:
                seen.add(tuple(b.bucket))
                jax.block_until_ready(step(params, opt, inp, tgt))
        compile_s[name] = time.perf_counter() - t
        n_params = sum(x.size for x in jax.tree.leaves(params))
        state[name] = [step, params, opt, n_params]
    best = {name: float("inf") for name in variants}
    for _ in range(args.rounds):
        for name in variants:
            step, params, opt, _ = state[name]
            t = time.perf_counter()
            n = 0
            for k in range(args.steps):
                inp, tgt = inputs[k % len(inputs)]
                params, opt, loss, _ = step(params, opt, inp, tgt)
                n += batches[k % len(inputs)].n_real
            loss.block_until_ready()
            best[name] = min(best[name], (time.perf_counter() - t) / n)
            state[name][1:3] = [params, opt]
    rows = {
        name: {
            "crystals_per_s": 1.0 / best[name],
            "ms_per_crystal": 1000 * best[name],
            "compile_s": compile_s[name],
            "n_params": int(state[name][3]),
        }
        for name in variants
    }
    speedup = rows["current"]["crystals_per_s"] / rows["first"]["crystals_per_s"]
    result = {
        "rows": rows,
        "speedup": speedup,
        "crystals": len(graphs),
        "mean_edges_per_crystal": float(np.mean([g.n_edge for g in graphs])),
        **environment(),
    }
    print("| version | params | crystals/s | ms/crystal | compile s |")
    print("|---|---|---|---|---|")
    for name, r in rows.items():
        print(
            f"| {name} | {r['n_params']} | {r['crystals_per_s']:.1f} | "
            f"{r['ms_per_crystal']:.1f} | {r['compile_s']:.1f} |"
        )
    print(f"speed-up {speedup:.2f}x on {result['device']} ({result['platform']})")
    out = Path(__file__).parent / "results" / "speedup.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
