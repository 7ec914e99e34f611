"""Materials Project download (optional: needs ``mp-api`` and an API key)."""

from __future__ import annotations

import math
import os
from typing import Any

from e3elastic.errors import short_error

from .readers import mp_doc_to_record
from .records import DataError, write_records

__all__ = ["fetch_mp", "fetch_mp_structure"]


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
