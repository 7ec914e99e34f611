"""Is a structure inside the model's domain? Warnings attached to every prediction (numpy).

A model trained on bulk crystals at equilibrium still returns numbers for a molecule in a box,
a slab, atoms on top of each other or an element it never saw. :func:`structure_warnings`
flags those cases; each warning is ``"<code>: <sentence>"``. Codes:

``unseen-element`` / ``rare-element``
    An element no training crystal contains, or fewer than :data:`RARE_ELEMENT` do (counts from
    the bundle's ``info.json``, ``training_set.elements``). The species embedding then rests
    on the element's physical descriptors alone.
``vacuum``
    An empty slab at least :data:`VACUUM_GAP_A` thick runs through the cell: along some lattice
    plane normal no atom lies within a band that wide (measured from the fractional
    coordinates along each reciprocal direction and the interplanar spacing). A surface slab
    or a molecule in a box has one; bulk crystals, zeolites and layered van der Waals solids
    (gaps near 3 Angstrom) do not.
``low-density``
    Volume per atom more than :data:`DENSITY_FACTOR` times the largest in training (when the
    bundle records it).
``isolated-atom``
    An atom whose nearest neighbour is farther than :data:`ISOLATED_RATIO` times the sum of
    covalent radii (noble-gas and molecular solids, fragments).
``short-distance``
    Two atoms closer than :data:`SHORT_RATIO` times the sum of their covalent radii.
``low-dimensional``
    The bonded network (atoms closer than :data:`BOND_RATIO` times the sum of their covalent
    radii) does not extend in three dimensions: layers (graphite, MoS2, PbI2), chains or
    molecules held together only by weaker contacts (:func:`bonded_dimension`). Such crystals
    are a few per cent of the training data, and the model's errors on them are several times
    larger (docs/json-schema.md); PBE itself misses the van der Waals forces between the
    layers. Not raised when ``vacuum``, ``isolated-atom``, ``short-distance`` or ``strained``
    already is, which say more.
``strained``
    The median over atoms of nearest-neighbour distance / sum of covalent radii is outside
    :data:`STRAIN_RANGE` (the bulk of bonded crystals lies near 0.9-1.2): a strongly
    compressed or expanded input, beyond the +-3 % the model was taught. Or, sharper where the
    bundle records its training crystals' contacts (``training_set.contacts``, from
    :func:`contact_table`: for each pair of elements that are an atom and its nearest
    neighbour in at least :data:`CONTACT_MIN_COUNT` training crystals, the range of that
    distance over them, 2nd to 98th percentile): the median over atoms of nearest-neighbour
    distance / the low end for its pair is under ``1 -`` :data:`CONTACT_MARGIN`, or / the high
    end over ``1 +`` it. Covalent radii misjudge
    ionic and metallic bonds (rock salt squeezed to 0.8 of its lattice constant passes the
    radius test); the training contacts do not.

:func:`ensemble_warnings` adds ``ensemble-disagreement`` when members spread by more than
:data:`ENSEMBLE_SPREAD` (relative Frobenius) around their mean.

:func:`stiffness_warnings` looks at the prediction itself: ``stiffer-than-diamond`` when its
K_VRH or G_VRH exceeds :data:`STIFFNESS_FACTOR` times diamond's (:data:`DIAMOND_MODULI_GPA`),
the stiffest known solid and the top of the training labels. The log head keeps every
prediction positive-definite, but a compressed or malformed input (atoms too close, a CIF read
with the wrong origin choice) can drive it far beyond any real crystal.
Covalent radii are Cordero et al. (2008), as tabulated in pymatgen.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = [
    "BOND_RATIO",
    "DENSITY_FACTOR",
    "DIAMOND_MODULI_GPA",
    "ENSEMBLE_SPREAD",
    "ISOLATED_RATIO",
    "RARE_ELEMENT",
    "SHORT_RATIO",
    "STIFFNESS_FACTOR",
    "STRAIN_RANGE",
    "VACUUM_GAP_A",
    "CONTACT_MARGIN",
    "CONTACT_MIN_COUNT",
    "CONTACT_QUANTILE",
    "bonded_dimension",
    "contact_table",
    "ensemble_warnings",
    "nearest_contacts",
    "stiffness_warnings",
    "structure_warnings",
]

RARE_ELEMENT = 3
VACUUM_GAP_A = 6.0
DENSITY_FACTOR = 2.0
ISOLATED_RATIO = 1.7
SHORT_RATIO = 0.7
BOND_RATIO = 1.3
STRAIN_RANGE = (0.75, 1.45)
CONTACT_MARGIN = 0.06
#: Training crystals in which a pair must be a nearest-neighbour contact before its range is used.
CONTACT_MIN_COUNT = 3
CONTACT_QUANTILE = 0.02
ENSEMBLE_SPREAD = 0.25
#: K_VRH and G_VRH of diamond from its measured single-crystal constants (C11 1079, C12 124,
#: C44 578 GPa; McSkimin and Andreatch 1972). The largest labels in training are PBE diamond's,
#: K 436 and G 523 GPa.
DIAMOND_MODULI_GPA = {"K_VRH": 442.0, "G_VRH": 535.0}
STIFFNESS_FACTOR = 1.15
_DEFAULT_RADIUS = 1.5  # Angstrom, for an element without a tabulated covalent radius


@functools.lru_cache(maxsize=1)
def _covalent_radii() -> np.ndarray:
    """``(101,)`` covalent radius by atomic number (Angstrom)."""
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius
    from pymatgen.core import Element

    out = np.full(101, _DEFAULT_RADIUS)
    for z in range(1, 101):
        r = CovalentRadius.radius.get(Element.from_Z(z).symbol)
        if r is not None:
            out[z] = float(r)
    return out


def _largest_gap(structure) -> tuple[float, int]:
    """Thickest atom-free band (Angstrom) across the cell and the reciprocal axis it is on."""
    frac = np.asarray(structure.frac_coords, np.float64) % 1.0
    lat = np.asarray(structure.lattice.matrix, np.float64)
    volume = abs(np.linalg.det(lat))
    best, axis = 0.0, 0
    for i in range(3):
        j, k = (i + 1) % 3, (i + 2) % 3
        spacing = volume / np.linalg.norm(np.cross(lat[j], lat[k]))  # between (i) planes
        x = np.sort(frac[:, i])
        gaps = np.diff(np.r_[x, x[0] + 1.0])
        gap = float(gaps.max()) * spacing
        if gap > best:
            best, axis = gap, i
    return best, axis


def structure_warnings(structure, graph, training_set: dict[str, Any] | None = None) -> list[str]:
    """Domain warnings for one structure and its crystal graph (:mod:`e3elastic.graph`)."""
    from .. import graph as graph_mod

    z = graph_mod.atomic_numbers(graph.species)
    symbols = [graph_mod.SYMBOLS[i] for i in graph.species]
    out = _element_warnings(symbols, training_set)
    gap, axis = _largest_gap(structure)
    if gap >= VACUUM_GAP_A:
        out.append(
            f"vacuum: an empty band {gap:.1f} Å thick crosses the cell along reciprocal axis "
            f"{'abc'[axis]}*; this looks like a slab, a molecule or a fragment in a box, not a "
            "bulk crystal"
        )
    vpa = float(abs(np.linalg.det(graph.lattice))) / max(len(z), 1)
    vmax = ((training_set or {}).get("volume_per_atom_A3") or {}).get("max")
    if vmax and vpa > DENSITY_FACTOR * vmax:
        out.append(
            f"low-density: {vpa:.0f} Å^3 per atom, more than {DENSITY_FACTOR:g} times the "
            f"largest in training ({vmax:.0f})"
        )
    length = _edge_lengths(graph)
    out += _neighbour_warnings(graph, z, symbols, length)
    if not any(w.startswith("strained") for w in out):
        out += _contact_warnings(graph, (training_set or {}).get("contacts"), length)
    geometric = ("vacuum", "isolated-atom", "short-distance", "strained")
    if not any(w.startswith(geometric) for w in out):
        dim = bonded_dimension(graph, length)
        if dim < 3:
            kind = {2: "layers", 1: "chains", 0: "molecules or clusters"}[dim]
            out.append(
                f"low-dimensional: the bonded network is made of {kind} (atoms closer than "
                f"{BOND_RATIO:g} times the sum of covalent radii), held together only by weaker "
                "contacts; errors on such crystals are several times larger, most of all in "
                "the bulk modulus"
            )
    return out


def bonded_dimension(graph, length: np.ndarray | None = None) -> int:
    """In how many independent directions the bonded network of a crystal graph is infinite:
    3 for a bulk framework, 2 for layers, 1 for chains, 0 for molecules or clusters (the
    largest over its connected parts). Two atoms are bonded when they are closer than
    :data:`BOND_RATIO` times the sum of their covalent radii. A connected part reaches its own
    periodic images along the lattice vectors collected on its closed loops; their rank is its
    dimension. ``length``: the graph's edge lengths, when already computed."""
    from .. import graph as graph_mod

    z = graph_mod.atomic_numbers(graph.species)
    radii = _covalent_radii()[z]
    length = _edge_lengths(graph) if length is None else length
    bonded = length < BOND_RATIO * (radii[graph.senders] + radii[graph.receivers])
    n = len(z)
    neighbours: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(n)]
    shifts = graph.cell_shifts[bonded].astype(int)
    for a, b, shift in zip(graph.senders[bonded], graph.receivers[bonded], shifts, strict=True):
        # the receiver's image in cell ``shift`` is bonded to the sender in cell 0
        neighbours[a].append((int(b), shift))
        neighbours[b].append((int(a), -shift))
    cell: list[np.ndarray | None] = [None] * n  # the image each atom was reached in
    best = 0
    for root in range(n):
        if cell[root] is not None:
            continue
        cell[root] = np.zeros(3, int)
        queue, loops = [root], []
        while queue:
            a = queue.pop()
            for b, shift in neighbours[a]:
                reached = cell[a] + shift
                if cell[b] is None:
                    cell[b] = reached
                    queue.append(b)
                elif (reached != cell[b]).any():
                    loops.append(reached - cell[b])  # a path from b's image to another one
        if loops:
            best = max(best, int(np.linalg.matrix_rank(np.array(loops, float))))
        if best == 3:
            break
    return best


def _edge_lengths(graph) -> np.ndarray:
    from .. import graph as graph_mod

    return np.linalg.norm(graph_mod.edge_vectors(graph), axis=-1)  # (E,)


def nearest_contacts(graph, length: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """For every atom with a neighbour in the graph: its nearest-neighbour distance
    (Angstrom) and the pair key ``"A-B"`` (the two element symbols, sorted) of that contact.
    ``length``: the graph's edge lengths, when already computed."""
    from .. import graph as graph_mod

    n = len(graph.species)
    length = _edge_lengths(graph) if length is None else length
    nearest = np.full(n, np.inf)
    np.minimum.at(nearest, graph.receivers, length)
    partner = np.full(n, -1)
    hit = length == nearest[graph.receivers]
    partner[graph.receivers[hit]] = graph.senders[hit]
    has = np.flatnonzero(partner >= 0)
    symbols = [graph_mod.SYMBOLS[i] for i in graph.species]
    keys = np.array(["-".join(sorted((symbols[i], symbols[partner[i]]))) for i in has], object)
    return nearest[has], keys


def contact_table(graphs) -> dict[str, list[float]]:
    """``{"A-B": [low, high, crystals]}`` from the training crystals' ``graphs``: for each pair
    of elements, the median distance of its nearest-neighbour contacts in each crystal where
    it is one, then the :data:`CONTACT_QUANTILE` and ``1 -`` that quantile over those crystals
    (each crystal counts once, however many atoms it has), and the number of crystals."""
    per_pair: dict[str, list[float]] = {}
    for g in graphs:
        dist, keys = nearest_contacts(g)
        for k in set(keys.tolist()):
            per_pair.setdefault(str(k), []).append(float(np.median(dist[keys == k])))
    q = CONTACT_QUANTILE
    return {
        k: [round(float(np.quantile(v, q)), 3), round(float(np.quantile(v, 1 - q)), 3), len(v)]
        for k, v in sorted(per_pair.items())
    }


def _contact_warnings(graph, table: dict[str, list[float]] | None, length) -> list[str]:
    """``strained`` from each atom's nearest contact against the training range of its pair."""
    if not table:
        return []
    dist, keys = nearest_contacts(graph, length)
    rows = [(d, table.get(k), k) for d, k in zip(dist, keys, strict=True)]
    rows = [(d, t, k) for d, t, k in rows if t is not None and t[2] >= CONTACT_MIN_COUNT]
    if not rows:
        return []
    short = np.array([d / t[0] for d, t, _ in rows])
    long = np.array([d / t[1] for d, t, _ in rows])
    for ratio, bound, kind, word in (
        (short, 1 - CONTACT_MARGIN, "compressed", "low end"),
        (long, 1 + CONTACT_MARGIN, "expanded", "high end"),
    ):
        med = float(np.median(ratio))
        if (med < bound) if kind == "compressed" else (med > bound):
            i = int(np.argsort(ratio)[len(ratio) // 2])
            d, t, k = rows[i]
            ref = t[0] if kind == "compressed" else t[1]
            return [
                f"strained: nearest-neighbour distances are {med:.2f} of the {word} of their "
                f"element pair's range in training (e.g. {k} {d:.2f} Å against {ref:.2f} Å); "
                f"the structure is strongly {kind}, or bonded unlike any training crystal"
            ]
    return []


def _element_warnings(symbols: list[str], training_set: dict[str, Any] | None) -> list[str]:
    """``unseen-element`` and ``rare-element`` against the training set's element counts."""
    out: list[str] = []
    counts = (training_set or {}).get("elements")
    if counts is not None:
        unseen = sorted({s for s in symbols if counts.get(s, 0) == 0})
        rare = sorted({s for s in symbols if 0 < counts.get(s, 0) < RARE_ELEMENT})
        if unseen:
            out.append(
                f"unseen-element: no training crystal contains {', '.join(unseen)}; the "
                "prediction rests on element descriptors alone"
            )
        if rare:
            out.append(
                f"rare-element: fewer than {RARE_ELEMENT} training crystals contain "
                f"{', '.join(rare)}"
            )
    return out


def _neighbour_warnings(graph, z: np.ndarray, symbols: list[str], length) -> list[str]:
    """``short-distance``, ``isolated-atom`` and ``strained`` from the graph's edge lengths
    relative to the sum of covalent radii."""

    out: list[str] = []
    n = len(z)
    radii = _covalent_radii()[z]
    ratio = length / (radii[graph.senders] + radii[graph.receivers])
    nearest = np.full(n, np.inf)
    np.minimum.at(nearest, graph.receivers, ratio)
    if ratio.size and float(ratio.min()) < SHORT_RATIO:
        e = int(np.argmin(ratio))
        a, b = int(graph.senders[e]), int(graph.receivers[e])
        out.append(
            f"short-distance: atoms {a} ({symbols[a]}) and {b} ({symbols[b]}) are "
            f"{length[e]:.2f} Å apart, {ratio[e]:.2f} of the sum of their covalent radii"
        )
    far = np.flatnonzero(nearest > ISOLATED_RATIO)
    if far.size:
        out.append(
            f"isolated-atom: {far.size} atom(s) (e.g. {far[0]}, {symbols[far[0]]}) have no "
            f"neighbour within {ISOLATED_RATIO:g} times the sum of covalent radii; a "
            "molecular or noble-gas solid is outside the training data"
        )
    finite = nearest[np.isfinite(nearest)]
    if finite.size:
        med = float(np.median(finite))
        lo, hi = STRAIN_RANGE
        if med < lo or med > hi:
            kind = "compressed" if med < lo else "expanded"
            out.append(
                f"strained: nearest-neighbour distances are {med:.2f} of the sum of covalent "
                f"radii (typical {lo}-{hi}); the structure looks strongly {kind}"
            )
    return out


def ensemble_warnings(member_voigts: np.ndarray) -> list[str]:
    """``ensemble-disagreement`` when members ``(M, 6, 6)`` spread widely around their mean."""
    v = np.asarray(member_voigts, np.float64)
    if v.ndim != 3 or len(v) < 2:
        return []
    mean = v.mean(axis=0)
    spread = float(
        np.sqrt(np.mean(np.sum((v - mean) ** 2, axis=(1, 2)))) / max(np.linalg.norm(mean), 1e-12)
    )
    if spread > ENSEMBLE_SPREAD:
        return [
            f"ensemble-disagreement: members differ by {spread:.0%} of the tensor's norm "
            f"(more than {ENSEMBLE_SPREAD:.0%}); treat the mean as a rough guess"
        ]
    return []


def stiffness_warnings(k_vrh: float, g_vrh: float) -> list[str]:
    """``stiffer-than-diamond`` when a predicted K_VRH or G_VRH (GPa) is more than
    :data:`STIFFNESS_FACTOR` times diamond's."""
    over = [
        f"{name} {value:,.0f} GPa"
        for name, value in (("K_VRH", k_vrh), ("G_VRH", g_vrh))
        if value > STIFFNESS_FACTOR * DIAMOND_MODULI_GPA[name]
    ]
    if not over:
        return []
    k, g = DIAMOND_MODULI_GPA["K_VRH"], DIAMOND_MODULI_GPA["G_VRH"]
    return [
        f"stiffer-than-diamond: {' and '.join(over)}, beyond any known solid (diamond: K {k:.0f}, "
        f"G {g:.0f} GPa); the input is probably compressed or malformed (atoms too close, or a "
        "CIF read with the wrong origin choice), and the numbers are not physical"
    ]
