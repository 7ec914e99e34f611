"""Datasets: validate records, de-duplicate them across sources, split them, and load a folder.

:func:`load_dataset` reads every file of a folder (:func:`~e3elastic.data.readers.read_file`),
validates and aligns each record (:func:`validate`), de-duplicates across sources
(:func:`deduplicate`), caches that (:mod:`e3elastic.data.cache`), then selects a subset and
splits it (:func:`assign_split`). :func:`load_for_config` does the same with a config's settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from e3elastic.config import Config
from e3elastic.files import atomic_write

from . import cache
from .curation import deduplicate, validate
from .readers import read_file
from .records import DataError, Dropped, Record
from .report import build_report

__all__ = [
    "SUBSETS",
    "HOLDOUTS",
    "SPLIT_NAMES",
    "LABELS",
    "Dataset",
    "held_out_formula",
    "validate",
    "deduplicate",
    "select_subset",
    "assign_split",
    "load_split",
    "load_dataset",
    "load_for_config",
]

#: Subsets understood by :func:`select_subset`.
SUBSETS = ("all", "pbe", "sio2")
#: Split keys: hash the record id, or the reduced formula (composition hold-out). A third
#: kind, ``formula:<reduced formula>`` (e.g. ``formula:SiO2``), puts every record of that
#: formula in test and splits the rest by id.
HOLDOUTS = ("id", "composition")
#: Names of the parts of a split, in order.
SPLIT_NAMES = ("train", "val", "test")
#: Kinds of label :meth:`Dataset.part` selects.
LABELS = ("any", "tensor", "moduli")

# --------------------------------------------------------------------------------------------
# Subsets and splits
# --------------------------------------------------------------------------------------------


def _check_choice(what: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(choices)}")


def held_out_formula(holdout: str) -> str | None:
    """The reduced formula of a ``formula:<formula>`` hold-out (``formula:O2Si`` ->
    ``SiO2``), None for ``id`` and ``composition``; ``ValueError`` for anything else."""
    if holdout in HOLDOUTS:
        return None
    kind, sep, formula = str(holdout).partition(":")
    if kind == "formula" and sep and formula.strip():
        from pymatgen.core import Composition

        try:
            comp = Composition(formula.strip())
        except Exception:  # pymatgen raises several kinds for a bad formula
            comp = None
        if comp is None or not comp.valid:  # invalid: an unknown element symbol
            raise ValueError(f"holdout {holdout!r}: {formula!r} is not a formula")
        return comp.reduced_formula
    raise ValueError(
        f"unknown holdout {holdout!r}; choose one of {', '.join(HOLDOUTS)} or formula:<formula>"
    )


def select_subset(records: Iterable[Record], subset: str = "all") -> list[Record]:
    """``all``; ``pbe`` (theory PBE); ``sio2`` (reduced formula SiO2, any theory)."""
    _check_choice("subset", subset, SUBSETS)
    if subset == "all":
        return list(records)
    if subset == "pbe":
        return [r for r in records if r.theory == "PBE"]
    return [r for r in records if r.formula == "SiO2"]


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
    composition is never in two parts, whatever the source or kind of label). With
    ``holdout="formula:SiO2"`` every record of that reduced formula goes to test and the
    others are split by id. A record's part does not depend on the other records.
    """
    held = held_out_formula(holdout)
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or np.any(f < 0) or not np.isclose(f.sum(), 1.0):
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions}")
    edges = np.cumsum(f)[:2]
    split: dict[str, list[str]] = {name: [] for name in SPLIT_NAMES}
    for r in records:
        if held is not None:
            if r.formula == held:
                split["test"].append(r.id)
                continue
        u = _unit_hash(seed, r.formula if holdout == "composition" else r.id)
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
        report: counts (see :func:`~e3elastic.data.report.format_report`); JSON-ready.
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

    def part(self, name: str, label: str = "any") -> list[Record]:
        """Records of one part of the split, in split order: every record (``label="any"``),
        those with a full tensor (``"tensor"``) or those with K/G only (``"moduli"``)."""
        _check_choice("label", label, LABELS)
        index = self.by_id()
        out = [index[i] for i in self.split[name] if i in index]
        if label == "any":
            return out
        return [r for r in out if r.has_tensor == (label == "tensor")]

    def tensors(self) -> list[Record]:
        """The records that carry a full tensor."""
        return [r for r in self.records if r.has_tensor]

    def save_split(self, path: str | os.PathLike) -> Path:
        """Write the split (ids per part, with the options that made it) as JSON."""
        obj = {"format": "e3elastic-split", "version": cache.FORMAT_VERSION}
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


def _read_files(files: Sequence[Path]) -> dict[str, Any]:
    """Every entry of ``files``: ``{"files", "read", "records", "dropped"}``, the records not
    validated yet. Raises :class:`DataError` when no file can be read."""
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
    return {"files": file_info, "read": dict(read), "records": records, "dropped": dropped}


def _process(files: Sequence[Path], options: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Read, validate (``options``: the keywords of :func:`validate`) and de-duplicate; returns
    the JSON-ready processed state. ``progress``: a progress bar on stderr when a terminal."""
    state = _read_files(files)
    checked: list[Record] = []
    dropped: list[Dropped] = state["dropped"]
    bar = tqdm(
        state["records"],
        desc="validating",
        unit="entry",
        file=sys.stderr,
        disable=None if progress else True,  # None: off unless stderr is a terminal
    )
    for rec in bar:
        out = validate(rec, **options)
        (dropped if isinstance(out, Dropped) else checked).append(out)
    kept, dups = deduplicate(checked)
    return state | {"records": kept, "dropped": dropped + dups}


def _processed(
    files: Sequence[Path],
    options: dict[str, Any],
    cache_dir: str | os.PathLike | None,
    use_cache: bool,
    progress: bool,
) -> tuple[dict[str, Any], str]:
    """The processed state of ``files`` (:func:`_process`), from the cache when it holds it,
    and how the cache served: ``hit``, ``miss`` (processed and saved) or ``off``."""
    if not use_cache:
        return _process(files, options, progress), "off"
    path, key = cache.cache_file(files, options, cache_dir)
    state = cache.load(path, key)
    if state is not None:
        return state, "hit"
    state = _process(files, options, progress)
    try:
        cache.save(path, key, state)
    except OSError as err:
        print(f"warning: cannot write cache {path}: {err}", file=sys.stderr)
    return state, "miss"


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
            ``~/.cache/e3elastic`` (:func:`e3elastic.runtime.cache_root`).
        use_cache: False neither reads nor writes the cache.
        progress: show a validation progress bar on stderr (only when it is a terminal).

    Raises :class:`DataError` when the folder is missing or no file in it can be read. A file
    that cannot be read is reported in ``report["files"]`` and the others still load.
    """
    _check_choice("subset", subset, SUBSETS)
    held_out_formula(holdout)  # ValueError for an unknown hold-out
    root, files = _data_files(data)
    proc_opts = {  # validate()'s keywords; they key the cache
        "tolerance": float(tolerance),
        "keep_unstable": bool(keep_unstable),
        "max_sites": int(max_sites),
        "cutoff": None if cutoff is None else float(cutoff),
    }
    state, cached = _processed(files, proc_opts, cache_dir, use_cache, progress)
    records = tuple(select_subset(state["records"], subset))
    split = assign_split(records, seed=seed, holdout=holdout, fractions=fractions)
    options = proc_opts | {
        "data": str(root),
        "subset": subset,
        "seed": int(seed),
        "holdout": holdout,
        "fractions": [float(x) for x in fractions],
    }
    report = build_report(state, records, split, options, cached)
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
