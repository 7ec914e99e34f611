"""Readers: one function per file format, and :func:`read_file`, which detects the format.

Formats (see ``shared/data/SOURCES.md``): matminer ``elastic_tensor_2015`` (pandas ``split``
orient), StrainNet ``mp_*_clean.json`` (columns keyed by material id, P1 CIF strings, values
rounded to whole GPa), MatTen (``columns`` orient or a list of rows), the Coudert SiO2 zeolites,
the newer MP tensors of ElaTBot (list of dicts with ``material_id`` and
``elastic_tensor_voigt_GPa``, whole GPa), matcalc's MP K/G of binaries (list of dicts with
``material_id``, ``K_VRH_GPa`` and ``G_VRH_GPa``: no tensor) and the user format (see
:mod:`e3elastic.data`). :func:`mp_doc_to_record` reads one Materials
Project ``ElasticityDoc``.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from e3elastic.errors import short_error

from .records import DataError, Dropped, Record, _EntryError, _make_record

__all__ = ["FileResult", "read_file", "mp_doc_to_record"]


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
            o = row[col["elastic_tensor_original"]] if "elastic_tensor_original" in col else None
            o = o["data"] if isinstance(o, dict) else o
            return _make_record(
                mid, "matminer2015", row[col["structure"]], t, precision=0.01, oriented=o
            )

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


def _read_elatbot(obj: list, out: _Collector) -> None:
    """Newer MP tensors (ElaTBot's validation split): conventional cells, whole GPa."""
    for n, e in enumerate(obj):
        e = e if isinstance(e, dict) else {}
        mid = str(e.get("material_id") or f"elatbot:{n}")

        def build(e=e, mid=mid):
            return _make_record(
                mid, "elatbot", e["structure"], e["elastic_tensor_voigt_GPa"], precision=1.0
            )

        out.add(mid, "elatbot", build)


def _read_matcalc(obj: list, out: _Collector) -> None:
    """MP K_VRH/G_VRH of binaries (matcalc's 2025 benchmark set): no tensor."""
    for n, e in enumerate(obj):
        e = e if isinstance(e, dict) else {}
        mid = str(e.get("material_id") or f"matcalc:{n}")

        def build(e=e, mid=mid):
            return _make_record(
                mid,
                "matcalc2025",
                e["structure"],
                None,
                precision=0.001,
                moduli=(e["K_VRH_GPa"], e["G_VRH_GPa"]),
            )

        out.add(mid, "matcalc2025", build)


def _keys(entry: dict) -> str:
    keys = sorted(map(str, entry))
    return "keys: " + (", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "") if keys else "none")


def _read_user(obj: list, out: _Collector, stem: str) -> None:
    for n, e in enumerate(obj):
        e = e if isinstance(e, dict) else {}
        rid = str(e.get("id") or f"{stem}:{n}")
        source = str(e.get("source") or "user")

        def build(e=e, rid=rid, source=source):
            if e.get("structure") is None and e.get("cif") is None:
                raise _EntryError(f"missing field: no 'structure' or 'cif' ({_keys(e)})")
            structure = e["structure"] if e.get("structure") is not None else e["cif"]
            if e.get("voigt_GPa") is None and e.get("K_VRH_GPa") is None:
                raise _EntryError(
                    "missing field: needs 'voigt_GPa' (6x6, GPa) or 'K_VRH_GPa' and "
                    f"'G_VRH_GPa' ({_keys(e)})"
                )
            if e.get("voigt_GPa") is None:
                return _make_record(
                    rid,
                    source,
                    structure,
                    None,
                    theory=e.get("theory") or "PBE",
                    precision=float(e.get("precision_GPa") or 0.01),
                    moduli=(e["K_VRH_GPa"], e.get("G_VRH_GPa")),
                )
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
        if "material_id" in first and "elastic_tensor_voigt_GPa" in first:
            return "elatbot"
        if "material_id" in first and {"K_VRH_GPa", "G_VRH_GPa"} <= first.keys():
            return "matcalc"
        if any("voigt_GPa" in e or "K_VRH_GPa" in e for e in obj[:5]):
            return "user"
        if "structure" in first and ({"elastic_tensor_voigt", "elastic_tensor"} & first.keys()):
            return "matten"
        if any("structure" in e or "cif" in e for e in obj[:5]):
            return "user"  # labels missing or misnamed: each entry is dropped with a reason
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
        elif fmt == "elatbot":
            _read_elatbot(obj, out)
        elif fmt == "matcalc":
            _read_matcalc(obj, out)
        elif fmt == "user":
            _read_user(obj, out, path.name.split(".")[0])
        else:
            found = (
                f"; its first entry has {_keys(obj[0])}"
                if isinstance(obj, list) and obj and isinstance(obj[0], dict)
                else ""
            )
            raise DataError(
                f"{path}: unknown data format (expected matminer, StrainNet, MatTen, zeolite, "
                "ElaTBot, matcalc K/G or the e3elastic user format: a list of entries with "
                "'structure' or 'cif' and 'voigt_GPa' or 'K_VRH_GPa' and 'G_VRH_GPa'; see "
                f"e3elastic.data's docstring){found}"
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
