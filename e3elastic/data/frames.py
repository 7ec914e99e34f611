"""Frames: a structure's point group, and rotations into the frame of its tensor.

A tensor is consistent with its structure when it is invariant, within a tolerance, under the
structure's point group (:func:`e3elastic.tensors.symmetry_residual`). That check is necessary,
not sufficient: it cannot see a permutation of an orthorhombic cell's axes, nor a rotation
about a trigonal or monoclinic axis that keeps the point group. Sources store tensors in
different frames, so :func:`align` tries three, in an order that depends on the source:

* Materials Project tensors (:data:`IEEE_SOURCES`) are in the IEEE frame of pymatgen's
  ``get_ieee_rotation``, whatever the orientation of the stored structure. Their structure is
  rotated into that frame first (:func:`ieee_rotation`), then the structure as given and the
  conventional standard orientation (:func:`conventional_rotation`) are tried. Monoclinic and
  triclinic cells keep the order below: for them the IEEE rotation of the current pymatgen
  differs from the one the tensors were made with.
* Every other tensor (zeolites, user files) is taken in the frame of its structure as given,
  then the conventional orientation, then the IEEE frame.

matminer 2015 keeps each tensor also in the orientation of its own structure
(``elastic_tensor_original``), which shows which order is right: with the IEEE frame first,
every orthorhombic, trigonal, tetragonal, hexagonal and cubic tensor of that file lands in the
frame of its structure, where "as given" first put 173 of its 193 orthorhombic and 20 of its 60
trigonal tensors on permuted or rotated axes (``tests/test_data.py``). For that file the copy
also settles every frame (``Record.oriented``): a frame counts only where the copy, turned with
the structure, is the label, and where no frame of the three does (a monoclinic and a trigonal
cell, whose labels are turned about the unique axis), the copy itself, averaged over the point
group, is the label with the structure as given (frame ``"oriented"``).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from e3elastic import tensors
from e3elastic.errors import short_error

from .records import Record, _EntryError

__all__ = [
    "IEEE_SOURCES",
    "SYMPREC",
    "conventional_rotation",
    "ieee_rotation",
    "rotate_structure",
    "align",
]

#: spglib tolerance (Angstrom) for the point group of a structure.
SYMPREC = 0.01

#: Sources whose tensors are Materials Project IEEE-format tensors: their structures are
#: rotated into the IEEE frame first (see the module docstring).
IEEE_SOURCES = frozenset({"matminer2015", "strainnet", "elatbot", "matten", "mp-api"})

#: Crystal systems for which the IEEE frame is tried last even for :data:`IEEE_SOURCES`.
_GIVEN_FIRST_SYSTEMS = frozenset({"monoclinic", "triclinic"})


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


def _turns_into(oriented: np.ndarray | None, voigt: np.ndarray, r: np.ndarray, tol: float) -> bool:
    """Whether the source's own copy of the tensor in the structure's orientation, turned by
    ``r``, is the label (always True where the source keeps no such copy)."""
    if oriented is None:
        return True
    seen = tensors.rotate(oriented, r)
    return bool(np.linalg.norm(seen - voigt) <= tol * np.linalg.norm(voigt))


def align(rec: Record, sga: Any, rots: np.ndarray, system: str, tolerance: float) -> Record:
    """``rec`` in the first frame where its tensor has the point group ``rots`` of its
    structure (``sga``, ``rots``, ``system``: :func:`point_group`), within ``tolerance``.

    Frames tried, first pass wins: for a Materials Project tensor (:data:`IEEE_SOURCES`,
    except monoclinic and triclinic cells) :func:`ieee_rotation`, as given,
    :func:`conventional_rotation`; for any other, as given, :func:`conventional_rotation`,
    :func:`ieee_rotation`. Where the record keeps the source's own copy of its tensor in the
    structure's orientation (``rec.oriented``), a frame passes only if that copy, turned with
    the structure, is the label; when none does, the record takes that copy, averaged over
    the point group, with the structure as given (frame ``"oriented"``). Returns the record
    with ``residual``, ``frame`` and ``crystal_system`` set (and its structure rotated when
    the frame is not the given one); raises :class:`_EntryError` ("frame mismatch") when no
    frame passes.
    """
    s = rec.structure
    eye = np.eye(3)
    oriented = rec.oriented
    candidates = [
        ("given", lambda: eye),
        ("conventional", lambda: conventional_rotation(s, sga)),
        ("ieee", lambda: ieee_rotation(s, rec.voigt)),
    ]
    if rec.source in IEEE_SOURCES and system not in _GIVEN_FIRST_SYSTEMS:
        candidates.insert(0, candidates.pop())
    tried, values = [], []
    for frame, make in candidates:
        try:
            r = make()
        except Exception as err:  # pymatgen's symmetry code raises several kinds
            tried.append(f"{frame} frame failed ({short_error(err, 40, with_type=False)})")
            continue
        # The rotated structure's point group is the conjugated one: no second spglib call.
        res = float(tensors.symmetry_residual(rec.voigt, r @ rots @ r.T))
        if res <= tolerance and _turns_into(oriented, rec.voigt, r, tolerance):
            if frame == "given":
                trivial = all(np.allclose(q, eye) or np.allclose(q, -eye) for q in rots)
                frame = "unverified" if trivial else "given"  # triclinic: nothing to check
                return dataclasses.replace(
                    rec, crystal_system=system, residual=res, frame=frame, oriented=None
                )
            return dataclasses.replace(
                rec,
                structure=rotate_structure(s, r),
                crystal_system=system,
                residual=res,
                frame=frame,
                oriented=None,
            )
        where = "as given" if frame == "given" else f"in the {frame} frame"
        tried.append(f"{res:.3f} {where}" + ("" if res > tolerance else " (axes turned)"))
        values.append(res)
    if oriented is not None:
        res = float(tensors.symmetry_residual(oriented, rots))
        # a rotation keeps the eigenvalues of the Mandel matrix (the Kelvin moduli)
        kelvin = [np.linalg.eigvalsh(tensors.voigt_to_mandel(c)) for c in (oriented, rec.voigt)]
        same = np.abs(kelvin[0] - kelvin[1]).max() <= tolerance * np.abs(kelvin[1]).max()
        if not same:
            tried.append("the source's copy in the structure's orientation is another tensor")
        elif res <= tolerance:
            return dataclasses.replace(
                rec,
                voigt=tensors.symmetrize(oriented, rots),
                crystal_system=system,
                residual=res,
                frame="oriented",
                oriented=None,
            )
        else:
            tried.append(f"{res:.3f} for the source's copy in the structure's orientation")
    hint = ""
    if len(values) > 1 and np.ptp(values) < 1e-6:
        hint = "; the frames are equivalent, so the tensor itself lacks the crystal's symmetry"
    raise _EntryError(f"frame mismatch: residual {'; '.join(tried)} (tolerance {tolerance}){hint}")
