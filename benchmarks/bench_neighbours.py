"""Periodic neighbour lists: e3elastic's dense numpy search against vesin's cell list.

    python benchmarks/bench_neighbours.py [--rounds 3] [--cutoff 5.0] [--data ../shared/data]

Both run behind the same contract (:func:`e3elastic.graph.neighbour_list`: edges with
``0 < d <= cutoff``, sorted by sender, receiver and shift, the same errors). Timed in
alternating rounds in one process on (i) the whole data set (``data.load_dataset()``), (ii) every
zeolite of the Coudert file (up to 408 sites), (iii) a few supercells of 1000-2000 sites. Every
structure's four output arrays are compared exactly, and a few bad inputs must raise
``GraphError`` from both. The cost of ``import vesin`` is measured in fresh interpreters, with
torch importable (vesin imports it when it is installed) and with torch hidden. Prints a table
and writes benchmarks/results/neighbours.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _env import environment

from e3elastic import data, graph
from e3elastic.graph import neighbours

ZEOLITES = "coudert_zeolites_sio2_b3lyp_d2_combined.json.gz"
# vesin keeps pairs with d < cutoff; it searches this much (relative) further and d <= cutoff
# is decided as e3elastic decides it.
SEARCH_MARGIN = 1e-6


def vesin_neighbour_list(positions, lattice, cutoff=graph.DEFAULT_CUTOFF, *, name="structure"):
    """:func:`e3elastic.graph.neighbour_list` with vesin finding the candidate pairs.

    The squared lengths are recomputed from the coordinates wrapped into the cell, in the dense
    search's order of operations, so pairs within rounding of the cutoff are decided the same.
    """
    import vesin

    cutoff = neighbours.check_cutoff(cutoff)
    pos = neighbours.check_positions(positions, name)
    lat = neighbours.check_lattice(lattice, name)
    neighbours._image_shifts(lat, cutoff, name)  # the too-thin-cell guard
    search = vesin.NeighborList(cutoff=cutoff * (1 + SEARCH_MARGIN), full_list=True)
    i, j, shifts = search.compute(pos, lat, periodic=True, quantities="ijS")
    wrapped, k = neighbours._wrap_into_cell(pos, lat)
    image = shifts - k[i] + k[j]  # the pair's shift between wrapped coordinates
    diff = (wrapped[j] + image.astype(np.float64) @ lat) - wrapped[i]
    d2 = np.einsum("ex,ex->e", diff, diff)
    keep = np.flatnonzero(d2 <= cutoff * cutoff)
    i, j, shifts, d2 = i[keep], j[keep], shifts[keep], d2[keep]
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i))
    senders, receivers = i[order].astype(np.int32), j[order].astype(np.int32)
    cell_shifts = shifts[order].astype(np.int32)
    dist = np.sqrt(d2[order])
    neighbours._check_no_overlap(senders, receivers, cell_shifts, dist, name)
    return senders, receivers, cell_shifts, dist


IMPLEMENTATIONS = {"dense numpy": graph.neighbour_list, "vesin": vesin_neighbour_list}


def arrays(structure) -> tuple[np.ndarray, np.ndarray]:
    lattice = np.array(structure.lattice.matrix, dtype=np.float64)
    return np.array(structure.frac_coords, dtype=np.float64) @ lattice, lattice


def supercell(structure, min_sites: int):
    """``structure`` repeated k x k x k times, k the least with at least ``min_sites`` sites."""
    k = math.ceil((min_sites / len(structure)) ** (1 / 3))
    return structure.make_supercell([k, k, k], in_place=False)


def structure_sets(folder: Path) -> dict[str, list[tuple[str, np.ndarray, np.ndarray]]]:
    dataset = data.load_dataset(folder)
    zeolites = data.read_file(folder / ZEOLITES).records
    by_id = {r.id: r.structure for r in dataset.records}
    largest = max(zeolites, key=lambda r: len(r.structure))
    supers = [
        (f"{largest.id} x2", largest.structure.make_supercell([2, 2, 1], in_place=False)),
        ("mp-10015 super", supercell(by_id["mp-10015"], 1000)),
        ("mp-10390 super", supercell(by_id["mp-10390"], 1500)),
    ]
    return {
        "data set": [(r.id, *arrays(r.structure)) for r in dataset.records],
        "zeolites": [(r.id, *arrays(r.structure)) for r in zeolites],
        "supercells": [(name, *arrays(s)) for name, s in supers],
    }


def check_identical(items, cutoff: float) -> int:
    """Number of structures whose four outputs differ (in value, dtype or shape)."""
    bad = 0
    for id_, pos, lat in items:
        a = graph.neighbour_list(pos, lat, cutoff)
        b = vesin_neighbour_list(pos, lat, cutoff)
        same = all(
            x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y)
            for x, y in zip(a, b, strict=True)
        )
        if not same:
            bad += 1
            print(f"DIFFERENT: {id_} ({len(a[0])} vs {len(b[0])} edges)", file=sys.stderr)
    return bad


def check_errors() -> dict[str, str]:
    """Each bad input: 'same' when both raise GraphError with the same message."""
    cases = {
        "overlap": (np.array([[0.0, 0, 0], [1e-5, 0, 0]]), 3.0 * np.eye(3), 2.5),
        "overlap-image": (np.array([[0.0, 0, 0], [3.0, 0, 0]]), 3.0 * np.eye(3), 2.5),
        "too-thin": (np.zeros((1, 3)), np.diag([1.0, 1.0, 1e-9]), 5.0),
        "degenerate": (np.zeros((1, 3)), np.array([[1.0, 0, 0], [0, 1, 0], [1, 1, 0]]), 5.0),
        "cutoff-nan": (np.zeros((1, 3)), 3.0 * np.eye(3), math.nan),
        "cutoff-zero": (np.zeros((1, 3)), 3.0 * np.eye(3), 0.0),
    }
    out = {}
    for name, (pos, lat, cutoff) in cases.items():
        messages = []
        for fn in IMPLEMENTATIONS.values():
            try:
                fn(pos, lat, cutoff)
                messages.append(None)
            except graph.GraphError as err:
                messages.append(str(err))
        ok = messages[0] is not None and messages[0] == messages[1]
        out[name] = "same" if ok else f"differ: {messages}"
    return out


def time_rounds(sets, cutoff: float, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Seconds per set and implementation, one entry per round; the order alternates."""
    times = {s: {name: [] for name in IMPLEMENTATIONS} for s in sets}
    names = list(IMPLEMENTATIONS)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            fn = IMPLEMENTATIONS[name]
            for set_name, items in sets.items():
                t = time.perf_counter()
                for _, pos, lat in items:
                    fn(pos, lat, cutoff)
                times[set_name][name].append(time.perf_counter() - t)
    return times


def import_seconds(hide_torch: bool, repeats: int = 3) -> float:
    """Median seconds of ``import vesin`` in a fresh interpreter (numpy already imported)."""
    hide = "sys.modules['torch'] = sys.modules['cupy'] = None; " if hide_torch else ""
    code = (
        f"import sys, time, numpy; {hide}t = time.perf_counter(); import vesin; "
        "print(time.perf_counter() - t)"
    )
    runs = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
        for _ in range(repeats)
    ]
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cutoff", type=float, default=graph.DEFAULT_CUTOFF)
    ap.add_argument("--data", default=os.environ.get("E3ELASTIC_DATA", "../shared/data"))
    args = ap.parse_args()

    import vesin  # imported here so the timed rounds do not include it

    sets = structure_sets(Path(args.data))
    different = {s: check_identical(items, args.cutoff) for s, items in sets.items()}
    errors = check_errors()
    times = time_rounds(sets, args.cutoff, args.rounds)
    rows = []
    for set_name, items in sets.items():
        med = {name: statistics.median(t) for name, t in times[set_name].items()}
        best = {name: min(t) for name, t in times[set_name].items()}
        rows.append(
            {
                "set": set_name,
                "structures": len(items),
                "sites": int(sum(len(p) for _, p, _ in items)),
                "largest": int(max(len(p) for _, p, _ in items)),
                "different": different[set_name],
                "seconds_median": med,
                "seconds_best": best,
                "seconds_rounds": times[set_name],
                "dense_over_vesin": med["dense numpy"] / med["vesin"],
                "dense_over_vesin_best": best["dense numpy"] / best["vesin"],
            }
        )
    imports = {"with_torch": import_seconds(False), "torch_hidden": import_seconds(True)}
    result = {
        "cutoff": args.cutoff,
        "rounds": args.rounds,
        "rows": rows,
        "errors": errors,
        "import_vesin_s": imports,
        "vesin": vesin.__version__,
        "numpy": np.__version__,
        **environment(),
    }
    print(f"cutoff {args.cutoff} Å, median of {args.rounds} alternating rounds")
    print(
        "| set | structures | largest | dense numpy s | vesin s | dense/vesin (best) | identical |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        m = r["seconds_median"]
        print(
            f"| {r['set']} | {r['structures']} | {r['largest']} | {m['dense numpy']:.3f} | "
            f"{m['vesin']:.3f} | {r['dense_over_vesin']:.2f} ({r['dense_over_vesin_best']:.2f}) | "
            f"{'yes' if r['different'] == 0 else str(r['different']) + ' differ'} |"
        )
    print(f"errors: {errors}")
    print(
        f"import vesin: {imports['with_torch']:.2f} s with torch installed, "
        f"{imports['torch_hidden']:.2f} s with torch hidden"
    )
    out = Path(__file__).parent / "results" / "neighbours.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
