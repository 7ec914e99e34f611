"""Side-by-side table of training runs (a sweep): size, speed and validation metrics.

    python scripts/sweep_table.py checkpoints/RUN [checkpoints/RUN ...] [--out FILE.json]

For each run folder (``e3elastic train --workdir``): the network (hidden irreps, blocks, radial
MLP, and the learning rate, EMA decay, weight decay, pseudo-tensor and soft-target weights
where they differ from the defaults),
trainable parameters (from the best bundle's ``params.npz``), median seconds per epoch after the
first (``timing.jsonl``; the first includes compilation), epochs done of those planned, and at
the best validation epoch (``metrics.jsonl``): relative Frobenius error, EwT25, EwT10, MAE
log10 K and G on the crystals with a tensor, and MAE K and G (GPa) on the K/G-only crystals. A
finished run also shows its train-split error (``final_metrics.json``), so one can see where a
candidate stops underfitting.
Reads files only: runs still training can be listed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

from e3elastic.config import TrainConfig

#: The learning rate of a config that does not name one.
DEFAULT_LR = TrainConfig().learning_rate


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_row(folder: Path) -> dict[str, Any]:
    """One run's row (see the module docstring)."""
    config = json.loads((folder / "config.json").read_text())
    model, train = config["model"], config["train"]
    epochs = [m for m in _jsonl(folder / "metrics.jsonl") if m.get("val")]
    if not epochs:
        raise ValueError(f"{folder}: no validated epoch yet")
    best = min(epochs, key=lambda m: m["val"]["rel_frobenius"])
    val = best["val"]
    kg = val.get("moduli_only") or {}
    seconds = [t["seconds"] for t in _jsonl(folder / "timing.jsonl") if t["epoch"] > 0]
    params_file = folder / "best" / "params.npz"
    n_params = None
    if params_file.is_file():
        with np.load(params_file) as p:
            n_params = int(sum(p[k].size for k in p.files))
    row: dict[str, Any] = {
        "run": folder.name,
        "hidden_irreps": model["hidden_irreps"],
        "n_layers": model["n_layers"],
        "radial_hidden": model["radial_hidden"],
        "cutoff": model["cutoff"],
        "sh_lmax": model.get("sh_lmax", 4),
        "norm": model.get("norm", "none"),
        "density_input": bool(model.get("density_input", False)),
        "seed": train["seed"],
        "learning_rate": train.get("learning_rate", DEFAULT_LR),
        "ema_decay": train.get("ema_decay", 0.0),
        "weight_decay": train.get("weight_decay", 0.0),
        "pseudo_weight": train.get("pseudo_weight", 0.5) if train.get("pseudo_tensors") else 0.0,
        "soft_weight": train.get("soft_weight", 0.0),
        "holdout": config["data"]["holdout"],
        "batch_size": config["data"].get("batch_size", 16),
        "parameters": n_params,
        "seconds_per_epoch": statistics.median(seconds) if seconds else None,
        "epochs_done": len(epochs),
        "epochs_planned": train["epochs"],
        "best_epoch": best["epoch"],
        "val_rel_frobenius": val["rel_frobenius"],
        "val_ewt_25": val["ewt_25"],
        "val_ewt_10": val["ewt_10"],
        "val_mae_log10_K": val["mae_log10_K_VRH"],
        "val_mae_log10_G": val["mae_log10_G_VRH"],
        "val_kg_only_mae_K_GPa": kg.get("mae_K_VRH_GPa"),
        "val_kg_only_mae_G_GPa": kg.get("mae_G_VRH_GPa"),
        "train_rel_frobenius": None,
    }
    final = folder / "final_metrics.json"
    if final.is_file():
        f = json.loads(final.read_text())
        row["train_rel_frobenius"] = (f.get("train") or {}).get("rel_frobenius")
        row["test_rel_frobenius"] = (f.get("test") or {}).get("rel_frobenius")
    return row


def _cell(x: Any, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        "| run | network | params | s/epoch | epochs | best | val rel. | EwT25 | EwT10 | "
        "log10 K / G | K/G-only MAE K / G (GPa) | train rel. |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        net = f"{r['n_layers']} x {r['hidden_irreps']}, radial {r['radial_hidden']}"
        if r.get("cutoff", 5.0) != 5.0:
            net += f", cutoff {r['cutoff']:g} Å"
        if r.get("sh_lmax", 4) != 4:
            net += f", harmonics to l={r['sh_lmax']}"
        if r.get("norm", "none") != "none":
            net += f", {r['norm']} norm"
        if r.get("density_input"):
            net += ", volume per atom in"
        if r.get("batch_size", 16) != 16:
            net += f"; batch {r['batch_size']}"
        if r.get("learning_rate", DEFAULT_LR) != DEFAULT_LR:
            net += f"; learning rate {r['learning_rate']:g}"
        if r.get("ema_decay"):
            net += f"; EMA {r['ema_decay']}"
        if r.get("weight_decay"):
            net += f"; weight decay {r['weight_decay']}"
        if r.get("pseudo_weight"):
            net += f"; pseudo-tensors x{r['pseudo_weight']}"
        if r.get("soft_weight"):
            net += f"; soft targets x{r['soft_weight']}"
        print(
            f"| {r['run']} | {net} | {_cell(r['parameters'], ',')} | "
            f"{_cell(r['seconds_per_epoch'], '.0f')} | {r['epochs_done']}/{r['epochs_planned']} | "
            f"{r['best_epoch']} | {r['val_rel_frobenius']:.4f} | {r['val_ewt_25']:.3f} | "
            f"{r['val_ewt_10']:.3f} | {r['val_mae_log10_K']:.4f} / {r['val_mae_log10_G']:.4f} | "
            f"{_cell(r['val_kg_only_mae_K_GPa'], '.1f')} / "
            f"{_cell(r['val_kg_only_mae_G_GPa'], '.1f')} | "
            f"{_cell(r['train_rel_frobenius'], '.4f')} |"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default=None, help="also write the rows as JSON")
    args = ap.parse_args()
    rows = []
    for run in args.runs:
        try:
            rows.append(run_row(Path(run)))
        except (OSError, ValueError, KeyError) as e:
            print(f"error: {run}: {e}", file=sys.stderr)
            return 2
    print_table(rows)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
