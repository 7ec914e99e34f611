"""The SiO2 polymorph study: how well a model trained without any SiO2 predicts SiO2.

Two runs of one recipe and seed differ only in their split: ``held_out`` trains with every
SiO2 crystal of every source held out (``data.holdout="formula:SiO2"``: the MP polymorphs, the
MP tensors and all zeolite frameworks), ``with`` uses the ordinary id split, so most SiO2
crystals are in its training data. For each Materials Project SiO2 polymorph (K_VRH and G_VRH;
a tensor where the data has one, alpha-quartz mp-7000 among them) and each zeolite framework of
the id split's test part, both models' K, G and (with a tensor) relative Frobenius error are
tabulated next to DFT, with the split each crystal was in for the ``with`` run.

Used by ``scripts/sio2_experiment.py`` (the default mode); see there for the command line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: The recipe of both runs: the shipped default's, seed 1.
RUNS = {
    "held_out": ["--set", 'data.holdout="formula:SiO2"'],
    "with": [],
}


def ensure_run(workdir: Path, extra: list[str], seed: int, epochs: int | None) -> Path:
    """The run's ``best`` bundle, training (or resuming) the run first when it has none."""
    best = workdir / "best"
    if (best / "params.npz").is_file():
        return best
    cmd = [sys.executable, "-m", "e3elastic", "train", "--config", "default"]
    cmd += ["--seed", str(seed), "--workdir", str(workdir), *extra]
    if epochs:
        cmd += ["--epochs", str(epochs)]
    if (workdir / "ckpt").exists():
        cmd.append("--resume")
    print("training: " + " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    return best


def _is_sio2(record) -> bool:
    from pymatgen.core import Composition

    return Composition(record.formula).reduced_formula == "SiO2"


def study(held_out: Path, with_sio2: Path, data_dir: str | None) -> dict[str, Any]:
    """Predictions of both bundles for the SiO2 crystals, one row per crystal."""
    from e3elastic import data, load_model, tensors
    from e3elastic.training.evaluation import predict_records

    models = {"held_out": load_model(held_out), "with": load_model(with_sio2)}
    config = models["with"].config
    if data_dir:
        config = config.override([f"data.data={json.dumps(data_dir)}"])
    ds = data.load_for_config(config)
    part_of = {i: name for name, ids in ds.split.items() for i in ids}
    sio2 = [r for r in ds.records if _is_sio2(r)]
    mp = [r for r in sio2 if r.theory != "B3LYP-D2"]
    zeolites = [r for r in sio2 if r.theory == "B3LYP-D2" and part_of.get(r.id) == "test"]
    held_split = models["held_out"].info.get("split") or {}
    leaked = [r.id for r in sio2 if r.id in set(held_split.get("train", []))]
    if leaked:
        raise SystemExit(f"{held_out} trained on SiO2 crystals: {leaked[:5]}")

    rows = []
    for group, records in (("MP polymorph", mp), ("zeolite (test)", zeolites)):
        preds = {k: predict_records(m, records) for k, m in models.items()}
        for k in preds:
            if preds[k].skipped:
                print(f"{k}: skipped {preds[k].skipped}", file=sys.stderr)
        common = [r.id for r in preds["with"].records]
        for name, ev in preds.items():
            assert [r.id for r in ev.records] == common, name
        for i, r in enumerate(preds["with"].records):
            k_dft, g_dft = r.kg
            row = {
                "id": r.id,
                "group": group,
                "source": r.source,
                "crystal_system": r.crystal_system,
                "has_tensor": bool(r.has_tensor),
                "split_with": part_of.get(r.id, "?"),
                "K_dft": float(k_dft),
                "G_dft": float(g_dft),
            }
            for name, ev in preds.items():
                v = ev.mean[i]
                row[f"K_{name}"] = float(tensors.bulk_modulus(v)["hill"])
                row[f"G_{name}"] = float(tensors.shear_modulus(v)["hill"])
                if r.has_tensor:
                    err = np.linalg.norm(v - r.voigt) / np.linalg.norm(r.voigt)
                    row[f"rel_frobenius_{name}"] = float(err)
            rows.append(row)
    return {
        "rows": rows,
        "summary": summarise(rows),
        "models": {
            k: {"path": str(p), "version": models[k].version}
            for k, p in (("held_out", held_out), ("with", with_sio2))
        },
    }


def _median_rel(rows, q: str, name: str) -> float:
    return float(np.median([abs(r[f"{q}_{name}"] / r[f"{q}_dft"] - 1) for r in rows]))


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median relative errors of K and G per group and model, and of the Frobenius error."""
    out: dict[str, Any] = {}
    groups = {
        "MP polymorphs": [r for r in rows if r["group"] == "MP polymorph"],
        "MP polymorphs outside the with-run's training split": [
            r for r in rows if r["group"] == "MP polymorph" and r["split_with"] != "train"
        ],
        "zeolite test frameworks": [r for r in rows if r["group"] == "zeolite (test)"],
    }
    for g, rs in groups.items():
        if not rs:
            continue
        entry: dict[str, Any] = {"n": len(rs)}
        for name in RUNS:
            entry[name] = {
                "median_rel_K": _median_rel(rs, "K", name),
                "median_rel_G": _median_rel(rs, "G", name),
                "median_rel_KG": float(
                    np.median([abs(r[f"{q}_{name}"] / r[f"{q}_dft"] - 1) for r in rs for q in "KG"])
                ),
            }
            fro = [r[f"rel_frobenius_{name}"] for r in rs if r["has_tensor"]]
            if fro:
                entry[name]["median_rel_frobenius"] = float(np.median(fro))
                entry[name]["n_tensors"] = len(fro)
        out[g] = entry
    return out


def parity_figure(rows: list[dict[str, Any]], path: Path) -> None:
    """K and G of the MP SiO2 polymorphs: DFT against both models, log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mp = [r for r in rows if r["group"] == "MP polymorph"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.3))
    for ax, q, label in zip(axes, "KG", ("bulk modulus K_VRH", "shear modulus G_VRH"), strict=True):
        dft = np.array([r[f"{q}_dft"] for r in mp])
        for name, marker, colour, text in (
            ("held_out", "o", "tab:red", "every SiO2 held out"),
            ("with", "s", "tab:blue", "SiO2 in the data (id split)"),
        ):
            ax.scatter(
                dft,
                [r[f"{q}_{name}"] for r in mp],
                marker=marker,
                c=colour,
                s=28,
                alpha=0.8,
                label=text,
            )
        lo, hi = 8, 800
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.fill_between(
            [lo, hi],
            [lo * 0.8, hi * 0.8],
            [lo * 1.25, hi * 1.25],
            color="0.9",
            zorder=0,
            label="within 25 %",
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"DFT (PBE) {label} (GPa)")
        ax.set_ylabel(f"predicted {q} (GPa)")
        ax.set_title(f"{q}: {len(mp)} Materials Project SiO2 polymorphs", fontsize=10)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def print_tables(report: dict[str, Any]) -> None:
    rows = report["rows"]
    print(
        "| crystal | group | split (with-run) | K DFT | K held out | K with | G DFT | "
        "G held out | G with | rel. Frobenius held out / with |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["group"], r["K_dft"])):
        fro = (
            f"{r['rel_frobenius_held_out']:.2f} / {r['rel_frobenius_with']:.2f}"
            if r["has_tensor"]
            else ""
        )
        print(
            f"| {r['id']} | {r['group']} | {r['split_with']} | {r['K_dft']:.0f} | "
            f"{r['K_held_out']:.0f} | {r['K_with']:.0f} | {r['G_dft']:.0f} | "
            f"{r['G_held_out']:.0f} | {r['G_with']:.0f} | {fro} |"
        )
    print()
    print(
        "| crystals | n | median rel. K: held out / with | median rel. G: held out / with | "
        "median rel. Frobenius: held out / with |"
    )
    print("|---|---|---|---|---|")
    for g, e in report["summary"].items():
        h, w = e["held_out"], e["with"]
        fro = (
            f"{h['median_rel_frobenius']:.3f} / {w['median_rel_frobenius']:.3f} "
            f"(n = {h['n_tensors']})"
            if "median_rel_frobenius" in h
            else ""
        )
        print(
            f"| {g} | {e['n']} | {h['median_rel_K']:.3f} / {w['median_rel_K']:.3f} | "
            f"{h['median_rel_G']:.3f} / {w['median_rel_G']:.3f} | {fro} |"
        )
