"""Pseudo-tensors for K/G-only training crystals: the teacher's tensor moved onto the DFT moduli
(scripts/pseudo_tensors.py), the file's checks, how preparation fills the rows, and how the
loss weighs such a row; soft targets (tensor crystals blended with the teacher). Small inputs
built here; moduli checked against pymatgen."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pymatgen.analysis.elasticity import ElasticTensor

from e3elastic import config as cfg
from e3elastic import tensors
from e3elastic.training.prepare import (
    PSEUDO_FORMAT,
    Prepared,
    TrainingError,
    _pseudo_targets,
    _soft_targets,
    read_pseudo_tensors,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import pseudo_tensors

# an orthorhombic, positive-definite stiffness (GPa), no symmetry between its axes
_ORTHO = np.array(
    [
        [210.0, 80.0, 60.0, 0, 0, 0],
        [80.0, 150.0, 70.0, 0, 0, 0],
        [60.0, 70.0, 120.0, 0, 0, 0],
        [0, 0, 0, 40.0, 0, 0],
        [0, 0, 0, 0, 55.0, 0],
        [0, 0, 0, 0, 0, 70.0],
    ]
)


def _vrh(v):
    e = ElasticTensor.from_voigt(v)
    return e.k_vrh, e.g_vrh


@pytest.mark.parametrize("k, g", [(35.0, 12.0), (300.0, 250.0), (90.0, 5.0)])
def test_match_moduli_gives_the_dft_moduli_and_stays_positive_definite(k, g):
    out = pseudo_tensors.match_moduli(_ORTHO, k, g)
    assert np.allclose(_vrh(out), (k, g), rtol=1e-8)
    assert np.linalg.eigvalsh(tensors.voigt_to_mandel(out)).min() > 0
    assert np.allclose(out, out.T)
    # the orthorhombic pattern is kept: zero couplings stay zero, the axes keep their order
    assert (
        np.abs(out[:3, 3:]).max() < 1e-8
        and np.abs(out[3:, 3:] - np.diag(np.diag(out[3:, 3:]))).max() < 1e-8
    )
    assert out[0, 0] > out[1, 1] > out[2, 2] and out[5, 5] > out[4, 4] > out[3, 3]


def test_match_moduli_of_an_isotropic_tensor_is_the_isotropic_tensor_of_the_target():
    out = pseudo_tensors.match_moduli(tensors.isotropic_voigt(100.0, 50.0), 70.0, 20.0)
    assert np.allclose(out, tensors.isotropic_voigt(70.0, 20.0), rtol=1e-9, atol=1e-9)


def test_match_moduli_at_the_tensors_own_moduli_changes_nothing():
    k, g = _vrh(_ORTHO)
    assert np.allclose(pseudo_tensors.match_moduli(_ORTHO, k, g), _ORTHO, atol=1e-8)
    with pytest.raises(ValueError, match="positive-definite"):
        pseudo_tensors.match_moduli(-_ORTHO, k, g)


def _evaluation(tmp_path, part="train"):
    doc = {
        "model": "teacher",
        "members": 3,
        "evaluated": f"the model's {part} split",
        "crystals": [
            {"id": "mp-3", "pred_voigt_GPa": (1.5 * _ORTHO).tolist(), "positive_definite": True},
            {"id": "mp-4", "pred_voigt_GPa": (-_ORTHO).tolist(), "positive_definite": False},
        ],
        "moduli_only": {
            "crystals": [
                {
                    "id": "mp-1",
                    "pred_voigt_GPa": _ORTHO.tolist(),
                    "K_VRH_pred_GPa": 1.0,
                    "G_VRH_pred_GPa": 1.0,
                    "K_VRH_true_GPa": 80.0,
                    "G_VRH_true_GPa": 30.0,
                },
                {
                    "id": "mp-2",
                    "pred_voigt_GPa": (-_ORTHO).tolist(),
                    "K_VRH_pred_GPa": 1.0,
                    "G_VRH_pred_GPa": 1.0,
                    "K_VRH_true_GPa": 80.0,
                    "G_VRH_true_GPa": 30.0,
                },
            ]
        },
    }
    path = tmp_path / "teacher.json"
    path.write_text(json.dumps(doc))
    return path


def test_script_writes_a_file_training_reads(tmp_path, capsys):
    out = tmp_path / "pseudo.json"
    assert pseudo_tensors.main([str(_evaluation(tmp_path)), "--out", str(out)]) == 0
    assert "1 left out" in capsys.readouterr().out  # mp-2 is not positive-definite
    got = read_pseudo_tensors(out)
    assert list(got) == ["mp-1"] and np.allclose(_vrh(got["mp-1"]), (80.0, 30.0), rtol=1e-5)
    soft = read_pseudo_tensors(out, key="soft")  # the teacher's raw tensors of tensor crystals
    assert list(soft) == ["mp-3"] and np.allclose(soft["mp-3"], 1.5 * _ORTHO)
    # an evaluation of another split part is refused: val/test crystals never become labels
    code = pseudo_tensors.main([str(_evaluation(tmp_path, "test")), "--out", str(out)])
    assert code == 2 and "of the model's train split" in capsys.readouterr().err


def test_read_pseudo_tensors_refuses_bad_files(tmp_path):
    with pytest.raises(TrainingError, match="no file"):
        read_pseudo_tensors(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tensors": {}}))
    with pytest.raises(TrainingError, match="not a pseudo-tensor file"):
        read_pseudo_tensors(bad)
    bad.write_text(json.dumps({"format": PSEUDO_FORMAT, "tensors": {"x": np.eye(5).tolist()}}))
    with pytest.raises(TrainingError, match="the tensor of x"):
        read_pseudo_tensors(bad)


def test_preparation_fills_the_k_g_only_rows_it_has_and_weighs_them(tmp_path):
    from e3elastic.network.interface import targets_from_voigt

    path = tmp_path / "p.json"
    path.write_text(
        json.dumps(
            {"format": PSEUDO_FORMAT, "tensors": {"b": _ORTHO.tolist(), "a": (2 * _ORTHO).tolist()}}
        )
    )
    config = cfg.tiny().override([f"train.pseudo_tensors={path}", "train.pseudo_weight=0.25"])
    recs = [
        SimpleNamespace(id=i, has_tensor=t) for i, t in (("a", True), ("b", False), ("c", False))
    ]
    irreps = np.full((3, 21), 7.0)
    weight = _pseudo_targets(config, recs, irreps)
    assert np.array_equal(weight, [1.0, 0.25, 0.0])
    assert np.allclose(irreps[1], targets_from_voigt(_ORTHO[None], config.model)[0])
    assert np.all(irreps[[0, 2]] == 7.0)  # a real tensor is never replaced
    config = cfg.tiny().override([f"train.pseudo_tensors={path}"])
    with pytest.raises(TrainingError, match="none of the 2 crystals"):
        _pseudo_targets(config, [SimpleNamespace(id="z", has_tensor=False)], np.zeros((1, 21)))
    with pytest.raises(ValueError, match="pseudo_weight"):
        cfg.tiny().override(["train.pseudo_weight=0"])


@pytest.mark.parametrize("head", ["log", "linear"])
def test_a_pseudo_row_weighs_its_tensor_terms_and_mixes_its_moduli_weights(head, rng):
    import jax
    import jax.numpy as jnp

    from e3elastic.network.interface import targets_from_voigt
    from e3elastic.training.steps import loss_terms, per_graph_loss, training_targets

    w_kg, w_t, w_f, w = 3.0, 0.5, 2.0, 0.25
    config = cfg.tiny().override(
        [
            f"model.head={head}",
            f"train.moduli_weight={w_kg}",
            f"train.moduli_weight_tensor={w_t}",
            f"train.frobenius_weight={w_f}",
        ]
    )
    stats = {"shift": rng.normal(size=21), "scale": rng.uniform(0.5, 2.0, 21)}
    pred = np.stack([1.1 * _ORTHO, 0.8 * _ORTHO])
    label = _ORTHO
    y = (targets_from_voigt(pred, config.model) - stats["shift"]) / stats["scale"]
    kg = np.log([[60.0, 25.0], [60.0, 25.0]])
    irreps = np.stack([targets_from_voigt(label[None], config.model)[0]] * 2)
    targets = training_targets(irreps, stats, kg, [1.0, w])  # a tensor row, a pseudo row

    class Net:
        def apply(self, params, inputs):
            return params

    with jax.enable_x64(True):
        loss, _ = per_graph_loss(
            Net(),
            jnp.asarray(y),
            {"graph_mask": jnp.ones(2, bool)},
            jnp.asarray(targets),
            extra=loss_terms(config, stats),
        )
    loss = np.asarray(loss)
    for row, scale, m in ((0, 1.0, w_t), (1, w, w * w_t + (1 - w) * w_kg)):
        mse = np.mean((y[row] - targets[row, :21]) ** 2)
        a, b = tensors.voigt_to_mandel(pred[row]), tensors.voigt_to_mandel(label)
        frob = np.sum((a - b) ** 2) / np.sum(b**2)
        k, g = _vrh(pred[row])
        sq = (math.log(k) - kg[row, 0]) ** 2 + (math.log(g) - kg[row, 1]) ** 2
        assert np.isclose(loss[row], scale * (mse + w_f * frob) + m * sq, rtol=1e-8)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        training_targets(irreps, stats, kg, [1.0, 1.5])


def test_soft_targets_blend_only_the_tensor_rows_the_file_has(tmp_path):
    from e3elastic.network.interface import targets_from_voigt

    path = tmp_path / "p.json"
    doc = {
        "format": PSEUDO_FORMAT,
        "tensors": {"b": _ORTHO.tolist()},
        "soft": {"a": (2 * _ORTHO).tolist(), "b": (3 * _ORTHO).tolist()},
    }
    path.write_text(json.dumps(doc))
    config = cfg.tiny().override([f"train.pseudo_tensors={path}", "train.soft_weight=0.25"])
    recs = [
        SimpleNamespace(id=i, has_tensor=t) for i, t in (("a", True), ("b", False), ("c", True))
    ]
    irreps = np.full((3, 21), 7.0)
    out = _soft_targets(config, recs, irreps)
    teacher = targets_from_voigt((2 * _ORTHO)[None], config.model)[0]
    assert np.allclose(out[0], 0.75 * 7.0 + 0.25 * teacher)
    # a K/G-only row (its pseudo-tensor is another option) and a tensor the file lacks stay
    assert np.all(out[[1, 2]] == 7.0)
    assert np.all(irreps == 7.0)  # the DFT targets (and the statistics drawn from them) stay
    prep = Prepared(None, {}, {"train": recs}, {"train": irreps}, (), [])
    assert prep.training_irreps("train") is not out  # no soft targets: the DFT ones
    prep.soft_irreps["train"] = out
    assert np.array_equal(prep.training_irreps("train"), out)
    assert np.array_equal(prep.irreps["train"], irreps)
    with pytest.raises(TrainingError, match="no teacher tensor"):
        _soft_targets(config, [SimpleNamespace(id="z", has_tensor=True)], np.zeros((1, 21)))
    with pytest.raises(ValueError, match="soft_weight"):
        cfg.tiny().override([f"train.pseudo_tensors={path}", "train.soft_weight=1"])
    with pytest.raises(ValueError, match=r"needs train\.pseudo_tensors"):
        cfg.tiny().override(["train.soft_weight=0.5"])
