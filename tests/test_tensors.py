"""Tests of e3elastic.tensors against independent references (e3nn-jax, pymatgen, algebra)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import random_rotation, random_voigt, real_voigt_tensors, require_data

from e3elastic import tensors as T
from e3elastic.examples import EXAMPLE_TENSORS, example_voigt


# --------------------------------------------------------------------------------------
def test_import_is_numpy_only():
    code = (
        "import sys, e3elastic.tensors\n"
        "bad = [m for m in ('jax', 'jaxlib', 'pymatgen', 'e3nn_jax', 'flax') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, f"importing e3elastic.tensors pulled in {res.stdout}{res.stderr}"


# --------------------------------------------------------------------------------------
# conventions and round trips
# --------------------------------------------------------------------------------------
def test_voigt_convention_no_factors():
    v = np.zeros((6, 6))
    v[3, 3] = 7.0  # C_2323
    v[0, 4] = v[4, 0] = 3.0  # C_1113
    c = T.voigt_to_cartesian(v)
    assert c[1, 2, 1, 2] == c[2, 1, 2, 1] == c[1, 2, 2, 1] == 7.0
    assert c[0, 0, 0, 2] == c[0, 0, 2, 0] == c[0, 2, 0, 0] == c[2, 0, 0, 0] == 3.0
    assert np.count_nonzero(c) == 4 + 4  # the 2323 and the 1113 orbits, 4 entries each


def test_round_trips_float64(rng):
    v = random_voigt(rng, (50,), pd=False)
    c = T.voigt_to_cartesian(v)
    np.testing.assert_array_equal(T.cartesian_to_voigt(c), v)
    x = T.cartesian_to_irreps(c)
    assert x.shape == (50, 21)
    assert np.max(np.abs(T.irreps_to_cartesian(x) - c)) < 1e-12 * np.max(np.abs(c))
    assert np.max(np.abs(T.irreps_to_voigt(T.voigt_to_irreps(v)) - v)) < 1e-12 * np.abs(v).max()
    m = T.voigt_to_mandel(v)
    assert np.max(np.abs(T.mandel_to_voigt(m) - v)) < 1e-12 * np.abs(v).max()
    # the irreps norm equals the Frobenius norm of C (orthonormal basis)
    np.testing.assert_allclose(
        np.linalg.norm(x, axis=-1), np.sqrt((c**2).sum(axis=(-4, -3, -2, -1))), rtol=1e-12
    )


def test_mandel_factors_and_norm(rng):
    v = random_voigt(rng)
    m = T.voigt_to_mandel(v)
    np.testing.assert_allclose(m[:3, :3], v[:3, :3])
    np.testing.assert_allclose(m[:3, 3:], np.sqrt(2.0) * v[:3, 3:])
    np.testing.assert_allclose(m[3:, 3:], 2.0 * v[3:, 3:])
    # Mandel is an orthonormal representation: its Frobenius norm equals that of C_ijkl
    c = T.voigt_to_cartesian(v)
    np.testing.assert_allclose(np.linalg.norm(m), np.sqrt((c**2).sum()), rtol=1e-12)


def test_compliance_factors(rng):
    v = random_voigt(rng)
    s_voigt = T.compliance_voigt(v)
    s = T.compliance_cartesian(v)
    c = T.voigt_to_cartesian(v)
    # S : C is the identity on symmetric second-rank tensors
    d = np.eye(3)
    ident = 0.5 * (np.einsum("ik,jl->ijkl", d, d) + np.einsum("il,jk->ijkl", d, d))
    np.testing.assert_allclose(np.einsum("ijkl,klmn->ijmn", s, c), ident, atol=1e-12)
    # Voigt compliance = Cartesian compliance with factors 1 / 2 / 4
    for a, (i, j) in enumerate(T.VOIGT_PAIRS):
        for b, (k, l) in enumerate(T.VOIGT_PAIRS):
            factor = (1 if a < 3 else 2) * (1 if b < 3 else 2)
            assert s_voigt[a, b] == pytest.approx(factor * s[i, j, k, l], rel=1e-10, abs=1e-15)


# --------------------------------------------------------------------------------------
# irreducible basis
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def e3nn_basis():
    e3nn = pytest.importorskip("e3nn_jax")
    q = e3nn.reduced_tensor_product_basis("ijkl=jikl=klij", i="1o")
    assert str(q.irreps) == T.IRREPS
    return np.asarray(q.array, dtype=np.float64)


def test_basis_equals_e3nn(e3nn_basis):
    q = T.elasticity_basis()
    assert q.shape == e3nn_basis.shape == (3, 3, 3, 3, 21)
    assert np.max(np.abs(q - e3nn_basis)) < 1e-14
    # orthonormal, with the three index symmetries
    g = np.einsum("ijklc,ijkld->cd", q, q)
    np.testing.assert_allclose(g, np.eye(21), atol=1e-14)
    np.testing.assert_allclose(q, q.transpose(1, 0, 2, 3, 4), atol=0)
    np.testing.assert_allclose(q, q.transpose(2, 3, 0, 1, 4), atol=0)
    assert not q.flags.writeable


@pytest.mark.parametrize("improper", [False, True])
def test_irreps_are_equivariant(rng, improper):
    e3nn = pytest.importorskip("e3nn_jax")
    import jax

    irreps = e3nn.Irreps(T.IRREPS)
    c = T.voigt_to_cartesian(random_voigt(rng, pd=False))
    with jax.enable_x64(True):
        for _ in range(3):
            R = random_rotation(rng, improper=improper)
            D = np.asarray(irreps.D_from_matrix(R))
            lhs = T.cartesian_to_irreps(T.rotate(c, R))
            rhs = D @ T.cartesian_to_irreps(c)
            assert np.max(np.abs(lhs - rhs)) < 1e-12 * np.abs(rhs).max()


def test_isotropic_scalars_follow_lame_constants(rng):
    # An isotropic tensor is C = lam d_ij d_kl + mu (d_ik d_jl + d_il d_jk).
    # With the two normalised 0e basis tensors
    #   q0 = d_ij d_kl / 3                       (|d d| = 3)
    #   q1 = (I_sym - d_ij d_kl / 3) / sqrt(5)   (I_sym = (d_ik d_jl + d_il d_jk) / 2,
    #                                             a rank-5 projector, so |.| = sqrt(5)),
    # C = lam d d + 2 mu I_sym = (3 lam + 2 mu) q0 + 2 sqrt(5) mu q1.
    # Hence x0 = 3 lam + 2 mu = 3K and x1 = 2 sqrt(5) mu = 2 sqrt(5) G; all else is 0.
    for lam, mu in [(50.0, 30.0), (-10.0, 80.0), (120.0, 1.0)]:
        v = T.isotropic_voigt(bulk=lam + 2.0 * mu / 3.0, shear=mu)
        x = T.voigt_to_irreps(v)
        assert x[0] == pytest.approx(3.0 * lam + 2.0 * mu, rel=1e-13)
        assert x[1] == pytest.approx(2.0 * np.sqrt(5.0) * mu, rel=1e-13)
        assert np.max(np.abs(x[2:])) < 1e-12


# --------------------------------------------------------------------------------------
# rotation and symmetrisation
# --------------------------------------------------------------------------------------
def test_rotate_voigt_and_cartesian_agree(rng):
    v = random_voigt(rng, (4,))
    R = random_rotation(rng, improper=True)
    via_voigt = T.rotate(v, R)
    via_cart = T.cartesian_to_voigt(T.rotate(T.voigt_to_cartesian(v), R))
    np.testing.assert_allclose(via_voigt, via_cart, rtol=1e-12)
    np.testing.assert_allclose(T.rotate(via_voigt, R.T), v, atol=1e-10)
    # explicit loop reference for one tensor
    c = T.voigt_to_cartesian(v[0])
    ref = np.zeros_like(c)
    for idx in np.ndindex(3, 3, 3, 3):
        i, j, k, l = idx
        ref[idx] = np.einsum("a,b,c,d,abcd->", R[i], R[j], R[k], R[l], c)
    np.testing.assert_allclose(T.rotate(c, R), ref, atol=1e-10)


def test_scalar_moduli_are_rotation_invariant(rng):
    v = random_voigt(rng)
    R = random_rotation(rng)
    a, b = T.derived_properties(v), T.derived_properties(T.rotate(v, R))
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-10, err_msg=key)


def _cubic_structure():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def _hexagonal_structure():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup(
        "P6_3/mmc", Lattice.hexagonal(3.21, 5.21), ["Mg"], [[1 / 3, 2 / 3, 0.25]]
    )


def _cartesian_rotations(structure) -> np.ndarray:
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    ops = SpacegroupAnalyzer(structure, symprec=0.01).get_symmetry_operations(cartesian=True)
    return np.array([op.rotation_matrix for op in ops])


def test_random_tensor_gains_cubic_and_hexagonal_equalities(rng):
    v = random_voigt(rng, pd=False)
    cub = T.symmetrize(v, _cartesian_rotations(_cubic_structure()))
    assert cub[0, 0] == pytest.approx(cub[1, 1]) == pytest.approx(cub[2, 2])
    assert cub[0, 1] == pytest.approx(cub[0, 2]) == pytest.approx(cub[1, 2])
    assert cub[3, 3] == pytest.approx(cub[4, 4]) == pytest.approx(cub[5, 5])
    mask = np.ones((6, 6), bool)
    mask[:3, :3] = False
    mask[[3, 4, 5], [3, 4, 5]] = False
    assert np.max(np.abs(cub[mask])) < 1e-10
    assert np.ptp(v[[0, 1, 2], [0, 1, 2]]) > 1.0  # the input really was not cubic

    hexa = T.symmetrize(v, _cartesian_rotations(_hexagonal_structure()))
    assert hexa[0, 0] == pytest.approx(hexa[1, 1])
    assert hexa[0, 2] == pytest.approx(hexa[1, 2])
    assert hexa[3, 3] == pytest.approx(hexa[4, 4])
    assert hexa[5, 5] == pytest.approx(0.5 * (hexa[0, 0] - hexa[0, 1]))
    assert abs(hexa[2, 2] - hexa[0, 0]) > 1e-3  # not forced to cubic
    # symmetrising twice changes nothing; the residual is then zero
    rots = _cartesian_rotations(_hexagonal_structure())
    np.testing.assert_allclose(T.symmetrize(hexa, rots), hexa, atol=1e-10)
    assert T.symmetry_residual(hexa, rots) < 1e-12
    assert T.symmetry_residual(v, rots) > 1e-2


def _has_textbook_form(system: str, v: np.ndarray, tol: float) -> bool:
    """Check the Voigt pattern of a cubic or hexagonal tensor directly (no rotations)."""
    eq = [(v[0, 0], v[1, 1]), (v[3, 3], v[4, 4]), (v[0, 2], v[1, 2])]
    if system == "cubic":
        eq += [(v[0, 0], v[2, 2]), (v[3, 3], v[5, 5]), (v[0, 1], v[0, 2])]
    else:
        eq += [(v[5, 5], 0.5 * (v[0, 0] - v[0, 1]))]
    zero = np.ones((6, 6), bool)
    zero[:3, :3] = False
    zero[[3, 4, 5], [3, 4, 5]] = False
    scale = np.abs(v).max()
    return all(abs(a - b) < tol * scale for a, b in eq) and np.abs(v[zero]).max() < tol * scale


def _first_real_entry(system: str):
    """First matminer-2015 entry of a crystal system whose tensor has the textbook form."""
    import gzip
    import json

    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    f = require_data("matminer_elastic_tensor_2015.json.gz")
    raw = json.load(gzip.open(f))
    cols = raw["columns"]
    for row in raw["data"]:
        v = np.array(row[cols.index("elastic_tensor")]["data"], dtype=float)
        # MP's 2015 tensors meet the hexagonal relations only to ~4e-4 of max|C| at best
        if not _has_textbook_form(system, v, 1e-3):
            continue
        s = Structure.from_dict(row[cols.index("structure")])
        if SpacegroupAnalyzer(s, symprec=0.01).get_crystal_system() == system:
            return row[cols.index("material_id")], s, v
    pytest.fail(f"no {system} entry with a textbook-form tensor")


@pytest.mark.parametrize("system", ["cubic", "hexagonal"])
def test_symmetrizing_real_tensor_leaves_it_unchanged(system):
    mid, s, v = _first_real_entry(system)
    rots = _cartesian_rotations(s)
    sym = T.symmetrize(v, rots)
    assert np.max(np.abs(sym - v)) < 1e-3 * np.abs(v).max(), mid
    assert len(rots) >= 24


# --------------------------------------------------------------------------------------
# derived properties
# --------------------------------------------------------------------------------------
def test_isotropic_moduli():
    v = T.isotropic_voigt(bulk=160.0, shear=80.0)
    p = T.derived_properties(v)
    for key in ("K_V_GPa", "K_R_GPa", "K_VRH_GPa"):
        assert p[key] == pytest.approx(160.0, rel=1e-12)
    for key in ("G_V_GPa", "G_R_GPa", "G_VRH_GPa"):
        assert p[key] == pytest.approx(80.0, rel=1e-12)
    E = 9 * 160 * 80 / (3 * 160 + 80)
    assert p["youngs_modulus_GPa"] == pytest.approx(E, rel=1e-12)
    assert p["poisson_ratio"] == pytest.approx(E / (2 * 80) - 1, rel=1e-12)
    assert abs(p["universal_anisotropy"]) < 1e-12
    assert f"{p['universal_anisotropy']:.4f}" == "0.0000"  # never -0.0000 from round-off
    batch = T.universal_anisotropy(np.stack([v, T.isotropic_voigt(bulk=37.0, shear=11.0)]))
    assert not np.any(np.signbit(batch))
    n = np.random.default_rng(0).normal(size=(7, 3))
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    np.testing.assert_allclose(T.directional_youngs_modulus(v, n), E, rtol=1e-12)
    np.testing.assert_allclose(T.linear_compressibility(v, n), 1 / (3 * 160.0), rtol=1e-12)
    # eigenvalues of an isotropic C: 3K (once) and 2G (five times)
    assert p["min_eigenvalue_GPa"] == pytest.approx(160.0, rel=1e-12)
    # one tensor in, plain numbers out (a 0-d array would print and serialise oddly)
    assert all(np.ndim(x) == 0 and not isinstance(x, np.ndarray) for x in p.values())


def test_silicon_directional_youngs_modulus():
    # cubic: E<100> = 1/S11 and E<111> from 1/E = S11 - 2(S11 - S12 - S44/2)/3
    v = example_voigt("silicon")
    s = np.linalg.inv(v)
    e100 = T.directional_youngs_modulus(v, [1.0, 0.0, 0.0])
    assert e100 == pytest.approx(1 / s[0, 0], rel=1e-12)
    assert 125 < e100 < 135  # the textbook 130 GPa
    e111 = T.directional_youngs_modulus(v, np.ones(3) / np.sqrt(3))
    assert e111 == pytest.approx(1 / (s[0, 0] - 2 * (s[0, 0] - s[0, 1] - s[3, 3] / 2) / 3))
    assert 185 < e111 < 190  # the textbook 188 GPa


def test_born_stability_matches_symmetric_eigenproblem(rng):
    # The Mandel eigenvalues are those of C acting on symmetric 3x3 matrices. Independent
    # check: eigenvalues of C as a 9x9 map, dropping the 3 zero (antisymmetric) modes.
    for pd in (True, False):
        v = random_voigt(rng, pd=pd)
        c9 = T.voigt_to_cartesian(v).reshape(9, 9)
        eig = np.sort(np.linalg.eigvalsh(c9))
        eig = np.delete(eig, np.argsort(np.abs(eig))[:3])
        b = T.born_stability(v)
        assert b["min_eigenvalue"] == pytest.approx(eig.min(), rel=1e-10)
        assert bool(b["stable"]) == pd


def test_vectorised_over_batch_axes(rng):
    v = random_voigt(rng, (2, 3))
    p = T.derived_properties(v)
    n = np.eye(3)
    e = T.directional_youngs_modulus(v, n)
    b = T.linear_compressibility(v, n)
    assert e.shape == b.shape == (2, 3, 3)
    for idx in np.ndindex(2, 3):
        single = T.derived_properties(v[idx])
        for key in p:
            np.testing.assert_allclose(p[key][idx], single[key], rtol=1e-14, err_msg=key)
        np.testing.assert_allclose(e[idx], T.directional_youngs_modulus(v[idx], n), rtol=1e-14)
        np.testing.assert_allclose(b[idx], T.linear_compressibility(v[idx], n), rtol=1e-14)
    assert T.symmetry_residual(v, np.eye(3)[None]).shape == (2, 3)
    R = np.stack([random_rotation(rng) for _ in range(3)])
    assert T.rotate(v, R).shape == (2, 3, 6, 6)


def _pymatgen_reference(v: np.ndarray, dirs: np.ndarray) -> dict[str, np.ndarray]:
    from pymatgen.analysis.elasticity import ElasticTensor

    et = ElasticTensor.from_voigt(v)
    comp = et.compliance_tensor  # Cartesian S_ijkl, built by pymatgen from inv(C_voigt)
    s = np.asarray(comp)
    return {
        "K_V_GPa": et.k_voigt,
        "K_R_GPa": et.k_reuss,
        "K_VRH_GPa": et.k_vrh,
        "G_V_GPa": et.g_voigt,
        "G_R_GPa": et.g_reuss,
        "G_VRH_GPa": et.g_vrh,
        "youngs_modulus_GPa": et.y_mod / 1e9,  # pymatgen reports Pa
        "poisson_ratio": et.homogeneous_poisson,
        "universal_anisotropy": et.universal_anisotropy,
        "E_dir": 1.0 / np.einsum("ijkl,ni,nj,nk,nl->n", s, dirs, dirs, dirs, dirs),
        "beta_dir": np.einsum("ijkk,ni,nj->n", s, dirs, dirs),
    }


def test_derived_moduli_match_pymatgen_on_every_fourth_real_tensor():
    _compare_with_pymatgen(step=4)


@pytest.mark.slow
def test_derived_moduli_match_pymatgen_on_all_real_tensors():
    _compare_with_pymatgen(step=1)


def _compare_with_pymatgen(step: int) -> None:
    tensors = real_voigt_tensors()
    ids = list(tensors)[::step]
    v = np.stack([tensors[k] for k in ids])
    dirs = np.random.default_rng(1).normal(size=(5, 3))
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    ours = T.derived_properties(v)
    ours["E_dir"] = T.directional_youngs_modulus(v, dirs)
    ours["beta_dir"] = T.linear_compressibility(v, dirs)
    worst: dict[str, tuple[float, str]] = {}
    singular = []
    for n, key in enumerate(ids):
        if np.linalg.matrix_rank(v[n]) < 6:
            singular.append(key)  # no compliance: pymatgen cannot give Reuss bounds either
            assert np.isnan(ours["K_R_GPa"][n]) and np.isnan(ours["E_dir"][n]).all(), key
            assert np.isfinite(ours["K_V_GPa"][n]), key
            continue
        ref = _pymatgen_reference(v[n], dirs)
        for prop, r in ref.items():
            r, o = np.asarray(r, dtype=float), ours[prop][n]
            if prop == "universal_anisotropy":
                # A^U = (5 G_V/G_R + K_V/K_R) - 6 is exactly 0 for isotropic tensors, where a
                # relative error is undefined; compare the sum of ratios (A^U + 6) instead.
                r, o = r + 6.0, o + 6.0
            rel = float(np.max(np.abs(o - r) / np.abs(r)))
            if rel > worst.get(prop, (-1.0, ""))[0]:
                worst[prop] = (rel, key)
    report = ", ".join(f"{p}: {w[0]:.1e} ({w[1]})" for p, w in worst.items())
    print(
        f"\n{len(ids) - len(singular)} real tensors compared ({len(singular)} singular: "
        f"{singular}); largest relative difference from pymatgen: {report}"
    )
    assert len(singular) < 0.01 * len(ids)
    for prop, (rel, key) in worst.items():
        assert rel < 1e-8, f"{prop} differs from pymatgen by {rel:.2e} relative for {key}"


def test_examples_are_valid():
    for name in EXAMPLE_TENSORS:
        v = example_voigt(name)
        assert T.born_stability(v)["stable"], name


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("func", "arg", "match"),
    [
        (T.voigt_to_cartesian, np.zeros((6, 5)), r"shape \(\.\.\., 6, 6\)"),
        (T.cartesian_to_voigt, np.zeros((3, 3, 3)), r"shape \(\.\.\., 3, 3, 3, 3\)"),
        (T.irreps_to_cartesian, np.zeros(20), r"shape \(\.\.\., 21\)"),
        (T.derived_properties, np.zeros((5, 5)), "Voigt.*Cartesian"),
        (T.voigt_to_cartesian, "not a tensor", "real numbers"),
    ],
)
def test_wrong_shapes_raise(func, arg, match):
    with pytest.raises(ValueError, match=match):
        func(arg)


def test_missing_index_symmetries_raise(rng):
    v = random_voigt(rng)
    v[0, 3] += 5.0
    with pytest.raises(ValueError, match="not symmetric"):
        T.voigt_to_cartesian(v)
    c = T.voigt_to_cartesian(random_voigt(rng))
    c1 = c.copy()
    c1[0, 1, 2, 2] += 1.0  # breaks ij and ij<->kl
    with pytest.raises(ValueError, match="index symmetry ij "):
        T.cartesian_to_irreps(c1)
    c2 = c.copy()
    c2[0, 0, 1, 2] += 1.0
    c2[0, 0, 2, 1] -= 1.0  # keeps ij, breaks kl
    with pytest.raises(ValueError, match="index symmetry kl"):
        T.cartesian_to_voigt(c2)
    c3 = c.copy()
    c3[0, 0, 1, 1] += 1.0  # keeps ij and kl, breaks ij<->kl
    with pytest.raises(ValueError, match=r"ij<->kl"):
        T.rotate(c3, np.eye(3))


def test_complex_values_raise_instead_of_losing_their_imaginary_part():
    import warnings

    v = T.isotropic_voigt(100.0, 50.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's ComplexWarning would be the only sign
        for arg in (v + 1j, v.astype(complex), (v + 0j).tolist()):
            with pytest.raises(ValueError, match="real numbers, got complex values"):
                T.derived_properties(arg)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_raise(rng, bad):
    v = random_voigt(rng, (3,))
    v[1, 2, 2] = bad
    for func in (T.voigt_to_cartesian, T.derived_properties, T.voigt_to_irreps):
        with pytest.raises(ValueError, match="NaN or infinite"):
            func(v)
    with pytest.raises(ValueError, match="NaN or infinite"):
        T.directional_youngs_modulus(random_voigt(rng), [bad, 0.0, 1.0])


def test_other_invalid_arguments_raise(rng):
    v = random_voigt(rng)
    with pytest.raises(ValueError, match="orthogonal"):
        T.rotate(v, np.diag([1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="unit vectors"):
        T.directional_youngs_modulus(v, [1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="singular"):
        T.compliance_voigt(np.zeros((6, 6)))
    with pytest.raises(ValueError, match=r"\(n, 3, 3\)"):
        T.symmetrize(v, np.eye(3))
