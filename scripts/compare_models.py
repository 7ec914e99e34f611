"""Score several models side by side on the same crystals, by kind of label and source.

    python scripts/compare_models.py --split-from checkpoints/run/best \\
        --model shipped=default --model new=checkpoints/run/best [--data DIR] \\
        [--reference benchmarks/splits/id_test_2026-11.json] [--part test] [--out FILE.json]

The crystals are the ``--part`` (default test) of the split stored in the bundle
``--split-from``, read from ``--data`` (default: ``$E3ELASTIC_DATA`` or ``../shared/data``), so
every model is scored on exactly the same ones, whatever split it was trained with. Rows:

* ``reference`` (and ``reference PBE``, its PBE crystals): the crystals listed in
  ``--reference`` (yesterday's test crystals, or the test split in a bundle's ``info.json``);
* ``tensors PBE`` / ``tensors B3LYP-D2``: every crystal of the part with a full tensor;
* ``K/G only``: the crystals of the part with only K_VRH and G_VRH.

``--model NAME=A+B+...`` pools the members of several models into one mean, even where
their configs differ (a cutoff, a radial MLP): the way to try an ensemble of mixed recipes
before training one. Every member counts once, so a five-member ensemble weighs five times a
single model. A model named in several ``--model`` options is loaded and run once.

``--predictions DIR`` keeps each model's predictions on the part as ``.npz`` files, keyed by
the model's weights (the sha256 of its ``params.npz`` files) and the crystals (ids and
lattices, so a crystal moved into another frame is predicted again), so that a later
call pooling the same members in other combinations does not run them again.

Prints a Markdown table and, with ``--out``, writes every number as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np


def pooled(models, records, cache: dict | None = None):
    """The members of every model in ``models``, on the records all of them could predict,
    as one :class:`e3elastic.training.calibration.Evaluated`. ``cache`` keeps each model's
    predictions (by identity) for the next call on the same records."""
    from e3elastic.training.calibration import Evaluated
    from e3elastic.training.evaluation import predict_records

    cache = {} if cache is None else cache
    for m in models:
        if id(m) not in cache:
            cache[id(m)] = predict_records(m, records)
    evs = [cache[id(m)] for m in models]
    keep = set.intersection(*({r.id for r in ev.records} for ev in evs))
    recs = [r for r in evs[0].records if r.id in keep]
    members = []
    for ev in evs:
        where = {r.id: i for i, r in enumerate(ev.records)}
        members.append(ev.member_voigt[:, [where[r.id] for r in recs]])
    skipped = sorted({s for ev in evs for s in ev.skipped})
    return Evaluated(recs, np.concatenate(members, axis=0), skipped)


def _key(path: str, records) -> str:
    """A name for one model's predictions on ``records``: its weights and the crystals, each
    by id and by its lattice (a crystal re-aligned into another frame is predicted again)."""
    from e3elastic.inference.bundle import model_folder

    h = hashlib.sha256()
    for f in sorted(model_folder(path).rglob("params.npz")):
        h.update(f.read_bytes())
    for r in records:
        h.update(r.id.encode())
        structure = getattr(r, "structure", None)
        if structure is not None:
            h.update(np.ascontiguousarray(structure.lattice.matrix, "<f8").tobytes())
    return h.hexdigest()[:20]


def cached_predictions(model, path: str, records, folder: Path):
    """``predict_records`` of one model, read from / written to ``folder``."""
    from e3elastic.training.calibration import Evaluated
    from e3elastic.training.evaluation import predict_records

    f = folder / f"{_key(path, records)}.npz"
    if f.exists():
        z = np.load(f, allow_pickle=False)
        where = {r.id: r for r in records}
        return Evaluated(
            [where[i] for i in z["ids"]], z["member_voigt"], [str(s) for s in z["skipped"]]
        )
    ev = predict_records(model, records)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(
        f,
        ids=np.array([r.id for r in ev.records]),
        member_voigt=ev.member_voigt,
        skipped=np.array(ev.skipped, dtype=str),
    )
    return ev


def _rows(models, records, reference: set[str], cache: dict) -> dict[str, dict]:
    from e3elastic.training import metrics

    ev = pooled(models, records, cache)
    pred = ev.mean
    recs = ev.records
    out = {}
    groups = {
        "reference": [i for i, r in enumerate(recs) if r.id in reference and r.has_tensor],
        "reference PBE": [
            i
            for i, r in enumerate(recs)
            if r.id in reference and r.has_tensor and r.theory == "PBE"
        ],
        "tensors PBE": [i for i, r in enumerate(recs) if r.has_tensor and r.theory == "PBE"],
        "tensors B3LYP-D2": [
            i for i, r in enumerate(recs) if r.has_tensor and r.theory == "B3LYP-D2"
        ],
    }
    for name, idx in groups.items():
        if idx:
            m = metrics.tensor_metrics(pred[idx], np.stack([recs[i].voigt for i in idx]))
            out[name] = {k: v for k, v in m.items() if not k.startswith("by_")}
    kg = [i for i, r in enumerate(recs) if not r.has_tensor]
    if kg:
        out["K/G only"] = metrics.moduli_metrics(pred[kg], np.array([recs[i].kg for i in kg]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split-from", required=True, help="bundle whose split picks the crystals")
    ap.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME=MODEL",
        help="a row name and a model (shipped name, bundle, run or ensemble folder); "
        "NAME=A+B+... pools the members of several models; repeatable",
    )
    ap.add_argument(
        "--data", default=None, help="data folder (default: $E3ELASTIC_DATA, else ../shared/data)"
    )
    ap.add_argument(
        "--part",
        default="test",
        choices=("train", "val", "test"),
        help="which part of --split-from's split to score (default: test)",
    )
    ap.add_argument(
        "--reference",
        default=None,
        help="JSON file with a 'test' list of ids, or a bundle's info.json (its test split)",
    )
    ap.add_argument("--out", default=None, help="write every number as JSON to this file")
    ap.add_argument("--predictions", default=None, metavar="DIR", help="cache of predictions")
    args = ap.parse_args()

    from e3elastic import data, inference

    split_model = inference.load_model(args.split_from)
    ids = set(split_model.info["split"][args.part])
    dc = split_model.config.data
    ds = data.load_dataset(
        args.data,
        subset="all",
        tolerance=dc.tolerance,
        keep_unstable=dc.keep_unstable,
        max_sites=dc.max_sites,
        cutoff=split_model.config.model.cutoff,
    )
    records = [r for r in ds.records if r.id in ids]
    reference = set()
    if args.reference:
        ref = json.loads(Path(args.reference).read_text())
        reference = set(ref["test"] if "test" in ref else ref["split"]["test"])
    results, loaded, cache = {}, {}, {}
    for spec in args.model:
        name, _, where = spec.partition("=")
        paths = (where or name).split("+")
        for w in paths:
            if w not in loaded:
                loaded[w] = inference.load_model(w)
                if args.predictions:
                    cache[id(loaded[w])] = cached_predictions(
                        loaded[w], w, records, Path(args.predictions)
                    )
        results[name] = _rows([loaded[w] for w in paths], records, reference, cache)
    print(f"{args.part} crystals of {args.split_from}: {len(records)}")
    head = "| model | crystals | n | rel. Frobenius | EwT25 | EwT10 | MAE log10 K / G |"
    print(head + " MAE K / G (GPa) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, rows in results.items():
        for group, m in rows.items():
            rel = f"{m['rel_frobenius']:.3f}" if "rel_frobenius" in m else "-"
            ewt = f"{m['ewt_25']:.3f} | {m['ewt_10']:.3f}" if "ewt_25" in m else "- | -"
            print(
                f"| {name} | {group} | {m['n']} | {rel} | {ewt} | "
                f"{m['mae_log10_K_VRH']:.4f} / {m['mae_log10_G_VRH']:.4f} | "
                f"{m['mae_K_VRH_GPa']:.1f} / {m['mae_G_VRH_GPa']:.1f} |"
            )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
