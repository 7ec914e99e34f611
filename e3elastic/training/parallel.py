"""Data-parallel training over devices with ``jax.sharding``: a 1-D mesh, and where each array
goes on it.

Each step takes ``n_sub`` padded sub-batches stacked on a leading axis. With several devices,
a 1-D ``Mesh`` over them (axis ``data``) shards that axis (``NamedSharding`` with ``P("data")``)
and replicates params and optimizer state (``P()``); XLA inserts the gradient all-reduce.
Across hosts, start every process with ``E3ELASTIC_DISTRIBUTED=1`` (and JAX's coordinator
variables) so :func:`maybe_initialize_distributed` calls ``jax.distributed.initialize``; each
process then feeds the sub-batches of its own devices.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .prepare import TrainingError

__all__ = ["DataParallel", "maybe_initialize_distributed"]


class DataParallel:
    """``n_sub`` sub-batches per step, spread over the devices (see the module docstring)."""

    def __init__(self, n_sub: int = 0):
        devices = jax.devices()
        n_sub = int(n_sub) if n_sub else len(devices)
        if n_sub < 1:
            raise TrainingError(f"data_parallel must be >= 0, got {n_sub}")
        self.n_sub = n_sub
        self.mesh = None
        if len(devices) > 1 and n_sub % len(devices) == 0:
            self.mesh = Mesh(np.array(devices), ("data",))
        self.n_devices = len(devices) if self.mesh is not None else 1

    def replicate(self, tree):
        """Copy ``tree`` (params, optimizer state) to every device of the mesh."""
        if self.mesh is None:
            return tree
        return jax.device_put(tree, NamedSharding(self.mesh, PartitionSpec()))

    def shard(self, tree):
        """Place stacked ``(n_sub, ...)`` host arrays, split over the mesh's devices."""
        if self.mesh is None:
            return tree
        return self._place(tree, PartitionSpec("data"), lambda a, lo, hi: a[lo:hi])

    def shard_steps(self, tree):
        """Place a bucket's stacked steps, ``(n_steps, ...)`` host arrays (``(n_steps, n_sub,
        ...)`` with ``n_sub > 1``), on the device once: with a mesh the sub-batch axis is split
        over its devices (``P(None, "data")``), else everything goes to the default device."""
        if self.mesh is None:
            return jax.device_put(tree)
        return self._place(tree, PartitionSpec(None, "data"), lambda a, lo, hi: a[:, lo:hi])

    def _place(self, tree, spec: PartitionSpec, local_part):
        """``tree`` on the mesh with ``spec``; across processes each feeds ``local_part(array,
        lo, hi)``, its own slice ``[lo, hi)`` of the sub-batch axis."""
        sharding = NamedSharding(self.mesh, spec)
        if jax.process_count() == 1:
            return jax.device_put(tree, sharding)
        per = self.n_sub // jax.process_count()
        lo = jax.process_index() * per
        return jax.tree.map(
            lambda a: jax.make_array_from_process_local_data(sharding, local_part(a, lo, lo + per)),
            tree,
        )


def maybe_initialize_distributed() -> None:
    """``jax.distributed.initialize()`` when ``E3ELASTIC_DISTRIBUTED=1`` (multi-host runs)."""
    if os.environ.get("E3ELASTIC_DISTRIBUTED") == "1" and jax.process_count() == 1:
        jax.distributed.initialize()
