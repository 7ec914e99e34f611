"""Prediction of many crystals of mixed sizes: one padded shape against shapes by size.

    python benchmarks/bench_predict_shapes.py [--model default] [--part val] [--batch-size 8]

Takes one part of the id split (default: the 489 validation crystals: PBE tensors, K/G-only
binaries and SiO2 zeolites of up to 408 atoms) and runs a shipped model over it twice, through
``Model.predict_irreps``:

- ``one shape``: every batch padded to the shape that holds ``batch-size`` of the largest
  crystals (how predictions were batched before);
- ``by size``: the shapes of ``inference_buckets`` (that one and each half of it), with
  crystals batched by size, each batch padded to the smallest shape that holds it.

Each is timed on a first pass (in-memory caches cleared: compiling, or reading programs from
the on-disk caches where an earlier run left them) and on a second, warm pass. The outputs of
the two must agree. Prints a table and writes
``benchmarks/results/predict_shapes_<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _env import environment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="shipped model name or folder")
    ap.add_argument("--part", default="val", choices=["train", "val", "test"])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--data", default=None)
    args = ap.parse_args()

    import jax

    from e3elastic import data, load_model
    from e3elastic.inference import programs
    from e3elastic.training.evaluation import graphs_for_records
    from e3elastic.training.prepare import graph_cache_dir

    model = load_model(args.model)
    config = model.config
    if args.data:
        config = config.override([f"data.data={json.dumps(args.data)}"])
    ds = data.load_for_config(config)
    by_id = {r.id: r for r in ds.records}
    records = [by_id[i] for i in ds.split[args.part]]
    _, graphs, _ = graphs_for_records(records, config.model.cutoff, graph_cache_dir())
    bs = args.batch_size
    ladder = programs.inference_buckets(graphs, bs)
    variants = {"one shape": ladder[-1:], "by size": ladder}
    rows, outputs = [], {}
    for name, buckets in variants.items():
        jax.clear_caches()
        model = load_model(args.model)  # a fresh model: no program compiled in this process
        times = []
        for _ in range(2):
            t = time.perf_counter()
            outputs[name] = model.predict_irreps(graphs, bs, 0, buckets)
            times.append(time.perf_counter() - t)
        rows.append(
            {
                "variant": name,
                "shapes": len(buckets),
                "first_s": times[0],
                "warm_s": times[1],
                "crystals_per_s_warm": len(graphs) / times[1],
            }
        )
    diff = float(
        np.max(np.abs(outputs["one shape"] - outputs["by size"]))
        / np.max(np.abs(outputs["one shape"]))
    )
    base = rows[0]
    for r in rows:
        r["speedup_first"] = base["first_s"] / r["first_s"]
        r["speedup_warm"] = base["warm_s"] / r["warm_s"]
    sizes = [g.n_node for g in graphs]
    report = {
        "model": str(args.model),
        "members": model.n_members,
        "part": args.part,
        "crystals": len(graphs),
        "atoms_median_max": [float(np.median(sizes)), int(max(sizes))],
        "batch_size": bs,
        "max_rel_difference": diff,
        "rows": rows,
        "environment": environment(),
    }
    print(
        f"{args.model} ({model.n_members} member(s)), {len(graphs)} crystals of the {args.part} "
        f"part (median {np.median(sizes):.0f} atoms, largest {max(sizes)}), batch {bs}"
    )
    print("| padding | shapes | first (s) | warm (s) | crystals/s warm | speed-up first / warm |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['variant']} | {r['shapes']} | {r['first_s']:.1f} | {r['warm_s']:.1f} | "
            f"{r['crystals_per_s_warm']:.0f} | "
            f"{r['speedup_first']:.1f}x / {r['speedup_warm']:.1f}x |"
        )
    print(f"largest difference between the two, relative to the largest output: {diff:.1e}")
    tag = Path(str(args.model)).name
    out = Path(__file__).resolve().parent / "results" / f"predict_shapes_{tag}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
