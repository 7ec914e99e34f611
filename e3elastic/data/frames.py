"""Frames: a structure's point group, and rotations into the frame of its tensor.

A tensor is consistent with its structure when it is invariant, within a tolerance, under the
structure's point group (:func:`e3elastic.tensors.symmetry_residual`). Sources store tensors in
different frames; :func:`align` tries the structure as given, then the orientation of its
conventional standard cell (:func:`conventional_rotation`), then the IEEE frame of the tensor
(:func:`ieee_rotation`).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from e3elastic import tensors
from e3elastic.errors import short_error

from .records import Record, _EntryError

__all__ = ["SYMPREC", "conventional_rotation", "ieee_rotation", "rotate_structure", "align"]

#: spglib tolerance (Angstrom) for the point group of a structure.
SYMPREC = 0.01


def _proper(r: np.ndarray) -> np.ndarray:
    """``r`` or ``-r``, whichever is a proper rotation. A 4th-rank tensor is unchanged by the
    inversion, and a proper rotation keeps the lattice right-handed."""
    r = tensors.nearest_orthogonal(r)
    return -r if np.linalg.det(r) < 0 else r


def _analyzer(structure: Any, symprec: float = SYMPREC):
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    return SpacegroupAnalyzer(structure, symprec=symprec)


def _rotations(sga: Any) -> np.ndarray:
    ops = sga.get_point_group_operations(cartesian=True)
    rots = np.array([op.rotation_matrix for op in ops], dtype=np.float64).reshape(-1, 3, 3)
    return tensors.nearest_orthogonal(rots)


def conventional_rotation(structure: Any, sga: Any = None) -> np.ndarray:
    """Proper rotation ``(3, 3)`` taking the structure into the orientation of pymatgen's
    conventional standard cell (``get_conventional_standard_structure``: a along x, b in the
    xy plane, axes in the standard setting). The cell itself is not changed.

    This is the frame of most legacy Materials Project tensors (matminer 2015, StrainNet).
    Raises ``ValueError`` when the two lattices cannot be matched.
    """
    sga = sga or _analyzer(structure)
    conv = sga.get_conventional_standard_structure()
    found = structure.lattice.find_mapping(conv.lattice, ltol=0.02, atol=2)
    if found is None or found[1] is None:
        raise ValueError("the lattice does not map onto its conventional standard cell")
    # found[1] maps the conventional frame into the structure's; we need the inverse.
    return _proper(found[1].T)


def ieee_rotation(structure: Any, voigt: np.ndarray) -> np.ndarray:
    """Proper rotation ``(3, 3)`` taking the structure into the IEEE frame of its tensor.

    pymatgen's ``ElasticTensor.get_ieee_rotation`` (its 1987 IEEE axis rules); an improper
    result is negated (see :func:`_proper`).
    """
    from pymatgen.analysis.elasticity import ElasticTensor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = np.array(ElasticTensor.from_voigt(voigt).get_ieee_rotation(structure), float)
    return _proper(r)


def rotate_structure(structure: Any, rotation: np.ndarray):
    """Structure with every Cartesian vector ``x`` replaced by ``rotation @ x``.

    Lattice rows become ``L @ R.T``; fractional coordinates are unchanged.
    """
    from pymatgen.core import Lattice, Structure

    r = np.asarray(rotation, dtype=np.float64)
    lattice = Lattice(structure.lattice.matrix @ r.T)
    return Structure(lattice, [site.species for site in structure], structure.frac_coords)


def point_group(structure: Any) -> tuple[Any, np.ndarray, str]:
    """spglib's view of a structure (symprec :data:`SYMPREC`): ``(SpacegroupAnalyzer,
    Cartesian point-group operations (n, 3, 3) including improper ones, crystal system)``.

    A lattice that is symmetric only within ``symprec`` gives slightly non-orthogonal Cartesian
    operations, so each is replaced by the nearest orthogonal matrix.
    """
    sga = _analyzer(structure)
    return sga, _rotations(sga), sga.get_crystal_system()


def align(rec: Record, sga: Any, rots: np.ndarray, system: str, tolerance: float) -> Record:
    """``rec`` in the first frame where its tensor has the point group ``rots`` of its
    structure (``sga``, ``rots``, ``system``: :func:`point_group`), within ``tolerance``.

    Frames tried, first pass wins: as given, :func:`conventional_rotation`,
    :func:`ieee_rotation`. Returns the record with ``residual``, ``frame`` and ``crystal_system``
    set (and its structure rotated when the frame is not the given one); raises
    :class:`_EntryError` ("frame mismatch") when no frame passes.
    """
    s = rec.structure
    res = float(tensors.symmetry_residual(rec.voigt, rots))
    if res <= tolerance:
        eye = np.eye(3)
        trivial = all(np.allclose(r, eye) or np.allclose(r, -eye) for r in rots)  # triclinic
        frame = "unverified" if trivial else "given"
        return dataclasses.replace(rec, crystal_system=system, residual=res, frame=frame)
    tried, values = [f"{res:.3f} as given"], [res]
    candidates = (
        ("conventional", lambda: conventional_rotation(s, sga)),
        ("ieee", lambda: ieee_rotation(s, rec.voigt)),
    )
    for frame, make in candidates:
        try:
            r = make()
        except Exception as err:  # pymatgen's symmetry code raises several kinds
            tried.append(f"{frame} frame failed ({short_error(err, 40, with_type=False)})")
            continue
        # The rotated structure's point group is the conjugated one: no second spglib call.
        res2 = float(tensors.symmetry_residual(rec.voigt, r @ rots @ r.T))
        if res2 <= tolerance:
            return dataclasses.replace(
                rec,
                structure=rotate_structure(s, r),
                crystal_system=system,
                residual=res2,
                frame=frame,
            )
        tried.append(f"{res2:.3f} in the {frame} frame")
        values.append(res2)
    hint = ""
    if len(values) > 1 and np.ptp(values) < 1e-6:
        hint = "; the frames are equivalent, so the tensor itself lacks the crystal's symmetry"
    raise _EntryError(f"frame mismatch: residual {'; '.join(tried)} (tolerance {tolerance}){hint}")
