"""e3elastic's default network in JAX against the same network in PyTorch + e3nn, in one process.

    python benchmarks/bench_peer.py [--data DIR] [--n 128] [--rounds 5] [--threads N]

The PyTorch side is the port in ``peer_torch.py`` (weights copied in by ``peer_weights.py``):
:class:`e3elastic.network.model.ElasticityNet` (the ``default`` config's architecture) module by
module in e3nn, up to the 21 output irreps. The head (``log``) only post-processes these 21 numbers,
so it is left out of both sides. This script is the runner: it checks the port against JAX, then
times both.

What the script checks before timing:

* both networks have the same number of trainable parameters (asserted);
* the shipped ``default`` weights, copied into the port, give the same 21 outputs as JAX on the
  benchmark crystals, and the same loss gradients on the first batch (largest differences
  reported, and asserted below ``--tolerance`` relative to the largest output / gradient).

Crystals: the first ``--n`` matminer 2015 crystals of e3elastic's PBE data set
(:func:`e3elastic.data.load_dataset` on ``--data``, default ``$E3ELASTIC_DATA`` or
``../shared/data``), made into graphs and padded batches by :mod:`e3elastic.graph` and
:func:`e3elastic.network.model.batch_inputs`; both networks read the same numpy arrays. Timed, in
alternating rounds (a JAX round, then a PyTorch round, one pass over all batches each):
training steps (forward, masked MSE on the 21 outputs against fixed random targets, backward,
Adam) and forward passes, float32 on the CPU, with as many PyTorch threads as XLA uses.
Compilation and warm-up are excluded and reported apart. Prints a table and writes
benchmarks/results/peer.json (medians of crystals/s, ratios JAX / PyTorch, versions, device).

Needs the ``bench`` extra (``pip install -e '.[bench]'``: torch and e3nn).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from _env import environment

try:
    import e3nn  # noqa: F401
    import torch
except ImportError:
    print("skipped: torch and e3nn are not installed (pip install -e '.[bench]')")
    sys.exit(0)

from peer_torch import TorchElasticityNet, count_torch, to_torch, torch_loss
from peer_weights import load_flax_params


def compare_gradients(net, params, port, inputs, targets) -> tuple[float, float]:
    """Largest difference between the loss gradients of the JAX network and of the port (same
    weights, one batch), and the largest gradient: ``(max |dg|, max |g|)``.

    The JAX gradients are copied into a second port with :func:`load_flax_params`, so both
    are compared parameter by parameter in the port's layout.
    """
    import jax
    import jax.numpy as jnp

    from e3elastic.training.checkpoint import flatten_params

    def loss(p):
        y = net.apply(p, inputs)
        mask = jnp.asarray(inputs["graph_mask"], y.dtype)
        per_graph = jnp.mean((y - targets) ** 2, axis=-1)
        return jnp.sum(per_graph * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    grads = jax.jit(jax.grad(loss))(params)
    reference = TorchElasticityNet(net.config)
    load_flax_params(reference, flatten_params(grads))
    want = dict(reference.named_parameters())
    x = to_torch(inputs)
    port.zero_grad(set_to_none=True)
    torch_loss(port(x), torch.from_numpy(targets), x["graph_mask"]).backward()
    diff = max((p.grad - want[n]).abs().max().item() for n, p in port.named_parameters())
    scale = max(p.abs().max().item() for p in want.values())
    port.zero_grad(set_to_none=True)
    return diff, scale


# --------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _load_crystals(folder: str, n: int, cfg):
    from e3elastic import data

    ds = data.load_dataset(
        folder, subset="pbe", max_sites=cfg.data.max_sites, cutoff=cfg.model.cutoff
    )
    recs = [r for r in ds.records if r.source == "matminer2015"][:n]
    return recs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("E3ELASTIC_DATA") or "../shared/data")
    ap.add_argument("--n", type=int, default=128, help="crystals (first matminer 2015 ones)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timed rounds (>= 1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch threads")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (both sides)")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="largest |dy| / max |y|")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "peer.json"))
    ap.add_argument(
        "--no-compile", action="store_true", help="skip the torch.compile port (eager only)"
    )
    ap.add_argument(
        "--model",
        default="default",
        help="the network and weights to port: a shipped name or a bundle folder (a sweep "
        "candidate's best/)",
    )
    args = ap.parse_args()

    if not Path(args.data).is_dir():
        print(f"skipped: no data folder at {args.data} (pass --data or set E3ELASTIC_DATA)")
        return

    import jax
    import optax

    import e3elastic
    from e3elastic import config as cfg
    from e3elastic import graph
    from e3elastic.network.model import batch_inputs
    from e3elastic.training import checkpoint, train

    torch.set_num_threads(args.threads)
    shipped = e3elastic.load_model(args.model)
    config = shipped.config
    if args.model == "default" and config.model != cfg.default().model:
        raise SystemExit("the shipped default model is not the current default architecture")

    # parameters: the model's architecture, and its weights
    n_jax = int(sum(np.prod(s) for s in checkpoint.expected_param_shapes(config).values()))
    if shipped.n_parameters != n_jax:
        raise SystemExit(f"{args.model} has {shipped.n_parameters} parameters, config {n_jax}")
    params = jax.tree.map(lambda a: jax.numpy.asarray(a, jax.numpy.float32), shipped.members[0][0])

    port = TorchElasticityNet(config.model)
    n_torch = count_torch(port)
    assert n_torch == n_jax, f"parameter counts differ: JAX {n_jax}, PyTorch {n_torch}"
    load_flax_params(port, checkpoint.flatten_params(params))

    # crystals and padded batches (shared by both networks)
    recs = _load_crystals(args.data, args.n, config)
    graphs = [graph.structure_to_graph(r.structure, config.model.cutoff, id=r.id) for r in recs]
    theories = np.array([cfg.theory_index(r.theory) for r in recs], np.int32)
    targets = np.random.default_rng(0).normal(size=(len(graphs), 21)).astype(np.float32)
    buckets = graph.make_buckets(graphs, config.data.batch_size, config.data.n_buckets)
    batches = list(
        graph.batches(graphs, targets, batch_size=config.data.batch_size, buckets=buckets)
    )
    np_inputs = [batch_inputs(b, np.float32, theory=theories) for b in batches]
    np_targets = [b.targets.astype(np.float32) for b in batches]
    n_real = [b.n_real for b in batches]
    n_cryst = sum(n_real)
    jx_inputs = [jax.device_put(x) for x in np_inputs]
    jx_targets = [jax.device_put(t) for t in np_targets]
    th_inputs = [to_torch(x) for x in np_inputs]
    th_targets = [torch.from_numpy(t) for t in np_targets]
    print(
        f"{n_cryst} crystals, {len(batches)} batches, {len(buckets)} buckets, "
        f"{np.mean([g.n_edge for g in graphs]):.0f} edges/crystal; "
        f"params JAX {n_jax}, PyTorch {n_torch}; torch threads {torch.get_num_threads()}",
        flush=True,
    )

    net = train.create_model(config)
    tx = optax.adam(args.lr)
    step, predict = train.make_steps(net, tx)
    opt = tx.init(params)

    # compile every bucket shape (forward first: it also gives the outputs to compare)
    t = time.perf_counter()
    first = jax.block_until_ready(predict(params, jx_inputs[0]))
    fwd_compile_first = time.perf_counter() - t
    seen = {tuple(batches[0].bucket)}
    t = time.perf_counter()
    y_jax = [np.asarray(first)]
    for b, x in zip(batches[1:], jx_inputs[1:], strict=True):
        y_jax.append(np.asarray(jax.block_until_ready(predict(params, x))))
        seen.add(tuple(b.bucket))
    fwd_compile_all = fwd_compile_first + time.perf_counter() - t

    port.eval()
    with torch.inference_mode():
        y_torch = [port(x).numpy() for x in th_inputs]
    diffs = [
        np.abs(a - b)[np.asarray(x["graph_mask"], bool)]
        for a, b, x in zip(y_jax, y_torch, np_inputs, strict=True)
    ]
    scale = max(
        float(np.abs(a[np.asarray(x["graph_mask"], bool)]).max())
        for a, x in zip(y_jax, np_inputs, strict=True)
    )
    max_diff = float(max(d.max() for d in diffs))
    rel_diff = max_diff / scale
    print(
        f"outputs: max |JAX - PyTorch| = {max_diff:.2e} (max |y| = {scale:.2f}, "
        f"relative {rel_diff:.1e})",
        flush=True,
    )
    if not rel_diff < args.tolerance:
        raise SystemExit(f"outputs differ by {rel_diff:.1e} relative > {args.tolerance:g}")
    grad_diff, grad_scale = compare_gradients(net, params, port, np_inputs[0], np_targets[0])
    grad_rel = grad_diff / grad_scale
    print(
        f"loss gradients (first batch): max |JAX - PyTorch| = {grad_diff:.2e} "
        f"(max |g| = {grad_scale:.2e}, relative {grad_rel:.1e})",
        flush=True,
    )
    if not grad_rel < args.tolerance:
        raise SystemExit(f"gradients differ by {grad_rel:.1e} relative > {args.tolerance:g}")

    t = time.perf_counter()
    state = step(params, opt, jx_inputs[0], jx_targets[0])
    jax.block_until_ready(state)
    train_compile_first = time.perf_counter() - t
    t = time.perf_counter()
    done = {tuple(batches[0].bucket)}
    for b, x, y in zip(batches, jx_inputs, jx_targets, strict=True):
        if tuple(b.bucket) not in done:
            done.add(tuple(b.bucket))
            jax.block_until_ready(step(params, opt, x, y))
    train_compile_all = train_compile_first + time.perf_counter() - t

    port.train()
    adam = torch.optim.Adam(port.parameters(), lr=args.lr)

    def torch_train_round(module=port) -> None:
        for x, y in zip(th_inputs, th_targets, strict=True):
            adam.zero_grad(set_to_none=True)
            loss = torch_loss(module(x), y, x["graph_mask"])
            loss.backward()
            adam.step()

    def torch_forward_round(module=port) -> None:
        with torch.inference_mode():
            for x in th_inputs:
                module(x)

    jstate = {"params": params, "opt": opt}

    def jax_train_round() -> None:
        p, o = jstate["params"], jstate["opt"]
        for x, y in zip(jx_inputs, jx_targets, strict=True):
            p, o, loss, _ = step(p, o, x, y)
        jax.block_until_ready((p, o, loss))
        jstate["params"], jstate["opt"] = p, o

    def jax_forward_round() -> None:
        out = [predict(jstate["params"], x) for x in jx_inputs]
        jax.block_until_ready(out)

    t = time.perf_counter()
    torch_train_round()
    torch_forward_round()
    torch_warmup = time.perf_counter() - t

    # the same port under torch.compile (inductor, CPU): same parameters and optimiser
    compiled = None if args.no_compile else torch.compile(port)
    compile_info: dict = {}
    if compiled is not None:

        def compiled_train_round() -> None:
            torch_train_round(compiled)

        def compiled_forward_round() -> None:
            torch_forward_round(compiled)

        port.eval()
        t = time.perf_counter()
        with torch.inference_mode():
            y_eager = [port(x).numpy() for x in th_inputs]
            y_comp = [compiled(x).numpy() for x in th_inputs]
        compile_info["forward_compile_s"] = time.perf_counter() - t
        comp_diff = float(
            max(
                np.abs(a - b)[np.asarray(x["graph_mask"], bool)].max()
                for a, b, x in zip(y_eager, y_comp, np_inputs, strict=True)
            )
        )
        compile_info["max_output_diff_vs_eager"] = comp_diff
        port.train()
        t = time.perf_counter()
        compiled_train_round()
        compile_info["train_compile_s"] = time.perf_counter() - t
        print(
            f"torch.compile: forward compiled in {compile_info['forward_compile_s']:.0f} s, "
            f"training in {compile_info['train_compile_s']:.0f} s; max |compiled - eager| "
            f"= {comp_diff:.1e}",
            flush=True,
        )
        if not comp_diff / scale < args.tolerance:
            raise SystemExit(f"torch.compile output differs from eager by {comp_diff:.1e}")
    jax_train_round()  # warm-up, compiled already
    jax_forward_round()

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return n_cryst / (time.perf_counter() - t)

    kinds = ["jax_train", "torch_train", "jax_forward", "torch_forward"]
    if compiled is not None:
        kinds += ["compiled_train", "compiled_forward"]
    rates = {k: [] for k in kinds}
    for r in range(args.rounds):
        rates["jax_train"].append(timed(jax_train_round))
        rates["torch_train"].append(timed(torch_train_round))
        if compiled is not None:
            rates["compiled_train"].append(timed(compiled_train_round))
        rates["jax_forward"].append(timed(jax_forward_round))
        rates["torch_forward"].append(timed(torch_forward_round))
        if compiled is not None:
            rates["compiled_forward"].append(timed(compiled_forward_round))
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items())
            + " crystals/s",
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in rates.items()}
    train_ratio = med["jax_train"] / med["torch_train"]
    forward_ratio = med["jax_forward"] / med["torch_forward"]
    if compiled is not None:
        compile_info["train_ratio"] = med["jax_train"] / med["compiled_train"]
        compile_info["forward_ratio"] = med["jax_forward"] / med["compiled_forward"]
        compile_info["train_crystals_per_s"] = med["compiled_train"]
        compile_info["forward_crystals_per_s"] = med["compiled_forward"]

    versions = {
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "e3nn_jax": _version("e3nn-jax"),
        "flax": _version("flax"),
        "optax": _version("optax"),
        "torch": torch.__version__,
        "e3nn": _version("e3nn"),
        "numpy": np.__version__,
    }
    result = {
        "config": config.name,
        "crystals": n_cryst,
        "batches": len(batches),
        "buckets": [list(b) for b in buckets],
        "mean_edges_per_crystal": float(np.mean([g.n_edge for g in graphs])),
        "rounds": args.rounds,
        "train_ratio": train_ratio,
        "forward_ratio": forward_ratio,
        "jax_train_crystals_per_s": med["jax_train"],
        "torch_train_crystals_per_s": med["torch_train"],
        "jax_forward_crystals_per_s": med["jax_forward"],
        "torch_forward_crystals_per_s": med["torch_forward"],
        "rates_per_round": rates,
        "jax_compile_first_train_step_s": train_compile_first,
        "jax_compile_all_train_shapes_s": train_compile_all,
        "jax_compile_first_forward_s": fwd_compile_first,
        "jax_compile_all_forward_shapes_s": fwd_compile_all,
        "torch_warmup_s": torch_warmup,
        "torch_compile": compile_info or None,
        "shapes_compiled": len(seen),
        "params_jax": n_jax,
        "params_torch": n_torch,
        "weights": args.model,
        "hidden_irreps": config.model.hidden_irreps,
        "n_layers": config.model.n_layers,
        "max_output_diff": max_diff,
        "max_output_diff_relative": rel_diff,
        "max_abs_output": scale,
        "max_grad_diff": grad_diff,
        "max_grad_diff_relative": grad_rel,
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "adam_lr": args.lr,
        "versions": versions,
        **environment(),
    }
    print()
    print("| network | params | train crystals/s | forward crystals/s | first step compile s |")
    print("|---|---|---|---|---|")
    print(
        f"| JAX + e3nn-jax | {n_jax} | {med['jax_train']:.1f} | {med['jax_forward']:.1f} "
        f"| {train_compile_first:.1f} |"
    )
    print(
        f"| PyTorch + e3nn | {n_torch} | {med['torch_train']:.1f} | "
        f"{med['torch_forward']:.1f} | - |"
    )
    if compiled is not None:
        print(
            f"| PyTorch + e3nn, torch.compile | {n_torch} | {med['compiled_train']:.1f} | "
            f"{med['compiled_forward']:.1f} | {compile_info['train_compile_s']:.1f} |"
        )
    print(f"| JAX / PyTorch eager | | {train_ratio:.2f}x | {forward_ratio:.2f}x | |")
    if compiled is not None:
        print(
            f"| JAX / PyTorch compiled | | {compile_info['train_ratio']:.2f}x | "
            f"{compile_info['forward_ratio']:.2f}x | |"
        )
    print(
        f"\nmedians of {args.rounds} alternating rounds over {n_cryst} crystals on "
        f"{result['device']} ({result['platform']}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}); max output difference {max_diff:.1e} "
        f"({rel_diff:.1e} of max |y|) with the weights of {args.model}"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
