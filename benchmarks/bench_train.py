"""Training throughput (crystals/s) and compile time of a config on real crystal graphs.

    python benchmarks/bench_train.py [--config default] [--n 256] [--steps 20]
    python benchmarks/bench_train.py --loops [--epochs 3]    # train.loop python vs scan

Takes the first ``--n`` structures of the matminer 2015 file in the data folder
($E3ELASTIC_DATA, default ../shared/data), builds graphs, pads them into the config's buckets and
times jitted train steps (compile reported separately). Prints a table and writes
benchmarks/results/train_<config>.json with the device and versions.

With ``--loops`` it instead times whole epochs of the two training loops of ``train.loop`` on
the same steps (:func:`e3elastic.training.train.plan_steps`,
:func:`e3elastic.training.train.epoch_order`): ``python`` (one jitted step per batch, fed from the
host, loss read after each) and ``scan`` (each bucket's batches put on the device once, one
``lax.scan`` per bucket and epoch, one fetch per bucket). Epoch 0 includes compilation;
``crystals_per_s`` is over the later epochs. Writes benchmarks/results/train_loops_<config>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from _env import environment


def _setup(args):
    """The config and the first ``args.n`` matminer crystals: graphs, random targets, buckets."""
    from e3elastic import config as cfg
    from e3elastic import data, graph

    config = cfg.preset(args.config).override(args.set)
    folder = Path(os.environ.get("E3ELASTIC_DATA", "../shared/data"))
    res = data.read_file(folder / "matminer_elastic_tensor_2015.json.gz")
    recs = res.records[: args.n]
    graphs = [graph.structure_to_graph(r.structure, config.model.cutoff, id=r.id) for r in recs]
    targets = np.random.default_rng(0).normal(size=(len(graphs), 21))
    buckets = graph.make_buckets(graphs, config.data.batch_size, config.data.n_buckets)
    return config, graphs, targets, buckets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="default")
    ap.add_argument("--set", action="append", default=[], help="override, e.g. model.n_layers=3")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--tag", default="")
    ap.add_argument("--loops", action="store_true", help="time train.loop python vs scan")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per loop with --loops")
    args = ap.parse_args()
    if args.loops:
        return compare_loops(args)

    import jax

    from e3elastic import graph
    from e3elastic.network.model import batch_inputs
    from e3elastic.training import train

    config, graphs, targets, buckets = _setup(args)
    net = train.create_model(config)
    dtype = np.float32
    batches = list(
        graph.batches(graphs, targets, batch_size=config.data.batch_size, buckets=buckets)
    )
    t = time.perf_counter()
    params = train.init_params(config, batch_inputs(batches[0], dtype), 0)
    t_init = time.perf_counter() - t
    tx, _ = train.create_optimizer(config, len(batches))
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
        "config": config.name,
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
        f"| {config.name}{' ' + ' '.join(args.set) if args.set else ''} | {n_params} | {edges:.0f} "
        f"| {compile_s:.1f} | {result['crystals_per_s']:.1f} | {result['ms_per_crystal']:.1f} |"
    )
    out = Path(__file__).parent / "results" / f"train_{config.name}{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


def compare_loops(args) -> None:
    """Crystals/s per epoch of ``train.loop`` python and scan on the same steps."""
    import jax

    from e3elastic import graph
    from e3elastic.network.model import batch_inputs
    from e3elastic.training import train

    config, graphs, targets, buckets = _setup(args)
    dtype = np.float32
    dp = train.DataParallel(config.train.data_parallel)
    plan = train.plan_steps(
        graphs,
        targets,
        batch_size=config.data.batch_size,
        buckets=buckets,
        n_sub=dp.n_sub,
        seed=0,
        dtype=dtype,
    )
    n_steps = sum(len(bs.steps) for bs in plan)
    n_cryst = sum(st.n_real for bs in plan for st in bs.steps)
    net = train.create_model(config)
    first = graph.pad_batch(graphs[:1], buckets[0])
    tx, _ = train.create_optimizer(config, n_steps)
    results = {}
    for loop in ("python", "scan"):
        params = train.init_params(config, batch_inputs(first, dtype), 0)
        params, opt = dp.replicate((params, tx.init(params)))
        upload_s = 0.0
        if loop == "scan":
            run = train.make_scan(net, tx, dp.n_sub, mesh=dp.mesh)
            t = time.perf_counter()
            on_device = [
                dp.shard_steps(
                    (
                        {k: np.stack([s.inputs[k] for s in bs.steps]) for k in bs.steps[0].inputs},
                        np.stack([s.targets for s in bs.steps]),
                    )
                )
                for bs in plan
            ]
            jax.block_until_ready(on_device)
            upload_s = time.perf_counter() - t
        else:
            step, _ = train.make_steps(net, tx, dp.n_sub)
        epoch_s, losses = [], []
        for epoch in range(args.epochs):
            t = time.perf_counter()
            k, total = epoch * n_steps, 0.0
            for b, order in train.epoch_order(plan, 0, epoch):
                if loop == "python":
                    for j in order:
                        s = plan[b].steps[j]
                        params, opt, loss, _ = step(
                            params, opt, dp.shard(s.inputs), dp.shard(s.targets), np.int32(k)
                        )
                        total += float(loss) * s.n_real
                        k += 1
                else:
                    ids = np.arange(k, k + len(order), dtype=np.int32)
                    params, opt, dev_losses, _ = run(params, opt, *on_device[b], order, ids)
                    step_losses = train._fetch(dev_losses)
                    total += sum(
                        float(x) * plan[b].steps[j].n_real
                        for x, j in zip(step_losses, order, strict=True)
                    )
                    k += len(order)
            epoch_s.append(time.perf_counter() - t)
            losses.append(total / n_cryst)
        steady = epoch_s[1:] or epoch_s
        results[loop] = {
            "epoch_s": epoch_s,
            "crystals_per_s_by_epoch": [n_cryst / x for x in epoch_s],
            "crystals_per_s": n_cryst * len(steady) / sum(steady),
            "train_loss": losses,
            "upload_s": upload_s,
        }
    result = {
        "config": config.name,
        "overrides": args.set,
        "tag": args.tag,
        "crystals": n_cryst,
        "steps_per_epoch": n_steps,
        "buckets": [list(bs.bucket) for bs in plan],
        "data_parallel": dp.n_sub,
        "epochs": args.epochs,
        "loops": results,
        "speedup_scan_over_python": results["scan"]["crystals_per_s"]
        / results["python"]["crystals_per_s"],
        **environment(),
    }
    print("| loop | epoch 0 s (compile) | later epochs crystals/s | train_loss last epoch |")
    print("|---|---|---|---|")
    for loop, r in results.items():
        print(
            f"| {loop} | {r['epoch_s'][0]:.1f} | {r['crystals_per_s']:.1f} "
            f"| {r['train_loss'][-1]:.6f} |"
        )
    print(f"scan / python: {result['speedup_scan_over_python']:.2f}x")
    out = Path(__file__).parent / "results" / f"train_loops_{config.name}{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
