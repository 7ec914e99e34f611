"""The network as compiled programs for prediction, kept on disk between processes.

:class:`StoredPrograms` is the network's ``apply(params, inputs)``, compiled once per input
shape and exported (StableHLO) to the cache, so a later process neither traces flax and
e3nn-jax nor imports them; :func:`inference_buckets` picks the padded shapes of a prediction
run so that few programs are needed.

The package also ships the programs of the shipped models' architecture for the shapes a
prediction of one to a few crystals uses (:data:`SHIPPED_DIR`, CPU, float32; written by
``scripts/export_programs.py``), with the parameter shapes they take. A first run on a new
machine then compiles a stored program instead of tracing the network: no flax or e3nn-jax at
all. They are used only while :func:`network_key` of the config matches the key they were
exported under, i.e. for the same model config, the same model source files and the same flax
and e3nn-jax versions; anything else traces the network as before. Both keys are defined in
:mod:`e3elastic.network.architecture`.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .. import graph as graph_mod
from ..config import Config
from ..files import atomic_write
from ..network.architecture import architecture_key, network_key
from ..runtime import cache_root

__all__ = [
    "SHIPPED_DIR",
    "StoredPrograms",
    "inference_buckets",
    "network_key",
    "program_digest",
    "shipped_param_shapes",
]

#: Programs shipped with the package (see the module docstring).
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "compiled"


def program_digest(key: str, inputs_sig: Any, params_sig: Any, backend: str, x64: bool) -> str:
    """File stem of the program for these input and parameter shapes."""
    text = repr((key, inputs_sig, params_sig, backend, x64))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def inputs_signature(inputs: dict[str, Any]) -> tuple:
    """``((name, shape, dtype), ...)`` of a model input dict, sorted by name."""
    return tuple((k, np.shape(v), np.asarray(v).dtype.str) for k, v in sorted(inputs.items()))


def params_signature(params: Any) -> list:
    """``[(shape, dtype), ...]`` of a parameter tree's leaves, in tree order."""
    import jax

    return [(np.shape(a), np.asarray(a).dtype.str) for a in jax.tree_util.tree_leaves(params)]


@lru_cache(maxsize=1)
def _shipped_index() -> dict[str, Any]:
    try:
        return json.loads((SHIPPED_DIR / "index.json").read_text())
    except (OSError, ValueError):
        return {}


def shipped_param_shapes(config: Config) -> dict[str, tuple[int, ...]] | None:
    """Parameter shapes of the shipped programs of ``config``'s network, or None."""
    entry = _shipped_index().get(network_key(config))
    if not isinstance(entry, dict) or not isinstance(entry.get("param_shapes"), dict):
        return None
    return {k: tuple(v) for k, v in entry["param_shapes"].items()}


def _shipped_program(config: Config, inputs_sig, params_sig, backend: str, x64: bool):
    """The shipped program for these shapes (deserialised), or None."""
    if backend != "cpu" or x64:
        return None
    key = network_key(config)
    entry = _shipped_index().get(key)
    if not isinstance(entry, dict):
        return None
    stem = program_digest(key, inputs_sig, params_sig, backend, x64)
    if stem not in entry.get("programs", ()):
        return None
    try:
        from jax import export

        return export.deserialize(bytearray((SHIPPED_DIR / f"{stem}.bin").read_bytes()))
    except Exception:  # damaged, or a jax too old to read it: trace instead
        return None


class StoredPrograms:
    """The network's jitted ``apply``, one program per input shape, each kept on disk.

    Tracing the flax/e3nn network takes seconds; so every program is also exported
    (``jax.export``, StableHLO) to ``<cache>/exported/``, keyed by the architecture
    (:func:`e3elastic.network.architecture.architecture_key`), the input and parameter shapes, the
    backend and the precision mode. A later process deserialises it instead of tracing, and XLA
    compiles it from the persistent compilation cache. Without a usable cache (or without the
    ``flatbuffers`` package that serialisation needs) it falls back to a plain ``jax.jit``.
    """

    def __init__(self, config: Config):
        self.config = config
        self.programs: dict[Any, Any] = {}

    def _jitted(self):
        import jax

        from ..network.model import ElasticityNet

        return jax.jit(ElasticityNet(self.config.model).apply)

    def __call__(self, params, inputs):
        sig = inputs_signature(inputs)
        fn = self.programs.get(sig)
        if fn is None:
            fn = self.programs[sig] = self._program(params, inputs, sig)
        return fn(params, inputs)

    def _program(self, params, inputs, sig):
        import jax

        try:
            from jax import export
        except ImportError:
            return self._jitted()
        params_sig = params_signature(params)
        backend, x64 = jax.default_backend(), bool(jax.config.jax_enable_x64)
        shipped = _shipped_program(self.config, sig, params_sig, backend, x64)
        if shipped is not None:
            return jax.jit(shipped.call)
        stem = program_digest(architecture_key(self.config), sig, params_sig, backend, x64)
        path = cache_root() / "exported" / f"{stem}.bin"
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
    """Power-of-two shapes, so repeated calls reuse a few compiled programs.

    The largest shape holds ``batch_size`` of the largest graphs (all graphs, when they are
    fewer). With more graphs than one batch, each smaller shape is half the one above (down to
    64 nodes and 1,024 edges), so that a batch of small crystals is not padded to the shape of
    the largest one: :func:`e3elastic.network.interface.predict_irreps` batches graphs by size
    and pads each batch to the smallest shape that holds it.
    """
    n = max(g.n_node for g in graphs)
    e = max(g.n_edge for g in graphs)
    total_n = sum(g.n_node for g in graphs)
    total_e = sum(g.n_edge for g in graphs)
    nodes = 1 << max(6, int(min(total_n, max(n, 1) * batch_size) + 1).bit_length())
    edges = 1 << max(10, int(min(total_e, max(e, 1) * batch_size)).bit_length())
    shapes = [graph_mod.Bucket(nodes, edges, batch_size + 1)]
    if len(graphs) > batch_size:
        while nodes >= 128 and edges >= 2048:
            nodes, edges = nodes // 2, edges // 2
            shapes.append(graph_mod.Bucket(nodes, edges, batch_size + 1))
    return tuple(reversed(shapes))
