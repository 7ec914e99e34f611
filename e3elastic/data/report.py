"""The report of a loaded dataset: counts per source, reason, crystal system and split."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from .records import Dropped, Record

__all__ = ["build_report", "describe_dropped", "format_report"]


def build_report(
    state: dict[str, Any],
    records: Sequence[Record],
    split: dict[str, list[str]],
    options: dict[str, Any],
    cache: str,
) -> dict[str, Any]:
    """JSON-ready counts of a load: per source (read, kept, dropped by reason) over all the
    processed ``state``, and per crystal system, theory, frame and split part over the
    ``records`` of the subset. ``cache`` is ``hit``, ``miss`` or ``off``."""
    kept_all = Counter(r.source for r in state["records"])
    kept_moduli = Counter(r.source for r in state["records"] if not r.has_tensor)
    drops: dict[str, Counter[str]] = defaultdict(Counter)
    for d in state["dropped"]:
        drops[d.source][d.kind] += 1
    sources = {}
    for src in sorted(set(state["read"]) | set(kept_all) | set(drops)):
        sources[src] = {
            "read": int(state["read"].get(src, 0)),
            "kept": kept_all[src],
            "kept_moduli_only": kept_moduli[src],
            "dropped": sum(drops[src].values()),
            "dropped_by_reason": dict(sorted(drops[src].items())),
        }
    sio2 = [r for r in records if r.formula == "SiO2"]
    by_id = {r.id: r for r in records}
    ids = set(by_id)
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
        "labels": {
            "tensor": sum(r.has_tensor for r in records),
            "moduli_only": sum(not r.has_tensor for r in records),
        },
        "split_moduli_only": {
            n: sum(not by_id[i].has_tensor for i in part if i in by_id) for n, part in split.items()
        },
        "frame": dict(sorted(Counter(r.frame for r in records).items())),
        "sio2": {"total": len(sio2), "by_theory": dict(Counter(r.theory for r in sio2))},
        "split": {n: len(ids) for n, ids in split.items()},
    }


def format_report(report: dict[str, Any]) -> str:
    """The report of :func:`load_dataset` as a plain-text table."""
    o = report["options"]
    lines = [
        f"data: {report['data']}  (cache {report['cache']})",
        f"options: tolerance {o['tolerance']}, max_sites {o['max_sites']}, keep_unstable "
        f"{o['keep_unstable']}, cutoff {o['cutoff']} Å",
        "",
        f"{'source':<14}{'read':>7}{'kept':>7}{'K/G only':>9}{'dropped':>9}   dropped by reason",
    ]
    tot = Counter()
    for src, c in report["sources"].items():
        reasons = ", ".join(f"{k} {v}" for k, v in c["dropped_by_reason"].items()) or "-"
        kg = c.get("kept_moduli_only", 0)
        lines.append(f"{src:<14}{c['read']:>7}{c['kept']:>7}{kg:>9}{c['dropped']:>9}   {reasons}")
        tot.update({k: c.get(k, 0) for k in ("read", "kept", "kept_moduli_only", "dropped")})
    lines.append(
        f"{'total':<14}{tot['read']:>7}{tot['kept']:>7}{tot['kept_moduli_only']:>9}"
        f"{tot['dropped']:>9}"
    )
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
        f"  labels: {report['labels']['tensor']} full tensors, "
        f"{report['labels']['moduli_only']} K/G only",
        f"  crystal systems: {join(report['crystal_systems'])}",
        f"  level of theory: {join(report['theory'])}",
        f"  frame: {join(report['frame'])}",
        f"  SiO2: {sio2['total']} ({join(sio2['by_theory'])})",
        f"  split (by {o['holdout']}, seed {o['seed']}): train {split['train']}, "
        f"val {split['val']}, test {split['test']}"
        + (
            " (K/G only: "
            + ", ".join(f"{n} {v}" for n, v in report["split_moduli_only"].items())
            + ")"
            if report["labels"]["moduli_only"]
            else ""
        ),
    ]
    return "\n".join(lines)


def describe_dropped(dropped: Sequence[Dropped], limit: int = 10) -> list[str]:
    """Lines naming the entries dropped on reading: one per entry (id, source, reason) when
    there are at most ``limit``, else a count per reason and where to find each one."""
    if len(dropped) <= limit:
        return [f"dropped {d.id} ({d.source}): {d.reason}" for d in dropped]
    counts = Counter(d.kind for d in dropped).most_common()
    return [
        f"dropped {len(dropped)} entries on reading: "
        + ", ".join(f"{kind} {n}" for kind, n in counts)
        + " (`e3elastic data summary --dropped` names each)"
    ]
