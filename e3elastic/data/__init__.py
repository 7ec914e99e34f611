"""Elastic-tensor datasets: read, frame-align, validate, de-duplicate and split.

Every reader returns :class:`Record` objects: one crystal (a pymatgen ``Structure``, lengths in
Angstrom) with its 6x6 Voigt stiffness in GPa (order 11, 22, 33, 23, 13, 12; no factors of 2,
the convention of :mod:`e3elastic.tensors`). :func:`load_dataset` turns a folder (or a file)
into a :class:`Dataset`:

1. **read** every JSON file (plain or gzip); the format is detected from the content;
2. **validate** each entry: ordered sites, at most ``max_sites`` sites, no isolated or
   overlapping atoms within ``cutoff``, a positive-definite tensor (Born stability), and a
   tensor that is invariant, within ``tolerance``, under the structure's point group;
3. **align**: the structure is brought into its tensor's frame
   (:func:`~e3elastic.data.frames.align`). A Materials Project tensor is in the IEEE frame
   (pymatgen ``Tensor.get_ieee_rotation``), so its structure is rotated there first; any other
   tensor is first taken as given. The other frames (as given, the orientation of the
   conventional standard cell, the IEEE frame) follow, and the first that passes the symmetry
   check is kept. The check cannot see a permutation of inequivalent axes (orthorhombic
   a<->b) or a rotation about a trigonal or monoclinic axis, so the order matters: matminer
   2015 also stores each tensor in its structure's own orientation, and against that the
   IEEE frame first is right for all 193 orthorhombic and 60 trigonal tensors, where "as given"
   first was wrong for 173 and 20 (monoclinic cells keep "as given" first: 35 of 45 right,
   against 28 with the IEEE frame first). For matminer 2015 that copy
   (``Record.oriented``) now settles the frame: all 45 monoclinic tensors are right;
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
        "K_VRH_GPa": 97.8, "G_VRH_GPa": 66.5,  # ... or (no voigt_GPa) the Hill moduli alone
        "theory": "PBE",                 # optional, default "PBE" (any case: "pbe")
        "source": "my-lab",              # optional, default "user"; "mp-api" (what
                                         # `data fetch-mp` writes) marks an IEEE-format
                                         # Materials Project tensor (see step 3)
        "precision_GPa": 0.01            # optional: rounding step of the values, GPa
      }
    ]

The tensor is taken in the Cartesian frame of the structure as given, unless the symmetry
check fails there (step 3).

An entry that cannot be used is dropped with a reason (:data:`REASONS`), and the others are
kept: ``e3elastic data summary --dropped`` names each one, and ``train`` and ``evaluate`` name
them too when there are at most ten. Values must be in GPa: a tensor entry over 3,000 GPa or a
K or G over 1,500 GPa (diamond's largest are 1,079 and 535) is taken for a unit mistake (kbar,
MPa or Pa) and dropped as ``implausible units``. Training needs crystals with a full tensor;
K/G-only ones add a loss on the moduli beside them.

``e3elastic data fetch-mp --out FILE`` writes this format from the Materials Project.

Modules
-------
``records`` (:class:`Record`, :class:`Dropped`, :func:`write_records`), ``readers`` (one
function per format, :func:`read_file`, :func:`mp_doc_to_record`), ``frames`` (point groups and
frame alignment), ``curation`` (validation, de-duplication), ``dataset`` (subsets, splits,
:func:`load_dataset`), ``cache`` (processed data on disk), ``report`` (:func:`format_report`),
``mp`` (Materials Project download).
"""

from __future__ import annotations

from .cache import FORMAT_VERSION
from .curation import deduplicate, validate
from .dataset import (
    HOLDOUTS,
    SPLIT_NAMES,
    SUBSETS,
    Dataset,
    assign_split,
    load_dataset,
    load_for_config,
    load_split,
    select_subset,
)
from .frames import SYMPREC, conventional_rotation, ieee_rotation, rotate_structure
from .mp import fetch_mp, fetch_mp_structure
from .readers import FileResult, mp_doc_to_record, read_file
from .records import REASONS, DataError, Dropped, Record, write_records
from .report import describe_dropped, format_report

__all__ = [
    "FORMAT_VERSION",
    "SUBSETS",
    "HOLDOUTS",
    "SPLIT_NAMES",
    "SYMPREC",
    "REASONS",
    "DataError",
    "Record",
    "Dropped",
    "FileResult",
    "Dataset",
    "read_file",
    "mp_doc_to_record",
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
    "describe_dropped",
]
