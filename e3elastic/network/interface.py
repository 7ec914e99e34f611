"""The network's numpy interface: the arrays it reads, and what its 21 outputs mean.

Kept apart from :mod:`e3elastic.network.model` (flax and e3nn-jax) so that prediction from a stored,
compiled program needs neither: :func:`batch_inputs` builds the input dict from a padded
:class:`e3elastic.graph.Batch`; :func:`targets_from_voigt` and :func:`voigt_from_outputs` map
Voigt tensors to the 21 irreps the head learns and back (C itself for the ``linear`` head, the
log-stiffness ``logm(Mandel(C) / log_reference)`` for the ``log`` head); :func:`irrep_stats` is
the per-irrep normalisation of training targets; :func:`predict_irreps` runs any compiled
``apply`` over padded batches of graphs and denormalises its outputs (the one batch loop of
inference, evaluation and training).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .. import tensors
from ..config import ModelConfig

__all__ = [
    "INPUT_FIELDS",
    "INPUT_SPEC",
    "batch_inputs",
    "dummy_inputs",
    "irrep_stats",
    "predict_irreps",
    "targets_from_voigt",
    "voigt_from_outputs",
]

#: The arrays of a padded batch that the model reads: name -> (dtype, shape), in the sizes
#: ``N`` (nodes), ``E`` (edges) and ``G`` (graphs) of a :class:`~e3elastic.graph.Batch`;
#: ``float`` is the model's float type. ``theory`` is the level-of-theory index of each graph.
INPUT_SPEC: dict[str, tuple[Any, tuple[int | str, ...]]] = {
    "species": (np.int32, ("N",)),
    "positions": (float, ("N", 3)),
    "lattice": (float, ("G", 3, 3)),
    "senders": (np.int32, ("E",)),
    "receivers": (np.int32, ("E",)),
    "cell_shifts": (np.int32, ("E", 3)),
    "edge_graph": (np.int32, ("E",)),
    "node_graph": (np.int32, ("N",)),
    "node_mask": (bool, ("N",)),
    "graph_mask": (bool, ("G",)),
    "theory": (np.int32, ("G",)),
}
#: The names of :data:`INPUT_SPEC`, in order.
INPUT_FIELDS = tuple(INPUT_SPEC)


def dummy_inputs(
    n_node: int = 3, n_edge: int = 4, n_graph: int = 2, dtype: Any = np.float32
) -> dict[str, np.ndarray]:
    """Inputs of the shapes :data:`INPUT_SPEC` gives (zeros; masks True), e.g. to trace
    ``init`` for the parameter shapes."""
    sizes = {"N": n_node, "E": n_edge, "G": n_graph}
    out = {}
    for name, (kind, dims) in INPUT_SPEC.items():
        shape = tuple(sizes.get(d, d) for d in dims)
        out[name] = (
            np.ones(shape, bool)
            if kind is bool
            else np.zeros(shape, dtype if kind is float else kind)
        )
    return out


def batch_inputs(batch: Any, dtype: Any = np.float32, theory: Any = None) -> dict[str, np.ndarray]:
    """The model's input dict from a :class:`~e3elastic.graph.Batch` (floats cast to ``dtype``).

    ``theory``: level-of-theory index (:data:`e3elastic.config.THEORIES`) of every graph, as one
    int for all, or an array indexed like the batch's input list (``batch.graph_index``);
    padding slots get 0. None means 0 (PBE) everywhere.
    """
    out = {}
    for name in INPUT_FIELDS:
        if name == "theory":
            continue
        a = np.asarray(getattr(batch, name))
        if a.dtype.kind == "f":
            a = a.astype(dtype)
        out[name] = a
    index = np.asarray(batch.graph_index)
    if theory is None or np.ndim(theory) == 0:
        t = np.full(index.shape, 0 if theory is None else int(theory), np.int32)
    else:
        t = np.asarray(theory, np.int32)[np.maximum(index, 0)]
    out["theory"] = np.where(index >= 0, t, 0).astype(np.int32)  # (G,)
    return out


def targets_from_voigt(voigt: np.ndarray, config: ModelConfig) -> np.ndarray:
    """``(n, 21)`` irreps the network learns for Voigt tensors ``(n, 6, 6)`` (GPa).

    ``linear``: the irreps of C (GPa). ``log``: the irreps of ``logm(Mandel(C) / reference)``
    (dimensionless); ``ValueError`` if a tensor is not positive-definite.
    """
    voigt = np.asarray(voigt, np.float64)
    if config.head == "log":
        return tensors.voigt_to_irreps(tensors.log_voigt(voigt, config.log_reference))
    return tensors.voigt_to_irreps(voigt)


def voigt_from_outputs(irreps: np.ndarray, config: ModelConfig) -> np.ndarray:
    """Voigt stiffness ``(..., 6, 6)`` (GPa) from denormalised irreps ``(..., 21)`` (numpy)."""
    v = tensors.irreps_to_voigt(np.asarray(irreps, np.float64))
    if config.head == "log":
        return tensors.exp_voigt(v, config.log_reference)
    return v


def irrep_stats(irreps: np.ndarray) -> dict[str, np.ndarray]:
    """Per-irrep normalisation of training targets ``(n, 21)`` (GPa).

    The two scalars get their mean and standard deviation; each 2e and 4e copy is scaled by
    the RMS of its norm (no shift: a fixed non-scalar would break equivariance).
    """
    irreps = np.asarray(irreps, np.float64)
    shift = np.zeros(tensors.N_IRREPS)
    scale = np.ones(tensors.N_IRREPS)
    scalars = tensors.IRREP_SLICES["0e"]
    shift[scalars] = irreps[:, scalars].mean(axis=0)
    scale[scalars] = irreps[:, scalars].std(axis=0) + 1e-6
    for l, sl in tensors.IRREP_COPIES:
        if l == 0:
            continue
        rms = np.sqrt(np.mean(np.sum(irreps[:, sl] ** 2, axis=1)) / (sl.stop - sl.start))
        scale[sl] = rms + 1e-6
    return {"shift": shift, "scale": scale}


def predict_irreps(
    apply: Callable[[Any, dict[str, np.ndarray]], Any],
    members: Sequence[tuple[Any, dict[str, Any]]],
    graphs: Sequence[Any],
    buckets: Any,
    batch_size: int,
    dtype: Any = np.float32,
    theory: Any = None,
) -> np.ndarray:
    """Denormalised head outputs ``(n_members, n, 21)`` (float64) of graphs, in input order.

    ``apply(params, inputs)`` is the network (jitted, or a stored program) returning normalised
    outputs ``(G, 21)``; ``members`` is one ``(params, stats)`` per model (``stats``: the
    ``shift`` and ``scale`` of :func:`irrep_stats`). The graphs are padded into ``buckets``
    (:func:`e3elastic.graph.batches`) with inputs of float type ``dtype``; ``theory`` as in
    :func:`batch_inputs`. The outputs are irreps of C (GPa), or of its logarithm for a log
    head (:func:`voigt_from_outputs`).
    """
    from ..graph import batches

    out = np.zeros((len(members), len(graphs), tensors.N_IRREPS))
    if not graphs:
        return out
    # batches of graphs of like size, so that each is padded to the smallest bucket it fits
    order = np.argsort([g.n_edge for g in graphs], kind="stable")
    by_size = [graphs[i] for i in order]
    if theory is not None and np.ndim(theory):
        theory = np.asarray(theory)[order]
    for b in batches(by_size, batch_size=batch_size, buckets=buckets):
        inputs = batch_inputs(b, dtype, theory)
        real = b.graph_index >= 0
        rows = order[b.graph_index[real]]
        for k, (params, stats) in enumerate(members):
            y = np.asarray(apply(params, inputs), np.float64)  # (G, 21) normalised
            out[k, rows] = stats["shift"] + stats["scale"] * y[real]
    return out
