"""Structures to predict: reading files, checking and wrapping them, and their symmetry.

:func:`expand_paths` turns paths, folders and glob patterns into files; :func:`read_structure`
reads one with pymatgen (or ASE); :func:`as_structure`, :func:`check_structure` and
:func:`wrapped_into_cell` turn any input into an ordered, finite structure with every atom in
the cell; :func:`symmetry` gives its point-group operations (spglib). Problems raise
:class:`PredictError` with a sentence saying what is wrong. Re-exported by
:mod:`e3elastic.inference`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .. import tensors
from ..errors import E3ElasticError, short_error

__all__ = [
    "MAX_FRACTIONAL",
    "STRUCTURE_SUFFIXES",
    "SYMPREC",
    "PredictError",
    "as_structure",
    "check_structure",
    "expand_paths",
    "input_items",
    "read_structure",
    "symmetry",
    "symmetry_or_none",
    "wrapped_into_cell",
]

#: Atoms further than this many cells from the origin (fractional coordinate) are refused:
#: float64 cannot place them within the cell to better than ~1e-7 of a lattice vector.
MAX_FRACTIONAL = 1e9

#: Default spglib tolerance (Angstrom) for the symmetry of a structure.
SYMPREC = 0.01

#: File suffixes collected from a directory.
STRUCTURE_SUFFIXES = (".cif", ".vasp", ".poscar", ".xyz", ".extxyz", ".json", ".cssr", ".xsf")


class PredictError(E3ElasticError, ValueError):
    """A model or input cannot be used; the message says which and why."""


def _is_structure_file(f: Path) -> bool:
    """A file a folder contributes: a known suffix, or VASP's POSCAR/CONTCAR anywhere in its
    name (``NaCl_POSCAR``, ``POSCAR.relaxed``), as pymatgen recognises them."""
    name = f.name.upper()
    if f.suffix.lower() == ".json":
        return _holds_structure(f)
    return f.suffix.lower() in STRUCTURE_SUFFIXES or "POSCAR" in name or "CONTCAR" in name


def _holds_structure(f: Path) -> bool:
    """True for a JSON file of one pymatgen Structure (``lattice`` and ``sites``), False for
    other JSON a folder may hold: prediction output, a data file."""
    import json

    try:
        with open(f, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, ValueError):
        return True  # unreadable: kept, so that it is reported as a failed input
    return isinstance(obj, dict) and "lattice" in obj and "sites" in obj


def expand_paths(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Files from paths, directories (their structure files, sorted; of the JSON files only
    those that hold a structure) and glob patterns.

    A pattern or directory that matches nothing is returned as is, so it is reported as a
    failed input rather than silently dropped.
    """
    out: list[str] = []
    for p in paths:
        s = str(p)
        if any(ch in s for ch in "*?[") and not Path(s).exists():
            hits = sorted(glob.glob(s, recursive=True))
            out.extend(hits if hits else [s])
        elif Path(s).is_dir():
            files = (f for f in Path(s).iterdir() if f.is_file() and _is_structure_file(f))
            hits = sorted(str(f) for f in files)
            out.extend(hits if hits else [s])
        else:
            out.append(s)
    return out


def read_structure(path: str | os.PathLike):
    """A pymatgen Structure from any file pymatgen (or ASE, when installed) reads; the first
    one of a file that holds several."""
    return _read_structure(path)[0]


def _read_structure(path: str | os.PathLike) -> tuple[Any, list[str]]:
    """(Structure, warnings): a ``multiple-structures`` warning when the file holds more than
    the one returned."""
    import warnings

    from pymatgen.core import Structure

    p = Path(path)
    if not p.exists():
        raise PredictError("no such file")
    if p.is_dir():
        raise PredictError("a directory with no structure files")
    if p.stat().st_size == 0:
        raise PredictError("empty file")
    errors = []
    structure = None
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            structure = Structure.from_file(str(p))
    except Exception as e:  # pymatgen raises many types on bad files
        errors.append(f"pymatgen: {short_error(e)}")
    if structure is not None:
        if any("cannot be determined" in str(w.message) for w in caught):
            raise PredictError(
                "the POSCAR names no elements (VASP 4 format), so its species would be guessed; "
                "add a line of element symbols above the line of atom counts"
            )
        return structure, _other_blocks(p)
    try:
        from ase.io import read as ase_read
        from pymatgen.io.ase import AseAtomsAdaptor
    except ImportError:
        if p.suffix.lower() in (".xyz", ".extxyz"):
            errors.append(
                "ase: not installed, and pymatgen reads no .xyz crystal (pip install ase)"
            )
    else:
        try:
            return AseAtomsAdaptor.get_structure(ase_read(str(p))), []
        except Exception as e:
            errors.append(f"ase: {short_error(e)}")
    raise PredictError(f"not a readable structure ({'; '.join(errors)})")


def _other_blocks(p: Path) -> list[str]:
    """``multiple-structures`` when a CIF holds more than one data block with a structure."""
    import warnings

    if ".cif" not in p.name.lower():
        return []
    try:
        text = p.read_text(errors="replace")
    except OSError:
        return []
    if sum(line.lstrip().lower().startswith("data_") for line in text.splitlines()) < 2:
        return []
    from pymatgen.io.cif import CifParser

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            n = len(CifParser.from_str(text).parse_structures(primitive=False))
    except Exception:  # the first block was read; the count is only for the warning
        return []
    if n < 2:
        return []
    return [
        f"multiple-structures: the file holds {n} structures and only the first was "
        "predicted; put each in its own file to predict the others"
    ]


def as_structure(item: Any) -> tuple[str, Any, list[str]]:
    """(label, Structure, warnings) from a Structure, an ASE Atoms or a path."""
    from pymatgen.core import Structure

    if isinstance(item, Structure):
        return item.composition.reduced_formula, item, []
    if type(item).__name__ == "Atoms" and hasattr(item, "get_cell"):
        from pymatgen.io.ase import AseAtomsAdaptor

        if abs(float(np.linalg.det(np.asarray(item.get_cell(), np.float64)))) < 1e-6:
            raise PredictError(
                "the ASE Atoms has no periodic cell (zero volume); give the crystal's lattice "
                "vectors (Atoms(..., cell=..., pbc=True))"
            )
        s = AseAtomsAdaptor.get_structure(item)
        return s.composition.reduced_formula, s, []
    if isinstance(item, str | os.PathLike):
        s, notes = _read_structure(item)
        return str(item), s, notes
    if type(item).__name__ == "Molecule":
        raise PredictError(
            "a pymatgen Molecule has no lattice, and a molecule has no elastic tensor as a "
            "crystal does; Molecule.get_boxed_structure(a, b, c) makes a cell of it, which "
            "is predicted with a vacuum warning"
        )
    raise PredictError(
        f"cannot predict for a {type(item).__name__}; give a Structure, Atoms or path"
    )


def check_structure(s) -> None:
    """:class:`PredictError` unless the structure has atoms, is ordered, names real elements
    and is finite."""
    if len(s) == 0:
        raise PredictError("structure has no atoms")
    if not s.is_ordered:
        raise PredictError("structure has partial occupancies; give an ordered structure")
    from pymatgen.core.periodic_table import DummySpecies

    unknown = sorted({str(sp.symbol) for sp in s.species if isinstance(sp, DummySpecies)})
    if unknown:
        raise PredictError(
            f"unknown element symbol{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(u) for u in unknown)}: every site must name a real element"
        )
    lat = np.asarray(s.lattice.matrix)
    if not np.all(np.isfinite(lat)) or not np.all(np.isfinite(s.cart_coords)):
        raise PredictError("structure has non-finite lattice or coordinates")


def wrapped_into_cell(s):
    """The structure with every atom moved into the cell (fractional coordinates in [0, 1)).

    The model reads float32 positions; an atom 1e8 Angstrom away would lose all precision
    there, while the wrapped structure is the same crystal.
    """
    from pymatgen.core import Structure

    frac = np.asarray(s.frac_coords, dtype=np.float64)
    if not np.all(np.isfinite(frac)):
        raise PredictError("structure has non-finite fractional coordinates")
    far = float(np.abs(frac).max())
    if far > MAX_FRACTIONAL:
        raise PredictError(
            f"an atom lies {far:.3g} cells from the origin (more than {MAX_FRACTIONAL:g}); "
            "wrap the coordinates into the cell"
        )
    if far < 1.0 and np.all(frac >= 0.0):
        return s
    return Structure(s.lattice, s.species, frac - np.floor(frac))


def input_items(structures: Any) -> tuple[list[Any], bool]:
    """(items, single): one Structure/Molecule/Atoms/file is a single input; a list, a folder
    or a glob pattern is expanded into many."""
    from pymatgen.core import Molecule, Structure

    if isinstance(structures, Structure | Molecule) or (
        type(structures).__name__ == "Atoms" and hasattr(structures, "get_cell")
    ):
        return [structures], True  # a Molecule is one input (refused whole), not its atoms
    if isinstance(structures, str | os.PathLike):
        s = str(structures)
        if Path(s).is_file() or not (Path(s).is_dir() or any(c in s for c in "*?[")):
            return [s], True  # a file, or a path that names none: one result (its error)
        return list(expand_paths([s])), False
    items: list[Any] = []
    for item in structures:
        if isinstance(item, str | os.PathLike) and not Path(str(item)).is_file():
            items.extend(expand_paths([item]))
        else:
            items.append(item)
    return items, False


def symmetry(structure, symprec: float = SYMPREC) -> tuple[np.ndarray, dict[str, Any]]:
    """Cartesian point-group operations ``(n, 3, 3)`` of a structure and a description
    (``space_group``, ``space_group_number``, ``point_group``, ``crystal_system``, ``symprec``).

    spglib (through pymatgen) with tolerance ``symprec`` in Angstrom. A lattice symmetric only
    within ``symprec`` makes the Cartesian operations slightly non-orthogonal, and they then no
    longer form a group. So the lattice metric is first averaged over the (integer, exact)
    fractional operations, and the operations are expressed in the nearest lattice with that
    metric (the input lattice under a small symmetric strain, no rotation): they are then
    orthogonal and close into a group to float64 round-off.
    """
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sga = SpacegroupAnalyzer(structure, symprec=symprec)
    frac = np.array([op.rotation_matrix for op in sga.get_point_group_operations(cartesian=False)])
    lat_t = np.asarray(structure.lattice.matrix, np.float64).T  # columns a, b, c
    metric = lat_t.T @ lat_t
    ideal = np.mean(np.swapaxes(frac, 1, 2) @ metric @ frac, axis=0)  # invariant metric
    inv = np.linalg.inv(lat_t)
    w, v = np.linalg.eigh(inv.T @ ideal @ inv)  # S^2: the lattice becomes S @ lat_t
    strain = (v * np.sqrt(w)) @ v.T
    ideal_t = strain @ lat_t
    rots = tensors.nearest_orthogonal(ideal_t @ frac @ np.linalg.inv(ideal_t))
    return rots, {
        "space_group": sga.get_space_group_symbol(),
        "space_group_number": int(sga.get_space_group_number()),
        "point_group": sga.get_point_group_symbol(),
        "crystal_system": sga.get_crystal_system(),
        "symprec": float(symprec),
    }


def symmetry_or_none(structure, symprec: float):
    """:func:`symmetry`, or ``(None, None)`` when spglib gives up on the cell."""
    try:
        return symmetry(structure, symprec)
    except Exception:  # spglib gives up on some odd cells; symmetry is then unknown
        return None, None
