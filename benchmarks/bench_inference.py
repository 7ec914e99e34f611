"""Inference throughput against batch size, FLOPs per crystal, and peak memory.

    python benchmarks/bench_inference.py [--config default] [--n 128] [--batch-sizes 1 4 16 32]

Takes the first ``--n`` structures of the matminer 2015 file in the data folder
($E3ELASTIC_DATA, default ../shared/data) and times the jitted forward pass of a model with the
config's architecture (weights do not change the cost). FLOPs come from XLA's cost analysis of
the compiled program; achieved FLOP/s is compared with ``--peak-gflops`` when given (the
hardware's peak). Prints a table and writes benchmarks/results/inference_<config>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
from _env import environment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="default")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--peak-gflops", type=float, default=None, help="hardware peak, GFLOP/s")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    import jax

    from e3elastic import config as cfg
    from e3elastic import data, graph
    from e3elastic.network.model import batch_inputs
    from e3elastic.training import train

    config = cfg.preset(args.config).override(args.set)
    folder = Path(os.environ.get("E3ELASTIC_DATA", "../shared/data"))
    recs = data.read_file(folder / "matminer_elastic_tensor_2015.json.gz").records[: args.n]
    graphs = [graph.structure_to_graph(r.structure, config.model.cutoff, id=r.id) for r in recs]
    net = train.create_model(config)
    first = graph.pad_batch(graphs[:1], graph.Bucket(256, 16384, 2))
    params = train.init_params(config, batch_inputs(first, np.float32), 0)
    rows = []
    for bs in args.batch_sizes:
        buckets = graph.make_buckets(graphs, bs, 1)
        fwd = jax.jit(net.apply)
        batches = list(graph.batches(graphs, batch_size=bs, buckets=buckets))
        inputs = [batch_inputs(b, np.float32) for b in batches]
        t = time.perf_counter()
        lowered = fwd.lower(params, inputs[0])
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t
        cost = compiled.cost_analysis()
        if isinstance(cost, list):
            cost = cost[0]
        flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
        jax.block_until_ready(fwd(params, inputs[0]))
        best = float("inf")
        for _ in range(args.repeats):
            t = time.perf_counter()
            for inp in inputs:
                out = fwd(params, inp)
            jax.block_until_ready(out)
            best = min(best, time.perf_counter() - t)
        n_shapes = len({tuple(b.bucket) for b in batches})
        per_batch_real = np.mean([b.n_real for b in batches])
        flops_per_crystal = flops / per_batch_real
        achieved = flops * len(batches) / best
        rows.append(
            {
                "batch_size": bs,
                "crystals_per_s": len(graphs) / best,
                "ms_per_crystal": 1000 * best / len(graphs),
                "compile_s": compile_s,
                "shapes": n_shapes,
                "gflop_per_crystal": flops_per_crystal / 1e9,
                "achieved_gflops": achieved / 1e9,
                "share_of_peak": (achieved / 1e9 / args.peak_gflops) if args.peak_gflops else None,
            }
        )
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "config": config.name,
        "overrides": args.set,
        "crystals": len(graphs),
        "rows": rows,
        "peak_rss_MB": peak_rss_mb,
        **environment(),
    }
    print("| batch | crystals/s | ms/crystal | compile s | GFLOP/crystal | GFLOP/s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['batch_size']} | {r['crystals_per_s']:.1f} | {r['ms_per_crystal']:.2f} | "
            f"{r['compile_s']:.1f} | {r['gflop_per_crystal']:.3f} | {r['achieved_gflops']:.1f} |"
        )
    print(f"peak RSS {peak_rss_mb:.0f} MB on {result['device']} ({result['platform']})")
    out = Path(__file__).parent / "results" / f"inference_{config.name}{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
