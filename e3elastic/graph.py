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

Batches follow jraph's ``GraphsTuple``: graphs are concatenated, node and edge arrays are padded
to one of a few :class:`Bucket` shapes, and padding lives in extra graphs masked out by
``graph_mask`` (see :func:`pad_batch`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import sys
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .errors import E3ElasticError
from .files import atomic_write

__all__ = [
    "CACHE_FORMAT_VERSION",
    "DEFAULT_CUTOFF",
    "N_SPECIES",
    "SYMBOLS",
    "Batch",
    "Bucket",
    "CrystalGraph",
    "GraphError",
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

#: Default neighbour cutoff (Angstrom).
DEFAULT_CUTOFF = 5.0

#: Element symbols for Z = 1..100; ``SYMBOLS[species]`` names a species index.
SYMBOLS: tuple[str, ...] = tuple(
    """H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As
    Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd
    Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am
    Cm Bk Cf Es Fm""".split()
)

#: Size of the species table: species index = Z - 1 for Z in 1..N_SPECIES.
N_SPECIES = len(SYMBOLS)
assert N_SPECIES == 100

#: Bumped whenever the cached graph format or the neighbour-list rules change.
CACHE_FORMAT_VERSION = 1

# A lattice whose volume is below this fraction of |a||b||c| counts as degenerate.
_MIN_NORMALISED_VOLUME = 1e-6
# Two distinct sites (or a site and another's image) closer than this are an error: their edge
# vector would be (nearly) zero, which gives NaN directions in the spherical harmonics.
_MIN_DISTANCE = 1e-3
# At most this many periodic images are searched (a guard against absurdly thin cells).
_MAX_IMAGES = 100_000
# Largest temporary of the neighbour search, in float64 elements (about 48 MB).
_CHUNK_ELEMENTS = 6_000_000


class GraphError(E3ElasticError, ValueError):
    """A structure cannot be turned into a graph (or graphs into a batch)."""


# --------------------------------------------------------------------------------------------
# Species table
# --------------------------------------------------------------------------------------------


def species_index(atomic_numbers: Any, name: str = "structure") -> np.ndarray:
    """Atomic numbers Z -> species indices ``Z - 1`` (int32). Raises :class:`GraphError` for Z
    outside 1..100.

    >>> species_index([1, 8, 26]).tolist()
    [0, 7, 25]
    """
    z = np.asarray(atomic_numbers)
    if z.ndim != 1:
        raise GraphError(f"{name}: atomic numbers must be 1-D, got shape {z.shape}")
    if z.size and (not np.issubdtype(z.dtype, np.integer)):
        if not np.all(np.isfinite(z)) or np.any(z != np.round(z)):
            raise GraphError(f"{name}: atomic numbers must be integers, got {z.tolist()}")
    z = z.astype(np.int64)
    bad = np.flatnonzero((z < 1) | (z > N_SPECIES))
    if bad.size:
        i = int(bad[0])
        raise GraphError(
            f"{name}: site {i} has atomic number {int(z[i])}, outside the species table "
            f"(Z = 1..{N_SPECIES})"
        )
    return (z - 1).astype(np.int32)


def atomic_numbers(species: Any) -> np.ndarray:
    """Species indices -> atomic numbers (inverse of :func:`species_index`)."""
    return np.asarray(species, dtype=np.int64) + 1


# --------------------------------------------------------------------------------------------
# The graph record
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class CrystalGraph:
    """One crystal as a periodic graph (numpy arrays; lengths in Angstrom).

    Attributes:
        species: ``(n_node,)`` int32, index into the species table (``Z - 1``).
        positions: ``(n_node, 3)`` float64, Cartesian coordinates (Angstrom).
        lattice: ``(3, 3)`` float64, rows are the lattice vectors (Angstrom).
        senders: ``(n_edge,)`` int32, node index where each edge starts.
        receivers: ``(n_edge,)`` int32, node index where each edge ends.
        cell_shifts: ``(n_edge, 3)`` int32; the edge vector is
            ``positions[receivers] - positions[senders] + cell_shifts @ lattice``.
        cutoff: the neighbour cutoff used (Angstrom).
        id: an identifier (for example a Materials Project id); may be empty.

    Edges are sorted by (sender, receiver, shift) and come in reverse pairs
    ``(i, j, s)`` / ``(j, i, -s)``.
    """

    species: np.ndarray
    positions: np.ndarray
    lattice: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    cell_shifts: np.ndarray
    cutoff: float
    id: str = ""

    @property
    def n_node(self) -> int:
        return int(self.species.shape[0])

    @property
    def n_edge(self) -> int:
        return int(self.senders.shape[0])


def edge_vectors(graph: CrystalGraph | Batch) -> np.ndarray:
    """Edge vectors ``(n_edge, 3)`` in Angstrom, from sender to receiver (numpy, for tests).

    Works for a :class:`CrystalGraph` and for a padded :class:`Batch` (where each edge uses its
    own graph's lattice; padding edges come out with length ``>= 2 * cutoff``).
    """
    shifts = graph.cell_shifts.astype(np.float64)
    if isinstance(graph, Batch):
        lat = graph.lattice[graph.edge_graph]  # (n_edge, 3, 3)
        offset = np.einsum("ei,eij->ej", shifts, lat)
    else:
        offset = shifts @ graph.lattice
    return graph.positions[graph.receivers] - graph.positions[graph.senders] + offset


# --------------------------------------------------------------------------------------------
# Neighbour list
# --------------------------------------------------------------------------------------------


def _check_cutoff(cutoff: float) -> float:
    try:
        c = float(cutoff)
    except (TypeError, ValueError):
        c = math.nan
    if not (math.isfinite(c) and c > 0):
        raise GraphError(f"cutoff must be a positive finite length in Angstrom, got {cutoff!r}")
    return c


def _check_lattice(lattice: Any, name: str) -> np.ndarray:
    try:
        lat = np.asarray(lattice, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise GraphError(f"{name}: lattice is not a (3, 3) array of numbers: {err}") from None
    if lat.shape != (3, 3):
        raise GraphError(f"{name}: lattice must have shape (3, 3), got {lat.shape}")
    if not np.all(np.isfinite(lat)):
        raise GraphError(f"{name}: lattice contains NaN or inf")
    lengths = np.linalg.norm(lat, axis=1)
    volume = abs(float(np.linalg.det(lat)))
    if np.any(lengths <= 0) or volume <= _MIN_NORMALISED_VOLUME * float(np.prod(lengths)):
        raise GraphError(
            f"{name}: degenerate (near-singular) lattice: volume {volume:.3g} Å^3 with "
            f"vector lengths {np.round(lengths, 4).tolist()} Å"
        )
    return lat


def _check_positions(positions: Any, name: str) -> np.ndarray:
    try:
        pos = np.asarray(positions, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise GraphError(f"{name}: positions are not an (n, 3) array of numbers: {err}") from None
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise GraphError(f"{name}: positions must have shape (n, 3), got {pos.shape}")
    if pos.shape[0] == 0:
        raise GraphError(f"{name}: empty structure (no sites)")
    bad = np.flatnonzero(~np.all(np.isfinite(pos), axis=1))
    if bad.size:
        raise GraphError(f"{name}: site {int(bad[0])} has NaN or inf coordinates")
    return pos


def _image_shifts(lattice: np.ndarray, cutoff: float, name: str) -> np.ndarray:
    """All integer shifts that can reach within ``cutoff`` of a point of the (wrapped) cell.

    With ``b_i`` the reciprocal rows (no 2 pi), ``b_i . x`` is the fractional coordinate i of x,
    so ``|x| >= |f_i| / |b_i|``. Wrapped fractional differences lie in (-1, 1), hence
    ``|n_i| <= ceil(cutoff * |b_i|)`` covers every neighbour.
    """
    recip = np.linalg.inv(lattice).T  # rows b_i with a_i . b_j = delta_ij
    n = np.ceil(cutoff * np.linalg.norm(recip, axis=1) - 1e-12).astype(np.int64)
    n_images = int(np.prod(2 * n + 1))
    if n_images > _MAX_IMAGES:
        raise GraphError(
            f"{name}: cell too thin for cutoff {cutoff} Å ({n_images} periodic images, plane "
            f"spacings {np.round(1 / np.linalg.norm(recip, axis=1), 4).tolist()} Å); "
            "check the lattice"
        )
    axes = [np.arange(-k, k + 1) for k in n]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid  # (n_images, 3), lexicographic order


def neighbour_list(
    positions: Any,
    lattice: Any,
    cutoff: float = DEFAULT_CUTOFF,
    *,
    max_edges: int | None = None,
    name: str = "structure",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Periodic neighbour list: all (i, j, shift) with ``0 < d <= cutoff``.

    Args:
        positions: ``(n, 3)`` Cartesian coordinates (Angstrom), inside the cell or not.
        lattice: ``(3, 3)``, rows are lattice vectors (Angstrom).
        cutoff: radius (Angstrom).
        max_edges: raise :class:`GraphError` when the list would be longer than this.
        name: how errors name the structure.

    Returns:
        ``senders (E,) int32, receivers (E,) int32, cell_shifts (E, 3) int32, distances (E,)``,
        sorted by (sender, receiver, shift), where
        ``positions[r] - positions[s] + shift @ lattice`` has length ``distance``.

    The search is vectorised over all receivers and images and chunked over senders, so the
    largest temporary stays under ~50 MB for any cell size.
    """
    cutoff = _check_cutoff(cutoff)
    pos = _check_positions(positions, name)
    lat = _check_lattice(lattice, name)
    n = pos.shape[0]

    # Wrap into the cell: frac in [0, 1). wrapped = pos - k @ lat with integer k.
    frac = pos @ np.linalg.inv(lat)
    k = np.floor(frac)
    fw = frac - k
    over = fw >= 1.0  # -1e-17 - floor(...) rounds to 1.0
    fw[over] -= 1.0
    k[over] += 1.0
    wrapped = fw @ lat
    k = k.astype(np.int64)

    shifts = _image_shifts(lat, cutoff, name)  # (M, 3)
    trans = shifts.astype(np.float64) @ lat  # (M, 3)
    m = shifts.shape[0]
    zero_image = int(np.flatnonzero(np.all(shifts == 0, axis=1))[0])
    targets = wrapped[:, None, :] + trans[None, :, :]  # (n, M, 3): receiver images
    cut2 = cutoff * cutoff
    rows = max(1, _CHUNK_ELEMENTS // (3 * n * m))

    found_s, found_r, found_m, found_d2 = [], [], [], []
    total = 0
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        diff = targets[None, :, :, :] - wrapped[start:stop, None, None, :]  # (b, n, M, 3)
        d2 = np.einsum("bnmx,bnmx->bnm", diff, diff)
        keep = d2 <= cut2
        local = np.arange(stop - start)
        keep[local, start + local, zero_image] = False  # the zero-shift self pair
        s, r, im = np.nonzero(keep)
        total += s.size
        if max_edges is not None and total > max_edges:
            raise GraphError(
                f"{name}: more than max_edges={max_edges} edges within {cutoff} Å "
                f"(already {total} after {stop} of {n} sites)"
            )
        found_s.append(s + start)
        found_r.append(r)
        found_m.append(im)
        found_d2.append(d2[s, r, im])

    senders = np.concatenate(found_s).astype(np.int32)
    receivers = np.concatenate(found_r).astype(np.int32)
    image = np.concatenate(found_m)
    d2 = np.concatenate(found_d2)
    # Shift in terms of the caller's (unwrapped) positions.
    cell_shifts = (shifts[image] + k[senders] - k[receivers]).astype(np.int32)
    dist = np.sqrt(d2)
    close = np.flatnonzero(dist < _MIN_DISTANCE)
    if close.size:
        e = int(close[0])
        raise GraphError(
            f"{name}: sites {int(senders[e])} and {int(receivers[e])} (shift "
            f"{cell_shifts[e].tolist()}) overlap: distance {dist[e]:.2e} Å"
        )
    return senders, receivers, cell_shifts, dist


def build_graph(
    positions: Any,
    lattice: Any,
    atomic_numbers: Any,
    cutoff: float = DEFAULT_CUTOFF,
    *,
    id: str = "",
    allow_isolated: bool = False,
    max_edges: int | None = None,
) -> CrystalGraph:
    """Build a :class:`CrystalGraph` from raw arrays.

    Args:
        positions: ``(n, 3)`` Cartesian coordinates (Angstrom).
        lattice: ``(3, 3)``, rows are lattice vectors (Angstrom).
        atomic_numbers: ``(n,)`` integers Z in 1..100.
        cutoff: neighbour radius (Angstrom), default 5.
        id: stored on the graph and used in error messages.
        allow_isolated: accept sites with no neighbour within the cutoff (by default a
            :class:`GraphError` names the first such site).
        max_edges: edge budget; more edges raise :class:`GraphError`.
    """
    name = id or "structure"
    pos = _check_positions(positions, name)
    species = species_index(atomic_numbers, name)
    if species.shape[0] != pos.shape[0]:
        raise GraphError(f"{name}: {species.shape[0]} atomic numbers for {pos.shape[0]} positions")
    lat = _check_lattice(lattice, name)
    senders, receivers, shifts, _ = neighbour_list(pos, lat, cutoff, max_edges=max_edges, name=name)
    if not allow_isolated:
        counts = np.bincount(senders, minlength=pos.shape[0])
        lonely = np.flatnonzero(counts == 0)
        if lonely.size:
            i = int(lonely[0])
            more = f" (and {lonely.size - 1} more)" if lonely.size > 1 else ""
            raise GraphError(
                f"{name}: site {i} ({SYMBOLS[species[i]]}) has no neighbour within "
                f"{float(cutoff)} Å{more}; pass allow_isolated=True to accept it"
            )
    return CrystalGraph(
        species=species,
        positions=pos.copy(),
        lattice=lat.copy(),
        senders=senders,
        receivers=receivers,
        cell_shifts=shifts,
        cutoff=float(cutoff),
        id=str(id),
    )


def _structure_arrays(structure: Any, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lattice, atomic numbers, fractional coordinates) of a pymatgen Structure."""
    if len(structure) == 0:
        raise GraphError(f"{name}: empty structure (no sites)")
    if not structure.is_ordered:
        raise GraphError(f"{name}: disordered structure (partial occupancies) is not supported")
    try:
        z = np.array([site.specie.Z for site in structure], dtype=np.int64)
    except AttributeError as err:  # DummySpecies and the like
        raise GraphError(f"{name}: site without a real element: {err}") from None
    lattice = np.array(structure.lattice.matrix, dtype=np.float64)
    frac = np.array(structure.frac_coords, dtype=np.float64)
    return lattice, z, frac


def structure_to_graph(
    structure: Any,
    cutoff: float = DEFAULT_CUTOFF,
    *,
    id: str = "",
    allow_isolated: bool = False,
    max_edges: int | None = None,
) -> CrystalGraph:
    """Build a :class:`CrystalGraph` from a pymatgen ``Structure`` (ordered, real elements).

    Errors name the structure by ``id``, or by its reduced formula when no id is given.
    """
    name = id or _formula(structure)
    lattice, z, frac = _structure_arrays(structure, name)
    graph = build_graph(
        frac @ lattice,
        lattice,
        z,
        cutoff,
        id=name,
        allow_isolated=allow_isolated,
        max_edges=max_edges,
    )
    return graph if id else dataclasses.replace(graph, id="")


def _formula(structure: Any) -> str:
    try:
        return str(structure.composition.reduced_formula) or "structure"
    except Exception:
        return "structure"


# --------------------------------------------------------------------------------------------
# Padded batches
# --------------------------------------------------------------------------------------------


class Bucket(NamedTuple):
    """A padded batch shape: total nodes, total edges and graphs (real + padding)."""

    n_node: int
    n_edge: int
    n_graph: int


@dataclasses.dataclass(frozen=True, eq=False)
class Batch:
    """Padded graphs, concatenated jraph-style (numpy arrays; lengths in Angstrom).

    With ``N, E, G = bucket.n_node, bucket.n_edge, bucket.n_graph`` and ``g`` real graphs
    (``g < G``): real graphs take slots ``0..g-1`` and their nodes/edges come first; graph slot
    ``g`` is the padding graph that owns every padding node and edge; slots ``g+1..G-1`` are
    empty padding graphs. Padding graphs have ``lattice = pad_scale * cutoff * I`` and padding
    edges are self-loops of the first padding node with shift ``(1, 0, 0)``, so each padding edge
    has length ``>= 2 * cutoff`` (never zero).

    Attributes:
        species: ``(N,)`` int32 species index (0 for padding nodes).
        positions: ``(N, 3)`` float64 Cartesian (Angstrom); 0 for padding nodes.
        senders, receivers: ``(E,)`` int32 indices into the batch's nodes.
        cell_shifts: ``(E, 3)`` int32 shifts, applied with the lattice of the edge's graph.
        lattice: ``(G, 3, 3)`` float64 per-graph lattice (rows are vectors).
        n_node, n_edge: ``(G,)`` int32 node / edge counts per graph (padding graph included).
        node_graph: ``(N,)`` int32 graph slot of each node.
        edge_graph: ``(E,)`` int32 graph slot of each edge (``node_graph[senders]``).
        node_mask, edge_mask, graph_mask: ``(N,)``, ``(E,)``, ``(G,)`` bool, True for real
            entries.
        targets: ``(G, ...)`` targets (zeros in padding slots) or None.
        graph_index: ``(G,)`` int64 position of each real graph in the input list, -1 for
            padding.
        ids: the real graphs' ids, in slot order (length g).
    """

    species: np.ndarray
    positions: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    cell_shifts: np.ndarray
    lattice: np.ndarray
    n_node: np.ndarray
    n_edge: np.ndarray
    node_graph: np.ndarray
    edge_graph: np.ndarray
    node_mask: np.ndarray
    edge_mask: np.ndarray
    graph_mask: np.ndarray
    targets: np.ndarray | None
    graph_index: np.ndarray
    ids: tuple[str, ...]

    @property
    def bucket(self) -> Bucket:
        return Bucket(self.species.shape[0], self.senders.shape[0], self.lattice.shape[0])

    @property
    def n_real(self) -> int:
        return len(self.ids)


def _round_up(x: int, minimum: int) -> int:
    """Round up to a multiple of 1/8 of x's power of two (at most 12.5 % waste)."""
    x = max(int(x), 1)
    step = max(minimum, 2 ** max(0, x.bit_length() - 4))
    return -(-x // step) * step


def _round_up_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _sizes(graphs: Sequence[CrystalGraph]) -> tuple[np.ndarray, np.ndarray]:
    nodes = np.array([g.n_node for g in graphs], dtype=np.int64)
    edges = np.array([g.n_edge for g in graphs], dtype=np.int64)
    return nodes, edges


def make_buckets(
    graphs: Sequence[CrystalGraph],
    batch_size: int,
    n_buckets: int = 4,
    *,
    n_samples: int = 2000,
    seed: int = 0,
) -> tuple[Bucket, ...]:
    """Choose up to ``n_buckets`` padded shapes from the data's size distribution.

    Random batches of ``batch_size`` graphs are drawn (shuffled epochs, ``n_samples`` batches
    at least one full epoch); bucket k takes the ``k / n_buckets`` quantile of their node and
    edge totals (+1 node for the padding graph), rounded up to within 12.5 %. The largest
    bucket is the largest batch seen, so it holds every single graph and full batches almost
    always fit. Every bucket has ``n_graph = batch_size + 1``. Buckets are returned sorted and
    increasing in both nodes and edges.
    """
    if batch_size < 1:
        raise GraphError(f"batch_size must be >= 1, got {batch_size}")
    if n_buckets < 1:
        raise GraphError(f"n_buckets must be >= 1, got {n_buckets}")
    if len(graphs) == 0:
        raise GraphError("make_buckets needs at least one graph")
    nodes, edges = _sizes(graphs)
    rng = np.random.default_rng(seed)
    n = len(graphs)
    per_epoch = -(-n // batch_size)
    epochs = max(1, -(-n_samples // per_epoch))
    node_tot, edge_tot = [], []
    for _ in range(epochs):
        order = rng.permutation(n)
        pad = (-n) % batch_size
        idx = np.concatenate([order, np.full(pad, -1)]).reshape(-1, batch_size)
        valid = idx >= 0
        node_tot.append(np.where(valid, nodes[idx], 0).sum(axis=1))
        edge_tot.append(np.where(valid, edges[idx], 0).sum(axis=1))
    node_tot = np.concatenate(node_tot) + 1  # + the padding node
    edge_tot = np.concatenate(edge_tot)
    qs = np.arange(1, n_buckets + 1) / n_buckets
    qn = np.quantile(node_tot, qs, method="higher")
    qe = np.quantile(edge_tot, qs, method="higher")
    buckets: list[Bucket] = []
    last = (0, 0)
    for a, b in zip(qn, qe, strict=True):
        bn = max(_round_up(int(a), 8), last[0])
        be = max(_round_up(int(b), 64), last[1])
        if (bn, be) != last:
            buckets.append(Bucket(bn, be, batch_size + 1))
            last = (bn, be)
    return tuple(buckets)


def _fits(n_node: int, n_edge: int, bucket: Bucket) -> bool:
    return n_node + 1 <= bucket.n_node and n_edge <= bucket.n_edge


def _oversize_bucket(n_node: int, n_edge: int, largest: Bucket) -> Bucket:
    """Shape for a single graph larger than the largest bucket: each size rounded up to a
    power of two (at least the largest bucket's), so an epoch gets O(log size) extra shapes."""
    return Bucket(
        max(_round_up_pow2(n_node + 1), largest.n_node),
        max(_round_up_pow2(max(n_edge, 1)), largest.n_edge),
        largest.n_graph,
    )


def pad_batch(
    graphs: Sequence[CrystalGraph],
    bucket: Bucket,
    targets: Any = None,
    *,
    indices: Sequence[int] | None = None,
    pad_scale: float = 2.0,
) -> Batch:
    """Concatenate ``graphs`` and pad them to ``bucket`` (see :class:`Batch`).

    Args:
        graphs: the real graphs (at most ``bucket.n_graph - 1``).
        bucket: the padded shape; needs room for every real node plus one padding node.
        targets: ``(len(graphs), ...)`` per-graph targets, or None.
        indices: positions of the graphs in a dataset (stored as ``graph_index``).
        pad_scale: padding graphs get ``lattice = pad_scale * cutoff * I``; must be >= 2.
    """
    g = len(graphs)
    nodes, edges = _sizes(graphs)
    n_tot, e_tot = int(nodes.sum()), int(edges.sum())
    if g + 1 > bucket.n_graph or not _fits(n_tot, e_tot, bucket):
        raise GraphError(
            f"{g} graphs with {n_tot} nodes and {e_tot} edges do not fit {bucket} "
            "(which must also hold one padding graph and one padding node)"
        )
    if pad_scale < 2.0:
        raise GraphError(f"pad_scale must be >= 2, got {pad_scale}")
    N, E, G = bucket
    cutoff = max((gr.cutoff for gr in graphs), default=DEFAULT_CUTOFF)

    species = np.zeros(N, np.int32)
    positions = np.zeros((N, 3), np.float64)
    senders = np.full(E, n_tot, np.int32)  # padding edges: self-loops of node n_tot
    receivers = np.full(E, n_tot, np.int32)
    cell_shifts = np.zeros((E, 3), np.int32)
    cell_shifts[e_tot:, 0] = 1
    lattice = np.broadcast_to(pad_scale * cutoff * np.eye(3), (G, 3, 3)).copy()
    n_node = np.zeros(G, np.int32)
    n_edge = np.zeros(G, np.int32)
    n_node[:g], n_edge[:g] = nodes, edges
    n_node[g], n_edge[g] = N - n_tot, E - e_tot

    if g:
        node_off = np.concatenate([[0], np.cumsum(nodes)[:-1]])
        species[:n_tot] = np.concatenate([gr.species for gr in graphs])
        positions[:n_tot] = np.concatenate([gr.positions for gr in graphs])
        senders[:e_tot] = np.concatenate(
            [gr.senders + o for gr, o in zip(graphs, node_off, strict=True)]
        )
        receivers[:e_tot] = np.concatenate(
            [gr.receivers + o for gr, o in zip(graphs, node_off, strict=True)]
        )
        cell_shifts[:e_tot] = np.concatenate([gr.cell_shifts for gr in graphs])
        lattice[:g] = np.stack([gr.lattice for gr in graphs])

    slots = np.arange(G, dtype=np.int32)
    node_graph = np.repeat(slots, n_node)
    edge_graph = np.repeat(slots, n_edge)
    graph_mask = slots < g

    out_targets = None
    if targets is not None:
        t = np.asarray(targets)
        if t.shape[0] != g:
            raise GraphError(f"{t.shape[0]} targets for {g} graphs")
        out_targets = np.zeros((G, *t.shape[1:]), t.dtype)
        out_targets[:g] = t

    graph_index = np.full(G, -1, np.int64)
    graph_index[:g] = np.arange(g) if indices is None else np.asarray(indices, np.int64)
    return Batch(
        species=species,
        positions=positions,
        senders=senders,
        receivers=receivers,
        cell_shifts=cell_shifts,
        lattice=lattice,
        n_node=n_node,
        n_edge=n_edge,
        node_graph=node_graph,
        edge_graph=edge_graph,
        node_mask=graph_mask[node_graph],
        edge_mask=graph_mask[edge_graph],
        graph_mask=graph_mask,
        targets=out_targets,
        graph_index=graph_index,
        ids=tuple(gr.id for gr in graphs),
    )


def batches(
    graphs: Sequence[CrystalGraph],
    targets: Any = None,
    *,
    batch_size: int,
    buckets: Sequence[Bucket],
    shuffle: bool = False,
    seed: int = 0,
    pad_scale: float = 2.0,
) -> Iterator[Batch]:
    """One epoch of padded batches.

    Greedy packing: graphs are taken in order (a permutation from ``seed`` when ``shuffle``);
    a batch grows up to ``batch_size`` graphs while it still fits one of the buckets, then is
    padded to the smallest bucket that fits it. A single graph that fits no bucket
    goes alone into a shape rounded up to powers of two (see ``_oversize_bucket``), so the
    number of distinct shapes per epoch stays at most ``len(buckets)`` plus a few
    logarithmically spaced extras. Deterministic given ``seed``.

    Args:
        graphs: the dataset.
        targets: ``(len(graphs), ...)`` array of per-graph targets, or None.
        batch_size: most real graphs per batch; must be < ``bucket.n_graph``.
        buckets: from :func:`make_buckets`.
    """
    if batch_size < 1:
        raise GraphError(f"batch_size must be >= 1, got {batch_size}")
    if not buckets:
        raise GraphError("batches needs at least one bucket")
    ordered = sorted(buckets, key=lambda b: (b.n_node, b.n_edge))
    if any(b.n_graph < batch_size + 1 for b in ordered):
        raise GraphError(f"every bucket needs n_graph >= batch_size + 1 = {batch_size + 1}")

    def fits_any(n_node: int, n_edge: int) -> bool:
        # Buckets need not be nested (one may have more nodes, another more edges), so a batch
        # must fit one real bucket, not the component-wise maximum of all of them.
        return any(_fits(n_node, n_edge, b) for b in ordered)

    largest = Bucket(
        max(b.n_node for b in ordered), max(b.n_edge for b in ordered), ordered[-1].n_graph
    )
    t = None
    if targets is not None:
        t = np.asarray(targets)
        if t.shape[0] != len(graphs):
            raise GraphError(f"{t.shape[0]} targets for {len(graphs)} graphs")
    nodes, edges = _sizes(graphs)
    n = len(graphs)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)

    def emit(idx: list[int], bucket: Bucket | None = None) -> Batch:
        nt, et = int(nodes[idx].sum()), int(edges[idx].sum())
        if bucket is None:
            bucket = next(b for b in ordered if _fits(nt, et, b))
        return pad_batch(
            [graphs[i] for i in idx],
            bucket,
            None if t is None else t[idx],
            indices=idx,
            pad_scale=pad_scale,
        )

    current: list[int] = []
    cur_n = cur_e = 0
    for i in order.tolist():
        ni, ei = int(nodes[i]), int(edges[i])
        if not fits_any(ni, ei):
            if current:
                yield emit(current)
                current, cur_n, cur_e = [], 0, 0
            yield emit([i], _oversize_bucket(ni, ei, largest))
            continue
        if len(current) < batch_size and fits_any(cur_n + ni, cur_e + ei):
            current.append(i)
            cur_n, cur_e = cur_n + ni, cur_e + ei
        else:
            yield emit(current)
            current, cur_n, cur_e = [i], ni, ei
    if current:
        yield emit(current)


# --------------------------------------------------------------------------------------------
# Disk cache
# --------------------------------------------------------------------------------------------

_GRAPH_ARRAYS = ("species", "positions", "senders", "receivers", "cell_shifts")


def dataset_key(
    items: Iterable[tuple[str, Any]], cutoff: float, *, allow_isolated: bool = False
) -> str:
    """sha256 hex key of a dataset of ``(id, Structure)`` pairs for a cutoff.

    Hashes the format version, the cutoff, ``allow_isolated`` and, for each item in order, its
    id and the structure's canonical content: lattice (float64), atomic numbers (int64) and
    fractional coordinates (float64), as raw bytes.
    """
    h = hashlib.sha256()
    h.update(f"e3elastic.graph v{CACHE_FORMAT_VERSION}".encode())
    h.update(np.float64(_check_cutoff(cutoff)).tobytes())
    h.update(b"isolated" if allow_isolated else b"strict")
    for id_, structure in items:
        name = str(id_)
        lattice, z, frac = _structure_arrays(structure, name or "structure")
        h.update(len(name).to_bytes(8, "little") + name.encode())
        h.update(len(z).to_bytes(8, "little"))
        h.update(np.ascontiguousarray(lattice, "<f8").tobytes())
        h.update(np.ascontiguousarray(z, "<i8").tobytes())
        h.update(np.ascontiguousarray(frac, "<f8").tobytes())
    return h.hexdigest()


def save_graphs(path: str | os.PathLike, graphs: Sequence[CrystalGraph], key: str = "") -> Path:
    """Write graphs to one ``.npz`` (concatenated arrays + offsets; no pickled objects).

    The file is written to a temporary name and renamed, so readers never see half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nodes, edges = _sizes(graphs)
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(CACHE_FORMAT_VERSION, np.int64),
        "key": np.array(key, dtype=np.str_),
        "ids": np.array([g.id for g in graphs], dtype=np.str_).reshape(len(graphs)),
        "cutoff": np.array([g.cutoff for g in graphs], np.float64),
        "lattice": np.array([g.lattice for g in graphs], np.float64).reshape(-1, 3, 3),
        "node_offsets": np.concatenate([[0], np.cumsum(nodes)]).astype(np.int64),
        "edge_offsets": np.concatenate([[0], np.cumsum(edges)]).astype(np.int64),
    }
    empty = {"positions": (0, 3), "cell_shifts": (0, 3)}
    for field in _GRAPH_ARRAYS:
        parts = [getattr(g, field) for g in graphs]
        arrays[field] = np.concatenate(parts) if parts else np.zeros(empty.get(field, (0,)))
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def load_graphs(path: str | os.PathLike, key: str | None = None) -> list[CrystalGraph]:
    """Read graphs written by :func:`save_graphs` (``allow_pickle=False``).

    Raises :class:`GraphError` when the file's format version differs, its key differs from
    ``key`` (when given), or the file is unreadable, truncated or inconsistent (a missing file
    raises ``FileNotFoundError``).
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            version = int(z["format_version"])
            if version != CACHE_FORMAT_VERSION:
                raise GraphError(f"{path}: cache format {version}, expected {CACHE_FORMAT_VERSION}")
            if key is not None and str(z["key"]) != key:
                raise GraphError(f"{path}: cache key {z['key']} does not match {key}")
            data = {name: z[name] for name in z.files}
    except (GraphError, FileNotFoundError):
        raise
    # A truncated or corrupted .npz raises zipfile.BadZipFile (CRC / missing directory),
    # EOFError (empty file), ValueError (bad header, pickled data) or KeyError (missing array).
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, TypeError, OSError) as err:
        raise GraphError(f"{path}: unreadable graph cache ({type(err).__name__}: {err})") from err
    try:
        no, eo = data["node_offsets"], data["edge_offsets"]
        n_graph = len(data["ids"])
        consistent = (
            no.shape == eo.shape == (n_graph + 1,)
            and data["cutoff"].shape == (n_graph,)
            and data["lattice"].shape == (n_graph, 3, 3)
            and no[0] == eo[0] == 0
            and np.all(np.diff(no) >= 0)
            and np.all(np.diff(eo) >= 0)
            and no[-1] == len(data["species"]) == len(data["positions"])
            and eo[-1] == len(data["senders"]) == len(data["receivers"])
            and eo[-1] == len(data["cell_shifts"])
        )
    except (KeyError, TypeError, IndexError) as err:
        raise GraphError(f"{path}: malformed graph cache ({type(err).__name__}: {err})") from None
    if not consistent:
        raise GraphError(f"{path}: inconsistent graph cache (array lengths and offsets disagree)")
    graphs = []
    for i in range(len(data["ids"])):
        ns, es = slice(no[i], no[i + 1]), slice(eo[i], eo[i + 1])
        graphs.append(
            CrystalGraph(
                species=data["species"][ns].astype(np.int32),
                positions=data["positions"][ns].astype(np.float64),
                lattice=data["lattice"][i].astype(np.float64),
                senders=data["senders"][es].astype(np.int32),
                receivers=data["receivers"][es].astype(np.int32),
                cell_shifts=data["cell_shifts"][es].astype(np.int32),
                cutoff=float(data["cutoff"][i]),
                id=str(data["ids"][i]),
            )
        )
    return graphs


def build_graphs_cached(
    items: Iterable[tuple[str, Any]],
    cutoff: float = DEFAULT_CUTOFF,
    cache_dir: str | os.PathLike | None = None,
    *,
    allow_isolated: bool = False,
    max_edges: int | None = None,
) -> list[CrystalGraph]:
    """Graphs for ``(id, Structure)`` pairs, cached in ``cache_dir/graphs-<key>.npz``.

    The key (:func:`dataset_key`) covers the ids, the structures' content, the cutoff,
    ``allow_isolated`` and the format version, so any change rebuilds. ``max_edges`` is
    checked on cached graphs too. Without ``cache_dir`` nothing is cached. An unreadable or
    stale cache file is rebuilt and overwritten; a cache that cannot be written is reported on
    stderr and the graphs are returned all the same.
    """
    items = list(items)
    if cache_dir is None:
        return [
            structure_to_graph(
                s, cutoff, id=str(i), allow_isolated=allow_isolated, max_edges=max_edges
            )
            for i, s in items
        ]
    key = dataset_key(items, cutoff, allow_isolated=allow_isolated)
    path = Path(cache_dir) / f"graphs-{key[:32]}.npz"
    graphs = None
    if path.exists():
        try:
            graphs = load_graphs(path, key)
        except (GraphError, OSError):  # unreadable, stale or corrupted: rebuild
            graphs = None
    if graphs is None:
        graphs = build_graphs_cached(
            items, cutoff, None, allow_isolated=allow_isolated, max_edges=max_edges
        )
        try:
            save_graphs(path, graphs, key)
        except OSError as err:
            print(f"warning: cannot write graph cache {path}: {err}", file=sys.stderr)
    elif max_edges is not None:
        for g in graphs:
            if g.n_edge > max_edges:
                raise GraphError(f"{g.id}: {g.n_edge} edges exceed max_edges={max_edges}")
    return graphs
