"""Training throughput (crystals/s) and compile time of a config on real crystal graphs.

    python benchmarks/bench_train.py [--config default] [--n 256] [--steps 20]

Takes the first ``--n`` structures of the matminer 2015 file in the data folder
($E3ELASTIC_DATA, default ../shared/data), builds graphs, pads them into the config's buckets and
times jitted train steps (compile reported separately). Prints a table and writes
benchmarks/results/train_<config>.json with the device and versions.
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
    ap.add_argument("--config", default="default")
    ap.add_argument("--set", action="append", default=[], help="override, e.g. model.n_layers=3")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    import jax

    from e3elastic import config as C
    from e3elastic import data, graph, train
    from e3elastic.model import batch_inputs

    cfg = C.preset(args.config).override(args.set)
    folder = Path(os.environ.get("E3ELASTIC_DATA", "../shared/data"))
    res = data.read_file(folder / "matminer_elastic_tensor_2015.json.gz")
    recs = res.records[: args.n]
    graphs = [graph.structure_to_graph(r.structure, cfg.model.cutoff, id=r.id) for r in recs]
    targets = np.random.default_rng(0).normal(size=(len(graphs), 21))
    buckets = graph.make_buckets(graphs, cfg.data.batch_size, cfg.data.n_buckets)
    net = train.create_model(cfg)
    dtype = np.float32
    batches = list(graph.batches(graphs, targets, batch_size=cfg.data.batch_size, buckets=buckets))
    t = time.perf_counter()
    params = train.init_params(cfg, batch_inputs(batches[0], dtype), 0)
    t_init = time.perf_counter() - t
    tx, _ = train.create_optimizer(cfg, len(batches))
    opt = tx.init(params)
    step, _ = train.make_steps(net, tx)
    compile_s = 0.0
    seen = set()
    for b in batches:  # compile every shape once
        if tuple(b.bucket) in seen:
            continue
        seen.add(tuple(b.bucket))
        t = time.perf_counter()
        out = step(params, opt, batch_inputs(b, dtype), b.targets.astype(dtype))
        jax.block_until_ready(out)
        compile_s += time.perf_counter() - t
    n_cryst, t_run, k = 0, 0.0, 0
    while k < args.steps:
        for b in batches:
            if k >= args.steps:
                break
            t = time.perf_counter()
            params, opt, loss, _ = step(
                params, opt, batch_inputs(b, dtype), b.targets.astype(dtype)
            )
            loss.block_until_ready()
            t_run += time.perf_counter() - t
            n_cryst += b.n_real
            k += 1
    n_params = sum(x.size for x in jax.tree.leaves(params))
    edges = np.mean([g.n_edge for g in graphs])
    result = {
        "config": cfg.name,
        "overrides": args.set,
        "tag": args.tag,
        "n_params": int(n_params),
        "crystals": len(graphs),
        "mean_edges_per_crystal": float(edges),
        "buckets": [list(b) for b in buckets],
        "init_s": t_init,
        "compile_s": compile_s,
        "shapes_compiled": len(seen),
        "steps": k,
        "crystals_per_s": n_cryst / t_run,
        "ms_per_crystal": 1000 * t_run / n_cryst,
        **environment(),
    }
    print("| config | params | edges/crystal | compile s | crystals/s | ms/crystal |")
    print("|---|---|---|---|---|---|")
    print(
        f"| {cfg.name}{' ' + ' '.join(args.set) if args.set else ''} | {n_params} | {edges:.0f} "
        f"| {compile_s:.1f} | {result['crystals_per_s']:.1f} | {result['ms_per_crystal']:.1f} |"
    )
    out = Path(__file__).parent / "results" / f"train_{cfg.name}{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
