"""scripts/compare_models.py: pooling the members of models with different configs."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import compare_models

pytest.importorskip("jax")


def test_pooled_aligns_members_by_crystal_and_drops_what_one_model_skipped(monkeypatch):
    from e3elastic.training import calibration, evaluation

    recs = {k: SimpleNamespace(id=k) for k in "abc"}
    rng = np.random.default_rng(0)
    # model A: three members on a, b, c; model B: one member, c and a in another order, b skipped
    a = calibration.Evaluated([recs[k] for k in "abc"], rng.normal(size=(3, 3, 6, 6)), [])
    b = calibration.Evaluated([recs["c"], recs["a"]], rng.normal(size=(1, 2, 6, 6)), ["b: bad"])
    by_model = {"A": a, "B": b}
    monkeypatch.setattr(evaluation, "predict_records", lambda m, records: by_model[m])

    ev = compare_models.pooled(["A", "B"], list(recs.values()))
    assert [r.id for r in ev.records] == ["a", "c"]
    assert ev.member_voigt.shape == (4, 2, 6, 6) and ev.skipped == ["b: bad"]
    want_a = (a.member_voigt[:, 0].sum(axis=0) + b.member_voigt[0, 1]) / 4
    want_c = (a.member_voigt[:, 2].sum(axis=0) + b.member_voigt[0, 0]) / 4
    np.testing.assert_allclose(ev.mean[0], want_a)
    np.testing.assert_allclose(ev.mean[1], want_c)


def test_cached_predictions_are_read_back_and_keyed_by_weights_and_crystals(monkeypatch, tmp_path):
    from e3elastic.training import calibration, evaluation

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "params.npz").write_bytes(b"weights-1")
    from pymatgen.core import Lattice, Structure

    cube = Structure(Lattice.cubic(3.0), ["Cu"], [[0, 0, 0]])
    recs = [SimpleNamespace(id=k, structure=cube) for k in "abc"]
    rng = np.random.default_rng(1)
    calls = []

    def predict(model, records):
        calls.append([r.id for r in records])
        return calibration.Evaluated(
            list(records[:-1]), rng.normal(size=(2, len(records) - 1, 6, 6)), ["x: bad"]
        )

    monkeypatch.setattr(evaluation, "predict_records", predict)
    cache = tmp_path / "cache"
    first = compare_models.cached_predictions("M", str(model_dir), recs, cache)
    again = compare_models.cached_predictions("M", str(model_dir), recs, cache)
    assert len(calls) == 1
    assert [r.id for r in again.records] == ["a", "b"] and again.records[0] is recs[0]
    np.testing.assert_array_equal(again.member_voigt, first.member_voigt)
    assert again.skipped == ["x: bad"]

    compare_models.cached_predictions("M", str(model_dir), recs[:2], cache)  # other crystals
    assert len(calls) == 2
    (model_dir / "params.npz").write_bytes(b"weights-2")  # retrained model
    compare_models.cached_predictions("M", str(model_dir), recs, cache)
    assert len(calls) == 3
    # the same crystal moved into another frame (a data release that re-aligns it)
    turned = Structure(Lattice(np.diag([3.0, 3.0, 3.0])[[1, 2, 0]]), ["Cu"], [[0, 0, 0]])
    moved = [SimpleNamespace(id=r.id, structure=turned) for r in recs]
    compare_models.cached_predictions("M", str(model_dir), moved, cache)
    assert len(calls) == 4
