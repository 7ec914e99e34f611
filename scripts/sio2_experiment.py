"""The SiO2 experiment: the polymorph study (default), or the seed's zeolite-only training.

    python scripts/sio2_experiment.py [--runs checkpoints] [--pseudo F] [--seeds 0 1] [--data DIR]
    python scripts/sio2_experiment.py --zeolites-only [--workdir checkpoints/sio2] [--epochs 40]

The study (``scripts/sio2_study.py``) trains the shipped ensemble's recipe with every SiO2
crystal held out, for the `default` network and the wide one and each seed
(``<runs>/sio2-out-default-s0``, ``<runs>/sio2-out-wide-s0``, ...; a run folder without a
``best`` bundle is trained first, resumed when it has checkpoints), and compares them with the
shipped members of the same recipe, networks and seeds, which had SiO2 in their training data.
It prints per-polymorph tables (K, G, relative Frobenius error against DFT), writes
``benchmarks/results/sio2_study.json`` and the parity figure ``docs/figures/sio2_parity.png``.

``--zeolites-only`` is the seed report's experiment, done right: it trains on the SiO2 zeolite
frameworks (B3LYP-D2, Coudert et al.) with the seeded split by framework, reports validation
and held-out test errors, and, separately, the error on the Materials Project SiO2 entries
(PBE, a different level of theory, never trained on). Writes ``<workdir>/sio2_report.json`` and
prints a table. Resumes with ``--resume``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=None)
    ap.add_argument("--workdir", default="checkpoints/sio2")
    ap.add_argument("--config", default="default")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--max-sites", type=int, default=420)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--zeolites-only", action="store_true", help="the seed's experiment")
    ap.add_argument("--runs", default="checkpoints", help="where the held-out runs live")
    ap.add_argument(
        "--pseudo",
        default="checkpoints/pseudo/ensemble.json",
        help="pseudo-tensor file of the recipe (only read when a held-out run is trained)",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--out", default="benchmarks/results/sio2_study.json")
    ap.add_argument("--figure", default="docs/figures/sio2_parity.png")
    args = ap.parse_args()
    if not args.zeolites_only:
        return run_study(args)
    t0 = time.perf_counter()

    from e3elastic import config as cfg
    from e3elastic import data, inference, runtime
    from e3elastic.cli import show_messages
    from e3elastic.training import metrics, train

    show_messages()  # epoch lines and other progress on stderr
    runtime.enable_compilation_cache()
    config = cfg.preset(args.config).override(
        [
            f"data.max_sites={args.max_sites}",
            'data.subset="sio2"',
            f"train.epochs={args.epochs}",
            "data.batch_size=4",
            "train.patience=40",
            "train.oversample=1",  # every crystal here is a zeolite: an epoch is one pass
            *args.set,
        ]
    )
    if args.data:
        config = config.override([f"data.data={json.dumps(args.data)}"])
    ds = data.load_for_config(config)
    zeolite_ids = {r.id for r in ds.records if r.theory == "B3LYP-D2"}
    mp = [r for r in ds.records if r.theory != "B3LYP-D2" and r.has_tensor]
    mp_kg = [r for r in ds.records if not r.has_tensor]  # MP polymorphs with K and G only
    split = {k: [i for i in v if i in zeolite_ids] for k, v in ds.split.items()}
    ds = ds.with_split(split)
    print(
        f"zeolites: train {len(split['train'])}, val {len(split['val'])}, "
        f"test {len(split['test'])}; MP SiO2 (PBE, reported separately): {len(mp)} tensors, "
        f"{len(mp_kg)} K/G only",
        file=sys.stderr,
    )
    prep = train.prepare_data(config, dataset=ds)
    out = train.train_and_evaluate(config, args.workdir, prepared=prep, resume=args.resume)
    model = inference.load_model(Path(args.workdir) / "best")

    def predicted(records):
        """(record, Voigt prediction) of the records predicted without an error."""
        res = inference.predict([r.structure for r in records], model=model)
        return [(r, p["voigt_GPa"]) for r, p in zip(records, res, strict=True) if not p["error"]]

    ok, ok_kg = predicted(mp), predicted(mp_kg)
    mp_metrics = (
        metrics.tensor_metrics(np.stack([v for _, v in ok]), np.stack([r.voigt for r, _ in ok]))
        if ok
        else {"n": 0}
    )
    kg_metrics = (
        metrics.moduli_metrics(np.stack([v for _, v in ok_kg]), np.array([r.kg for r, _ in ok_kg]))
        if ok_kg
        else {"n": 0}
    )
    mp_rows = [
        {
            "id": r.id,
            "C11_C33_C44_dft": [r.voigt[0, 0], r.voigt[2, 2], r.voigt[3, 3]],
            "C11_C33_C44_pred": [v[0, 0], v[2, 2], v[3, 3]],
        }
        for r, v in ok
    ]
    metrics_file = Path(args.workdir) / "metrics.jsonl"
    curves = [json.loads(x) for x in metrics_file.read_text().splitlines()]
    wall = time.perf_counter() - t0
    report = {
        "wall_seconds": wall,
        "final": {k: out[k] for k in ("best_epoch", "train", "val", "test")},
        "baselines": out["baselines"],
        "mp_sio2_pbe": mp_metrics,
        "mp_sio2_pbe_moduli_only": kg_metrics,
        "mp_sio2_rows": mp_rows,
        "curves": [
            {
                "epoch": c["epoch"],
                "train_loss": c["train_loss"],
                "val_rel_frobenius": c.get("val", {}).get("rel_frobenius"),
            }
            for c in curves
        ],
    }
    Path(args.workdir, "sio2_report.json").write_text(json.dumps(report, indent=2, default=float))
    print("| split | n | MAE Voigt (GPa) | rel. Frobenius | EwT 25 % |")
    print("|---|---|---|---|---|")
    for name, m in (
        ("train", out["train"]),
        ("val", out["val"]),
        ("test", out["test"]),
        ("MP SiO2 (PBE)", mp_metrics),
    ):
        if m.get("n"):
            print(
                f"| {name} | {m['n']} | {m['mae_voigt_GPa']:.2f} | {m['rel_frobenius']:.3f} "
                f"| {m['ewt_25']:.2f} |"
            )
    b = out["baselines"].get("test", {}).get("train_mean")
    if b:
        print(
            f"| test, training-mean baseline | {b['n']} | {b['mae_voigt_GPa']:.2f} "
            f"| {b['rel_frobenius']:.3f} | {b['ewt_25']:.2f} |"
        )
    if kg_metrics.get("n"):
        print(
            f"MP SiO2 with K/G only (n={kg_metrics['n']}): median relative error of K "
            f"{kg_metrics['median_rel_K_VRH']:.3f}, of G {kg_metrics['median_rel_G_VRH']:.3f}"
        )
    print(f"wall time {wall / 60:.1f} min (best epoch {out['best_epoch']})")
    return 0


def run_study(args: argparse.Namespace) -> int:
    """The polymorph study: train the held-out runs where needed, predict, tabulate, plot."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import sio2_study

    from e3elastic import runtime
    from e3elastic.cli import show_messages

    show_messages()
    runtime.enable_compilation_cache()
    runs = Path(args.runs)
    keys = [(net, seed) for net in sio2_study.NETWORKS for seed in args.seeds]
    missing = [k for k in keys if k not in sio2_study.SHIPPED]
    if missing:
        raise SystemExit(f"no shipped member of network and seed {missing}")
    bundles = {
        "held_out": {
            (net, seed): sio2_study.ensure_run(
                runs / f"sio2-out-{net}-s{seed}", net, args.pseudo, seed
            )
            for net, seed in keys
        },
        "with": {k: sio2_study.SHIPPED[k] for k in keys},
    }
    report = sio2_study.study(bundles, args.data)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    sio2_study.parity_figure(report["rows"], Path(args.figure))
    sio2_study.print_tables(report)
    print(f"\nwrote {args.out} and {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
