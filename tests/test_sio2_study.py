"""The SiO2 polymorph study's bookkeeping (scripts/sio2_study.py), on hand-made rows."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import sio2_study


def _row(i, group, split, k, g, k_out, g_out, k_in, g_in, fro=None):
    r = {
        "id": f"x{i}",
        "group": group,
        "split_with": split,
        "K_dft": k,
        "G_dft": g,
        "K_held_out": k_out,
        "G_held_out": g_out,
        "K_with": k_in,
        "G_with": g_in,
        "has_tensor": fro is not None,
    }
    if fro is not None:
        r["rel_frobenius_held_out"], r["rel_frobenius_with"] = fro
    return r


def test_summary_medians_by_group_and_run():
    rows = [
        _row(0, "MP polymorph", "train", 100, 50, 150, 50, 100, 55, fro=(0.5, 0.1)),
        _row(1, "MP polymorph", "test", 20, 40, 30, 20, 22, 40),
        _row(2, "MP polymorph", "val", 200, 100, 180, 130, 200, 100),
        _row(3, "zeolite (test)", "test", 60, 20, 30, 10, 66, 20, fro=(0.6, 0.2)),
    ]
    s = sio2_study.summarise(rows)
    mp = s["MP polymorphs"]
    assert mp["n"] == 3
    # K held out: |150/100-1|, |30/20-1|, |180/200-1| = 0.5, 0.5, 0.1 -> median 0.5
    assert mp["held_out"]["median_rel_K"] == pytest.approx(0.5)
    # G with: 0.1, 0, 0 -> 0
    assert mp["with"]["median_rel_G"] == pytest.approx(0.0)
    assert mp["held_out"]["median_rel_frobenius"] == pytest.approx(0.5)
    assert mp["held_out"]["n_tensors"] == 1
    outside = s["MP polymorphs outside the with-run's training split"]
    assert outside["n"] == 2
    # K with on x1, x2: 0.1, 0 -> 0.05
    assert outside["with"]["median_rel_K"] == pytest.approx(0.05)
    zeo = s["zeolite test frameworks"]
    # held out, K and G together: 0.5 and 0.5 -> 0.5
    assert zeo["held_out"]["median_rel_KG"] == pytest.approx(0.5)
    assert zeo["with"]["median_rel_frobenius"] == pytest.approx(0.2)


def test_sio2_is_found_by_reduced_formula():
    from types import SimpleNamespace

    assert sio2_study._is_sio2(SimpleNamespace(formula="Si3O6"))
    assert sio2_study._is_sio2(SimpleNamespace(formula="SiO2"))
    assert not sio2_study._is_sio2(SimpleNamespace(formula="SiO"))
