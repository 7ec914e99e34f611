"""Training: data -> padded graph batches -> jitted Adam steps -> checkpoints and a bundle.

``train_and_evaluate(config, workdir)`` runs a whole job:

1. load the dataset (:func:`e3elastic.data.load_dataset`) and its split, build crystal graphs
   (cached on disk), and choose padded batch shapes from the training graphs' sizes;
2. turn each tensor into the 21 irreps the model's head learns (:func:`model.targets_from_voigt`:
   C, or its matrix logarithm for the ``log`` head) and normalise them per irrep with
   training-split statistics (:func:`model.irrep_stats`), so the loss, a mean squared error over
   the 21 normalised coefficients, weighs the 0e, 2e and 4e parts alike (for the log head it is
   the log-Euclidean distance, a relative error);
3. train with optax Adam(W), linear warm-up then cosine decay, gradient clipping, jitted
   train/eval steps over the bucketed shapes; with ``train.volume_strain`` > 0 part of every
   batch is isotropically scaled and its target follows Murnaghan's law
   (:func:`volume_augmentation`). The training crystals are packed into padded batches once
   per run (:func:`plan_steps`); each epoch runs the buckets in a shuffled order and, within a
   bucket, its steps in a shuffled order (:func:`epoch_order`). With ``train.loop = "scan"``
   (the default) each bucket's batches are put on the device once and an epoch runs a
   bucket's steps in one ``jax.lax.scan`` (:func:`make_scan`), bringing losses back to the
   host once per bucket; ``"python"`` runs one jitted step per batch fed from the host and
   reads the loss after each (for debugging). Both take the same steps and agree within
   float round-off;
4. after each epoch evaluate on the validation split, append one line to ``metrics.jsonl``
   (deterministic content only; wall times go to ``timing.jsonl``), save an orbax checkpoint,
   and export the inference bundle ``best/`` when validation error improves;
5. stop early, at an evaluation, once ``patience`` epochs have passed since the best
   validation error, then evaluate the best weights on validation and test
   (``final_metrics.json``).

``resume=True`` continues from the latest readable checkpoint; epochs are shuffled with a seed
derived from (seed, epoch), so a resumed run follows the same path as an uninterrupted one.

A non-finite loss stops training with :class:`TrainingError` naming the crystals whose loss
was not finite, and nothing of that epoch is saved. The python loop stops at the bad step
itself. The scan loop finds out only when the bucket's results come back, by which time the
weights in memory have been updated past the bad step: they are dropped, never saved or
exported, and the last good checkpoint on disk stays as it was; fix the data and resume from
it (``--resume``), or rerun with ``train.loop=python`` to stop at the step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from . import data as data_mod
from . import graph as graph_mod
from . import metrics as metrics_mod
from . import tensors
from .config import Config, theory_index
from .errors import E3ElasticError

__all__ = ["Prepared", "TrainingError", "prepare_data", "train_and_evaluate"]


class TrainingError(E3ElasticError, RuntimeError):
    """Training cannot go on (bad data, non-finite loss); the message says why."""


# --------------------------------------------------------------------------------------------
# Data preparation
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Prepared:
    """Graphs and targets of one dataset, by split part."""

    dataset: Any
    graphs: dict[str, list]  # part -> [CrystalGraph]
    records: dict[str, list]  # part -> [Record]
    irreps: dict[str, np.ndarray]  # part -> (n, 21) head targets (GPa, or log units)
    buckets: tuple
    dropped: list[tuple[str, str]]
    theory: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # part -> (n,) int


def theory_indices(records, config: Config) -> np.ndarray:
    """``(n,)`` level-of-theory inputs of records (all 0 for a model without that input)."""
    if not config.model.n_theories:
        return np.zeros(len(records), np.int32)
    out = []
    for r in records:
        try:
            out.append(theory_index(r.theory))
        except ValueError as e:
            raise TrainingError(f"{r.id}: {e}") from None
    return np.asarray(out, np.int32)


def _head_ready(records, config: Config) -> tuple[list, list[tuple[str, str]]]:
    """Records the head can learn: the log head needs a positive-definite C."""
    if config.model.head != "log":
        return list(records), []
    good, bad = [], []
    for r in records:
        if np.linalg.eigvalsh(tensors.voigt_to_mandel(r.voigt)).min() > 0:
            good.append(r)
        else:
            bad.append((r.id, "not positive-definite; the log head cannot learn it"))
    return good, bad


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def graphs_for_records(records, cutoff: float, cache_dir=None, log=_log):
    """Graphs of records; a record whose graph fails is reported and left out."""
    items = [(r.id, r.structure) for r in records]
    try:
        return list(records), graph_mod.build_graphs_cached(items, cutoff, cache_dir), []
    except graph_mod.GraphError:
        pass
    good, bad = [], []
    for r in records:
        try:
            graph_mod.structure_to_graph(r.structure, cutoff, id=r.id)
            good.append(r)
        except graph_mod.GraphError as e:
            bad.append((r.id, str(e)))
            log(f"skipping {r.id}: {e}")
    graphs = graph_mod.build_graphs_cached([(r.id, r.structure) for r in good], cutoff, cache_dir)
    return good, graphs, bad


#: The setting to change when validation drops crystals for a reason.
_REASON_SETTINGS = {
    "too many sites": "data.max_sites",
    "isolated atom": "model.cutoff",
    "not positive definite": "data.keep_unstable",
    "frame mismatch": "data.tolerance",
}


def _empty_split_message(dataset, dropped: list[tuple[str, str]], config: Config) -> str:
    """Why nothing is left to train on: entries read, and what each filter removed."""
    report = dataset.report
    settings = config.to_dict()
    read = sum(s["read"] for s in report["sources"].values())
    parts = [f"{read} entries read"]
    for kind, n in Counter(d.kind for d in dataset.dropped).most_common():
        text = f"{n} dropped as {kind!r}"
        if kind in _REASON_SETTINGS:
            key = _REASON_SETTINGS[kind]
            section, name = key.split(".")
            text += f" (change {key}, now {json.dumps(settings[section][name])})"
        parts.append(text)
    removed = report.get("subset_removed", {})
    if removed.get("total"):
        by = ", ".join(f"{k} {v}" for k, v in removed["by_theory"].items())
        parts.append(
            f"data.subset {config.data.subset!r} removed {removed['total']} ({by}); keep them "
            "with --subset all"
        )
    if dropped:
        first_id, reason = dropped[0]
        parts.append(f"{len(dropped)} left out by the model (first {first_id}: {reason})")
    sizes = ", ".join(f"{p} {len(dataset.split[p])}" for p in ("train", "val", "test"))
    parts.append(f"{len(dataset.records)} crystals left ({sizes})")
    return "the training split is empty: " + "; ".join(parts)


def prepare_data(config: Config, dataset=None, log=_log) -> Prepared:
    """Load the dataset of ``config.data`` (unless given), build graphs and buckets."""
    dc, mc = config.data, config.model
    if dataset is None:
        dataset = data_mod.load_for_config(config)
    cache_dir = data_mod._cache_dir(None) / "graphs"
    from .model import targets_from_voigt

    graphs, records, irreps, theory, dropped = {}, {}, {}, {}, []
    for part in ("train", "val", "test"):
        recs, bad = _head_ready(dataset.part(part), config)
        dropped += bad
        good, gs, bad = graphs_for_records(recs, mc.cutoff, cache_dir, log)
        dropped += bad
        graphs[part], records[part] = gs, good
        irreps[part] = (
            targets_from_voigt(np.stack([r.voigt for r in good]), mc) if good else np.zeros((0, 21))
        )
        theory[part] = theory_indices(good, config)
    if not graphs["train"]:
        raise TrainingError(_empty_split_message(dataset, dropped, config))
    buckets = graph_mod.make_buckets(graphs["train"], dc.batch_size, dc.n_buckets, seed=dc.seed)
    return Prepared(dataset, graphs, records, irreps, buckets, dropped, theory)


# --------------------------------------------------------------------------------------------
# Model, optimiser, steps
# --------------------------------------------------------------------------------------------


def _jax():
    import jax

    return jax


def create_model(config: Config):
    from .model import ElasticityNet

    return ElasticityNet(config.model)


def init_params(config: Config, example_inputs: dict, seed: int):
    jax = _jax()
    net = create_model(config)
    params = jax.jit(net.init)(jax.random.PRNGKey(seed), example_inputs)
    return cast_params(params, config)


def cast_params(params, config: Config):
    jax = _jax()
    import jax.numpy as jnp

    dtype = jnp.float64 if config.train.dtype == "float64" else jnp.float32
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), params)


def create_optimizer(config: Config, steps_per_epoch: int):
    import optax

    tc = config.train
    total = max(1, tc.epochs * steps_per_epoch)
    warmup = min(total - 1, max(1, round(tc.warmup_epochs * steps_per_epoch)))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=tc.learning_rate * 0.01,
        peak_value=tc.learning_rate,
        warmup_steps=warmup,
        decay_steps=total,
        end_value=tc.learning_rate * tc.final_lr_fraction,
    )
    tx = optax.chain(
        optax.clip_by_global_norm(tc.clip_norm),
        optax.adamw(schedule, weight_decay=tc.weight_decay),
    )
    return tx, schedule


def volume_augmentation(config: Config, stats: dict[str, np.ndarray]):
    """``augment(key, inputs, targets) -> (inputs, targets)`` for one padded batch, or None.

    With ``train.volume_strain = a`` > 0, each real crystal is, with probability
    ``train.volume_fraction``, scaled isotropically by ``s ~ U[1 - a, 1 + a]`` (lattice and
    positions; the neighbour list is kept and edges that leave the cutoff fade out through the
    envelope). Its target becomes ``C' = C (V0/V)^K'`` with ``V/V0 = s^3`` and
    ``K' = train.volume_exponent``: Murnaghan's ``K(V) = K0 (V0/V)^K'`` for every component.
    For the log head that only adds ``-3 K' ln(s)`` times the Mandel identity to L. Targets
    are in the normalised units of ``stats``.
    """
    tc, head = config.train, config.model.head
    if tc.volume_strain <= 0:
        return None
    if not 0 < tc.volume_strain < 0.5:
        raise TrainingError(f"train.volume_strain must be in (0, 0.5), got {tc.volume_strain}")
    import jax.numpy as jnp

    jax = _jax()
    shift = np.asarray(stats["shift"], np.float64)
    scale = np.asarray(stats["scale"], np.float64)
    unit = tensors.voigt_to_irreps(tensors.MANDEL_IDENTITY_VOIGT) / scale  # (21,) normalised
    a, fraction, exponent = tc.volume_strain, tc.volume_fraction, tc.volume_exponent

    def augment(key, inputs, targets):
        dtype = inputs["positions"].dtype
        n_graph = inputs["lattice"].shape[0]
        k_scale, k_pick = jax.random.split(key)
        s = jax.random.uniform(k_scale, (n_graph,), dtype, 1.0 - a, 1.0 + a)
        picked = (jax.random.uniform(k_pick, (n_graph,), dtype) < fraction) & inputs["graph_mask"]
        s = jnp.where(picked, s, 1.0)  # (G,)
        inputs = dict(
            inputs,
            positions=inputs["positions"] * s[inputs["node_graph"]][:, None],
            lattice=inputs["lattice"] * s[:, None, None],
        )
        log_factor = (-3.0 * exponent) * jnp.log(s)  # ln(C'/C), (G,)
        if head == "log":
            targets = targets + log_factor[:, None] * jnp.asarray(unit, dtype)[None, :]
        else:
            f = jnp.exp(log_factor)[:, None]
            sh, sc = jnp.asarray(shift, dtype), jnp.asarray(scale, dtype)
            targets = (f * (sh + sc * targets) - sh) / sc
        return inputs, targets

    return augment


def _step_function(net, tx, n_sub: int = 1, augment=None, seed: int = 0):
    """The un-jitted ``step(params, opt_state, inputs, targets, step)`` of :func:`make_steps`."""
    jax = _jax()
    import jax.numpy as jnp
    import optax

    def per_graph_loss(params, inputs, targets, key):
        if augment is not None:
            inputs, targets = augment(key, inputs, targets)
        y = net.apply(params, inputs)  # (G, 21) normalised
        return jnp.mean((y - targets) ** 2, axis=-1), inputs["graph_mask"].astype(y.dtype)

    def loss_fn(params, inputs, targets, step):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), 0 if step is None else step)
        if n_sub == 1:
            per_graph, mask = per_graph_loss(params, inputs, targets, key)  # (G,)
        else:
            keys = jax.random.split(key, n_sub)
            per_graph, mask = jax.vmap(per_graph_loss, in_axes=(None, 0, 0, 0))(
                params, inputs, targets, keys
            )  # (n_sub, G)
        loss = jnp.sum(per_graph * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        return loss, per_graph

    def step_fn(params, opt_state, inputs, targets, step=None):
        (loss, per_graph), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, inputs, targets, step
        )
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, loss, per_graph

    return step_fn


def make_steps(net, tx, n_sub: int = 1, augment=None, seed: int = 0):
    """Jitted ``train_step(params, opt_state, inputs, targets, step)`` and ``predict_step``.

    With ``n_sub > 1`` the inputs and targets of ``train_step`` carry a leading axis of
    ``n_sub`` padded sub-batches (one per device when sharded, see :class:`DataParallel`);
    the loss is the mean over every real crystal of all sub-batches, so the result does not
    depend on how the sub-batches are spread over devices. ``augment`` (see
    :func:`volume_augmentation`) is applied with a key derived from ``(seed, step)``, so a
    resumed run draws the same scalings as an uninterrupted one; ``step`` is unused without it.
    """
    jax = _jax()
    train_step = jax.jit(_step_function(net, tx, n_sub, augment, seed))

    @jax.jit
    def predict_step(params, inputs):
        return net.apply(params, inputs)

    return train_step, predict_step


def make_scan(net, tx, n_sub: int = 1, augment=None, seed: int = 0, mesh=None):
    """Jitted ``run(params, opt_state, inputs, targets, order, steps)``: several train steps of
    one bucket in a single ``jax.lax.scan``.

    ``inputs`` and ``targets`` hold a bucket's steps stacked on a leading axis (as
    :meth:`DataParallel.shard_steps` places them); step ``i`` of the scan trains on the stacked
    entry ``order[i]`` with the augmentation key of global step ``steps[i]``, exactly as
    :func:`make_steps`' ``train_step(params, opt_state, inputs[order[i]], targets[order[i]],
    steps[i])`` would. Params and optimizer state are donated. Returns ``(params, opt_state,
    losses, bad)``: ``losses (n,)`` the loss of each step, ``bad (n, [n_sub,] G)`` True where a
    graph slot's loss was not finite (replicated over ``mesh``, so every process can read it).
    """
    jax = _jax()
    import jax.numpy as jnp

    step_fn = _step_function(net, tx, n_sub, augment, seed)

    def run(params, opt_state, inputs, targets, order, steps):
        def body(carry, x):
            j, step = x
            take = lambda a: jax.lax.dynamic_index_in_dim(a, j, 0, keepdims=False)  # noqa: E731
            p, o, loss, per_graph = step_fn(*carry, jax.tree.map(take, inputs), take(targets), step)
            return (p, o), (loss, ~jnp.isfinite(per_graph))

        (params, opt_state), (losses, bad) = jax.lax.scan(body, (params, opt_state), (order, steps))
        if mesh is not None:
            from jax.sharding import NamedSharding, PartitionSpec

            bad = jax.lax.with_sharding_constraint(bad, NamedSharding(mesh, PartitionSpec()))
        return params, opt_state, losses, bad

    return jax.jit(run, donate_argnums=(0, 1))


class DataParallel:
    """Data-parallel training over devices with ``jax.sharding``.

    Each step takes ``n_sub`` padded sub-batches stacked on a leading axis. With several
    devices, a 1-D ``Mesh`` over them (axis ``data``) shards that axis (``NamedSharding`` with
    ``P("data")``) and replicates params and optimizer state (``P()``); XLA inserts the
    gradient all-reduce. Across hosts, start every process with ``E3ELASTIC_DISTRIBUTED=1``
    (and JAX's coordinator variables) so :func:`maybe_initialize_distributed` calls
    ``jax.distributed.initialize``; each process then feeds the sub-batches of its own devices.
    """

    def __init__(self, n_sub: int = 0):
        jax = _jax()
        devices = jax.devices()
        n_sub = int(n_sub) if n_sub else len(devices)
        if n_sub < 1:
            raise TrainingError(f"data_parallel must be >= 0, got {n_sub}")
        self.n_sub = n_sub
        self.mesh = None
        if len(devices) > 1 and n_sub % len(devices) == 0:
            from jax.sharding import Mesh

            self.mesh = Mesh(np.array(devices), ("data",))
        self.n_devices = len(devices) if self.mesh is not None else 1

    def replicate(self, tree):
        if self.mesh is None:
            return tree
        jax = _jax()
        from jax.sharding import NamedSharding, PartitionSpec

        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def shard(self, tree):
        """Place stacked ``(n_sub, ...)`` host arrays, split over the mesh's devices."""
        if self.mesh is None:
            return tree
        jax = _jax()
        from jax.sharding import NamedSharding, PartitionSpec

        sharding = NamedSharding(self.mesh, PartitionSpec("data"))
        if jax.process_count() == 1:
            return jax.device_put(tree, sharding)
        per = self.n_sub // jax.process_count()
        lo = jax.process_index() * per
        return jax.tree.map(
            lambda a: jax.make_array_from_process_local_data(sharding, a[lo : lo + per]), tree
        )

    def shard_steps(self, tree):
        """Place a bucket's stacked steps, ``(n_steps, ...)`` host arrays (``(n_steps, n_sub,
        ...)`` with ``n_sub > 1``), on the device once: with a mesh the sub-batch axis is split
        over its devices (``P(None, "data")``), else everything goes to the default device."""
        jax = _jax()
        if self.mesh is None:
            return jax.device_put(tree)
        from jax.sharding import NamedSharding, PartitionSpec

        sharding = NamedSharding(self.mesh, PartitionSpec(None, "data"))
        if jax.process_count() == 1:
            return jax.device_put(tree, sharding)
        per = self.n_sub // jax.process_count()
        lo = jax.process_index() * per
        return jax.tree.map(
            lambda a: jax.make_array_from_process_local_data(sharding, a[:, lo : lo + per]), tree
        )


def maybe_initialize_distributed() -> None:
    """``jax.distributed.initialize()`` when ``E3ELASTIC_DISTRIBUTED=1`` (multi-host runs)."""
    if os.environ.get("E3ELASTIC_DISTRIBUTED") == "1":
        jax = _jax()
        if jax.process_count() == 1:
            jax.distributed.initialize()


@dataclasses.dataclass
class Step:
    """One optimisation step: ``n_sub`` padded batches of one shape, stacked (as
    :func:`stack_inputs`), in host memory."""

    inputs: dict[str, np.ndarray]
    targets: np.ndarray
    ids: list[tuple[str, ...]]  # the real crystals of each sub-batch, in slot order
    n_real: int


@dataclasses.dataclass
class BucketSteps:
    """The steps of one padded shape."""

    bucket: graph_mod.Bucket
    steps: list[Step]


def plan_steps(
    graphs, targets, *, batch_size, buckets, n_sub: int, seed: int, dtype, theory=None
) -> list[BucketSteps]:
    """The training steps of a run, grouped by padded shape; made once, reused every epoch.

    The graphs are packed into padded batches once, in a shuffled order from ``seed``
    (:func:`e3elastic.graph.batches`: each batch goes to the smallest bucket that fits it), so a
    crystal keeps its batch-mates for the whole run. Each bucket's batches are grouped
    ``n_sub`` at a time into steps, the last group filled with all-padding batches. Buckets
    come sorted by size. :func:`epoch_order` says in which order an epoch runs them.
    """
    by_bucket: dict[tuple, list] = {}
    for b in graph_mod.batches(
        graphs, targets, batch_size=batch_size, buckets=buckets, shuffle=True, seed=seed
    ):
        by_bucket.setdefault(tuple(b.bucket), []).append(b)
    tshape = np.asarray(targets).shape[1:]
    out = []
    for key in sorted(by_bucket):
        bucket, bs = graph_mod.Bucket(*key), by_bucket[key]
        steps = []
        for i in range(0, len(bs), n_sub):
            group = bs[i : i + n_sub]
            while n_sub > 1 and len(group) < n_sub:
                group.append(graph_mod.pad_batch([], bucket, np.zeros((0, *tshape))))
            inputs, tgt = stack_inputs(group, dtype, theory)
            ids = [tuple(g.ids) for g in group]
            steps.append(Step(inputs, tgt, ids, sum(len(x) for x in ids)))
        out.append(BucketSteps(bucket, steps))
    return out


def epoch_order(plan: list[BucketSteps], seed: int, epoch: int) -> list[tuple[int, np.ndarray]]:
    """``[(bucket index, step order), ...]``: an epoch's steps, one bucket after another.

    From a generator seeded with :func:`epoch_seed` ``(seed, epoch)``: first a permutation of
    the buckets, then one permutation of each bucket's steps (drawn in bucket order).
    """
    rng = np.random.default_rng(epoch_seed(seed, epoch))
    buckets = rng.permutation(len(plan))
    perms = [rng.permutation(len(bs.steps)).astype(np.int32) for bs in plan]
    return [(int(k), perms[k]) for k in buckets]


def _bad_ids(step: Step, bad: np.ndarray) -> list[str]:
    """Ids of the crystals of ``step`` whose loss is flagged in ``bad`` (``([n_sub,] G)``
    bool); every crystal of the step when none is flagged (the loss itself overflowed)."""
    bad = np.asarray(bad).reshape(len(step.ids), -1)
    return [
        ids[i] for k, ids in enumerate(step.ids) for i in np.flatnonzero(bad[k, : len(ids)])
    ] or [i for ids in step.ids for i in ids]


def _fetch(tree):
    """Bring device results to the host: the scan loop's one transfer per bucket."""
    return _jax().device_get(tree)


def stack_inputs(group, dtype, theory=None):
    """Model inputs and targets of a step: one batch as is, or ``n_sub`` stacked."""
    from .model import batch_inputs

    if len(group) == 1:
        b = group[0]
        return batch_inputs(b, dtype, theory), b.targets.astype(dtype)
    parts = [batch_inputs(b, dtype, theory) for b in group]
    inputs = {k: np.stack([p[k] for p in parts]) for k in parts[0]}
    return inputs, np.stack([b.targets for b in group]).astype(dtype)


def _np_dtype(config: Config):
    return np.float64 if config.train.dtype == "float64" else np.float32


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % (2**31)


def predict_irreps(
    predict_step, params, graphs, buckets, batch_size, stats, dtype, theory=None
) -> np.ndarray:
    """Denormalised head outputs ``(n, 21)`` (float64) for graphs, in input order: irreps of C
    (GPa) or of its logarithm (see :func:`e3elastic.model.voigt_from_outputs`)."""
    from .model import batch_inputs

    out = np.zeros((len(graphs), 21))
    if not graphs:
        return out
    for b in graph_mod.batches(graphs, batch_size=batch_size, buckets=buckets):
        y = np.asarray(predict_step(params, batch_inputs(b, dtype, theory)), np.float64)
        real = b.graph_index >= 0
        out[b.graph_index[real]] = y[real]
    return stats["shift"] + stats["scale"] * out


def evaluate_part(pred_irreps, records, config: Config, groups=("theory", "source")) -> dict:
    """Metrics of head outputs ``(n, 21)`` against records' tensors."""
    from .model import voigt_from_outputs

    if len(records) == 0:
        return {"n": 0}
    pred = voigt_from_outputs(pred_irreps, config.model)
    true = np.stack([r.voigt for r in records])
    return metrics_mod.tensor_metrics(
        pred,
        true,
        [r.crystal_system or "unknown" for r in records],
        {g: [getattr(r, g) for r in records] for g in groups},
    )


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar on stderr (only when it is a terminal)."""

    def __init__(self, total: int, label: str, enabled: bool | None = None):
        self.total, self.label = total, label
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.t0 = time.perf_counter()
        self.n = 0
        self.crystals = 0

    def update(self, crystals: int, loss: float, steps: int = 1) -> None:
        self.n += steps
        self.crystals += crystals
        if not self.enabled:
            return
        dt = max(time.perf_counter() - self.t0, 1e-9)
        width = 24
        done = int(width * self.n / max(self.total, 1))
        sys.stderr.write(
            f"\r{self.label} [{'#' * done}{'.' * (width - done)}] {self.n}/{self.total} "
            f"loss {loss:.4f} {self.crystals / dt:.1f} crystals/s"
        )
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _score(m: dict[str, Any]) -> float:
    return float(m.get("rel_frobenius", math.inf))


def _truncate_jsonl(path: Path, last_epoch: int) -> None:
    """Keep lines with epoch <= last_epoch (what the restored checkpoint has seen)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("epoch", -1) <= last_epoch:
                keep.append(line)
        except json.JSONDecodeError:
            break  # a line cut by a kill
    path.write_text("".join(k + "\n" for k in keep))


def _append_jsonl(path: Path, obj: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(obj, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def train_and_evaluate(
    config: Config,
    workdir: str | os.PathLike,
    *,
    resume: bool = False,
    prepared: Prepared | None = None,
    log=_log,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Train ``config`` in ``workdir``; returns the final metrics (see module docstring).

    While it runs, ``workdir/.lock`` holds the trainer's PID and host (see :func:`take_lock`).
    ``resume`` refuses settings that differ from those the run started with, except
    :data:`RESUMABLE_CHANGES`.
    """
    jax = _jax()
    maybe_initialize_distributed()
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    lock = take_lock(workdir, log) if jax.process_index() == 0 else None
    try:
        return _train(config, workdir, resume, prepared, log, progress)
    finally:
        if lock is not None:
            lock.unlink(missing_ok=True)


#: Settings a resumed run may change: they do not alter what it computes.
RESUMABLE_CHANGES = ("train.max_minutes", "train.loop")


def config_changes(saved: Config, config: Config) -> list[str]:
    """``section.key old -> new`` (values as JSON) for each setting that differs."""

    def flat(c: Config) -> dict[str, Any]:
        return {
            f"{section}.{k}": v
            for section, values in c.to_dict().items()
            if isinstance(values, dict)
            for k, v in values.items()
        }

    a, b = flat(saved), flat(config)
    return [
        f"{k} {json.dumps(a[k])} -> {json.dumps(b[k])}"
        for k in a
        if a[k] != b[k] and k not in RESUMABLE_CHANGES
    ]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def take_lock(workdir: Path, log=_log) -> Path:
    """Create ``workdir/.lock`` holding this process's PID and host; ``TrainingError`` while
    a live process (or one on another host) holds it. A lock whose process is gone is taken
    over with a note."""
    path = workdir / ".lock"
    host = socket.gethostname()
    for _ in range(5):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text())
                pid, other = int(holder["pid"]), str(holder["host"])
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError):
                pid, other = None, None
            if pid is not None and (other != host or _pid_alive(pid)):
                raise TrainingError(
                    f"{workdir} is in use by process {pid} on {other} (lock file {path}); wait "
                    "for it to finish or use another --workdir (delete the lock file only if "
                    "that process is not training there)"
                ) from None
            gone = f"process {pid} on {other} is gone" if pid is not None else "empty or garbled"
            log(f"note: taking over the stale lock {path} ({gone})")
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": host}, f)
        return path
    raise TrainingError(f"cannot take the lock {path}; another trainer keeps taking it")


def _train(config: Config, workdir: Path, resume: bool, prepared, log, progress):
    jax = _jax()
    if config.train.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    elif config.train.dtype != "float32":
        raise TrainingError(f"train.dtype must be float32 or float64, got {config.train.dtype}")
    from .checkpoint import TrainCheckpoints, export_bundle
    from .model import batch_inputs, irrep_stats

    cfg_path = workdir / "config.json"
    if resume and cfg_path.exists():
        changes = config_changes(Config.from_json(cfg_path.read_text()), config)
        if changes:
            raise TrainingError(
                f"{workdir} holds a run started with other settings: {', '.join(changes)}. "
                "A run resumes with the settings it started with (its learning-rate schedule "
                "follows train.epochs): resume with the same options, or start a new run "
                "with another --workdir"
            )
    cfg_path.write_text(config.to_json())
    tc, dc = config.train, config.data
    dtype = _np_dtype(config)

    t_start = time.perf_counter()
    prep = prepared if prepared is not None else prepare_data(config, log=log)
    log(
        f"data: train {len(prep.graphs['train'])}, val {len(prep.graphs['val'])}, "
        f"test {len(prep.graphs['test'])} crystals; buckets {list(map(tuple, prep.buckets))}"
    )
    stats = irrep_stats(prep.irreps["train"])
    targets = {p: (prep.irreps[p] - stats["shift"]) / stats["scale"] for p in prep.irreps}
    train_graphs = prep.graphs["train"]
    dp = DataParallel(tc.data_parallel)
    plan = plan_steps(
        train_graphs,
        targets["train"],
        batch_size=dc.batch_size,
        buckets=prep.buckets,
        n_sub=dp.n_sub,
        seed=epoch_seed(tc.seed, 0),
        dtype=dtype,
        theory=prep.theory["train"],
    )
    steps_per_epoch = sum(len(bs.steps) for bs in plan)

    net = create_model(config)
    first = graph_mod.pad_batch(train_graphs[:1], prep.buckets[0])
    params = init_params(config, batch_inputs(first, dtype), tc.seed)
    tx, schedule = create_optimizer(config, steps_per_epoch)
    opt_state = tx.init(params)
    augment = volume_augmentation(config, stats)
    if tc.loop == "scan":
        train_step = make_scan(net, tx, dp.n_sub, augment=augment, seed=tc.seed, mesh=dp.mesh)
    else:
        train_step, _ = make_steps(net, tx, dp.n_sub, augment=augment, seed=tc.seed)
    _, predict_step = make_steps(net, tx)

    split_ids = {p: [r.id for r in prep.records[p]] for p in ("train", "val", "test")}
    ckpts = TrainCheckpoints(workdir, max_to_keep=tc.max_to_keep)
    if not resume and ckpts.steps():
        raise TrainingError(
            f"{workdir} already holds checkpoints (steps {ckpts.steps()}); pass --resume to "
            "continue that run, or use a new --workdir"
        )
    metrics_path, timing_path = workdir / "metrics.jsonl", workdir / "timing.jsonl"
    start_epoch, best = 0, {"score": math.inf, "epoch": -1}
    if resume:
        state = {"params": params, "opt_state": opt_state, "epoch": np.int64(0)}
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), state)
        restored = ckpts.restore(abstract, log=log)
        if restored is not None:
            step, st, meta = restored
            params, opt_state = st["params"], st["opt_state"]
            start_epoch = int(st["epoch"]) + 1
            best = meta.get("best", best)
            if meta.get("split") and meta["split"] != split_ids:
                raise TrainingError(
                    "the data split differs from the one this run started with; "
                    "resume with the same data and settings, or use a new --workdir"
                )
            log(f"resumed from step {step} (epoch {start_epoch - 1})")
            _truncate_jsonl(metrics_path, start_epoch - 1)
            _truncate_jsonl(timing_path, start_epoch - 1)
        else:
            log("no checkpoint to resume from; starting fresh")
    if start_epoch == 0:
        for p in (metrics_path, timing_path):
            p.unlink(missing_ok=True)

    def meta_for(epoch: int) -> dict[str, Any]:
        return {
            "config": config.to_dict(),
            "stats": {k: v.tolist() for k, v in stats.items()},
            "split": split_ids,
            "best": best,
            "epoch": epoch,
        }

    training_counts = training_set_counts(prep.records["train"])

    def export_best(epoch: int, val_metrics: dict) -> None:
        export_bundle(
            workdir / "best",
            config,
            params,
            stats,
            {
                "epoch": epoch,
                "val": val_metrics,
                "split": split_ids,
                "trained": time.strftime("%Y-%m-%d"),
                "data": {k: v for k, v in dataclasses.asdict(dc).items()},
                "training_set": training_counts,
            },
        )

    eval_bs = dc.batch_size
    params, opt_state = dp.replicate((params, opt_state))
    if dp.n_sub > 1:
        log(f"data parallel: {dp.n_sub} sub-batches per step on {dp.n_devices} device(s)")
    if tc.loop == "scan":
        # each bucket's steps go to the device once, for the whole run
        on_device = [
            dp.shard_steps(
                (
                    {k: np.stack([st.inputs[k] for st in bs.steps]) for k in bs.steps[0].inputs},
                    np.stack([st.targets for st in bs.steps]),
                )
            )
            for bs in plan
        ]

    def non_finite(epoch: int, step: Step, bad) -> TrainingError:
        ids = _bad_ids(step, bad)
        where = f"non-finite loss at epoch {epoch} in a batch with {', '.join(ids[:5])}"
        where += " ..." if len(ids) > 5 else ""
        if tc.loop == "python":
            return TrainingError(
                f"{where}; stopped without saving this step "
                f"(the last good checkpoint in {ckpts.directory} is intact)"
            )
        return TrainingError(
            f"{where}; stopped without saving: the weights in memory had already gone on past "
            f"that step on the device and are dropped. The last good checkpoint in "
            f"{ckpts.directory} is intact; resume from it with --resume once the data is fixed "
            "(train.loop=python stops at the step itself)"
        )

    for epoch in range(start_epoch, tc.epochs):
        t0 = time.perf_counter()
        losses, n_seen = [], 0
        bar = Progress(steps_per_epoch, f"epoch {epoch}", progress)
        k = epoch * steps_per_epoch  # global step index: the augmentation key
        for b, order in epoch_order(plan, tc.seed, epoch):
            steps = plan[b].steps
            if tc.loop == "python":
                for j in order:
                    st = steps[j]
                    new_params, new_opt, loss, per_graph = train_step(
                        params, opt_state, dp.shard(st.inputs), dp.shard(st.targets), np.int32(k)
                    )
                    loss = float(loss)
                    if not math.isfinite(loss):
                        raise non_finite(epoch, st, ~np.isfinite(np.asarray(per_graph)))
                    params, opt_state = new_params, new_opt
                    losses.append((loss, st.n_real))
                    n_seen += st.n_real
                    k += 1
                    bar.update(st.n_real, loss)
                continue
            ids = np.arange(k, k + len(order), dtype=np.int32)
            with jax.transfer_guard_device_to_host("disallow"):
                params, opt_state, dev_losses, dev_bad = train_step(
                    params, opt_state, *on_device[b], order, ids
                )
                step_losses, bad = _fetch((dev_losses, dev_bad))
            for i, j in enumerate(order):
                loss = float(step_losses[i])
                if not math.isfinite(loss):
                    # params went on past this step inside the scan: never kept or saved
                    raise non_finite(epoch, steps[j], bad[i])
                losses.append((loss, steps[j].n_real))
            n_real = sum(steps[j].n_real for j in order)
            n_seen += n_real
            k += len(order)
            bar.update(n_real, losses[-1][0], steps=len(order))
        bar.close()
        t_train = time.perf_counter() - t0
        train_loss = sum(l * n for l, n in losses) / max(1, sum(n for _, n in losses))
        record: dict[str, Any] = {
            "epoch": epoch,
            "step": (epoch + 1) * steps_per_epoch,
            "lr": float(schedule((epoch + 1) * steps_per_epoch)),
            "train_loss": train_loss,
            "n_shapes": len(plan),
        }
        improved = False
        if prep.graphs["val"] and (epoch + 1) % tc.eval_every == 0:
            pred = predict_irreps(
                predict_step,
                params,
                prep.graphs["val"],
                prep.buckets,
                eval_bs,
                stats,
                dtype,
                prep.theory["val"],
            )
            vm = evaluate_part(pred, prep.records["val"], config)
            record["val"] = {k: v for k, v in vm.items() if not k.startswith("by_")}
            if _score(vm) < best["score"]:
                best = {"score": _score(vm), "epoch": epoch}
                improved = True
        elif not prep.graphs["val"]:
            best = {"score": train_loss, "epoch": epoch}
            improved = True
        _append_jsonl(metrics_path, record)
        if improved:
            export_best(epoch, record.get("val", {}))
        if (epoch + 1) % tc.checkpoint_every == 0 or epoch + 1 == tc.epochs:
            ckpts.save(
                epoch,
                {"params": params, "opt_state": opt_state, "epoch": np.int64(epoch)},
                meta_for(epoch),
            )
        dt = time.perf_counter() - t0
        _append_jsonl(
            timing_path,
            {
                "epoch": epoch,
                "seconds": dt,
                "train_seconds": t_train,
                "crystals_per_s": n_seen / max(t_train, 1e-9),
                "n_shapes": len(plan),
                # programs compiled for the train step in this process so far
                "n_compiled": int(getattr(train_step, "_cache_size", lambda: -1)()),
            },
        )
        val_txt = ""
        if "val" in record:
            v = record["val"]
            val_txt = f" val rel {v['rel_frobenius']:.4f} MAE {v['mae_voigt_GPa']:.2f}"
        log(
            f"epoch {epoch}: loss {train_loss:.4f}{val_txt} ({dt:.1f} s, "
            f"{n_seen / max(t_train, 1e-9):.1f} crystals/s){' *' if improved else ''}"
        )
        if "val" in record and epoch - best["epoch"] >= tc.patience:
            log(
                f"early stop: no better validation error for {epoch - best['epoch']} epochs "
                f"(patience {tc.patience})"
            )
            break
        if tc.max_minutes and (time.perf_counter() - t_start) > 60 * tc.max_minutes:
            log(f"stopping: reached max_minutes={tc.max_minutes}")
            break
    ckpts.close()
    return final_evaluation(workdir, prep, log=log)


def training_set_counts(records) -> dict[str, Any]:
    """What a model was trained on, for its bundle: crystals per element (a crystal counts
    once per element it contains) and per level of theory, and the range of volume per atom
    (Angstrom^3) and of nearest-neighbour distance ratios, for domain checks at prediction."""
    elements: Counter = Counter()
    theory: Counter = Counter()
    vpa = []
    for r in records:
        elements.update({str(el) for el in r.structure.composition.elements})
        theory[r.theory] += 1
        vpa.append(r.structure.volume / max(len(r.structure), 1))
    v = np.asarray(vpa) if vpa else np.zeros(1)
    return {
        "n_crystals": len(records),
        "elements": dict(sorted(elements.items())),
        "theory": dict(sorted(theory.items())),
        "volume_per_atom_A3": {
            "min": float(v.min()),
            "p01": float(np.quantile(v, 0.01)),
            "median": float(np.median(v)),
            "p99": float(np.quantile(v, 0.99)),
            "max": float(v.max()),
        },
    }


def final_evaluation(workdir: Path, prep: Prepared, log=_log) -> dict[str, Any]:
    """Evaluate the exported best bundle on val and test; writes ``final_metrics.json``."""
    from .checkpoint import load_bundle

    config, params, stats, info = load_bundle(Path(workdir) / "best")
    params = cast_params(params, config)
    net = create_model(config)
    _, predict_step = make_steps(net, _identity_tx())
    dtype = _np_dtype(config)
    out: dict[str, Any] = {"best_epoch": info.get("epoch")}
    for part in ("train", "val", "test"):
        pred = predict_irreps(
            predict_step,
            params,
            prep.graphs[part],
            prep.buckets,
            config.data.batch_size,
            stats,
            dtype,
            prep.theory[part],
        )
        out[part] = evaluate_part(pred, prep.records[part], config)
        if part != "train" and out[part].get("n"):
            log(
                f"{part}: n={out[part]['n']} rel {out[part]['rel_frobenius']:.4f} "
                f"MAE {out[part]['mae_voigt_GPa']:.2f} GPa, EwT25 {out[part]['ewt_25']:.3f}"
            )
    out["baselines"] = baselines(prep)
    (Path(workdir) / "final_metrics.json").write_text(json.dumps(out, indent=2, sort_keys=True))
    return out


def _identity_tx():
    import optax

    return optax.identity()


def baselines(prep: Prepared) -> dict[str, Any]:
    """Test metrics of two trivial predictors: the training-mean tensor, overall and per
    crystal system (falling back to the overall mean for a system unseen in training)."""
    train = np.stack([r.voigt for r in prep.records["train"]])
    mean = train.mean(axis=0)
    by_sys: dict[str, list] = {}
    for r in prep.records["train"]:
        by_sys.setdefault(r.crystal_system, []).append(r.voigt)
    sys_mean = {k: np.mean(v, axis=0) for k, v in by_sys.items()}
    out = {}
    for part in ("val", "test"):
        recs = prep.records[part]
        if not recs:
            continue
        true = np.stack([r.voigt for r in recs])
        systems = [r.crystal_system or "unknown" for r in recs]
        p1 = np.broadcast_to(mean, true.shape)
        p2 = np.stack([sys_mean.get(s, mean) for s in systems])
        out[part] = {
            "train_mean": metrics_mod.tensor_metrics(p1, true),
            "train_mean_per_crystal_system": metrics_mod.tensor_metrics(p2, true),
        }
    return out
