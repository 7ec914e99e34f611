"""The network as compiled programs for prediction, kept on disk between processes.

:class:`StoredPrograms` is the network's ``apply(params, inputs)``, compiled once per input
shape and exported (StableHLO) to the cache, so a later process neither traces flax and
e3nn-jax nor imports them; :func:`inference_buckets` picks the padded shapes of a prediction
run so that few programs are needed.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from . import graph as graph_mod
from .config import Config
from .files import atomic_write
from .runtime import cache_root

__all__ = ["StoredPrograms", "inference_buckets"]


class StoredPrograms:
    """The network's jitted ``apply``, one program per input shape, each kept on disk.

    Tracing the flax/e3nn network takes seconds; so every program is also exported
    (``jax.export``, StableHLO) to ``<cache>/exported/``, keyed by the architecture
    (:func:`e3elastic.bundle.architecture_key`), the input and parameter shapes, the
    backend and the precision mode. A later process deserialises it instead of tracing, and XLA
    compiles it from the persistent compilation cache. Without a usable cache (or without the
    ``flatbuffers`` package that serialisation needs) it falls back to a plain ``jax.jit``.
    """

    def __init__(self, config: Config):
        self.config = config
        self.programs: dict[Any, Any] = {}

    def _jitted(self):
        import jax

        from .model import ElasticityNet

        return jax.jit(ElasticityNet(self.config.model).apply)

    def __call__(self, params, inputs):
        sig = tuple((k, np.shape(v), np.asarray(v).dtype.str) for k, v in sorted(inputs.items()))
        fn = self.programs.get(sig)
        if fn is None:
            fn = self.programs[sig] = self._program(params, inputs, sig)
        return fn(params, inputs)

    def _program(self, params, inputs, sig):
        import jax

        from .bundle import architecture_key

        try:
            from jax import export
        except ImportError:
            return self._jitted()
        leaves = jax.tree_util.tree_leaves(params)
        key = repr(
            (
                architecture_key(self.config),
                sig,
                [(np.shape(a), np.asarray(a).dtype.str) for a in leaves],
                jax.default_backend(),
                bool(jax.config.jax_enable_x64),
            )
        )
        path = cache_root() / "exported" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.bin"
        try:
            return jax.jit(export.deserialize(bytearray(path.read_bytes())).call)
        except Exception:  # absent, damaged or from another jax: export it again
            pass
        jitted = self._jitted()  # the network itself (flax, e3nn-jax) only on a cache miss
        try:
            exported = export.export(jitted)(params, inputs)
            blob = exported.serialize()
        except Exception:  # e.g. no flatbuffers: serialisation unavailable
            return jitted
        try:
            atomic_write(path, blob)
        except OSError:
            pass
        return jax.jit(exported.call)


def inference_buckets(graphs, batch_size):
    """Power-of-two shapes, so repeated calls reuse a few compiled programs."""
    n = max(g.n_node for g in graphs)
    e = max(g.n_edge for g in graphs)
    total_n = sum(g.n_node for g in graphs)
    total_e = sum(g.n_edge for g in graphs)
    nodes = 1 << max(6, int(min(total_n, max(n, 1) * batch_size) + 1).bit_length())
    edges = 1 << max(10, int(min(total_e, max(e, 1) * batch_size)).bit_length())
    return (graph_mod.Bucket(nodes, edges, batch_size + 1),)
