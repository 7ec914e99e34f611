"""Periodic crystal graphs in numpy: neighbour lists, padded batches in size buckets, a disk cache.

Everything here runs outside ``jit`` and imports numpy only (pymatgen is imported lazily, and only
to read a ``Structure``). The model consumes the arrays.

Conventions (units: Angstrom):

* ``lattice`` is ``(3, 3)`` and its **rows** are the lattice vectors a, b, c.
* ``positions`` are Cartesian, ``(n_node, 3)``; they need not lie inside the cell.
* An edge goes from ``senders[e]`` to ``receivers[e]``, and its vector is::

      positions[receivers] - positions[senders] + cell_shifts @ lattice

  with integer ``cell_shifts`` ``(n_edge, 3)``. Storing integer shifts and the lattice (not the
  vectors) lets the model compute edge vectors itself, so rotating positions and lattice
  together rotates every edge vector.
* Every pair with ``0 < |vector| <= cutoff`` is an edge, in both directions, including an atom's
  bonds to its own periodic images (small cells). Only the zero-shift self pair is left out.
* ``species`` indexes a fixed table: ``species = Z - 1`` for atomic numbers Z in 1..100
  (:data:`N_SPECIES` entries).

>>> import numpy as np
>>> g = build_graph(np.zeros((1, 3)), 3.35 * np.eye(3), [84], cutoff=3.4)  # simple cubic Po
>>> g.n_node, g.n_edge                    # the atom bonds to its 6 nearest images
(1, 6)
>>> np.allclose(np.linalg.norm(edge_vectors(g), axis=1), 3.35)
True

Modules, lowest first:

* :mod:`.neighbours`: :class:`GraphError`, input checks and :func:`neighbour_list`;
* :mod:`.crystal`: the species table, :class:`CrystalGraph`, :func:`build_graph`,
  :func:`structure_to_graph`;
* :mod:`.batching`: :class:`Bucket`, :class:`Batch` (jraph-style padding), :func:`make_buckets`,
  :func:`pad_batch`, :func:`batches`;
* :mod:`.cache`: the ``.npz`` disk cache (:func:`build_graphs_cached`).
"""

from __future__ import annotations

from .batching import Batch, Bucket, batches, make_buckets, pad_batch
from .cache import (
    CACHE_FORMAT_VERSION,
    build_graphs_cached,
    dataset_key,
    load_graphs,
    save_graphs,
)
from .crystal import (
    N_SPECIES,
    SYMBOLS,
    CrystalGraph,
    atomic_numbers,
    build_graph,
    edge_vectors,
    species_index,
    structure_to_graph,
)
from .neighbours import DEFAULT_CUTOFF, GraphError, OverlapError, neighbour_list

__all__ = [
    "CACHE_FORMAT_VERSION",
    "DEFAULT_CUTOFF",
    "N_SPECIES",
    "SYMBOLS",
    "Batch",
    "Bucket",
    "CrystalGraph",
    "GraphError",
    "OverlapError",
    "atomic_numbers",
    "batches",
    "build_graph",
    "build_graphs_cached",
    "dataset_key",
    "edge_vectors",
    "load_graphs",
    "make_buckets",
    "neighbour_list",
    "pad_batch",
    "save_graphs",
    "species_index",
    "structure_to_graph",
]
