"""How often the ``low-dimensional`` warning fires, and how large the errors are where it does.

    python scripts/low_dimensional_errors.py [--model ensemble] [--split-from default]
        [--predictions checkpoints/preds] [--out benchmarks/results/low_dimensional.json]

For every crystal of the split stored in ``--split-from`` (read from ``--data``), the bonded
network's dimension (:func:`e3elastic.inference.domain.bonded_dimension`); for the training part
only its share of crystals, for validation and test the model's errors (MAE of log10 K_VRH and
log10 G_VRH over every crystal, relative Frobenius error over those with a tensor), for the
crystals with a bonded network in fewer than three dimensions and for the rest.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ensemble")
    ap.add_argument("--split-from", default="default")
    ap.add_argument("--data", default=None)
    ap.add_argument("--predictions", default=None, metavar="DIR", help="cache of predictions")
    ap.add_argument("--out", default="benchmarks/results/low_dimensional.json")
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from compare_models import cached_predictions

    from e3elastic import data, inference
    from e3elastic.graph import structure_to_graph
    from e3elastic.inference import domain
    from e3elastic.moduli import bulk_modulus, shear_modulus
    from e3elastic.training.evaluation import predict_records

    split_model = inference.load_model(args.split_from)
    dc, cutoff = split_model.config.data, split_model.config.model.cutoff
    ds = data.load_dataset(
        args.data,
        subset="all",
        tolerance=dc.tolerance,
        keep_unstable=dc.keep_unstable,
        max_sites=dc.max_sites,
        cutoff=cutoff,
    )
    model = inference.load_model(args.model)
    out = {"model": args.model, "bond_ratio": domain.BOND_RATIO, "parts": {}}
    print(f"bonded: closer than {domain.BOND_RATIO:g} x the sum of covalent radii")
    print("| part | crystals | low-dim. | 2 / 1 / 0 | log10 K: low-dim. / rest | log10 G | rel.")
    print("|---|---|---|---|---|---|---|")
    for part in ("train", "val", "test"):
        ids = set(split_model.info["split"][part])
        records = [r for r in ds.records if r.id in ids]
        dims = {
            r.id: domain.bonded_dimension(structure_to_graph(r.structure, cutoff=cutoff))
            for r in records
        }
        count = Counter(dims.values())
        row = {"n": len(records), "by_dimension": {str(k): count[k] for k in sorted(count)}}
        row["low_dimensional"] = len(records) - count[3]
        if part != "train":
            if args.predictions:
                ev = cached_predictions(model, args.model, records, Path(args.predictions))
            else:
                ev = predict_records(model, records)
            low = np.array([dims[r.id] < 3 for r in ev.records])
            kg = np.array([r.kg for r in ev.records])
            pred = np.stack([bulk_modulus(ev.mean)["hill"], shear_modulus(ev.mean)["hill"]], -1)
            err = np.abs(np.log10(pred / kg))
            tensor = np.array([r.has_tensor for r in ev.records])
            rel = np.full(len(low), np.nan)
            for i in np.flatnonzero(tensor):
                v = ev.records[i].voigt
                rel[i] = np.linalg.norm(ev.mean[i] - v) / np.linalg.norm(v)
            for name, mask in (("low_dimensional", low), ("rest", ~low)):
                row[name + "_errors"] = {
                    "n": int(mask.sum()),
                    "n_tensors": int((mask & tensor).sum()),
                    "mae_log10_K_VRH": float(err[mask, 0].mean()),
                    "mae_log10_G_VRH": float(err[mask, 1].mean()),
                    "rel_frobenius": float(np.nanmean(rel[mask & tensor]))
                    if (mask & tensor).any()
                    else None,
                }
        out["parts"][part] = row
        e = [row.get(k + "_errors") for k in ("low_dimensional", "rest")]
        cells = ["-", "-", "-"]
        if e[0]:
            cells = [
                f"{e[0]['mae_log10_K_VRH']:.3f} / {e[1]['mae_log10_K_VRH']:.3f}",
                f"{e[0]['mae_log10_G_VRH']:.3f} / {e[1]['mae_log10_G_VRH']:.3f}",
                f"{e[0]['rel_frobenius'] or float('nan'):.3f} ({e[0]['n_tensors']}) / "
                f"{e[1]['rel_frobenius']:.3f}",
            ]
        share = row["low_dimensional"] / max(row["n"], 1)
        byd = " / ".join(str(count[k]) for k in (2, 1, 0))
        print(f"| {part} | {row['n']} | {row['low_dimensional']} ({share:.1%}) | {byd} | ", end="")
        print(" | ".join(cells) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
