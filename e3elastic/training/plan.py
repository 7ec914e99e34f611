"""The training steps of a run: crystals packed into padded batches once, steps ordered anew
each epoch.

:func:`plan_steps` packs the training graphs into padded batches once per run (a crystal keeps
its batch-mates), groups them ``n_sub`` at a time into :class:`Step` s and sorts them by padded
shape (:class:`BucketSteps`); :func:`epoch_order` shuffles buckets and steps per epoch from a
seed derived from (seed, epoch) (:func:`epoch_seed`), so a resumed run takes the same steps as
an uninterrupted one.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import graph as graph_mod

__all__ = [
    "BucketSteps",
    "Step",
    "epoch_order",
    "epoch_seed",
    "flagged_ids",
    "plan_steps",
    "stack_inputs",
]


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


def epoch_seed(seed: int, epoch: int) -> int:
    return (int(seed) * 1_000_003 + int(epoch) * 7919) % (2**31)


def stack_inputs(group, dtype, theory=None):
    """Model inputs and targets of a step: one batch as is, or ``n_sub`` stacked."""
    from ..network.interface import batch_inputs

    if len(group) == 1:
        b = group[0]
        return batch_inputs(b, dtype, theory), b.targets.astype(dtype)
    parts = [batch_inputs(b, dtype, theory) for b in group]
    inputs = {k: np.stack([p[k] for p in parts]) for k in parts[0]}
    return inputs, np.stack([b.targets for b in group]).astype(dtype)


def flagged_ids(step: Step, bad: np.ndarray) -> list[str]:
    """Ids of the crystals of ``step`` whose loss is flagged in ``bad`` (``([n_sub,] G)``
    bool); every crystal of the step when none is flagged (the loss itself overflowed)."""
    bad = np.asarray(bad).reshape(len(step.ids), -1)
    return [
        ids[i] for k, ids in enumerate(step.ids) for i in np.flatnonzero(bad[k, : len(ids)])
    ] or [i for ids in step.ids for i in ids]
