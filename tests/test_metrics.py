"""training.metrics.tensor_metrics and evaluation.baselines against values worked out here.

Every expectation is computed in this file from closed forms (numpy only): the Frobenius norm of
C_ijkl from its Voigt matrix (weights 1, 2 and 4 for normal-normal, normal-shear and shear-shear
blocks), Voigt and Reuss averages from C and S = inv(C), and predictions that are the true tensor
times a known factor (1 + e), so that each crystal's relative error is |e| and its moduli scale
by (1 + e).
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from e3elastic.training import metrics

# Voigt weight of each component in the Frobenius norm of the 3x3x3x3 tensor
WEIGHT = np.ones((6, 6))
WEIGHT[:3, 3:] = WEIGHT[3:, :3] = 2.0
WEIGHT[3:, 3:] = 4.0


def frobenius(v) -> float:
    return float(np.sqrt(np.sum(WEIGHT * np.asarray(v) ** 2)))


def hill(v) -> tuple[float, float]:
    """(K_VRH, G_VRH) from the Voigt and Reuss formulas."""
    c, s = np.asarray(v), np.linalg.inv(v)
    d, off, shear = np.trace(c[:3, :3]), c[0, 1] + c[0, 2] + c[1, 2], np.trace(c[3:, 3:])
    k_v, g_v = (d + 2 * off) / 9, (d - off + 3 * shear) / 15
    sd, soff, sshear = np.trace(s[:3, :3]), s[0, 1] + s[0, 2] + s[1, 2], np.trace(s[3:, 3:])
    k_r, g_r = 1 / (sd + 2 * soff), 15 / (4 * sd - 4 * soff + 3 * sshear)
    return (k_v + k_r) / 2, (g_v + g_r) / 2


def cubic(c11, c12, c44):
    v = np.full((3, 3), float(c12))
    np.fill_diagonal(v, c11)
    return np.block([[v, np.zeros((3, 3))], [np.zeros((3, 3)), c44 * np.eye(3)]])


def hexagonal(c11, c12, c13, c33, c44):
    v = cubic(c11, c12, c44)
    v[0, 2] = v[2, 0] = v[1, 2] = v[2, 1] = c13
    v[2, 2] = c33
    v[5, 5] = (c11 - c12) / 2
    return v


def tetragonal(c11, c12, c13, c33, c44, c66):
    v = hexagonal(c11, c12, c13, c33, c44)
    v[5, 5] = c66
    return v


TRUE = np.stack(
    [
        cubic(166.0, 64.0, 79.6),  # silicon
        hexagonal(59.7, 26.2, 21.7, 61.7, 16.4),  # magnesium
        cubic(297.0, 95.0, 156.0),  # MgO
        tetragonal(453.0, 211.0, 203.0, 776.0, 252.0, 302.0),  # stishovite
    ]
)
SYSTEMS = ["cubic", "hexagonal", "cubic", "tetragonal"]
THEORY = ["PBE", "PBE", "B3LYP-D2", "B3LYP-D2"]
# prediction = (1 + e) x truth: relative errors 3, 8, 20 and 250 %; the last is -1.5 x truth,
# negative definite
E = np.array([0.03, -0.08, 0.2, -2.5])
PRED = (1 + E)[:, None, None] * TRUE


def test_the_hand_formulas_agree_with_a_known_case():
    # guards the references above: isotropic C (lambda = 60, mu = 40) has K = lambda + 2 mu / 3
    # and G = mu, and ||C||^2 = 3 (lambda + 2 mu)^2 + 6 lambda^2 + 12 mu^2 (81 components)
    lam, mu = 60.0, 40.0
    iso = cubic(lam + 2 * mu, lam, mu)
    assert hill(iso) == pytest.approx((lam + 2 * mu / 3, mu), rel=1e-12)
    norm2 = 3 * (lam + 2 * mu) ** 2 + 6 * lam**2 + 12 * mu**2
    assert frobenius(iso) == pytest.approx(np.sqrt(norm2), rel=1e-12)


def test_tensor_metrics_by_hand():
    m = metrics.tensor_metrics(PRED, TRUE)
    rel = np.abs(E)  # ||(1+e) C - C|| / ||C|| = |e|
    assert m["n"] == 4
    assert m["rel_frobenius"] == pytest.approx(rel.mean(), rel=1e-12)
    assert m["median_rel_frobenius"] == pytest.approx((0.08 + 0.2) / 2, rel=1e-12)
    assert (m["ewt_5"], m["ewt_10"], m["ewt_25"]) == (0.25, 0.5, 0.75)
    assert m["positive_definite"] == 0.75
    mae = np.mean([np.abs(e * t).mean() for e, t in zip(E, TRUE, strict=True)])
    assert m["mae_voigt_GPa"] == pytest.approx(mae, rel=1e-12)

    kg = np.array([hill(t) for t in TRUE])  # (4, 2)
    # K and G scale with the tensor: |K_pred - K| = |e| K
    assert m["mae_K_VRH_GPa"] == pytest.approx(np.mean(rel * kg[:, 0]), rel=1e-10)
    assert m["mae_G_VRH_GPa"] == pytest.approx(np.mean(rel * kg[:, 1]), rel=1e-10)
    # in log10, |log10(1 + e)|; the negative prediction (-1.5 K) is floored at 1e-3 GPa
    for key, col in (("mae_log10_K_VRH", 0), ("mae_log10_G_VRH", 1)):
        logs = [abs(np.log10(1 + e)) for e in E[:3]]
        logs.append(abs(np.log10(1e-3) - np.log10(kg[3, col])))
        assert m[key] == pytest.approx(np.mean(logs), rel=1e-10), key


def test_tensor_metrics_break_down_by_crystal_system_and_group():
    m = metrics.tensor_metrics(PRED, TRUE, SYSTEMS, {"theory": THEORY})
    by_system = m["by_crystal_system"]
    assert sorted(by_system) == ["cubic", "hexagonal", "tetragonal"]
    assert by_system["cubic"]["n"] == 2
    assert by_system["cubic"]["rel_frobenius"] == pytest.approx((0.03 + 0.2) / 2, rel=1e-12)
    assert (by_system["cubic"]["ewt_5"], by_system["cubic"]["ewt_25"]) == (0.5, 1.0)
    assert by_system["hexagonal"]["n"] == 1
    assert by_system["hexagonal"]["rel_frobenius"] == pytest.approx(0.08, rel=1e-12)
    assert by_system["tetragonal"]["positive_definite"] == 0.0
    k_mg, _ = hill(TRUE[1])
    assert by_system["hexagonal"]["mae_K_VRH_GPa"] == pytest.approx(0.08 * k_mg, rel=1e-10)

    by_theory = m["by_theory"]
    assert sorted(by_theory) == ["B3LYP-D2", "PBE"]
    assert by_theory["PBE"]["rel_frobenius"] == pytest.approx((0.03 + 0.08) / 2, rel=1e-12)
    assert by_theory["B3LYP-D2"]["median_rel_frobenius"] == pytest.approx(1.35, rel=1e-12)
    # the overall numbers do not depend on the breakdowns asked for
    plain = metrics.tensor_metrics(PRED, TRUE)
    assert {k: v for k, v in m.items() if not k.startswith("by_")} == plain

    with pytest.raises(ValueError, match="3 crystal_system labels for 4 crystals"):
        metrics.tensor_metrics(PRED, TRUE, SYSTEMS[:3])


def test_relative_error_is_rotation_invariant_and_not_a_voigt_norm():
    # a shear-only error: the Frobenius norm of C_ijkl counts C44 four times (weight 4)
    t = cubic(166.0, 64.0, 79.6)
    p = t.copy()
    p[3, 3] += 10.0
    m = metrics.tensor_metrics(p[None], t[None])
    assert m["rel_frobenius"] == pytest.approx(np.sqrt(4 * 10.0**2) / frobenius(t), rel=1e-12)
    assert m["mae_voigt_GPa"] == pytest.approx(10.0 / 36, rel=1e-12)


def _record(voigt, system):
    return SimpleNamespace(voigt=np.asarray(voigt), crystal_system=system, has_tensor=True)


def test_baselines_predict_the_training_means():
    from e3elastic.training import evaluation

    a, b, h = cubic(166.0, 64.0, 79.6), cubic(297.0, 95.0, 156.0), TRUE[1]
    cubic_mean, overall = (a + b) / 2, (a + b + h) / 3
    trigonal = cubic(100.0, 30.0, 40.0)  # a crystal system the training part lacks
    prep = SimpleNamespace(
        records={
            "train": [_record(a, "cubic"), _record(b, "cubic"), _record(h, "hexagonal")],
            "val": [],
            "test": [_record(cubic_mean, "cubic"), _record(trigonal, "trigonal")],
        }
    )
    out = evaluation.baselines(prep)
    assert list(out) == ["test"]  # no validation crystals: no validation baseline
    mean, per_system = out["test"]["train_mean"], out["test"]["train_mean_per_crystal_system"]
    rel_overall = [
        frobenius(overall - cubic_mean) / frobenius(cubic_mean),
        frobenius(overall - trigonal) / frobenius(trigonal),
    ]
    assert mean["n"] == per_system["n"] == 2
    assert mean["rel_frobenius"] == pytest.approx(np.mean(rel_overall), rel=1e-12)
    # per crystal system: the cubic mean is exact; the trigonal crystal falls back to the overall
    # mean
    assert per_system["rel_frobenius"] == pytest.approx(rel_overall[1] / 2, rel=1e-12)
    assert per_system["ewt_5"] == 0.5
    mae = np.abs(overall - trigonal).mean() / 2
    assert per_system["mae_voigt_GPa"] == pytest.approx(mae, rel=1e-12)
