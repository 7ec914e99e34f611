"""An ensemble's log-space intervals of K, G and E: arithmetic, calibration and output.

Isotropic tensors have K and G by construction, so every expected number below comes from the
construction, not from the code under test.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from e3elastic import tensors
from e3elastic.inference.prediction import INTERVAL_LEVELS, moduli_intervals


def _iso(k, g):
    return np.stack([tensors.isotropic_voigt(a, b) for a, b in zip(k, g, strict=True)])


def _young(k, g):
    return 9 * k * g / (3 * k + g)


def test_gaussian_intervals_are_log_symmetric_and_positive():
    k = np.array([100.0, 130.0, 80.0, 115.0])  # members of a wide-spread ensemble
    g = np.array([40.0, 60.0, 25.0, 45.0])
    members = _iso(k, g)
    centre = {"K_VRH_GPa": 105.0, "G_VRH_GPa": 42.0, "youngs_modulus_GPa": 110.0}
    out = moduli_intervals(members, centre)
    s_k = np.std(np.log(k), ddof=1)
    lo, hi = out["K_VRH_interval95_GPa"]
    assert lo == pytest.approx(105.0 * np.exp(-1.959964 * s_k), rel=1e-6)
    assert hi == pytest.approx(105.0 * np.exp(1.959964 * s_k), rel=1e-6)
    for q in ("K_VRH", "G_VRH", "youngs_modulus"):
        c = centre[f"{q}_GPa"]
        lo68, hi68 = out[f"{q}_interval68_GPa"]
        lo95, hi95 = out[f"{q}_interval95_GPa"]
        assert 0 < lo95 < lo68 < c < hi68 < hi95
        assert hi95 / c == pytest.approx(c / lo95, rel=1e-9)  # symmetric in log space
    # a +-sigma band in GPa would reach below zero here; the log interval cannot
    s_g_gpa = np.std(g, ddof=1)
    assert 42.0 - 2 * 4 * s_g_gpa < 0 < out["G_VRH_interval95_GPa"][0]


def test_fitted_floor_and_half_width_are_used():
    k = np.array([100.0, 101.0, 99.0])  # members agree closely
    members = _iso(k, np.array([50.0, 50.0, 50.0]))
    centre = {"K_VRH_GPa": 100.0, "G_VRH_GPa": 50.0, "youngs_modulus_GPa": 128.57}
    scale = {"K_VRH": {"floor": 0.1, "68": 1.0, "95": 2.0}}
    out = moduli_intervals(members, centre, scale)
    w = np.hypot(np.std(np.log(k), ddof=1), 0.1)
    assert out["K_VRH_interval95_GPa"][1] == pytest.approx(100.0 * np.exp(2.0 * w), rel=1e-9)
    assert out["K_VRH_interval68_GPa"][0] == pytest.approx(100.0 * np.exp(-w), rel=1e-9)
    # G's members agree exactly and G has no fitted scale: a zero-width interval
    assert out["G_VRH_interval95_GPa"] == pytest.approx([50.0, 50.0])


def test_soft_crystals_get_wider_intervals():
    """``softness`` adds ``a ln(G_ref / G)`` in quadrature below G_ref and nothing above."""
    from e3elastic.inference.prediction import interval_width

    s = np.array([0.05, 0.05, 0.05, 0.05])
    g = np.array([5.0, 20.0, 40.0, 200.0])
    fitted = {"floor": 0.1, "softness": 0.3, "soft_reference_GPa": 40.0}
    w = interval_width(s, fitted, g)
    base = np.hypot(0.05, 0.1)
    np.testing.assert_allclose(w[2:], base, rtol=1e-12)
    np.testing.assert_allclose(w[:2], np.sqrt(base**2 + (0.3 * np.log(40.0 / g[:2])) ** 2))
    assert w[0] > w[1] > w[2]
    # no shear modulus given, or no softness fitted: the plain width
    np.testing.assert_allclose(interval_width(s, fitted), base, rtol=1e-12)
    np.testing.assert_allclose(interval_width(s, {"floor": 0.1}, g), base, rtol=1e-12)
    # in the intervals a user gets, the soft crystal's is the wider one (relative to its centre)
    members = _iso(np.array([60.0, 62.0, 58.0]), np.array([5.0, 5.1, 4.9]))
    scale = {"G_VRH": {**fitted, "68": 1.0, "95": 2.0}}
    soft = moduli_intervals(
        members, {"K_VRH_GPa": 60, "G_VRH_GPa": 5, "youngs_modulus_GPa": 15}, scale
    )
    stiff = moduli_intervals(
        members * 20, {"K_VRH_GPa": 1200, "G_VRH_GPa": 100, "youngs_modulus_GPa": 300}, scale
    )
    lo, hi = soft["G_VRH_interval95_GPa"]
    lo_s, hi_s = stiff["G_VRH_interval95_GPa"]
    assert hi / lo > hi_s / lo_s
    assert hi == pytest.approx(
        5 * np.exp(2.0 * interval_width(np.std(np.log([5.0, 5.1, 4.9]), ddof=1), fitted, 5.0)),
        rel=1e-9,
    )


def test_softness_is_fitted_where_soft_crystals_err_more(rng):
    """Members that share a larger error on soft crystals: the fit finds a softness, and its
    intervals keep their 95 % on new soft crystals, where a floor alone falls short."""
    from e3elastic.training.evaluation import fit_interval_scale, interval_coverage

    val, test = _synthetic(rng, 1500, soft_extra=0.4), _synthetic(rng, 1500, soft_extra=0.4)
    with_soft, floor_only = fit_interval_scale(val), fit_interval_scale(val, soft=False)
    assert floor_only["G_VRH"]["softness"] == 0.0
    assert with_soft["G_VRH"]["softness"] > 0.15
    a, b = interval_coverage(test, with_soft), interval_coverage(test, floor_only)
    for q in ("K_VRH", "G_VRH"):
        assert a[q]["n_soft"] > 100
        assert a[q]["within_95"] == pytest.approx(0.95, abs=0.03)
        assert a[q]["within_95_soft"] > 0.9
        assert b[q]["within_95_soft"] < a[q]["within_95_soft"] - 0.03
        # and the intervals are narrower overall: the stiff crystals no longer pay for the soft
        assert a[q]["median_width_95"] < b[q]["median_width_95"]


def _synthetic(rng, n, n_members=5, shared=0.15, own=0.03, soft_extra=0.0):
    """An ensemble whose members share a log error of size ``shared`` (plus
    ``soft_extra * ln(40 / G)`` below G = 40 GPa) and scatter by ``own``: Evaluated-like
    (records with a true tensor, member tensors)."""
    from e3elastic.training.evaluation import Evaluated

    k_true = rng.uniform(20, 300, n)
    g_true = k_true * rng.uniform(0.2, 0.8, n)
    size = np.hypot(shared, soft_extra * np.maximum(np.log(40.0 / g_true), 0.0))
    common_k, common_g = rng.normal(0, size, n), rng.normal(0, size, n)
    members = []
    for _ in range(n_members):
        k = k_true * np.exp(common_k + rng.normal(0, own, n))
        g = g_true * np.exp(common_g + rng.normal(0, own, n))
        members.append(_iso(k, g))
    records = [SimpleNamespace(voigt=v) for v in _iso(k_true, g_true)]
    return Evaluated(records=records, member_voigt=np.stack(members), skipped=[])


def test_calibration_covers_new_data_and_finds_the_shared_error(rng):
    from e3elastic.training.evaluation import fit_interval_scale, interval_coverage

    val, test = _synthetic(rng, 600), _synthetic(rng, 600)
    scale = fit_interval_scale(val)
    for q in ("K_VRH", "G_VRH", "youngs_modulus"):
        assert set(scale[q]) == {"floor", "softness", "soft_reference_GPa", *INTERVAL_LEVELS}
    # the shared error (0.15 in ln K) is what the members cannot see: the floor takes it
    assert 0.08 < scale["K_VRH"]["floor"] < 0.3
    # ... and it is the same for soft and stiff crystals, so there is little to widen for
    assert scale["K_VRH"]["softness"] <= 0.1
    fitted_val, fitted_test = interval_coverage(val, scale), interval_coverage(test, scale)
    raw = interval_coverage(test)
    for q in ("K_VRH", "G_VRH"):
        assert fitted_val[q]["within_95"] == pytest.approx(0.95, abs=0.01)
        assert fitted_test[q]["within_95"] == pytest.approx(0.95, abs=0.03)
        assert fitted_test[q]["within_68"] == pytest.approx(0.68, abs=0.05)
        assert raw[q]["within_95"] < 0.5  # the members' spread alone is over-confident


def test_floor_gives_narrower_intervals_than_scaling_the_spread(rng):
    """Same coverage on the fit set, but a floor beats one big factor on the spread when
    the members share most of their error."""
    from e3elastic.training.evaluation import fit_interval_scale, interval_coverage

    val = _synthetic(rng, 600, own=0.05)
    scale = fit_interval_scale(val)
    no_floor = {q: {**s, "floor": 0.0, "95": _k95_without_floor(val, q)} for q, s in scale.items()}
    with_floor, without = interval_coverage(val, scale), interval_coverage(val, no_floor)
    assert without["K_VRH"]["within_95"] == pytest.approx(0.95, abs=0.01)
    assert with_floor["K_VRH"]["median_width_95"] < without["K_VRH"]["median_width_95"]


def _k95_without_floor(ev, q):
    """The 95 % quantile of |ln error| / members' spread, from the construction."""
    true_k = tensors.bulk_modulus(ev.true)["hill"]
    mem_k = tensors.bulk_modulus(ev.member_voigt)["hill"]
    true_g = tensors.shear_modulus(ev.true)["hill"]
    mem_g = tensors.shear_modulus(ev.member_voigt)["hill"]
    mean = ev.mean
    if q == "K_VRH":
        t, m, c = true_k, mem_k, tensors.bulk_modulus(mean)["hill"]
    elif q == "G_VRH":
        t, m, c = true_g, mem_g, tensors.shear_modulus(mean)["hill"]
    else:
        t, m = _young(true_k, true_g), _young(mem_k, mem_g)
        c = _young(tensors.bulk_modulus(mean)["hill"], tensors.shear_modulus(mean)["hill"])
    return float(np.quantile(np.abs(np.log(t / c)) / np.log(m).std(axis=0, ddof=1), 0.95))


def test_table_and_csv_show_the_intervals():
    from e3elastic.cli.predict import format_predictions
    from e3elastic.inference.prediction import Prediction

    members = _iso(np.array([90.0, 100.0, 110.0]), np.array([45.0, 50.0, 55.0]))
    p = Prediction.from_voigt(members.mean(axis=0), file="x.cif", formula="X")
    p.update(moduli_intervals(members, p))
    lo, hi = p["G_VRH_interval95_GPa"]
    table = format_predictions([p], "table")
    lo68, hi68 = p["G_VRH_interval68_GPa"]
    assert f"(68 %: {lo68:.1f}-{hi68:.1f}, 95 %: {lo:.1f}-{hi:.1f})" in table
    assert "-0.00" not in table  # the zero couplings of an isotropic C print as 0.00
    header, row = format_predictions([p], "csv").splitlines()[:2]
    cells = dict(zip(header.split(","), row.split(","), strict=False))
    assert float(cells["G_VRH_low95_GPa"]) == pytest.approx(lo)
    assert float(cells["G_VRH_high95_GPa"]) == pytest.approx(hi)
    assert float(cells["K_VRH_high68_GPa"]) == pytest.approx(p["K_VRH_interval68_GPa"][1])


def test_the_shipped_ensemble_has_fitted_intervals():
    """The shipped ensemble's calibration holds a floor and two nested half-widths for each
    modulus, and load_model passes them on."""
    pytest.importorskip("jax")
    from e3elastic import load_model

    model = load_model("ensemble")
    assert model.n_members > 1
    for q in ("K_VRH", "G_VRH", "youngs_modulus"):
        fitted = model.interval_scale[q]
        assert fitted["floor"] >= 0
        assert 0 < fitted["68"] < fitted["95"]
    assert model.provenance()["intervals_calibrated"] is True


def test_coverage_counts_crystals_with_k_and_g_only(rng):
    """A record with K and G alone is scored on them: the same coverage as the same crystal
    given as its isotropic tensor."""
    from e3elastic.training.evaluation import (
        Evaluated,
        fit_interval_scale,
        interval_coverage,
        reference_moduli,
    )

    ev = _synthetic(rng, 300)
    scale = fit_interval_scale(ev)
    k = tensors.bulk_modulus(ev.true)["hill"]
    g = tensors.shear_modulus(ev.true)["hill"]
    moduli_only = [SimpleNamespace(voigt=None, moduli=(a, b)) for a, b in zip(k, g, strict=True)]
    ref = reference_moduli(moduli_only)
    np.testing.assert_allclose(ref["youngs_modulus"], _young(k, g), rtol=1e-12)
    np.testing.assert_allclose(ref["youngs_modulus"], tensors.youngs_modulus(ev.true), rtol=1e-9)
    kg_ev = Evaluated(records=moduli_only, member_voigt=ev.member_voigt, skipped=[])
    _same_coverage(interval_coverage(kg_ev, scale), interval_coverage(ev, scale))
    # mixed: half with tensors, half with K/G only
    mixed = [ev.records[i] if i % 2 else moduli_only[i] for i in range(len(moduli_only))]
    mixed_ev = Evaluated(records=mixed, member_voigt=ev.member_voigt, skipped=[])
    _same_coverage(interval_coverage(mixed_ev, scale), interval_coverage(ev, scale))


def _same_coverage(a, b):
    assert a.keys() == b.keys()
    for q in a:
        assert a[q] == pytest.approx(b[q], rel=1e-9), q
