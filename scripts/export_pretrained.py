"""Copy a run's best bundle into the package as a shipped model, with a README.

    python scripts/export_pretrained.py checkpoints/default --name default

The README states the training data, split sizes, test metrics next to the two trivial
baselines, and the date, from the run's ``final_metrics.json`` and ``best/info.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _row(name: str, m: dict) -> str:
    return (
        f"| {name} | {m['n']} | {m['mae_voigt_GPa']:.2f} | {m['rel_frobenius']:.3f} | "
        f"{m['ewt_5']:.2f} / {m['ewt_10']:.2f} / {m['ewt_25']:.2f} | {m['mae_K_VRH_GPa']:.1f} | "
        f"{m['mae_G_VRH_GPa']:.1f} | {m['mae_log10_K_VRH']:.3f} | {m['mae_log10_G_VRH']:.3f} |"
    )


def metrics_table(final: dict, part: str = "test") -> str:
    lines = [
        "| model | n | MAE Voigt (GPa) | rel. Frobenius | EwT 5/10/25 % | MAE K_VRH (GPa) "
        "| MAE G_VRH (GPa) | MAE log10 K | MAE log10 G |",
        "|---|---|---|---|---|---|---|---|---|",
        _row("e3elastic default", final[part]),
    ]
    base = final.get("baselines", {}).get(part, {})
    if base:
        lines.append(_row("training-mean tensor", base["train_mean"]))
        lines.append(
            _row("training-mean tensor per crystal system", base["train_mean_per_crystal_system"])
        )
    return "\n".join(lines)


def by_system_table(m: dict) -> str:
    lines = [
        "| crystal system | n | MAE Voigt (GPa) | rel. Frobenius | EwT 25 % |",
        "|---|---|---|---|---|",
    ]
    for name, r in sorted(m.get("by_crystal_system", {}).items()):
        lines.append(
            f"| {name} | {r['n']} | {r['mae_voigt_GPa']:.2f} | {r['rel_frobenius']:.3f} "
            f"| {r['ewt_25']:.2f} |"
        )
    return "\n".join(lines)


def _oversampling(train: dict) -> str:
    n, theory = train.get("oversample", 1), train.get("oversample_theory", "")
    if n > 1:
        return f"every {theory} training crystal {n} times per epoch"
    return "every training crystal once per epoch"


def _moduli(train: dict) -> str:
    w, wt = train.get("moduli_weight", 0.0), train.get("moduli_weight_tensor", 0.0)
    if not w and not wt:
        return ""
    text = (
        f" and the squared log error of the predicted K_VRH and G_VRH, weighted {w} for a "
        f"crystal with K/G only and {wt} for one with a full tensor"
    )
    if train.get("pseudo_tensors"):
        text += (
            "; each K/G-only training crystal also trains on a pseudo-tensor (a teacher "
            "ensemble's prediction moved onto its DFT K and G; `scripts/pseudo_tensors.py`), "
            f"weight {train.get('pseudo_weight', 0.5)}"
        )
    return text


def _moduli_table(final: dict) -> str:
    rows = [
        "| part | n | MAE K_VRH (GPa) | MAE G_VRH (GPa) | MAE log10 K | MAE log10 G |",
        "|---|---|---|---|---|---|",
    ]
    for part in ("train", "val", "test"):
        m = final.get(part, {}).get("moduli_only")
        if m and m.get("n"):
            rows.append(
                f"| {part} | {m['n']} | {m['mae_K_VRH_GPa']:.1f} | {m['mae_G_VRH_GPa']:.1f} "
                f"| {m['mae_log10_K_VRH']:.3f} | {m['mae_log10_G_VRH']:.3f} |"
            )
    if len(rows) == 2:
        return ""
    return "\n\n## Crystals with K and G only (MP 2025 binaries)\n\n" + "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="run folder with best/ and final_metrics.json")
    ap.add_argument("--name", default="default")
    args = ap.parse_args()
    run = Path(args.run)
    final = json.loads((run / "final_metrics.json").read_text())
    info = json.loads((run / "best" / "info.json").read_text())
    cfg = json.loads((run / "best" / "config.json").read_text())
    dest = ROOT / "e3elastic" / "pretrained" / args.name
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for f in ("config.json", "params.npz", "stats.json", "info.json", "MANIFEST.json"):
        shutil.copy2(run / "best" / f, dest / f)
    split = info.get("split", {})
    timing = [json.loads(x) for x in (run / "timing.jsonl").read_text().splitlines()]
    minutes = sum(t["seconds"] for t in timing) / 60
    bond = int(cfg["model"].get("bond_basis", 0))
    radial = (
        f"; the radial weights also see each edge's length over the sum of its atoms' covalent "
        f"radii ({bond} Gaussians, `model.bond_basis`)"
        if bond
        else ""
    )
    readme = f"""# Shipped model `{args.name}`

E(3)-equivariant network (`e3elastic.network.model.ElasticityNet`, config `{cfg.get("name")}`:
{cfg["model"]["n_layers"]} interaction blocks, hidden irreps `{cfg["model"]["hidden_irreps"]}`,
spherical harmonics to l = {cfg["model"]["sh_lmax"]}, cutoff {cfg["model"]["cutoff"]} Å{radial}).

- **Training data:** every label of `../shared/data` (subset `{cfg["data"]["subset"]}`): the PBE
  tensors (Materials Project via matminer 2015, StrainNet's MP validation split, ElaTBot's newer
  MP tensors, the MatTen example), the MP 2025 binaries with K_VRH and G_VRH only (when the
  moduli weight is above 0) and, with subset `all`, the B3LYP-D2 SiO2 zeolites, frame-aligned,
  validated and de-duplicated by `e3elastic.data.load_dataset`.
  Head `{cfg["model"].get("head", "linear")}`, element descriptors
  {cfg["model"].get("element_descriptors", False)}, levels of theory
  {cfg["model"].get("n_theories", 0)}, volume augmentation ±{cfg["train"].get("volume_strain", 0)}.
- **Loss:** the mean squared error of the normalised head outputs, plus
  {cfg["train"].get("frobenius_weight", 0.0)} x the squared relative Frobenius error of
  C{_moduli(cfg["train"])}; {_oversampling(cfg["train"])}.
- **Split:** seeded hash of the material id (seed {cfg["data"]["seed"]}): train
  {len(split.get("train", []))}, val {len(split.get("val", []))}, test
  {len(split.get("test", []))} crystals. The ids are in `info.json`.
- **Training:** {len(timing)} epochs, {minutes:.0f} min on a 2-core CPU (float32); weights from
  the epoch with the best validation error (epoch {info.get("epoch")}).
- **Date:** {info.get("trained")}.

## Test metrics (held-out crystals)

{metrics_table(final)}

Relative Frobenius error is ||C_pred - C|| / ||C|| of the full tensor; EwT is the share of crystals
under 5, 10 and 25 %.

## By crystal system (test)

{by_system_table(final["test"])}{_moduli_table(final)}
"""
    (dest / "README.md").write_text(readme)
    print(f"wrote {dest}")
    print(metrics_table(final))
    return 0


if __name__ == "__main__":
    sys.exit(main())
