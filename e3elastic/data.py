"""Elastic-tensor datasets: read, frame-align, validate, de-duplicate and split.

Every reader returns :class:`Record` objects: one crystal (a pymatgen ``Structure``, lengths in
Angstrom) with its 6x6 Voigt stiffness in GPa (order 11, 22, 33, 23, 13, 12; no factors of 2,
the convention of :mod:`e3elastic.tensors`). :func:`load_dataset` turns a folder (or a file)
into a :class:`Dataset`:

1. **read** every JSON file (plain or gzip); the format is detected from the content;
2. **validate** each entry: ordered sites, at most ``max_sites`` sites, no isolated or
   overlapping atoms within ``cutoff``, a positive-definite tensor (Born stability), and a
   tensor that is invariant, within ``tolerance``, under the structure's point group;
3. **align**: when the structure as given fails that symmetry check, it is rotated into the
   orientation of its conventional standard cell, else into the IEEE frame of its tensor
   (pymatgen ``Tensor.get_ieee_rotation``), and kept if one of them passes. The check cannot
   see a permutation of inequivalent axes (orthorhombic a<->b) or a rotation about a
   monoclinic axis; the conventional frame is tried first because on the 102 materials that
   matminer 2015 and StrainNet share with identical tensors it agrees with matminer's frame
   for 96 of them (IEEE first: 81; the IEEE frame alone after "as given": 90);
4. **de-duplicate** across sources: by id, then by ``StructureMatcher`` within one reduced
   formula and one level of theory; the more precise copy wins (StrainNet is rounded to 1 GPa);
5. **split** deterministically by a seeded sha256 of the id (or of the reduced formula).

Steps 1-4 are cached on disk as gzipped JSON, keyed by the input bytes and the options.
Every entry that is not kept is listed in ``Dataset.dropped`` with its reason.

>>> ds = load_dataset("../shared/data", subset="pbe")        # doctest: +SKIP
>>> train = ds.part("train")                                 # doctest: +SKIP
>>> print(format_report(ds.report))                          # doctest: +SKIP

Formats read (see ``shared/data/SOURCES.md``): matminer ``elastic_tensor_2015`` (pandas
``split`` orient), StrainNet ``mp_*_clean.json`` (columns keyed by material id, P1 CIF strings,
values rounded to whole GPa), MatTen (the n100 example and the full release: columns
``structure, formula_pretty, crystal_system, elastic_tensor[_full], elastic_tensor_voigt``, as
pandas ``columns`` orient or as a list of rows), the Coudert SiO2 zeolites (list of dicts with
``framework`` and ``elastic_tensor_voigt_GPa``), and the user format below.

User JSON format
----------------
A JSON list (the file may be gzipped) of objects::

    [
      {
        "id": "mp-149",                  # unique string (default "<file stem>:<index>")
        "structure": {...},              # pymatgen Structure.as_dict() ...
        "cif": "data_Si ...",            # ... or a CIF string (one of the two)
        "voigt_GPa": [[...], ...],       # 6x6 Voigt stiffness in GPa, order 11 22 33 23 13 12
        "theory": "PBE",                 # optional, default "PBE"
        "source": "my-lab",              # optional, default "user"
        "precision_GPa": 0.01            # optional: rounding step of the values, GPa
      }
    ]

``e3elastic data fetch-mp --out FILE`` writes this format from the Materials Project.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import math
import os
import sys
import time
import warnings
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from e3elastic import tensors
from e3elastic.config import Config, default

from .errors import E3ElasticError, short_error
from .files import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "SUBSETS",
    "HOLDOUTS",
    "DataError",
    "Record",
    "Dropped",
    "FileResult",
    "Dataset",
    "read_file",
    "mp_doc_to_record",
    "point_group_rotations",
    "conventional_rotation",
    "ieee_rotation",
    "rotate_structure",
    "validate",
    "deduplicate",
    "assign_split",
    "select_subset",
    "load_dataset",
    "load_for_config",
    "load_split",
    "write_records",
    "fetch_mp",
    "fetch_mp_structure",
    "format_report",
    "cli_summary",
    "cli_fetch_mp",
]

#: Bumped whenever processing rules or the cache layout change (invalidates caches).
FORMAT_VERSION = 2
#: Subsets understood by :func:`select_subset`.
SUBSETS = ("all", "pbe", "sio2")
#: Split keys: hash the record id, or the reduced formula (composition hold-out).
HOLDOUTS = ("id", "composition")
#: spglib tolerance (Angstrom) for the point group of a structure.
SYMPREC = 0.01
#: Names of the parts of a split, in order.
SPLIT_NAMES = ("train", "val", "test")

# Relative asymmetry |C_IJ - C_JI| / max|C| above which a 6x6 matrix is rejected; below it
# the matrix is symmetrised (files are often rounded).
_ASYM_RTOL = 1e-3
# Two sites closer than this (Angstrom) are rejected as overlapping.
_MIN_DISTANCE = 0.5
# Preference among sources when precision and residual tie (lower wins).
_SOURCE_RANK = {"matminer2015": 0, "matten": 1, "mp-api": 2, "user": 3, "strainnet": 4}

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


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


class FileResult(NamedTuple):
    """What :func:`read_file` got from one file."""

    path: str
    format: str
    records: list[Record]
    dropped: list[Dropped]
    read: dict[str, int]  # entries read per source (kept or not)


class _Collector:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.dropped: list[Dropped] = []
        self.read: Counter[str] = Counter()

    def add(self, id: str, source: str, build) -> None:
        """Count one entry and keep its record, or drop it with the reason."""
        self.read[source] += 1
        try:
            self.records.append(build())
        except _EntryError as err:
            self.dropped.append(Dropped(str(id), source, str(err)))
        except (
            KeyError,
            IndexError,
            TypeError,
            AttributeError,
            ValueError,
            OverflowError,
            RecursionError,
        ) as err:
            reason = (
                f"malformed entry: {type(err).__name__} {short_error(err, 60, with_type=False)}"
            )
            self.dropped.append(Dropped(str(id), source, reason))


def _read_matminer(obj: dict, out: _Collector) -> None:
    col = {c: i for i, c in enumerate(obj["columns"])}
    for n, row in enumerate(obj["data"]):
        try:
            mid = str(row[col["material_id"]])
        except (KeyError, IndexError, TypeError):
            mid = f"matminer:{n}"

        def build(row=row, mid=mid):
            t = row[col["elastic_tensor"]]
            t = t["data"] if isinstance(t, dict) else t
            return _make_record(mid, "matminer2015", row[col["structure"]], t, precision=0.01)

        out.add(mid, "matminer2015", build)


def _read_strainnet(obj: dict, out: _Collector) -> None:
    ids = obj.get("material_id", {})
    systems = obj.get("spacegroup.crystal_system", {})
    for key, t in obj["elasticity.elastic_tensor"].items():
        mid = str(ids.get(key, key))

        def build(key=key, t=t, mid=mid):
            return _make_record(
                mid,
                "strainnet",
                obj["cif"][key],
                t,
                precision=1.0,
                crystal_system=systems.get(key, ""),
            )

        out.add(mid, "strainnet", build)


def _digest(voigt: np.ndarray) -> str:
    text = ",".join(f"{x:.2f}" for x in np.asarray(voigt, float).ravel())
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def _matten_row(row: dict, n: Any, out: _Collector) -> None:
    def build():
        if row.get("elastic_tensor_voigt") is not None:
            t = row["elastic_tensor_voigt"]
        elif row.get("elastic_tensor") is not None:
            t = row["elastic_tensor"]
        else:
            t = row["elastic_tensor_full"]
        rec = _make_record(
            "matten:?",
            "matten",
            row["structure"],
            t,
            precision=0.01,
            crystal_system=row.get("crystal_system", ""),
        )
        # No material id in MatTen: a content-derived id is stable across its releases.
        return dataclasses.replace(rec, id=f"matten:{rec.formula}-{_digest(rec.voigt)}")

    out.add(f"matten:{n}", "matten", build)


def _read_matten(obj: dict | list, out: _Collector) -> None:
    if isinstance(obj, list):
        for n, row in enumerate(obj):
            _matten_row(row if isinstance(row, dict) else {}, n, out)
        return
    for key in obj["structure"]:
        row = {c: obj[c].get(key) for c in obj if isinstance(obj[c], dict)}
        _matten_row(row, key, out)


def _read_zeolites(obj: list, out: _Collector) -> None:
    for n, e in enumerate(obj):
        name = f"zeolite:{e.get('framework', n) if isinstance(e, dict) else n}"

        def build(e=e, name=name):
            return _make_record(
                name,
                "zeolites",
                e["structure"],
                e["elastic_tensor_voigt_GPa"],
                theory="B3LYP-D2",
                precision=0.001,
                crystal_system=e.get("crystal_system", ""),
            )

        out.add(name, "zeolites", build)


def _read_user(obj: list, out: _Collector, stem: str) -> None:
    for n, e in enumerate(obj):
        e = e if isinstance(e, dict) else {}
        rid = str(e.get("id") or f"{stem}:{n}")
        source = str(e.get("source") or "user")

        def build(e=e, rid=rid, source=source):
            structure = e["structure"] if e.get("structure") is not None else e["cif"]
            v = e["voigt_GPa"]
            precision = e.get("precision_GPa")
            if precision is None:
                a = np.asarray(v, dtype=float)
                integral = a.size and np.all(np.isfinite(a)) and np.all(a == np.round(a))
                precision = 1.0 if integral else 0.01
            return _make_record(
                rid,
                source,
                structure,
                v,
                theory=e.get("theory") or "PBE",
                precision=precision,
                crystal_system=e.get("crystal_system", ""),
            )

        out.add(rid, source, build)


def _detect(obj: Any) -> str:
    """Name of the format of a parsed JSON document, from its content."""
    try:
        return _detect_format(obj)
    except (TypeError, AttributeError, KeyError):  # e.g. "columns": 5
        return "unknown"


def _detect_format(obj: Any) -> str:
    if isinstance(obj, dict):
        if {"columns", "data"} <= obj.keys() and "elastic_tensor" in obj.get("columns", []):
            return "matminer"
        if "elasticity.elastic_tensor" in obj and "cif" in obj:
            return "strainnet"
        tensor_cols = {"elastic_tensor_voigt", "elastic_tensor", "elastic_tensor_full"}
        if "structure" in obj and tensor_cols & obj.keys() and isinstance(obj["structure"], dict):
            return "matten"
    if isinstance(obj, list) and obj and all(isinstance(e, dict) for e in obj[:5]):
        first = obj[0]
        if "framework" in first and "elastic_tensor_voigt_GPa" in first:
            return "zeolites"
        if "voigt_GPa" in first:
            return "user"
        if "structure" in first and ({"elastic_tensor_voigt", "elastic_tensor"} & first.keys()):
            return "matten"
    if isinstance(obj, list) and not obj:
        return "user"
    return "unknown"


def _load_json(path: Path) -> Any:
    with open(path, "rb") as fh:
        head = fh.read(2)
    opener = gzip.open if head == b"\x1f\x8b" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def read_file(path: str | os.PathLike) -> FileResult:
    """Read one data file (any known format, gzip or plain) into records.

    Bad entries (unparseable structure, NaN, wrong shape, asymmetric tensor) are returned in
    ``dropped`` with a reason. Raises :class:`DataError` naming the file when the file cannot
    be read, is not valid JSON (e.g. truncated) or has an unknown format.
    """
    path = Path(path)
    try:
        obj = _load_json(path)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    # ValueError covers JSONDecodeError and over-long integers; zlib.error a damaged gzip
    # stream; RecursionError absurdly deep nesting.
    except (OSError, EOFError, UnicodeDecodeError, ValueError, zlib.error, RecursionError) as err:
        raise DataError(
            f"{path}: not readable JSON ({short_error(err, 80, with_type=False)})"
        ) from None
    fmt = _detect(obj)
    out = _Collector()
    try:
        if fmt == "matminer":
            _read_matminer(obj, out)
        elif fmt == "strainnet":
            _read_strainnet(obj, out)
        elif fmt == "matten":
            _read_matten(obj, out)
        elif fmt == "zeolites":
            _read_zeolites(obj, out)
        elif fmt == "user":
            _read_user(obj, out, path.name.split(".")[0])
        else:
            raise DataError(
                f"{path}: unknown data format (expected matminer, StrainNet, MatTen, zeolite "
                "or the e3elastic user format; see e3elastic.data's docstring)"
            )
    except DataError:
        raise
    except (KeyError, IndexError, TypeError, AttributeError, ValueError, RecursionError) as err:
        why = short_error(err, 80, with_type=False)
        raise DataError(f"{path}: malformed {fmt} file ({type(err).__name__} {why})") from None
    return FileResult(str(path), fmt, out.records, out.dropped, dict(out.read))


def mp_doc_to_record(doc: Any, *, source: str = "mp-api") -> Record:
    """Materials Project ``ElasticityDoc`` (as a dict, or a model with ``model_dump``) -> Record.

    Uses ``material_id``, ``structure`` (dict or Structure), ``elastic_tensor.ieee_format``
    (6x6 Voigt, GPa; ``raw`` is the unsymmetrised fit in another orientation and is not used)
    and ``symmetry.crystal_system``. The structure is not aligned here: :func:`validate` does
    that. Raises ``ValueError`` with the reason for an unusable document.
    """
    if hasattr(doc, "model_dump"):
        doc = doc.model_dump()
    mid = str(doc.get("material_id") or "")
    if not mid:
        raise ValueError("MP document without material_id")
    tensor = doc.get("elastic_tensor") or {}
    voigt = tensor.get("ieee_format") if isinstance(tensor, dict) else None
    if voigt is None:
        raise ValueError(f"{mid}: no elastic_tensor.ieee_format")
    if doc.get("structure") is None:
        raise ValueError(f"{mid}: no structure")
    symmetry = doc.get("symmetry") or {}
    system = symmetry.get("crystal_system", "") if isinstance(symmetry, dict) else ""
    system = getattr(system, "value", system)  # an enum in emmet's models
    try:
        return _make_record(
            mid,
            source,
            doc["structure"],
            voigt,
            theory="PBE",
            precision=0.01,
            crystal_system=str(system or ""),
        )
    except _EntryError as err:
        raise ValueError(f"{mid}: {err}") from None


def write_records(records: Iterable[Record], path: str | os.PathLike) -> Path:
    """Write records in the user JSON format (gzipped when ``path`` ends in ``.gz``)."""
    path = Path(path)
    text = json.dumps([r.to_user_dict() for r in records])
    data = gzip.compress(text.encode()) if path.suffix == ".gz" else text.encode()
    atomic_write(path, data)
    return path


# --------------------------------------------------------------------------------------------
# Frame alignment and validation
# --------------------------------------------------------------------------------------------


def _proper(r: np.ndarray) -> np.ndarray:
    """``r`` or ``-r``, whichever is a proper rotation. A 4th-rank tensor is unchanged by the
    inversion, and a proper rotation keeps the lattice right-handed."""
    r = tensors.nearest_orthogonal(r)
    return -r if np.linalg.det(r) < 0 else r


def _analyzer(structure: Any, symprec: float = SYMPREC):
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    return SpacegroupAnalyzer(structure, symprec=symprec)


def point_group_rotations(structure: Any, symprec: float = SYMPREC) -> tuple[np.ndarray, str]:
    """Cartesian point-group operations ``(n, 3, 3)`` of a structure and its crystal system.

    From spglib through pymatgen's ``SpacegroupAnalyzer``; improper operations included. A
    lattice that is symmetric only within ``symprec`` gives slightly non-orthogonal Cartesian
    operations, so each is replaced by the nearest orthogonal matrix.
    """
    sga = _analyzer(structure, symprec)
    return _rotations(sga), sga.get_crystal_system()


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


def _check_geometry(structure: Any, cutoff: float) -> None:
    centers, _, _, dist = structure.get_neighbor_list(cutoff)
    if dist.size and dist.min() < _MIN_DISTANCE:
        i = int(centers[np.argmin(dist)])
        raise _EntryError(
            f"overlapping atoms: site {i} has a neighbour at {dist.min():.3f} Å "
            f"(< {_MIN_DISTANCE} Å)"
        )
    lonely = np.setdiff1d(np.arange(len(structure)), centers)
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
    lam = float(tensors.born_stability(rec.voigt)["min_eigenvalue"])
    if lam <= 0 and not keep_unstable:
        raise _EntryError(f"not positive definite: min eigenvalue {lam:.3g} GPa")
    try:
        sga = _analyzer(s)
        rots, system = _rotations(sga), sga.get_crystal_system()
    except Exception as err:  # spglib failures come in several types
        raise _EntryError(
            f"symmetry analysis failed: {short_error(err, 80, with_type=False)}"
        ) from None
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


def validate(
    record: Record,
    *,
    tolerance: float = 0.05,
    keep_unstable: bool = False,
    max_sites: int = 200,
    cutoff: float | None = 5.0,
) -> Record | Dropped:
    """Check one record and bring its structure into its tensor's frame.

    Frames tried, first pass wins: as given, :func:`conventional_rotation`,
    :func:`ieee_rotation`. Returns the aligned record (``residual``, ``frame`` and spglib's
    ``crystal_system`` set) or a :class:`Dropped` with the reason. ``tolerance`` bounds the
    relative symmetry residual; ``cutoff`` (Angstrom, None to skip) is the radius within which
    every site needs a neighbour and no two sites may be closer than 0.5 Angstrom.
    """
    try:
        return _validate(record, tolerance, keep_unstable, max_sites, cutoff)
    except _EntryError as err:
        return Dropped(record.id, record.source, str(err))


# --------------------------------------------------------------------------------------------
# De-duplication, subsets, split
# --------------------------------------------------------------------------------------------


def _priority(rec: Record, index: int) -> tuple:
    residual = rec.residual if not math.isnan(rec.residual) else 1.0
    return (rec.precision_gpa, _SOURCE_RANK.get(rec.source, 3), residual, index)


def deduplicate(records: Sequence[Record]) -> tuple[list[Record], list[Dropped]]:
    """Keep one copy of each material; return (kept in input order, dropped duplicates).

    Two records are the same material when they share an id, or when they come from
    different sources, have the same reduced formula and level of theory, and pymatgen's
    ``StructureMatcher`` (default tolerances) matches their structures. The copy with the
    finest ``precision_gpa`` wins, then the preferred source, then the lower residual.
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


def select_subset(records: Iterable[Record], subset: str = "all") -> list[Record]:
    """``all``; ``pbe`` (theory PBE); ``sio2`` (reduced formula SiO2, any theory)."""
    if subset == "all":
        return list(records)
    if subset == "pbe":
        return [r for r in records if r.theory == "PBE"]
    if subset == "sio2":
        return [r for r in records if r.formula == "SiO2"]
    raise ValueError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")


def _unit_hash(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"e3elastic-split:{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(
    records: Iterable[Record],
    *,
    seed: int = 0,
    holdout: str = "id",
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
) -> dict[str, list[str]]:
    """Deterministic ``{"train", "val", "test"}`` lists of ids.

    Each record goes to a part by ``sha256(seed, key)`` mapped to [0, 1), where the key is
    the id (``holdout="id"``) or the reduced formula (``holdout="composition"``: one
    composition is never in two parts). A record's part does not depend on the other records.
    """
    if holdout not in HOLDOUTS:
        raise ValueError(f"unknown holdout {holdout!r}; choose one of {', '.join(HOLDOUTS)}")
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or np.any(f < 0) or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    edges = np.cumsum(f)[:2]
    split: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for r in records:
        u = _unit_hash(seed, r.id if holdout == "id" else r.formula)
        split[SPLIT_NAMES[int(np.searchsorted(edges, u, side="right"))]].append(r.id)
    return split


def load_split(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a split written by :meth:`Dataset.save_split`."""
    with open(path, encoding="utf-8") as fh:
        obj = json.load(fh)
    split = obj.get("split", obj)
    missing = [n for n in SPLIT_NAMES if n not in split]
    if missing:
        raise DataError(f"{path}: not a split file (missing {', '.join(missing)})")
    return {n: [str(i) for i in split[n]] for n in SPLIT_NAMES}


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Validated records of one subset, what was dropped, and a split.

    Attributes:
        records: kept records of the subset, in file order.
        dropped: every entry not kept, over all sources (not only the subset).
        split: ``{"train", "val", "test"}`` -> ids of ``records``.
        report: counts (see :func:`format_report`); JSON-ready.
        options: the options it was loaded with.
    """

    records: tuple[Record, ...]
    dropped: tuple[Dropped, ...]
    split: dict[str, list[str]]
    report: dict[str, Any]
    options: dict[str, Any]

    def __len__(self) -> int:
        return len(self.records)

    def by_id(self) -> dict[str, Record]:
        return {r.id: r for r in self.records}

    def part(self, name: str) -> list[Record]:
        """Records of one part of the split, in split order."""
        index = self.by_id()
        return [index[i] for i in self.split[name] if i in index]

    def save_split(self, path: str | os.PathLike) -> Path:
        """Write the split (ids per part, with the options that made it) as JSON."""
        obj = {"format": "e3elastic-split", "version": FORMAT_VERSION}
        obj |= {k: self.options.get(k) for k in ("subset", "seed", "holdout", "fractions")}
        obj["split"] = self.split
        path = Path(path)
        atomic_write(path, json.dumps(obj, indent=1).encode())
        return path

    def with_split(self, split: dict[str, list[str]] | str | os.PathLike) -> Dataset:
        """The same records with a given split (a dict or a split file); ids not in this
        dataset are left out of it."""
        if not isinstance(split, dict):
            split = load_split(split)
        known = {r.id for r in self.records}
        new = {n: [i for i in split.get(n, []) if i in known] for n in SPLIT_NAMES}
        report = dict(self.report, split={n: len(v) for n, v in new.items()})
        return dataclasses.replace(self, split=new, report=report)


def _data_files(data: str | os.PathLike | None) -> tuple[Path, list[Path]]:
    if data is None:
        data = os.environ.get("E3ELASTIC_DATA") or os.path.join("..", "shared", "data")
    root = Path(data)
    if root.is_file():
        return root, [root]
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist (set --data or E3ELASTIC_DATA)")
    files = sorted(
        p for p in root.iterdir() if p.is_file() and p.name.endswith((".json", ".json.gz"))
    )
    if not files:
        raise DataError(f"{root}: no .json or .json.gz data files")
    return root, files


def _cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    from .runtime import cache_root

    return Path(cache_dir) if cache_dir is not None else cache_root()


def _cache_key(files: Sequence[Path], options: dict[str, Any]) -> str:
    import pymatgen.core
    import spglib

    h = hashlib.sha256()
    h.update(f"e3elastic.data v{FORMAT_VERSION}".encode())
    h.update(f"pymatgen {pymatgen.core.__version__} spglib {spglib.__version__}".encode())
    h.update(json.dumps(options, sort_keys=True).encode())
    for f in files:
        h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def _process(files: Sequence[Path], options: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Read, validate and de-duplicate; returns the JSON-ready processed state."""
    file_info: list[dict[str, Any]] = []
    read: Counter[str] = Counter()
    records: list[Record] = []
    dropped: list[Dropped] = []
    for f in files:
        try:
            res = read_file(f)
        except DataError as err:
            file_info.append({"file": f.name, "format": None, "entries": 0, "error": str(err)})
            continue
        n = sum(res.read.values())
        file_info.append({"file": f.name, "format": res.format, "entries": n, "error": None})
        read.update(res.read)
        records += res.records
        dropped += res.dropped
    if all(fi["error"] for fi in file_info):
        msgs = "; ".join(fi["error"] for fi in file_info)
        raise DataError(f"no readable data file: {msgs}")
    checked: list[Record] = []
    start = time.monotonic()
    for k, rec in enumerate(records):
        out = validate(
            rec,
            tolerance=options["tolerance"],
            keep_unstable=options["keep_unstable"],
            max_sites=options["max_sites"],
            cutoff=options["cutoff"],
        )
        (dropped if isinstance(out, Dropped) else checked).append(out)
        if progress and (k + 1) % 250 == 0:
            print(
                f"  validated {k + 1}/{len(records)} ({time.monotonic() - start:.0f} s)",
                file=sys.stderr,
            )
    kept, dups = deduplicate(checked)
    return {
        "files": file_info,
        "read": dict(read),
        "records": kept,
        "dropped": dropped + dups,
    }


def _save_cache(path: Path, key: str, state: dict[str, Any]) -> None:
    obj = {
        "format": "e3elastic-data-cache",
        "version": FORMAT_VERSION,
        "key": key,
        "files": state["files"],
        "read": state["read"],
        "records": [r.to_dict() for r in state["records"]],
        "dropped": [list(d) for d in state["dropped"]],
    }
    atomic_write(path, gzip.compress(json.dumps(obj).encode(), compresslevel=5))


def _load_cache(path: Path, key: str) -> dict[str, Any] | None:
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            obj = json.load(fh)
        if obj.get("version") != FORMAT_VERSION or obj.get("key") != key:
            return None
        return {
            "files": obj["files"],
            "read": obj["read"],
            "records": [Record.from_dict(d) for d in obj["records"]],
            "dropped": [Dropped(*d) for d in obj["dropped"]],
        }
    except (OSError, EOFError, ValueError, KeyError, TypeError):
        return None


def load_dataset(
    data: str | os.PathLike | None = None,
    *,
    subset: str = "all",
    tolerance: float = 0.05,
    keep_unstable: bool = False,
    max_sites: int = 200,
    cutoff: float | None = 5.0,
    seed: int = 0,
    holdout: str = "id",
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = False,
) -> Dataset:
    """Read, align, validate, de-duplicate and split a folder (or one file) of tensors.

    Args:
        data: a folder of ``*.json``/``*.json.gz`` files, or one file. Default:
            ``$E3ELASTIC_DATA``, else ``../shared/data`` relative to the working directory.
        subset: ``all``, ``pbe`` or ``sio2`` (:func:`select_subset`).
        tolerance: largest relative symmetry residual kept (see :func:`validate`).
        keep_unstable: keep tensors that are not positive definite.
        max_sites: largest structure kept (sites).
        cutoff: neighbour radius (Angstrom) of the isolated-atom check; None skips it.
        seed, holdout, fractions: the split (:func:`assign_split`).
        cache_dir: where processed records are cached; default ``$E3ELASTIC_CACHE``, else
            ``~/.cache/e3elastic``.
        use_cache: False neither reads nor writes the cache.
        progress: print validation progress to stderr.

    Raises :class:`DataError` when the folder is missing or no file in it can be read. A file
    that cannot be read is reported in ``report["files"]`` and the others still load.
    """
    if subset not in SUBSETS:
        raise ValueError(f"unknown subset {subset!r}; choose one of {', '.join(SUBSETS)}")
    if holdout not in HOLDOUTS:
        raise ValueError(f"unknown holdout {holdout!r}; choose one of {', '.join(HOLDOUTS)}")
    root, files = _data_files(data)
    proc_opts = {
        "tolerance": float(tolerance),
        "keep_unstable": bool(keep_unstable),
        "max_sites": int(max_sites),
        "cutoff": None if cutoff is None else float(cutoff),
    }
    state = None
    cache = "off"
    if use_cache:
        key = _cache_key(files, proc_opts)
        path = _cache_dir(cache_dir) / f"data-{key[:32]}.json.gz"
        state = _load_cache(path, key) if path.is_file() else None
        cache = "hit" if state is not None else "miss"
    if state is None:
        state = _process(files, proc_opts, progress)
        if use_cache:
            try:
                _save_cache(path, key, state)
            except OSError as err:
                print(f"warning: cannot write cache {path}: {err}", file=sys.stderr)
    records = tuple(select_subset(state["records"], subset))
    split = assign_split(records, seed=seed, holdout=holdout, fractions=fractions)
    options = proc_opts | {
        "data": str(root),
        "subset": subset,
        "seed": int(seed),
        "holdout": holdout,
        "fractions": [float(x) for x in fractions],
    }
    report = _report(state, records, split, options, cache)
    return Dataset(records, tuple(state["dropped"]), split, report, options)


def load_for_config(config: Config, **kwargs: Any) -> Dataset:
    """:func:`load_dataset` with the data settings of ``config`` and its model's cutoff: the
    dataset a training run of ``config`` sees. ``kwargs``: ``cache_dir``, ``use_cache``,
    ``progress``."""
    dc = config.data
    return load_dataset(
        dc.data,
        subset=dc.subset,
        tolerance=dc.tolerance,
        keep_unstable=dc.keep_unstable,
        max_sites=dc.max_sites,
        cutoff=config.model.cutoff,
        seed=dc.seed,
        holdout=dc.holdout,
        **kwargs,
    )


def _report(
    state: dict[str, Any],
    records: Sequence[Record],
    split: dict[str, list[str]],
    options: dict[str, Any],
    cache: str,
) -> dict[str, Any]:
    kept_all = Counter(r.source for r in state["records"])
    drops: dict[str, Counter[str]] = defaultdict(Counter)
    for d in state["dropped"]:
        drops[d.source][d.kind] += 1
    sources = {}
    for src in sorted(set(state["read"]) | set(kept_all) | set(drops)):
        sources[src] = {
            "read": int(state["read"].get(src, 0)),
            "kept": kept_all[src],
            "dropped": sum(drops[src].values()),
            "dropped_by_reason": dict(sorted(drops[src].items())),
        }
    sio2 = [r for r in records if r.formula == "SiO2"]
    ids = {r.id for r in records}
    left_out = Counter(r.theory for r in state["records"] if r.id not in ids)
    return {
        "data": options["data"],
        "options": options,
        "cache": cache,
        "files": state["files"],
        "sources": sources,
        "subset": options["subset"],
        "records": len(records),
        "subset_removed": {"total": left_out.total(), "by_theory": dict(sorted(left_out.items()))},
        "crystal_systems": dict(sorted(Counter(r.crystal_system for r in records).items())),
        "theory": dict(sorted(Counter(r.theory for r in records).items())),
        "frame": dict(sorted(Counter(r.frame for r in records).items())),
        "sio2": {"total": len(sio2), "by_theory": dict(Counter(r.theory for r in sio2))},
        "split": {n: len(split[n]) for n in SPLIT_NAMES},
    }


def format_report(report: dict[str, Any]) -> str:
    """The report of :func:`load_dataset` as a plain-text table."""
    o = report["options"]
    lines = [
        f"data: {report['data']}  (cache {report['cache']})",
        f"options: tolerance {o['tolerance']}, max_sites {o['max_sites']}, keep_unstable "
        f"{o['keep_unstable']}, cutoff {o['cutoff']} Å",
        "",
        f"{'source':<14}{'read':>7}{'kept':>7}{'dropped':>9}   dropped by reason",
    ]
    tot = Counter()
    for src, c in report["sources"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in c["dropped_by_reason"].items()) or "-"
        lines.append(f"{src:<14}{c['read']:>7}{c['kept']:>7}{c['dropped']:>9}   {reasons}")
        tot.update({k: c[k] for k in ("read", "kept", "dropped")})
    lines.append(f"{'total':<14}{tot['read']:>7}{tot['kept']:>7}{tot['dropped']:>9}")
    failed = [f for f in report["files"] if f["error"]]
    for f in failed:
        lines.append(f"FAILED file {f['file']}: {f['error']}")

    def join(d: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"

    sio2 = report["sio2"]
    split = report["split"]
    lines += [
        "",
        f"subset {report['subset']!r}: {report['records']} records "
        f"({report['subset_removed']['total']} other valid records left out)",
        f"  crystal systems: {join(report['crystal_systems'])}",
        f"  level of theory: {join(report['theory'])}",
        f"  frame: {join(report['frame'])}",
        f"  SiO2: {sio2['total']} ({join(sio2['by_theory'])})",
        f"  split (by {o['holdout']}, seed {o['seed']}): train {split['train']}, "
        f"val {split['val']}, test {split['test']}",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Materials Project download
# --------------------------------------------------------------------------------------------


def _mp_client(api_key: str | None) -> tuple[Any, str]:
    """(MPRester class, API key); DataError when mp-api or the key is missing."""
    try:
        from mp_api.client import MPRester
    except ImportError:
        raise DataError(
            "Materials Project access needs the mp-api package: pip install 'e3elastic[mp]'"
        ) from None
    key = api_key or os.environ.get("MP_API_KEY")
    if not key:
        raise DataError("no Materials Project API key: set MP_API_KEY (see materialsproject.org)")
    return MPRester, key


def fetch_mp_structure(material_id: str, *, api_key: str | None = None):
    """The final structure (pymatgen ``Structure``) of one Materials Project entry.

    Needs mp-api and an API key like :func:`fetch_mp`; raises :class:`DataError` otherwise,
    or when the query fails.
    """
    MPRester, key = _mp_client(api_key)
    try:
        with MPRester(key, mute_progress_bars=True) as mpr:
            return mpr.get_structure_by_material_id(str(material_id))
    except Exception as err:  # network errors, unknown id, bad key
        raise DataError(
            f"Materials Project: cannot fetch {material_id} "
            f"({type(err).__name__}: {short_error(err, 120, with_type=False)})"
        ) from None


def fetch_mp(
    out: str | os.PathLike, *, limit: int | None = None, api_key: str | None = None
) -> tuple[int, int]:
    """Download MP elastic tensors into a user-format JSON file; returns (written, skipped).

    Needs the optional ``mp-api`` package (``pip install 'e3elastic[mp]'``) and an API key
    (``api_key`` or ``$MP_API_KEY``). Raises :class:`DataError` with a one-line message when
    either is missing or the query fails (no network, bad key).
    """
    MPRester, key = _mp_client(api_key)
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be positive, got {limit}")
    fields = ["material_id", "formula_pretty", "structure", "elastic_tensor", "symmetry"]
    kwargs: dict[str, Any] = {"fields": fields}
    if limit is not None:
        chunk = min(limit, 1000)
        kwargs |= {"chunk_size": chunk, "num_chunks": math.ceil(limit / chunk)}
    try:
        with MPRester(key, use_document_model=False, mute_progress_bars=True) as mpr:
            docs = list(mpr.materials.elasticity.search(**kwargs))
    except Exception as err:  # network errors, bad key, API changes
        why = short_error(err, 150, with_type=False)
        raise DataError(f"Materials Project query failed: {type(err).__name__}: {why}") from None
    if limit is not None:
        docs = docs[:limit]
    records, skipped = [], 0
    for doc in docs:
        try:
            records.append(mp_doc_to_record(doc))
        except (ValueError, TypeError, AttributeError):
            skipped += 1
    write_records(records, out)
    return len(records), skipped


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def cli_summary(args: Any, config: Config | None = None) -> int:
    """``e3elastic data summary``: print the report (table, or JSON with ``--json``) of the
    dataset a training run of ``config`` (default: the ``default`` preset) sees."""
    ds = load_for_config(
        config or default(),
        cache_dir=getattr(args, "cache_dir", None),
        use_cache=not getattr(args, "no_cache", False),
        progress=not getattr(args, "json", False),
    )
    if getattr(args, "json", False):
        print(json.dumps(ds.report, indent=2))
    else:
        print(format_report(ds.report))
    if getattr(args, "save_split", None):
        ds.save_split(args.save_split)
    return 0


def cli_fetch_mp(args: Any) -> int:
    """``e3elastic data fetch-mp --out FILE [--limit N]``."""
    written, skipped = fetch_mp(args.out, limit=args.limit)
    print(f"wrote {written} entries to {args.out} ({skipped} skipped)")
    return 0
