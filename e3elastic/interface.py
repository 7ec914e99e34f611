"""The network's numpy interface: the arrays it reads, and what its 21 outputs mean.

Kept apart from :mod:`e3elastic.model` (flax and e3nn-jax) so that prediction from a stored,
compiled program needs neither: :func:`batch_inputs` builds the input dict from a padded
:class:`e3elastic.graph.Batch`; :func:`targets_from_voigt` and :func:`voigt_from_outputs` map
Voigt tensors to the 21 irreps the head learns and back (C itself for the ``linear`` head, the
log-stiffness ``logm(Mandel(C) / log_reference)`` for the ``log`` head); :func:`irrep_stats` is
the per-irrep normalisation of training targets.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import tensors
from .config import ModelConfig

__all__ = [
    "INPUT_FIELDS",
    "batch_inputs",
    "irrep_stats",
    "targets_from_voigt",
    "voigt_from_outputs",
]

#: The arrays of a padded batch that the model reads.
INPUT_FIELDS = (
    "species",
    "positions",
    "lattice",
    "senders",
    "receivers",
    "cell_shifts",
    "edge_graph",
    "node_graph",
    "node_mask",
    "graph_mask",
    "theory",
)


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
    shift = np.zeros(21)
    scale = np.ones(21)
    shift[0:2] = irreps[:, 0:2].mean(axis=0)
    scale[0:2] = irreps[:, 0:2].std(axis=0) + 1e-6
    for sl in (slice(2, 7), slice(7, 12), slice(12, 21)):
        rms = np.sqrt(np.mean(np.sum(irreps[:, sl] ** 2, axis=1)) / (sl.stop - sl.start))
        scale[sl] = rms + 1e-6
    return {"shift": shift, "scale": scale}
