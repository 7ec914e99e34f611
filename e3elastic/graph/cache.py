"""A disk cache of graphs: one ``.npz`` per data set and cutoff, keyed by content."""

from __future__ import annotations

import hashlib
import os
import sys
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..files import atomic_write
from .crystal import CrystalGraph, node_and_edge_counts, structure_arrays, structure_to_graph
from .neighbours import DEFAULT_CUTOFF, GraphError, check_cutoff

#: Bumped whenever the cached graph format or the neighbour-list rules change.
CACHE_FORMAT_VERSION = 1

_GRAPH_ARRAYS = ("species", "positions", "senders", "receivers", "cell_shifts")


def dataset_key(
    items: Iterable[tuple[str, Any]], cutoff: float, *, allow_isolated: bool = False
) -> str:
    """sha256 hex key of a dataset of ``(id, Structure)`` pairs for a cutoff.

    Hashes the format version, the cutoff, ``allow_isolated`` and, for each item in order, its
    id and the structure's canonical content: lattice (float64), atomic numbers (int64) and
    fractional coordinates (float64), as raw bytes.
    """
    h = hashlib.sha256()
    h.update(f"e3elastic.graph v{CACHE_FORMAT_VERSION}".encode())
    h.update(np.float64(check_cutoff(cutoff)).tobytes())
    h.update(b"isolated" if allow_isolated else b"strict")
    for id_, structure in items:
        name = str(id_)
        lattice, z, frac = structure_arrays(structure, name or "structure")
        h.update(len(name).to_bytes(8, "little") + name.encode())
        h.update(len(z).to_bytes(8, "little"))
        h.update(np.ascontiguousarray(lattice, "<f8").tobytes())
        h.update(np.ascontiguousarray(z, "<i8").tobytes())
        h.update(np.ascontiguousarray(frac, "<f8").tobytes())
    return h.hexdigest()


def save_graphs(path: str | os.PathLike, graphs: Sequence[CrystalGraph], key: str = "") -> Path:
    """Write graphs to one ``.npz`` (concatenated arrays + offsets; no pickled objects).

    The file is written to a temporary name and renamed, so readers never see half a file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nodes, edges = node_and_edge_counts(graphs)
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(CACHE_FORMAT_VERSION, np.int64),
        "key": np.array(key, dtype=np.str_),
        "ids": np.array([g.id for g in graphs], dtype=np.str_).reshape(len(graphs)),
        "cutoff": np.array([g.cutoff for g in graphs], np.float64),
        "lattice": np.array([g.lattice for g in graphs], np.float64).reshape(-1, 3, 3),
        "node_offsets": np.concatenate([[0], np.cumsum(nodes)]).astype(np.int64),
        "edge_offsets": np.concatenate([[0], np.cumsum(edges)]).astype(np.int64),
    }
    empty = {"positions": (0, 3), "cell_shifts": (0, 3)}
    for field in _GRAPH_ARRAYS:
        parts = [getattr(g, field) for g in graphs]
        arrays[field] = np.concatenate(parts) if parts else np.zeros(empty.get(field, (0,)))
    return atomic_write(path, lambda f: np.savez(f, **arrays))


def _read_npz(path: str | os.PathLike, key: str | None) -> dict[str, np.ndarray]:
    """Every array of a cache file whose version (and key, when given) match."""
    try:
        with np.load(path, allow_pickle=False) as z:
            version = int(z["format_version"])
            if version != CACHE_FORMAT_VERSION:
                raise GraphError(f"{path}: cache format {version}, expected {CACHE_FORMAT_VERSION}")
            if key is not None and str(z["key"]) != key:
                raise GraphError(f"{path}: cache key {z['key']} does not match {key}")
            return {name: z[name] for name in z.files}
    except (GraphError, FileNotFoundError):
        raise
    # A truncated or corrupted .npz raises zipfile.BadZipFile (CRC / missing directory),
    # EOFError (empty file), ValueError (bad header, pickled data) or KeyError (missing array).
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError, TypeError, OSError) as err:
        raise GraphError(f"{path}: unreadable graph cache ({type(err).__name__}: {err})") from err


def _check_consistent(data: dict[str, np.ndarray], path: str | os.PathLike) -> None:
    """:class:`GraphError` unless the arrays' lengths agree with the offsets."""
    try:
        no, eo = data["node_offsets"], data["edge_offsets"]
        n_graph = len(data["ids"])
        consistent = (
            no.shape == eo.shape == (n_graph + 1,)
            and data["cutoff"].shape == (n_graph,)
            and data["lattice"].shape == (n_graph, 3, 3)
            and no[0] == eo[0] == 0
            and np.all(np.diff(no) >= 0)
            and np.all(np.diff(eo) >= 0)
            and no[-1] == len(data["species"]) == len(data["positions"])
            and eo[-1] == len(data["senders"]) == len(data["receivers"])
            and eo[-1] == len(data["cell_shifts"])
        )
    except (KeyError, TypeError, IndexError) as err:
        raise GraphError(f"{path}: malformed graph cache ({type(err).__name__}: {err})") from None
    if not consistent:
        raise GraphError(f"{path}: inconsistent graph cache (array lengths and offsets disagree)")


def load_graphs(path: str | os.PathLike, key: str | None = None) -> list[CrystalGraph]:
    """Read graphs written by :func:`save_graphs` (``allow_pickle=False``).

    Raises :class:`GraphError` when the file's format version differs, its key differs from
    ``key`` (when given), or the file is unreadable, truncated or inconsistent (a missing file
    raises ``FileNotFoundError``).
    """
    data = _read_npz(path, key)
    _check_consistent(data, path)
    no, eo = data["node_offsets"], data["edge_offsets"]
    graphs = []
    for i in range(len(data["ids"])):
        ns, es = slice(no[i], no[i + 1]), slice(eo[i], eo[i + 1])
        graphs.append(
            CrystalGraph(
                species=data["species"][ns].astype(np.int32),
                positions=data["positions"][ns].astype(np.float64),
                lattice=data["lattice"][i].astype(np.float64),
                senders=data["senders"][es].astype(np.int32),
                receivers=data["receivers"][es].astype(np.int32),
                cell_shifts=data["cell_shifts"][es].astype(np.int32),
                cutoff=float(data["cutoff"][i]),
                id=str(data["ids"][i]),
            )
        )
    return graphs


#: Cache folders already reported as unwritable in this process.
_UNWRITABLE: set[Path] = set()


def build_graphs_cached(
    items: Iterable[tuple[str, Any]],
    cutoff: float = DEFAULT_CUTOFF,
    cache_dir: str | os.PathLike | None = None,
    *,
    allow_isolated: bool = False,
    max_edges: int | None = None,
) -> list[CrystalGraph]:
    """Graphs for ``(id, Structure)`` pairs, cached in ``cache_dir/graphs-<key>.npz``.

    The key (:func:`dataset_key`) covers the ids, the structures' content, the cutoff,
    ``allow_isolated`` and the format version, so any change rebuilds. ``max_edges`` is
    checked on cached graphs too. Without ``cache_dir`` nothing is cached. An unreadable or
    stale cache file is rebuilt and overwritten; a cache that cannot be written is reported on
    stderr (once per folder and process) and the graphs are returned all the same.
    """
    items = list(items)
    if cache_dir is None:
        return [
            structure_to_graph(
                s, cutoff, id=str(i), allow_isolated=allow_isolated, max_edges=max_edges
            )
            for i, s in items
        ]
    key = dataset_key(items, cutoff, allow_isolated=allow_isolated)
    path = Path(cache_dir) / f"graphs-{key[:32]}.npz"
    graphs = None
    if path.exists():
        try:
            graphs = load_graphs(path, key)
        except (GraphError, OSError):  # unreadable, stale or corrupted: rebuild
            graphs = None
    if graphs is None:
        graphs = build_graphs_cached(
            items, cutoff, None, allow_isolated=allow_isolated, max_edges=max_edges
        )
        try:
            save_graphs(path, graphs, key)
        except OSError as err:
            if path.parent not in _UNWRITABLE:  # once per folder, not once per split
                _UNWRITABLE.add(path.parent)
                print(f"warning: cannot write graph cache {path}: {err}", file=sys.stderr)
    elif max_edges is not None:
        for g in graphs:
            if g.n_edge > max_edges:
                raise GraphError(f"{g.id}: {g.n_edge} edges exceed max_edges={max_edges}")
    return graphs
