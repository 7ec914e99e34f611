"""Which records are kept: validation and alignment of each record, and de-duplication
across sources.

:func:`validate` checks a record's structure and labels and aligns its tensor with the
structure's standard frame (:mod:`e3elastic.data.frames`); :func:`deduplicate` keeps one record
per crystal when several sources hold it. :func:`e3elastic.data.dataset.load_dataset` runs both
on every file of a folder.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from e3elastic import graph, tensors
from e3elastic.errors import short_error

from .frames import align, point_group
from .records import Dropped, Record, _EntryError

__all__ = ["deduplicate", "validate"]

# Two sites closer than this (Angstrom) are rejected as overlapping (a physical bound, unlike
# graph's numerical one for coincident sites).
_OVERLAP_DISTANCE = 0.5
# Preference among sources when precision and residual tie (lower wins). Between the two
# whole-GPa MP releases the older (StrainNet) copy is kept, so that crystals already in a
# split keep the label earlier results were measured against.
_SOURCE_RANK = {
    "matminer2015": 0,
    "matten": 1,
    "mp-api": 2,
    "user": 3,
    "strainnet": 4,
    "elatbot": 5,
    "matcalc2025": 6,
}


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_geometry(structure: Any, cutoff: float) -> None:
    """Every site has a neighbour within ``cutoff`` and none closer than
    :data:`_OVERLAP_DISTANCE` (Angstrom); raises :class:`_EntryError` otherwise."""
    try:
        senders, _, _, dist = graph.neighbour_list(
            structure.cart_coords, structure.lattice.matrix, cutoff
        )
    except graph.GraphError as err:  # coincident sites, or a degenerate or too thin cell
        kind = (
            "overlapping atoms" if isinstance(err, graph.OverlapError) else "unparseable structure"
        )
        raise _EntryError(f"{kind}: {short_error(err, 120, with_type=False)}") from None
    if dist.size and dist.min() < _OVERLAP_DISTANCE:
        i = int(senders[np.argmin(dist)])
        raise _EntryError(
            f"overlapping atoms: site {i} has a neighbour at {dist.min():.3f} Å "
            f"(< {_OVERLAP_DISTANCE} Å)"
        )
    lonely = np.setdiff1d(np.arange(len(structure)), senders)
    if lonely.size:
        i = int(lonely[0])
        raise _EntryError(
            f"isolated atom: site {i} ({structure[i].species_string}) has no neighbour within "
            f"{cutoff} Å"
        )


def _validate(
    rec: Record, tolerance: float, keep_unstable: bool, max_sites: int, cutoff: float | None
) -> Record:
    s = rec.structure
    if not s.is_ordered:
        raise _EntryError("partial occupancy: the model needs ordered sites")
    if len(s) > max_sites:
        raise _EntryError(f"too many sites: {len(s)} > max_sites={max_sites}")
    if cutoff:
        _check_geometry(s, cutoff)
    if not rec.has_tensor:  # K and G: no stability or frame to check
        try:
            system = point_group(s)[2]
        except Exception as err:  # spglib failures come in several types
            raise _EntryError(
                f"symmetry analysis failed: {short_error(err, 80, with_type=False)}"
            ) from None
        return dataclasses.replace(rec, crystal_system=system, frame="none")
    lam = float(tensors.born_stability(rec.voigt)["min_eigenvalue"])
    if lam <= 0 and not keep_unstable:
        raise _EntryError(f"not positive definite: min eigenvalue {lam:.3g} GPa")
    try:
        sga, rots, system = point_group(s)
    except Exception as err:  # spglib failures come in several types
        raise _EntryError(
            f"symmetry analysis failed: {short_error(err, 80, with_type=False)}"
        ) from None
    return align(rec, sga, rots, system, tolerance)


def validate(
    record: Record,
    *,
    tolerance: float = 0.05,
    keep_unstable: bool = False,
    max_sites: int = 200,
    cutoff: float | None = 5.0,
) -> Record | Dropped:
    """Check one record and bring its structure into its tensor's frame.

    A moduli-only record (K_VRH and G_VRH, no tensor) gets the checks of its structure and
    spglib's crystal system, and ``frame="none"``.

    Frames tried, first pass wins (:func:`~e3elastic.data.frames.align`): as given,
    :func:`~e3elastic.data.frames.conventional_rotation`,
    :func:`~e3elastic.data.frames.ieee_rotation`, with the IEEE frame first for Materials
    Project tensors. Returns the aligned record (``residual``,
    ``frame`` and spglib's ``crystal_system`` set) or a :class:`Dropped` with the reason.
    ``tolerance`` bounds the relative symmetry residual; ``cutoff`` (Angstrom, None to skip) is
    the radius within which every site needs a neighbour and no two sites may be closer than
    0.5 Angstrom.
    """
    try:
        return _validate(record, tolerance, keep_unstable, max_sites, cutoff)
    except _EntryError as err:
        return Dropped(record.id, record.source, str(err))


def _priority(rec: Record, index: int) -> tuple:
    residual = rec.residual if not math.isnan(rec.residual) else 1.0
    rank = _SOURCE_RANK.get(rec.source, 3)
    return (not rec.has_tensor, rec.precision_gpa, rank, residual, index)


def deduplicate(records: Sequence[Record]) -> tuple[list[Record], list[Dropped]]:
    """Keep one copy of each material; return (kept in input order, dropped duplicates).

    Two records are the same material when they share an id, or when they come from
    different sources, have the same reduced formula and level of theory, and pymatgen's
    ``StructureMatcher`` (default tolerances) matches their structures. A full tensor wins
    over K/G only; then the copy with the finest ``precision_gpa``, then the preferred source
    (:data:`_SOURCE_RANK`: of two whole-GPa MP releases the older), then the lower residual.
    Records of different levels of theory are never merged.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    matcher = StructureMatcher()
    order = sorted(range(len(records)), key=lambda i: _priority(records[i], i))
    by_id: dict[str, Record] = {}
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    kept: list[int] = []
    dropped: list[Dropped] = []
    for i in order:
        rec = records[i]
        twin = by_id.get(rec.id)
        if twin is None:
            for other in groups[(rec.formula, rec.theory)]:
                if other.source != rec.source and matcher.fit(other.structure, rec.structure):
                    twin = other
                    break
        if twin is not None:
            dropped.append(Dropped(rec.id, rec.source, f"duplicate of {twin.id} ({twin.source})"))
            continue
        by_id[rec.id] = rec
        groups[(rec.formula, rec.theory)].append(rec)
        kept.append(i)
    return [records[i] for i in sorted(kept)], dropped
