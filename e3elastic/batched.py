"""The network over many crystal graphs: padded batches in, denormalised outputs back in order.

Shared by training (validation after each epoch), final evaluation and, through the same
arithmetic, :meth:`e3elastic.inference.Model.predict_irreps`; needs neither flax nor optax.
"""

from __future__ import annotations

import numpy as np

from . import graph as graph_mod
from . import tensors
from .interface import batch_inputs

__all__ = ["N_IRREPS", "predict_irreps"]

#: Irreps coefficients of one elasticity tensor (2x0e+2x2e+1x4e): the model's output width.
N_IRREPS = max(s.stop for s in tensors.IRREP_SLICES.values())


def predict_irreps(
    predict_step, params, graphs, buckets, batch_size, stats, dtype, theory=None
) -> np.ndarray:
    """Denormalised head outputs ``(n, 21)`` (float64) for graphs, in input order: irreps of C
    (GPa) or of its logarithm (see :func:`e3elastic.interface.voigt_from_outputs`).

    ``predict_step(params, inputs)`` gives normalised outputs ``(G, 21)`` of one padded batch
    (inputs cast to ``dtype``); ``stats`` (``shift``, ``scale``) undoes the normalisation.
    """
    out = np.zeros((len(graphs), N_IRREPS))
    if not graphs:
        return out
    for b in graph_mod.batches(graphs, batch_size=batch_size, buckets=buckets):
        y = np.asarray(predict_step(params, batch_inputs(b, dtype, theory)), np.float64)
        real = b.graph_index >= 0
        out[b.graph_index[real]] = y[real]
    return stats["shift"] + stats["scale"] * out
