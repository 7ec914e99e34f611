"""scripts/sweep_table.py on a run folder written here: best epoch, settings, train/test."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import sweep_table


def _val(rel, kg_g):
    return {
        "rel_frobenius": rel,
        "ewt_25": 1 - rel,
        "ewt_10": rel / 2,
        "mae_log10_K_VRH": rel / 4,
        "mae_log10_G_VRH": rel / 3,
        "moduli_only": {"mae_K_VRH_GPa": 10.0, "mae_G_VRH_GPa": kg_g},
    }


def _run(tmp_path, name, train, data=None, cutoff=5.0, model=None):
    folder = tmp_path / name
    (folder / "best").mkdir(parents=True)
    config = {
        "model": {
            "hidden_irreps": "8x0e+2x1o",
            "n_layers": 2,
            "radial_hidden": [16],
            "cutoff": cutoff,
            **(model or {}),
        },
        "train": {"seed": 3, "epochs": 5, **train},
        "data": {"holdout": "id", **(data or {})},
    }
    (folder / "config.json").write_text(json.dumps(config))
    epochs = [(0, 0.30, 14.0), (1, 0.21, 12.5), (2, 0.25, 11.0)]
    (folder / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"epoch": e, "val": _val(r, g)}) for e, r, g in epochs) + "\n"
    )
    (folder / "timing.jsonl").write_text(
        "\n".join(json.dumps({"epoch": e, "seconds": s}) for e, s in [(0, 90), (1, 10), (2, 30)])
    )
    np.savez(folder / "best" / "params.npz", a=np.zeros((3, 4)), b=np.zeros(5))
    return folder


def test_row_takes_the_best_validation_epoch_and_the_run_settings(tmp_path, capsys):
    folder = _run(tmp_path, "ema", {"ema_decay": 0.999, "weight_decay": 0.0})
    row = sweep_table.run_row(folder)
    assert row["best_epoch"] == 1 and row["val_rel_frobenius"] == 0.21
    assert row["val_kg_only_mae_G_GPa"] == 12.5  # the best epoch's, not the last one's
    assert row["parameters"] == 17 and row["seconds_per_epoch"] == 20  # compile epoch left out
    assert row["epochs_done"] == 3 and row["epochs_planned"] == 5
    assert row["train_rel_frobenius"] is None  # not finished
    (folder / "final_metrics.json").write_text(
        json.dumps({"train": {"rel_frobenius": 0.15}, "test": {"rel_frobenius": 0.22}})
    )
    row = sweep_table.run_row(folder)
    assert (row["train_rel_frobenius"], row["test_rel_frobenius"]) == (0.15, 0.22)

    plain = sweep_table.run_row(_run(tmp_path, "plain", {}))  # a config from before the option
    assert plain["ema_decay"] == 0.0
    sweep_table.print_table([row, plain])
    lines = capsys.readouterr().out.splitlines()
    assert "EMA 0.999" in lines[2] and "EMA" not in lines[3]
    assert "batch" not in lines[2] and "cutoff" not in lines[2]


def test_table_names_a_batch_size_and_cutoff_other_than_the_default(tmp_path, capsys):
    row = sweep_table.run_row(_run(tmp_path, "b8", {}, {"batch_size": 8}, cutoff=6.0))
    assert row["batch_size"] == 8 and row["cutoff"] == 6.0
    sweep_table.print_table([row])
    line = capsys.readouterr().out.splitlines()[2]
    assert "batch 8" in line and "cutoff 6 Å" in line


def test_table_names_harmonics_and_normalisation_other_than_the_default(tmp_path, capsys):
    plain = sweep_table.run_row(_run(tmp_path, "old", {}))  # configs from before the options
    assert (plain["sh_lmax"], plain["norm"], plain["density_input"]) == (4, "none", False)
    model = {"sh_lmax": 3, "norm": "layer", "density_input": True}
    row = sweep_table.run_row(_run(tmp_path, "n", {}, model=model))
    sweep_table.print_table([row, plain])
    lines = capsys.readouterr().out.splitlines()
    assert "harmonics to l=3" in lines[2] and "layer norm" in lines[2]
    assert "volume per atom" in lines[2]
    assert "harmonics" not in lines[3] and "norm" not in lines[3] and "volume" not in lines[3]


def test_table_names_pseudo_tensors_only_when_a_run_trained_on_them(tmp_path, capsys):
    pseudo = {"pseudo_tensors": "p.json", "pseudo_weight": 1.0, "soft_weight": 0.5}
    rows = [
        sweep_table.run_row(_run(tmp_path, "pl", pseudo)),
        sweep_table.run_row(_run(tmp_path, "w", {"pseudo_weight": 0.7})),  # no file: not used
        sweep_table.run_row(_run(tmp_path, "old", {})),
    ]
    assert [r["pseudo_weight"] for r in rows] == [1.0, 0.0, 0.0]
    sweep_table.print_table(rows)
    lines = capsys.readouterr().out.splitlines()
    assert "pseudo-tensors x1.0" in lines[2] and "soft targets x0.5" in lines[2]
    assert [r["soft_weight"] for r in rows] == [0.5, 0.0, 0.0]
    assert "pseudo" not in lines[3] and "pseudo" not in lines[4]


def test_table_names_a_learning_rate_other_than_the_default(tmp_path, capsys):
    plain = sweep_table.run_row(_run(tmp_path, "old", {}))  # a config without the key
    assert plain["learning_rate"] == 3e-3
    row = sweep_table.run_row(_run(tmp_path, "lr", {"learning_rate": 0.01}))
    assert row["learning_rate"] == 0.01
    sweep_table.print_table([row, plain])
    lines = capsys.readouterr().out.splitlines()
    assert "learning rate 0.01" in lines[2] and "learning rate" not in lines[3]
