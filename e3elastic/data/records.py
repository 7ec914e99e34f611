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
# Largest plausible |C_IJ| and K_VRH or G_VRH (GPa). Diamond, the stiffest known crystal, has
# C11 = 1079 GPa, K = 442 and G = 535; the data folder's largest entry is 1380 GPa. A value
# above these is taken for a unit mistake (kbar, Pa, MPa), not a stiff crystal.
_MAX_ENTRY_GPA = 3000.0
_MAX_MODULUS_GPA = 1500.0
_UNIT_HINT = "is it in GPa? kbar (VASP's unit) is 0.1 GPa, MPa 0.001 GPa, Pa 1e-9 GPa"

#: Reasons an entry is dropped (the text before ":" in :attr:`Dropped.reason`).
REASONS = (
    "malformed entry",
    "unparseable structure",
    "bad tensor",
    "non-finite tensor",
    "bad moduli",
    "implausible units",
    "unknown element",
    "missing field",
    "non-finite moduli",
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
    """One crystal and its elastic label: a full tensor, or only its K_VRH and G_VRH.

    Attributes:
        id: unique id: the Materials Project id (``mp-123``, ``mvc-4``) where the source has
            one, else ``<source>:<name>`` (``zeolite:MFI``, ``matten:NaCl-1a2b3c4d``).
        source: where it was read from: ``matminer2015``, ``strainnet``, ``matten``,
            ``zeolites``, ``elatbot`` (MP tensors of about 2023-24), ``matcalc2025`` (MP
            K/G of binaries, 2025), ``mp-api`` or the ``source`` of a user file (default
            ``user``).
        formula: reduced formula of the structure, e.g. ``SiO2``.
        structure: pymatgen ``Structure`` (Angstrom), without site properties. After
            :func:`validate` it sits in the frame of ``voigt``.
        voigt: ``(6, 6)`` float64 Voigt stiffness (GPa), symmetric, read-only; None for a
            moduli-only record.
        moduli: ``(K_VRH, G_VRH)`` in GPa for a record that has no tensor (the
            polycrystalline Voigt-Reuss-Hill bulk and shear moduli), else None.
        theory: level of theory of the tensor: ``PBE`` or ``B3LYP-D2`` (or a user tag).
        crystal_system: lower case; the source's label when read, spglib's (symprec 0.01)
            after :func:`validate`.
        precision_gpa: rounding step of the stored tensor values (GPa): 1.0 for StrainNet.
        residual: ``max_R |R.C - C| / |C|`` over the point group, NaN before validation.
        frame: ``"given"`` (consistent as read), ``"conventional"`` or ``"ieee"`` (structure
            rotated into that frame, see :func:`validate`), ``"unverified"`` (the point group
            has no rotation besides +-1, so the check says nothing), ``"oriented"`` (structure
            as given, tensor the source's own copy in that orientation, see ``oriented``),
            ``"none"`` (a
            moduli-only record: K and G do not depend on the frame) or ``"unchecked"`` (not
            validated yet).
        oriented: the same tensor in the orientation of the structure as read, where the
            source keeps one (matminer 2015's ``elastic_tensor_original``); :func:`validate`
            uses it to choose the frame and drops it. None for every other source.
    """

    id: str
    source: str
    formula: str
    structure: Any
    voigt: np.ndarray | None
    theory: str = "PBE"
    crystal_system: str = ""
    precision_gpa: float = 0.01
    residual: float = math.nan
    frame: str = "unchecked"
    moduli: tuple[float, float] | None = None
    oriented: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.voigt is None:
            if self.moduli is None:
                raise ValueError(f"{self.id}: a record needs a tensor or (K_VRH, G_VRH)")
            k, g = (float(x) for x in self.moduli)
            if not (math.isfinite(k) and math.isfinite(g) and k > 0 and g > 0):
                raise ValueError(f"{self.id}: K_VRH and G_VRH must be positive, got {k}, {g}")
            object.__setattr__(self, "moduli", (k, g))
            return
        if self.moduli is not None:
            raise ValueError(f"{self.id}: a record with a tensor takes its moduli from it")
        v = np.array(self.voigt, dtype=np.float64)
        if v.shape != (6, 6):
            raise ValueError(f"{self.id}: voigt must be 6x6, got {v.shape}")
        v.setflags(write=False)
        object.__setattr__(self, "voigt", v)
        if self.oriented is not None:
            o = np.array(self.oriented, dtype=np.float64)
            if o.shape != (6, 6) or not np.isfinite(o).all():
                raise ValueError(f"{self.id}: oriented must be a finite 6x6, got {o.shape}")
            o.setflags(write=False)
            object.__setattr__(self, "oriented", o)

    @property
    def n_sites(self) -> int:
        return len(self.structure)

    @property
    def has_tensor(self) -> bool:
        """True when the record carries a full tensor, False for K/G only."""
        return self.voigt is not None

    @property
    def kg(self) -> tuple[float, float]:
        """``(K_VRH, G_VRH)`` in GPa: the label of a moduli-only record, else from the
        tensor (Voigt bounds from C, Reuss bounds from C^-1, Hill averages)."""
        if self.voigt is None:
            return self.moduli  # type: ignore[return-value]
        return (
            float(tensors.bulk_modulus(self.voigt)["hill"]),
            float(tensors.shear_modulus(self.voigt)["hill"]),
        )

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
            "voigt": None if self.voigt is None else self.voigt.tolist(),
            "moduli": None if self.moduli is None else list(self.moduli),
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
            voigt=None if d["voigt"] is None else np.array(d["voigt"], dtype=np.float64),
            moduli=None if d.get("moduli") is None else tuple(d["moduli"]),
            theory=d["theory"],
            crystal_system=d["crystal_system"],
            precision_gpa=float(d["precision_gpa"]),
            residual=math.nan if residual is None else float(residual),
            frame=d["frame"],
        )

    def to_user_dict(self) -> dict[str, Any]:
        """This record in the user JSON format (see the module docstring)."""
        label: dict[str, Any]
        if self.voigt is None:
            label = {"K_VRH_GPa": self.moduli[0], "G_VRH_GPa": self.moduli[1]}
        else:
            label = {"voigt_GPa": self.voigt.tolist()}
        return {
            "id": self.id,
            "structure": self.structure.as_dict(),
            **label,
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
    unknown = sorted(
        {getattr(sp, "symbol", str(sp)) for sp in s.composition if not _is_element(sp)}
    )
    if unknown:
        raise _EntryError(
            f"unknown element: {', '.join(repr(u) for u in unknown)} is not an element symbol"
        )
    species = [site.specie if site.is_ordered else site.species for site in s]
    return Structure(s.lattice, species, s.frac_coords)


def _is_element(species: Any) -> bool:
    """True for a real element (or an ion of one), False for a pymatgen dummy species such as
    the one an unknown symbol (``Xx``) in a CIF becomes."""
    from pymatgen.core.periodic_table import DummySpecies

    return not isinstance(species, DummySpecies) and 1 <= getattr(species, "Z", 0) <= 118


def _theory(name: Any) -> str:
    """A level of theory as given, or, when it names a known one in any case (``pbe``), that
    name as :data:`e3elastic.config.THEORIES` spells it."""
    from e3elastic.config import THEORIES

    text = str(name).strip()
    return next((t for t in THEORIES if t == text.upper()), text)


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
    if scale > _MAX_ENTRY_GPA:
        raise _EntryError(
            f"implausible units: largest entry {scale:.4g}, over {_MAX_ENTRY_GPA:g} GPa "
            f"(diamond's C11 is 1079 GPa); {_UNIT_HINT}"
        )
    asym = float(np.max(np.abs(a - a.T)))
    if asym > _ASYM_RTOL * scale:
        raise _EntryError(f"asymmetric tensor: max |C_IJ - C_JI| = {asym:.3g} GPa")
    return 0.5 * (a + a.T)


def _moduli(k: Any, g: Any) -> tuple[float, float]:
    """``(K_VRH, G_VRH)`` in GPa; raises :class:`_EntryError` unless both are positive
    numbers."""
    try:
        kg = (float(k), float(g))
    except (TypeError, ValueError):
        raise _EntryError(f"bad moduli: K_VRH {k!r}, G_VRH {g!r} are not numbers") from None
    if not all(math.isfinite(x) for x in kg):
        raise _EntryError("non-finite moduli: K_VRH or G_VRH is NaN or infinite")
    if min(kg) <= 0:
        raise _EntryError(f"bad moduli: K_VRH {kg[0]:g} and G_VRH {kg[1]:g} GPa must be > 0")
    if max(kg) > _MAX_MODULUS_GPA:
        raise _EntryError(
            f"implausible units: K_VRH {kg[0]:.4g}, G_VRH {kg[1]:.4g}, over "
            f"{_MAX_MODULUS_GPA:g} GPa (diamond's are 442 and 535); {_UNIT_HINT}"
        )
    return kg


def _make_record(
    id: str,
    source: str,
    structure: Any,
    voigt: Any,
    *,
    theory: str = "PBE",
    precision: float = 0.01,
    crystal_system: str = "",
    moduli: tuple[Any, Any] | None = None,
    oriented: Any = None,
) -> Record:
    """Build a Record, with a tensor ``voigt`` or (``voigt`` None) the ``moduli``
    ``(K_VRH, G_VRH)``; raises :class:`_EntryError` with a reason for a bad entry."""
    try:
        s = _plain_structure(structure)
    except _EntryError:
        raise
    except Exception as err:  # pymatgen raises many kinds on bad input
        raise _EntryError(
            f"unparseable structure: {short_error(err, 120, with_type=False)}"
        ) from None
    if voigt is None:
        label = {"voigt": None, "moduli": _moduli(*(moduli or (None, None)))}
    else:
        label = {"voigt": _voigt(voigt)}
        if oriented is not None:
            try:  # only a hint for the frame: a bad copy is left out, not the entry
                label["oriented"] = _voigt(oriented)
            except _EntryError:
                pass
    return Record(
        id=str(id),
        source=source,
        formula=s.composition.reduced_formula,
        structure=s,
        theory=_theory(theory),
        crystal_system=str(crystal_system or "").lower(),
        precision_gpa=float(precision),
        **label,
    )


def write_records(records: Iterable[Record], path: str | os.PathLike) -> Path:
    """Write records in the user JSON format (gzipped when ``path`` ends in ``.gz``)."""
    path = Path(path)
    text = json.dumps([r.to_user_dict() for r in records])
    data = gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode()
    atomic_write(path, data)
    return path
