"""Records: one crystal with its Voigt stiffness, and the entries that were dropped.

A :class:`Record` holds a pymatgen ``Structure`` (Angstrom) and a 6x6 Voigt stiffness in GPa
(order 11, 22, 33, 23, 13, 12; no factors of 2, the convention of :mod:`e3elastic.tensors`).
An entry that cannot become one is a :class:`Dropped` whose reason starts with one of
:data:`REASONS`.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from e3elastic import tensors
from e3elastic.errors import E3ElasticError, short_error
from e3elastic.files import atomic_write

__all__ = ["REASONS", "DataError", "Record", "Dropped", "write_records"]

# Relative asymmetry |C_IJ - C_JI| / max|C| above which a 6x6 matrix is rejected; below it
# the matrix is symmetrised (files are often rounded).
_ASYM_RTOL = 1e-3

#: Reasons an entry is dropped (the text before ":" in :attr:`Dropped.reason`).
REASONS = (
    "malformed entry",
    "unparseable structure",
    "bad tensor",
    "non-finite tensor",
    "asymmetric tensor",
    "partial occupancy",
    "too many sites",
    "isolated atom",
    "overlapping atoms",
    "not positive definite",
    "symmetry analysis failed",
    "frame mismatch",
    "duplicate",
)


class DataError(E3ElasticError, ValueError):
    """Data cannot be read at all (missing folder, no readable file, failed download)."""


class _EntryError(ValueError):
    """One entry is unusable; the message starts with one of :data:`REASONS`."""


@dataclasses.dataclass(frozen=True, eq=False)
class Record:
    """One crystal and its elastic tensor.

    Attributes:
        id: unique id: the Materials Project id (``mp-123``, ``mvc-4``) where the source has
            one, else ``<source>:<name>`` (``zeolite:MFI``, ``matten:NaCl-1a2b3c4d``).
        source: where it was read from: ``matminer2015``, ``strainnet``, ``matten``,
            ``zeolites``, ``mp-api`` or the ``source`` of a user file (default ``user``).
        formula: reduced formula of the structure, e.g. ``SiO2``.
        structure: pymatgen ``Structure`` (Angstrom), without site properties. After
            :func:`validate` it sits in the frame of ``voigt``.
        voigt: ``(6, 6)`` float64 Voigt stiffness (GPa), symmetric, read-only.
        theory: level of theory of the tensor: ``PBE`` or ``B3LYP-D2`` (or a user tag).
        crystal_system: lower case; the source's label when read, spglib's (symprec 0.01)
            after :func:`validate`.
        precision_gpa: rounding step of the stored tensor values (GPa): 1.0 for StrainNet.
        residual: ``max_R |R.C - C| / |C|`` over the point group, NaN before validation.
        frame: ``"given"`` (consistent as read), ``"conventional"`` or ``"ieee"`` (structure
            rotated into that frame, see :func:`validate`), ``"unverified"`` (the point group
            has no rotation besides +-1, so the check says nothing) or ``"unchecked"`` (not
            validated yet).
    """

    id: str
    source: str
    formula: str
    structure: Any
    voigt: np.ndarray
    theory: str = "PBE"
    crystal_system: str = ""
    precision_gpa: float = 0.01
    residual: float = math.nan
    frame: str = "unchecked"

    def __post_init__(self) -> None:
        v = np.array(self.voigt, dtype=np.float64)
        if v.shape != (6, 6):
            raise ValueError(f"{self.id}: voigt must be 6x6, got {v.shape}")
        v.setflags(write=False)
        object.__setattr__(self, "voigt", v)

    @property
    def n_sites(self) -> int:
        return len(self.structure)

    def to_dict(self) -> dict[str, Any]:
        """Compact JSON-ready dict (lattice rows, species, fractional coordinates)."""
        s = self.structure
        return {
            "id": self.id,
            "source": self.source,
            "formula": self.formula,
            "theory": self.theory,
            "crystal_system": self.crystal_system,
            "precision_gpa": self.precision_gpa,
            "residual": None if math.isnan(self.residual) else self.residual,
            "frame": self.frame,
            "voigt": self.voigt.tolist(),
            "lattice": s.lattice.matrix.tolist(),
            "species": [str(site.specie) for site in s],
            "frac": s.frac_coords.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Record:
        """Inverse of :meth:`to_dict`."""
        from pymatgen.core import Lattice, Structure

        structure = Structure(Lattice(d["lattice"]), d["species"], d["frac"])
        residual = d.get("residual")
        return cls(
            id=d["id"],
            source=d["source"],
            formula=d["formula"],
            structure=structure,
            voigt=np.array(d["voigt"], dtype=np.float64),
            theory=d["theory"],
            crystal_system=d["crystal_system"],
            precision_gpa=float(d["precision_gpa"]),
            residual=math.nan if residual is None else float(residual),
            frame=d["frame"],
        )

    def to_user_dict(self) -> dict[str, Any]:
        """This record in the user JSON format (see the module docstring)."""
        return {
            "id": self.id,
            "structure": self.structure.as_dict(),
            "voigt_GPa": self.voigt.tolist(),
            "theory": self.theory,
            "source": self.source,
            "precision_GPa": self.precision_gpa,
        }


class Dropped(NamedTuple):
    """An entry that was not kept: ``(id, source, reason)``."""

    id: str
    source: str
    reason: str

    @property
    def kind(self) -> str:
        """The reason's category, one of :data:`REASONS`."""
        for kind in REASONS:
            if self.reason.startswith(kind):
                return kind
        return self.reason.split(":")[0]


def _plain_structure(obj: Any):
    """A pymatgen Structure from a Structure, a dict or a CIF string; site properties dropped."""
    from pymatgen.core import Structure

    if isinstance(obj, Structure):
        s = obj
    elif isinstance(obj, dict):
        s = Structure.from_dict(obj)
    elif isinstance(obj, str):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            s = Structure.from_str(obj, fmt="cif")
    else:
        raise TypeError(f"expected a structure dict or a CIF string, got {type(obj).__name__}")
    if len(s) == 0:
        raise ValueError("no sites")
    species = [site.specie if site.is_ordered else site.species for site in s]
    return Structure(s.lattice, species, s.frac_coords)


def _voigt(obj: Any) -> np.ndarray:
    """6x6 Voigt (GPa) from a 6x6 or 3x3x3x3 nested list; raises :class:`_EntryError`."""
    try:
        a = np.asarray(obj, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise _EntryError(
            f"bad tensor: not an array of numbers ({short_error(err, 60, with_type=False)})"
        ) from None
    if a.shape not in ((6, 6), (3, 3, 3, 3)):
        raise _EntryError(f"bad tensor: shape {a.shape}, expected (6, 6) or (3, 3, 3, 3)")
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise _EntryError(f"non-finite tensor: {bad} NaN or infinite value(s)")
    if a.shape == (3, 3, 3, 3):
        try:
            a = tensors.cartesian_to_voigt(a)
        except ValueError as err:
            raise _EntryError(
                f"asymmetric tensor: {short_error(err, 80, with_type=False)}"
            ) from None
    scale = float(np.max(np.abs(a)))
    if scale == 0.0:
        raise _EntryError("bad tensor: all entries are zero")
    asym = float(np.max(np.abs(a - a.T)))
    if asym > _ASYM_RTOL * scale:
        raise _EntryError(f"asymmetric tensor: max |C_IJ - C_JI| = {asym:.3g} GPa")
    return 0.5 * (a + a.T)


def _make_record(
    id: str,
    source: str,
    structure: Any,
    voigt: Any,
    *,
    theory: str = "PBE",
    precision: float = 0.01,
    crystal_system: str = "",
) -> Record:
    """Build a Record; raises :class:`_EntryError` with a reason for a bad entry."""
    try:
        s = _plain_structure(structure)
    except Exception as err:  # pymatgen raises many kinds on bad input
        raise _EntryError(
            f"unparseable structure: {short_error(err, 120, with_type=False)}"
        ) from None
    v = _voigt(voigt)
    return Record(
        id=str(id),
        source=source,
        formula=s.composition.reduced_formula,
        structure=s,
        voigt=v,
        theory=str(theory),
        crystal_system=str(crystal_system or "").lower(),
        precision_gpa=float(precision),
    )


def write_records(records: Iterable[Record], path: str | os.PathLike) -> Path:
    """Write records in the user JSON format (gzipped when ``path`` ends in ``.gz``)."""
    path = Path(path)
    text = json.dumps([r.to_user_dict() for r in records])
    data = gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode()
    atomic_write(path, data)
    return path
