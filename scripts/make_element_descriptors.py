"""Write ``e3elastic/network/element_descriptors.json``: descriptors of elements Z = 1..100.

The model's species embedding reads this table (see :mod:`e3elastic.network.elements`), so that an
element with few or no training crystals is placed by its chemistry rather than by an untrained
table row. Values come from pymatgen's periodic table; the file is committed so that predictions
do not change when pymatgen's data does. Rerun only to change the descriptor set (a model trained
on the old table must then be retrained).

    python scripts/make_element_descriptors.py           # compare with the committed table
    python scripts/make_element_descriptors.py --write   # overwrite it
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "e3elastic" / "network" / "element_descriptors.json"
N_ELEMENTS = 100


def _num(x) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


def _log(x) -> float:
    v = _num(x)
    return math.log(v) if v > 0 else math.nan


def _valence(el) -> float:
    g = el.group
    if el.block == "s":
        return float(g) if g <= 2 else 2.0  # He: 2
    if el.block == "p":
        return float(g - 10)
    if el.block == "d":
        return float(g)
    return 3.0  # f block: most common valence


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--write", action="store_true", help=f"overwrite {OUT.name} (default: only compare)"
    )
    args = ap.parse_args(argv)
    from pymatgen.analysis.molecule_structure_comparator import CovalentRadius
    from pymatgen.core import Element

    covalent = CovalentRadius.radius
    names = [
        "period", "group", "block_s", "block_p", "block_d", "block_f",
        "electronegativity", "covalent_radius", "atomic_radius", "vdw_radius",
        "log_atomic_mass", "first_ionisation_energy", "valence_electrons",
        "log_molar_volume", "log_melting_point", "log_bulk_modulus", "mendeleev_number",
    ]  # fmt: skip
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for z in range(1, N_ELEMENTS + 1):
            el = Element.from_Z(z)
            radius = _num(el.atomic_radius)
            if math.isnan(radius):
                radius = _num(el.atomic_radius_calculated)
            ies = el.ionization_energies
            rows.append(
                [
                    float(el.row),
                    float(el.group),
                    *(1.0 if el.block == b else 0.0 for b in "spdf"),
                    _num(el.X),
                    _num(covalent.get(el.symbol)),
                    radius,
                    _num(el.van_der_waals_radius),
                    _log(el.atomic_mass),
                    _num(ies[0]) if ies else math.nan,
                    _valence(el),
                    _log(el.molar_volume),
                    _log(el.melting_point),
                    _log(el.bulk_modulus),
                    _num(el.mendeleev_no),
                ]
            )
    symbols = [Element.from_Z(z).symbol for z in range(1, N_ELEMENTS + 1)]
    doc = {
        "about": "Raw element descriptors (pymatgen periodic table); NaN written as null. "
        "e3elastic.network.elements normalises them and adds missing-value flags.",
        "names": names,
        "symbols": symbols,
        "values": [[None if math.isnan(v) else round(v, 6) for v in row] for row in rows],
    }
    if args.write:
        OUT.write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {OUT} ({len(rows)} elements x {len(names)} descriptors)")
        return 0
    committed = json.loads(OUT.read_text())
    same = all(committed[k] == doc[k] for k in ("names", "symbols", "values"))
    print(
        f"{OUT.name}: {len(rows)} elements x {len(names)} descriptors; the committed values "
        + ("match pymatgen's" if same else "differ from pymatgen's (--write to replace them)")
    )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
