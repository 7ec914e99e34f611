"""Physical descriptors of the elements, for the species embedding (numpy only).

The table (``element_descriptors.json``, written by ``scripts/make_element_descriptors.py`` from
pymatgen's periodic table) holds, for Z = 1..100: period, group, block (one-hot s/p/d/f),
Pauling electronegativity, covalent, atomic and van der Waals radii, log atomic mass, first
ionisation energy, valence electrons, log molar volume, log melting point, log bulk modulus of
the elemental solid and Mendeleev number.

:func:`descriptor_table` standardises each column over the 100 elements (zero mean, unit
standard deviation), writes 0 (the mean) where a value is unknown, and adds one 0/1 flag per
column that has unknown values. An element that no training crystal contains (neon, xenon, most
lanthanides) is thus described by the same numbers as its chemical neighbours, instead of by an
untrained table row.

>>> t = descriptor_table()
>>> t.shape[0], bool(np.isfinite(t).all())
(100, True)
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

__all__ = ["DESCRIPTOR_FILE", "covalent_radii", "descriptor_names", "descriptor_table"]

DESCRIPTOR_FILE = Path(__file__).resolve().parent / "element_descriptors.json"


@functools.lru_cache(maxsize=1)
def _raw() -> tuple[tuple[str, ...], np.ndarray]:
    doc = json.loads(DESCRIPTOR_FILE.read_text())
    values = np.array(
        [[np.nan if v is None else float(v) for v in row] for row in doc["values"]], np.float64
    )
    return tuple(doc["names"]), values


@functools.lru_cache(maxsize=1)
def _standardised() -> tuple[tuple[str, ...], np.ndarray]:
    names, raw = _raw()
    missing = np.isnan(raw)
    mean = np.nanmean(raw, axis=0)
    std = np.nanstd(raw, axis=0)
    z = (raw - mean) / np.where(std > 0, std, 1.0)
    z = np.where(missing, 0.0, z)
    flagged = [i for i in range(raw.shape[1]) if missing[:, i].any()]
    flags = missing[:, flagged].astype(np.float64)
    out_names = names + tuple(f"{names[i]}_unknown" for i in flagged)
    table = np.concatenate([z, flags], axis=1)
    table.setflags(write=False)
    return out_names, table


def descriptor_names() -> tuple[str, ...]:
    """Column names of :func:`descriptor_table`."""
    return _standardised()[0]


def descriptor_table() -> np.ndarray:
    """``(100, F)`` float64 standardised descriptors; row ``Z - 1`` is element Z (read-only)."""
    return _standardised()[1]


@functools.lru_cache(maxsize=1)
def covalent_radii(default: float = 1.5) -> np.ndarray:
    """``(100,)`` covalent radius (Angstrom) by ``Z - 1``, ``default`` where the table has
    none (read-only)."""
    names, raw = _raw()
    r = raw[:, names.index("covalent_radius")]
    out = np.where(np.isfinite(r), r, default)
    out.setflags(write=False)
    return out
