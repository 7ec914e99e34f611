"""The SiO2 polymorph study: how well models trained without any SiO2 predict SiO2.

The study's runs use the shipped ensemble's recipe (pseudo-tensors, the moving average of the
weights, 20 epochs) with every SiO2 crystal of every source held out
(``data.holdout="formula:SiO2"``: the MP polymorphs, the MP tensors and all zeolite
frameworks), for the `default` network and the wide network of the `large` preset, seeds 0 and
1 (``checkpoints/sio2-out-default-s0``, ``...-wide-s1``, ...). They are compared with the
shipped members of the same recipe, networks and seeds, trained on the ordinary id split, so
most SiO2 crystals were in their training data (``member_0`` to ``member_3`` of
``e3elastic/pretrained/ensemble``). Four models are scored:

- ``held_out`` / ``with``: every network and seed pooled (the mean of their tensors);
- ``held_out_default`` / ``with_default``: the `default` network's seeds pooled.

For each Materials Project SiO2 polymorph (K_VRH and G_VRH; a tensor where the data has one,
alpha-quartz mp-7000 among them) and each zeolite framework of the id split's test part, every
model's K, G and (with a tensor) relative Frobenius error are tabulated next to DFT, with the
split each crystal was in for the ``with`` models.

Used by ``scripts/sio2_experiment.py`` (the default mode); see there for the command line.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

#: Each network's ``e3elastic train`` options.
NETWORKS = {
    "default": ["--config", "default"],
    "wide": ["--config", "large", "--set", "data.batch_size=16"],
}
#: The models compared: name -> the networks pooled (held out, or the shipped members).
MODELS = {
    "held_out": ("held_out", ["default", "wide"]),
    "with": ("with", ["default", "wide"]),
    "held_out_default": ("held_out", ["default"]),
    "with_default": ("with", ["default"]),
}
#: The shipped members of the same recipe (id split), per (network, seed).
_ENSEMBLE = Path(__file__).resolve().parents[1] / "e3elastic" / "pretrained" / "ensemble"
SHIPPED = {
    ("default", 0): _ENSEMBLE / "member_0",
    ("default", 1): _ENSEMBLE / "member_1",
    ("wide", 0): _ENSEMBLE / "member_2",
    ("wide", 1): _ENSEMBLE / "member_3",
    ("wide", 2): _ENSEMBLE / "member_4",
}
#: The seeds the study trains and pools.
SEEDS = (0, 1)


def recipe(pseudo: str) -> list[str]:
    """The shipped ensemble's training options, with every SiO2 crystal held out."""
    return [
        *("--set", "train.epochs=20", "--set", "train.patience=15"),
        *("--set", "train.ema_decay=0.999", "--set", "train.pseudo_weight=1"),
        *("--set", f"train.pseudo_tensors={pseudo}"),
        *("--set", 'data.holdout="formula:SiO2"'),
    ]


def ensure_run(workdir: Path, network: str, pseudo: str, seed: int) -> Path:
    """The held-out run's ``best`` bundle, training (or resuming) the run first when it has
    none."""
    best = workdir / "best"
    if (best / "params.npz").is_file():
        return best
    if not Path(pseudo).is_file():
        raise SystemExit(
            f"{workdir} must be trained, and its recipe needs the pseudo-tensor file {pseudo}; "
            "e3elastic/pretrained/ensemble/README.md gives the commands that write it"
        )
    cmd = [sys.executable, "-m", "e3elastic", "train", *NETWORKS[network]]
    cmd += ["--seed", str(seed), "--workdir", str(workdir), *recipe(pseudo)]
    if (workdir / "ckpt").exists():
        cmd.append("--resume")
    print("training: " + " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    return best


def _is_sio2(record) -> bool:
    from pymatgen.core import Composition

    return Composition(record.formula).reduced_formula == "SiO2"


def study(bundles: dict[str, dict[tuple[str, int], Path]], data_dir: str | None) -> dict[str, Any]:
    """Predictions of every model of :data:`MODELS` for the SiO2 crystals, one row per crystal.

    ``bundles[kind][(network, seed)]``: a bundle, ``kind`` "held_out" or "with".
    """
    from e3elastic import data, load_model, tensors
    from e3elastic.training.evaluation import predict_records

    loaded = {(k, *key): load_model(p) for k, runs in bundles.items() for key, p in runs.items()}
    config = loaded[("with", "default", 0)].config
    if data_dir:
        config = config.override([f"data.data={json.dumps(data_dir)}"])
    ds = data.load_for_config(config)
    part_of = {i: name for name, ids in ds.split.items() for i in ids}
    sio2 = [r for r in ds.records if _is_sio2(r)]
    mp = [r for r in sio2 if r.theory != "B3LYP-D2"]
    zeolites = [r for r in sio2 if r.theory == "B3LYP-D2" and part_of.get(r.id) == "test"]
    for key, path in bundles["held_out"].items():
        trained = set((loaded[("held_out", *key)].info.get("split") or {}).get("train", []))
        leaked = [r.id for r in sio2 if r.id in trained]
        if leaked:
            raise SystemExit(f"{path} trained on SiO2 crystals: {leaked[:5]}")

    rows = []
    for group, records in (("MP polymorph", mp), ("zeolite (test)", zeolites)):
        preds = {key: predict_records(m, records) for key, m in loaded.items()}
        for key, ev in preds.items():
            if ev.skipped:
                print(f"{key}: skipped {ev.skipped}", file=sys.stderr)
        first = next(iter(preds.values()))
        common = [r.id for r in first.records]
        for key, ev in preds.items():
            assert [r.id for r in ev.records] == common, key
        for i, r in enumerate(first.records):
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
            for name, (kind, nets) in MODELS.items():
                pool = [k for k in preds if k[0] == kind and k[1] in nets]
                v = np.mean([preds[k].mean[i] for k in pool], axis=0)
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
            name: [
                {
                    "network": n,
                    "seed": seed,
                    "path": str(p),
                    "version": loaded[(kind, n, seed)].version,
                }
                for (n, seed), p in bundles[kind].items()
                if n in nets
            ]
            for name, (kind, nets) in MODELS.items()
        },
    }


def _names(rows: list[dict[str, Any]]) -> list[str]:
    """The models scored in rows, in the order of their ``K_<name>`` keys."""
    return [k[2:] for k in rows[0] if k.startswith("K_") and k != "K_dft"] if rows else []


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
        for name in _names(rows):
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
        "| crystals | n | models | median rel. K: held out / with | "
        "median rel. G: held out / with | median rel. Frobenius: held out / with |"
    )
    print("|---|---|---|---|---|---|")
    for g, e in report["summary"].items():
        for label, a, b in (
            ("both networks, seeds pooled", "held_out", "with"),
            ("`default` network, seeds pooled", "held_out_default", "with_default"),
        ):
            if a not in e or b not in e:
                continue
            h, w = e[a], e[b]
            fro = (
                f"{h['median_rel_frobenius']:.3f} / {w['median_rel_frobenius']:.3f} "
                f"(n = {h['n_tensors']})"
                if "median_rel_frobenius" in h
                else ""
            )
            print(
                f"| {g} | {e['n']} | {label} | {h['median_rel_K']:.3f} / {w['median_rel_K']:.3f} | "
                f"{h['median_rel_G']:.3f} / {w['median_rel_G']:.3f} | {fro} |"
            )
