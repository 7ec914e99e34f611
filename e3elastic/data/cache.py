"""The on-disk cache of processed data: read, validated and de-duplicated records.

One gzipped JSON file per input (the bytes of every data file) and processing options, under
``$E3ELASTIC_CACHE`` (:func:`e3elastic.runtime.cache_root`) unless a folder is given.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from e3elastic import runtime
from e3elastic.files import atomic_write

from .records import Dropped, Record

__all__ = ["FORMAT_VERSION", "cache_folder", "cache_file", "cache_key", "load", "save"]

#: Bumped whenever processing rules or the cache layout change (invalidates caches).
FORMAT_VERSION = 5


def cache_folder(folder: str | os.PathLike | None = None) -> Path:
    """``folder``, else :func:`e3elastic.runtime.cache_root`."""
    return Path(folder) if folder is not None else runtime.cache_root()


def cache_file(
    files: Sequence[Path], options: dict[str, Any], folder: str | os.PathLike | None = None
) -> tuple[Path, str]:
    """``(path, key)`` of the cache of ``files`` processed with ``options`` in ``folder``
    (default :func:`e3elastic.runtime.cache_root`)."""
    key = cache_key(files, options)
    return cache_folder(folder) / f"data-{key[:32]}.json.gz", key


def cache_key(files: Sequence[Path], options: dict[str, Any]) -> str:
    """sha256 of the format version, pymatgen's and spglib's versions, the options and every
    file's name and bytes."""
    import pymatgen.core
    import spglib

    h = hashlib.sha256()
    h.update(f"e3elastic.data v{FORMAT_VERSION}".encode())
    h.update(f"pymatgen {pymatgen.core.__version__} spglib {spglib.__version__}".encode())
    h.update(json.dumps(options, sort_keys=True).encode())
    for f in files:
        h.update(f.name.encode() + b"\0" + hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()


def save(path: Path, key: str, state: dict[str, Any]) -> None:
    """Write the processed ``state`` (see :func:`load`) under ``key``, atomically."""
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


def load(path: Path, key: str) -> dict[str, Any] | None:
    """The processed state saved under ``key`` (``files``, ``read``, ``records``, ``dropped``),
    or None when the file is missing, damaged, of another version or another key."""
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
