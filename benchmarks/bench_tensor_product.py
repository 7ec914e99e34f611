"""The edge tensor product of the default network's second block: e3nn-jax's per-path
``e3nn.tensor_product`` against ``e3elastic.network.kernels.edge_tensor_product`` (one contraction
per input irrep), each followed by the per-path weights and the scatter to receivers; the weights
applied as e3nn-jax's ``IrrepsArray * array`` or by ``e3elastic.network.kernels.scale_paths``.

    python benchmarks/bench_tensor_product.py [--edges 5440] [--rounds 5]

Forward and gradient (with respect to features and weights), float32, rounds alternating
in one process; prints a table and writes benchmarks/results/tensor_product.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _time(fn, args, repeat: int = 5) -> float:
    import jax

    t = time.perf_counter()
    for _ in range(repeat):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - t) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edges", type=int, default=5440, help="16 crystals of 340 edges")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import e3nn_jax as e3nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    from _env import environment

    from e3elastic.network.kernels import edge_tensor_product, scale_paths

    n_edge, n_node = args.edges, max(1, args.edges // 8)
    rng = np.random.default_rng(0)
    irreps = e3nn.Irreps("32x0e+8x1o+8x2e+4x3o+4x4e")  # the 30k default's hidden irreps
    x = jnp.asarray(rng.normal(size=(n_edge, irreps.dim)), jnp.float32)
    vec = e3nn.IrrepsArray("1o", jnp.asarray(rng.normal(size=(n_edge, 3)), jnp.float32))
    sh = e3nn.spherical_harmonics("0e+1o+2e+3o+4e", vec, True, "component").array
    sh_irreps = e3nn.Irreps("0e+1o+2e+3o+4e")
    filt = [e3nn.Irrep(ir) for ir in ("0e", "2e", "4e")]  # the last block's gate inputs
    receivers = jnp.asarray(rng.integers(0, n_node, n_edge))
    n_paths = e3nn.tensor_product(irreps, sh_irreps, filter_ir_out=filt).num_irreps
    w = jnp.asarray(rng.normal(size=(n_edge, n_paths)), jnp.float32)

    def make(tp, weigh=lambda msg, w: msg * w):
        def loss(x, w, sh):
            msg = weigh(tp(e3nn.IrrepsArray(irreps, x), e3nn.IrrepsArray(sh_irreps, sh)), w)
            agg = e3nn.scatter_sum(msg, dst=receivers, output_size=n_node)
            return jnp.sum(agg.array**2)

        return jax.jit(loss), jax.jit(jax.grad(loss, argnums=(0, 1)))

    variants = {
        "e3nn.tensor_product": make(lambda a, b: e3nn.tensor_product(a, b, filter_ir_out=filt)),
        "edge_tensor_product": make(lambda a, b: edge_tensor_product(a, b, filt)),
        "edge_tensor_product + scale_paths": make(
            lambda a, b: edge_tensor_product(a, b, filt), scale_paths
        ),
    }
    inputs = (x, w, sh)
    for fwd, grad in variants.values():  # compile
        jax.block_until_ready(fwd(*inputs))
        jax.block_until_ready(grad(*inputs))
    times = {name: {"forward": [], "gradient": []} for name in variants}
    for _ in range(args.rounds):
        for name, (fwd, grad) in variants.items():
            times[name]["forward"].append(_time(fwd, inputs))
            times[name]["gradient"].append(_time(grad, inputs))
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    old, new = med["e3nn.tensor_product"], med["edge_tensor_product"]
    last = med["edge_tensor_product + scale_paths"]
    result = {
        "edges": n_edge,
        "irreps_in": str(irreps),
        "irreps_messages": str(e3nn.tensor_product(irreps, sh_irreps, filter_ir_out=filt)),
        "rounds": args.rounds,
        "median_s": med,
        "forward_speedup": old["forward"] / new["forward"],
        "gradient_speedup": old["gradient"] / new["gradient"],
        "scale_paths_forward_speedup": new["forward"] / last["forward"],
        "scale_paths_gradient_speedup": new["gradient"] / last["gradient"],
        "total_forward_speedup": old["forward"] / last["forward"],
        "total_gradient_speedup": old["gradient"] / last["gradient"],
        **environment(),
    }
    print("| tensor product + weights + scatter | forward ms | gradient ms |")
    print("|---|---|---|")
    for name, m in med.items():
        print(f"| {name} | {m['forward'] * 1e3:.1f} | {m['gradient'] * 1e3:.1f} |")
    print(f"| speed-up | {result['forward_speedup']:.2f}x | {result['gradient_speedup']:.2f}x |")
    print(
        f"| scale_paths speed-up | {result['scale_paths_forward_speedup']:.2f}x | "
        f"{result['scale_paths_gradient_speedup']:.2f}x |"
    )
    print(
        f"| all, against e3nn.tensor_product | {result['total_forward_speedup']:.2f}x | "
        f"{result['total_gradient_speedup']:.2f}x |"
    )
    out = Path(__file__).parent / "results" / "tensor_product.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
