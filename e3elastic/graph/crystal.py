"""One crystal as a periodic graph: the species table, :class:`CrystalGraph` and its builders."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from .neighbours import (
    DEFAULT_CUTOFF,
    GraphError,
    check_lattice,
    check_positions,
    neighbour_list,
)

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


def node_and_edge_counts(graphs: Sequence[CrystalGraph]) -> tuple[np.ndarray, np.ndarray]:
    """``(n_node, n_edge)`` of each graph, two int64 arrays of length ``len(graphs)``."""
    nodes = np.array([g.n_node for g in graphs], dtype=np.int64)
    edges = np.array([g.n_edge for g in graphs], dtype=np.int64)
    return nodes, edges


def edge_vectors(graph: Any) -> np.ndarray:
    """Edge vectors ``(n_edge, 3)`` in Angstrom, from sender to receiver (numpy, for tests).

    Works for a :class:`CrystalGraph` and for a padded :class:`~e3elastic.graph.Batch` (which
    has one lattice per graph, ``(G, 3, 3)``, and each edge uses its own graph's; padding edges
    come out with length ``>= 2 * cutoff``).
    """
    shifts = graph.cell_shifts.astype(np.float64)
    if graph.lattice.ndim == 3:  # a Batch
        lat = graph.lattice[graph.edge_graph]  # (n_edge, 3, 3)
        offset = np.einsum("ei,eij->ej", shifts, lat)
    else:
        offset = shifts @ graph.lattice
    return graph.positions[graph.receivers] - graph.positions[graph.senders] + offset


# --------------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------------


def _check_no_isolated_site(senders, species, cutoff: float, name: str) -> None:
    counts = np.bincount(senders, minlength=species.shape[0])
    lonely = np.flatnonzero(counts == 0)
    if lonely.size:
        i = int(lonely[0])
        more = f" (and {lonely.size - 1} more)" if lonely.size > 1 else ""
        raise GraphError(
            f"{name}: site {i} ({SYMBOLS[species[i]]}) has no neighbour within "
            f"{float(cutoff)} Å{more}; pass allow_isolated=True to accept it"
        )


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
    pos = check_positions(positions, name)
    species = species_index(atomic_numbers, name)
    if species.shape[0] != pos.shape[0]:
        raise GraphError(f"{name}: {species.shape[0]} atomic numbers for {pos.shape[0]} positions")
    lat = check_lattice(lattice, name)
    senders, receivers, shifts, _ = neighbour_list(pos, lat, cutoff, max_edges=max_edges, name=name)
    if not allow_isolated:
        _check_no_isolated_site(senders, species, cutoff, name)
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


def structure_arrays(structure: Any, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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
    lattice, z, frac = structure_arrays(structure, name)
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
