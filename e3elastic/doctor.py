"""``e3elastic doctor``: what JAX runs on here, and how fast training and prediction go.

Prints the devices JAX sees, then times, on the default device:

* training steps of the ``tiny`` config on the example crystals (compile time of the first
  step, then crystals per second over the following steps);
* a prediction of the example crystals with the shipped ``default`` model (first call,
  including compilation, then a second call);

and the peak memory (the device's own counter where it has one, else the process's resident
set). Needs no data folder. On a GPU or TPU, a line naming the CPU as the device means the
accelerator build of jaxlib is missing (see docs/gpu.md, "On a GPU or TPU").
"""

from __future__ import annotations

import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example_structures() -> list[Any]:
    from pymatgen.core import Lattice, Structure

    files = sorted(EXAMPLES.glob("*.cif"))
    if files:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen notes rounded CIF coordinates
            return [Structure.from_file(str(f)) for f in files]
    # an installed package without the repository's examples folder
    return [
        Structure.from_spacegroup(
            "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
        ),
        Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.431), ["Si"], [[0, 0, 0]]),
    ]


def _memory() -> str:
    import jax

    stats = getattr(jax.devices()[0], "memory_stats", lambda: None)()
    if stats and "peak_bytes_in_use" in stats:
        return f"{stats['peak_bytes_in_use'] / 2**20:.0f} MiB peak on the device"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return f"{rss / 1024:.0f} MiB peak resident (host process)"


def _timed(call) -> tuple[Any, float]:
    import jax

    t = time.perf_counter()
    out = jax.block_until_ready(call())
    return out, time.perf_counter() - t


def training_check(steps: int = 10, batch: int = 8) -> dict[str, float]:
    """Compile time and crystals/s of the ``tiny`` config's training step."""
    import jax

    from . import config as config_mod
    from . import graph as graph_mod
    from .network.model import batch_inputs
    from .training import steps as steps_mod

    cfg = config_mod.tiny()
    structures = _example_structures()
    graphs = [graph_mod.structure_to_graph(s, cfg.model.cutoff) for s in structures]
    graphs = (graphs * (batch // len(graphs) + 1))[:batch]
    bucket = graph_mod.make_buckets(graphs, batch, 1)[0]
    rng = np.random.default_rng(0)
    padded = graph_mod.pad_batch(graphs, bucket, rng.normal(size=(len(graphs), 21)))
    inputs = batch_inputs(padded, np.float32)
    targets = padded.targets.astype(np.float32)
    params = steps_mod.init_params(cfg, inputs, 0)
    tx, _ = steps_mod.create_optimizer(cfg, steps)
    opt_state = tx.init(params)
    step, _ = steps_mod.make_steps(steps_mod.create_model(cfg), tx)
    (params, opt_state, loss, _), first = _timed(
        lambda: step(params, opt_state, inputs, targets, np.int32(0))
    )
    t = time.perf_counter()
    for k in range(steps):
        params, opt_state, loss, _ = step(params, opt_state, inputs, targets, np.int32(k + 1))
    jax.block_until_ready(loss)
    dt = time.perf_counter() - t
    return {
        "first_step_s": first,
        "train_crystals_per_s": steps * len(graphs) / dt,
        "loss_finite": bool(np.isfinite(float(loss))),
    }


def prediction_check(model: str = "default") -> dict[str, float]:
    """First (compiling) and second call of a prediction of the example crystals."""
    from . import inference

    structures = _example_structures()
    t = time.perf_counter()
    m = inference.load_model(model)
    load = time.perf_counter() - t
    t = time.perf_counter()
    first = inference.predict(structures, model=m)
    t_first = time.perf_counter() - t
    t = time.perf_counter()
    inference.predict(structures, model=m)
    t_second = time.perf_counter() - t
    return {
        "load_model_s": load,
        "first_predict_s": t_first,
        "predict_crystals_per_s": len(structures) / max(t_second, 1e-9),
        "all_ok": all(p.ok for p in first),
    }


def run(model: str = "default", out=sys.stdout) -> dict[str, Any]:
    """Run the checks and print a report; returns the numbers."""
    import jax

    from . import runtime

    runtime.enable_compilation_cache()
    devices = jax.devices()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}", file=out)
    for d in devices:
        print(f"  device {d.id}: {d.platform} {getattr(d, 'device_kind', '')}", file=out)
    if jax.default_backend() == "cpu":
        print(
            "  (CPU only: for a GPU install the cuda extra, see docs/gpu.md)",
            file=out,
        )
    tr = training_check()
    print(
        f"training (tiny config): first step {tr['first_step_s']:.1f} s (compilation), then "
        f"{tr['train_crystals_per_s']:.0f} crystals/s; loss finite: {tr['loss_finite']}",
        file=out,
    )
    pr = prediction_check(model)
    print(
        f"prediction ({model} model): load {pr['load_model_s']:.1f} s, first call "
        f"{pr['first_predict_s']:.1f} s, then {pr['predict_crystals_per_s']:.1f} crystals/s; "
        f"all predicted: {pr['all_ok']}",
        file=out,
    )
    mem = _memory()
    print(f"memory: {mem}", file=out)
    return {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in devices],
        **tr,
        **pr,
        "memory": mem,
    }
