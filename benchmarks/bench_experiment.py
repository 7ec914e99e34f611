"""Shipped models against measured single-crystal elastic constants of crystals built by hand.

    python benchmarks/bench_experiment.py [--model NAME=MODEL ...]

The structures are ``benchmarks/crystals/*.cif``, written from published room-temperature
lattice data (none is read from the data folder). The measured constants (GPa) are from
ultrasonic or Brillouin studies: Cu and Al (Simmons and Wang 1971), diamond (McSkimin and
Andreatch 1972), MgO (Sinogeikin and Bass 2000), GaAs (Cottam and Saunders 1973), rutile TiO2
(Isaak et al. 1998), wurtzite ZnO (Kobiakov 1980) and corundum (Gieske and Barsch 1968).

For each model (default: the shipped ``default`` and ``ensemble``; ``--model old=PATH`` adds a
bundle, for instance an earlier one from the git history) and crystal: the relative Frobenius
error of the 6x6 Voigt matrix against the measured one, in the CIF's frame (a along x, c
along z: the frame of the tables for these systems), and |log10| of the ratio of predicted to
measured K_VRH and G_VRH. The model is trained on PBE at 0 K, so a few per cent of the
difference is the functional and temperature, not the model. Prints a table and writes
benchmarks/results/experiment.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _cubic(c11, c12, c44):
    return _hexagonal(c11, c12, c12, c11, c44, c66=c44)


def _hexagonal(c11, c12, c13, c33, c44, c66=None, c14=0.0):
    v = np.zeros((6, 6))
    v[0, 0] = v[1, 1] = c11
    v[2, 2] = c33
    v[0, 1] = c12
    v[0, 2] = v[1, 2] = c13
    v[3, 3] = v[4, 4] = c44
    v[5, 5] = (c11 - c12) / 2 if c66 is None else c66
    v[0, 3], v[1, 3], v[4, 5] = c14, -c14, c14
    return np.triu(v) + np.triu(v, 1).T


#: Measured constants (GPa), Voigt order 11 22 33 23 13 12.
MEASURED = {
    "Cu": _cubic(168.0, 121.0, 75.0),
    "Al": _cubic(107.0, 61.0, 28.0),
    "diamond": _cubic(1079.0, 124.0, 578.0),
    "MgO": _cubic(297.0, 95.0, 156.0),
    "GaAs": _cubic(119.0, 54.0, 59.0),
    "rutile": _hexagonal(268.0, 175.0, 147.0, 484.0, 124.0, c66=190.0),
    "ZnO": _hexagonal(210.0, 121.0, 105.0, 211.0, 42.0),
    "corundum": _hexagonal(497.0, 163.0, 116.0, 502.0, 147.0, c14=-22.0),
}


def score(model, folder: Path = HERE / "crystals") -> dict[str, dict[str, float]]:
    """Per crystal: rel. Frobenius error, predicted and measured K_VRH / G_VRH."""
    import e3elastic
    from e3elastic import tensors

    out = {}
    names = list(MEASURED)
    preds = e3elastic.predict([folder / f"{n}.cif" for n in names], model=model)
    for name, p in zip(names, preds, strict=True):
        if p["error"] is not None:
            raise SystemExit(f"{name}: {p['error']}")
        c = MEASURED[name]
        m = tensors.derived_properties(c)
        out[name] = {
            "rel_frobenius": float(np.linalg.norm(p["voigt_GPa"] - c) / np.linalg.norm(c)),
            "K_VRH_GPa": p["K_VRH_GPa"],
            "G_VRH_GPa": p["G_VRH_GPa"],
            "K_VRH_measured_GPa": float(m["K_VRH_GPa"]),
            "G_VRH_measured_GPa": float(m["G_VRH_GPa"]),
            "warnings": len(p["warnings"]),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", metavar="NAME=MODEL", help="name=bundle")
    ap.add_argument("--out", default=str(HERE / "results" / "experiment.json"))
    args = ap.parse_args()

    from _env import environment

    import e3elastic

    specs = args.model or ["default=default", "ensemble=ensemble"]
    results = {}
    for spec in specs:
        name, _, where = spec.partition("=")
        results[name] = score(e3elastic.load_model(where or name))
    heads = " | ".join(f"{n}: rel. / K / G" for n in results)
    print(f"| crystal | measured K / G | {heads} |")
    print("|---" * (2 + len(results)) + "|")
    for c in MEASURED:
        first = next(iter(results.values()))[c]
        row = f"| {c} | {first['K_VRH_measured_GPa']:.0f} / {first['G_VRH_measured_GPa']:.0f} |"
        for r in results.values():
            x = r[c]
            row += f" {x['rel_frobenius']:.3f} / {x['K_VRH_GPa']:.0f} / {x['G_VRH_GPa']:.0f} |"
        print(row)
    summary = {}
    for n, r in results.items():
        rel = np.mean([x["rel_frobenius"] for x in r.values()])
        lk = np.mean([abs(np.log10(x["K_VRH_GPa"] / x["K_VRH_measured_GPa"])) for x in r.values()])
        lg = np.mean([abs(np.log10(x["G_VRH_GPa"] / x["G_VRH_measured_GPa"])) for x in r.values()])
        summary[n] = {"mean_rel_frobenius": rel, "mae_log10_K": lk, "mae_log10_G": lg}
        print(f"{n}: mean rel. Frobenius {rel:.3f}, mean |log10 K| {lk:.3f}, |log10 G| {lg:.3f}")
    Path(args.out).write_text(
        json.dumps(
            {"models": specs, "crystals": results, "summary": summary, **environment()},
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
