"""Elasticity tensor algebra in pure numpy.

Conventions (used everywhere in e3elastic):

* Stiffness ``C`` is in GPa. Cartesian form has shape ``(..., 3, 3, 3, 3)``.
* Voigt form has shape ``(..., 6, 6)`` with index order 11, 22, 33, 23, 13, 12 and **no**
  factors of 2 or sqrt(2) in the stiffness: ``C_voigt[3, 3] == C[1, 2, 1, 2]``.
* Mandel (Kelvin) form multiplies the normal-shear block by sqrt(2) and the shear-shear block
  by 2, so that it is an orthonormal-basis representation: its eigenvalues are those of C.
* Voigt compliance ``S_voigt = inv(C_voigt)`` carries factors of 2 (normal-shear) and 4
  (shear-shear) relative to the Cartesian ``S_ijkl``; its units are 1/GPa.
* The irreducible form is a 21-vector ``2x0e + 2x2e + 1x4e`` in the basis of e3nn-jax's
  ``reduced_tensor_product_basis("ijkl=jikl=klij", i="1o")``: slices ``[0:2]`` (0e),
  ``[2:12]`` (two 2e), ``[12:21]`` (4e), defined once here (:data:`IRREP_LAYOUT`,
  :data:`IRREP_SLICES`). The basis is orthonormal, so the Frobenius norm
  of C equals the Euclidean norm of its irreps.

Every function accepts leading batch axes. Invalid input (wrong shape, missing index
symmetry, NaN or inf) raises ``ValueError``. A singular stiffness has no compliance:
:func:`compliance_voigt` raises, while the derived properties report NaN for the
quantities that need it (Reuss bounds, Hill averages, directional moduli) so that one such
tensor in a batch does not spoil the others.

>>> import numpy as np
>>> C = voigt_to_cartesian(isotropic_voigt(bulk=100.0, shear=50.0))
>>> round(float(bulk_modulus(C)["hill"]), 6)
100.0

The Voigt, Mandel and compliance forms live in :mod:`e3elastic.voigt` and the derived moduli in
:mod:`e3elastic.moduli`; both are re-exported here. This module imports numpy only, so it can
be used without JAX or pymatgen installed.
"""

from __future__ import annotations

import functools
import math
from itertools import product

import numpy as np

from .moduli import (
    born_stability,
    bulk_modulus,
    derived_properties,
    directional_youngs_modulus,
    isotropic_voigt,
    linear_compressibility,
    poisson_ratio,
    shear_modulus,
    universal_anisotropy,
    youngs_modulus,
)
from .voigt import (
    MANDEL_IDENTITY_VOIGT,
    MANDEL_WEIGHTS,
    SYMMETRY_RTOL,
    VOIGT_PAIRS,
    _any_to_cartesian,
    _array,
    _check_cartesian,
    _check_trailing,
    cartesian_to_voigt,
    compliance_cartesian,
    compliance_voigt,
    exp_voigt,
    log_voigt,
    mandel_to_voigt,
    voigt_to_cartesian,
    voigt_to_mandel,
)

__all__ = [
    "IRREPS",
    "IRREP_COPIES",
    "IRREP_LAYOUT",
    "IRREP_SLICES",
    "MANDEL_IDENTITY_VOIGT",
    "MANDEL_WEIGHTS",
    "N_IRREPS",
    "SYMMETRY_RTOL",
    "VOIGT_PAIRS",
    "born_stability",
    "bulk_modulus",
    "cartesian_to_irreps",
    "cartesian_to_voigt",
    "compliance_cartesian",
    "compliance_voigt",
    "derived_properties",
    "directional_youngs_modulus",
    "elasticity_basis",
    "exp_voigt",
    "irreps_to_cartesian",
    "irreps_to_voigt",
    "isotropic_voigt",
    "linear_compressibility",
    "log_voigt",
    "mandel_to_voigt",
    "nearest_orthogonal",
    "poisson_ratio",
    "rotate",
    "shear_modulus",
    "symmetrize",
    "symmetry_residual",
    "universal_anisotropy",
    "voigt_to_cartesian",
    "voigt_to_irreps",
    "voigt_to_mandel",
    "youngs_modulus",
]

# --------------------------------------------------------------------------------------
# the irreps layout: the one definition (the network's output is checked against it)
# --------------------------------------------------------------------------------------
#: The 21-vector of a stiffness, irrep by irrep: ``(multiplicity, l)``, all of even parity,
#: in the order of :func:`elasticity_basis` (and of the network's output).
IRREP_LAYOUT: tuple[tuple[int, int], ...] = ((2, 0), (2, 2), (1, 4))
#: The same as a string e3nn-jax understands: ``"2x0e+2x2e+1x4e"``.
IRREPS = "+".join(f"{m}x{l}e" for m, l in IRREP_LAYOUT)
#: Length of the irreps vector (21).
N_IRREPS = sum(m * (2 * l + 1) for m, l in IRREP_LAYOUT)


def _layout_slices() -> tuple[dict[str, slice], tuple[tuple[int, slice], ...]]:
    kinds: dict[str, slice] = {}
    copies: list[tuple[int, slice]] = []
    start = 0
    for m, l in IRREP_LAYOUT:
        width = 2 * l + 1
        kinds[f"{l}e"] = slice(start, start + m * width)
        copies += [(l, slice(start + k * width, start + (k + 1) * width)) for k in range(m)]
        start += m * width
    return kinds, tuple(copies)


#: Slices of the 21-vector by irrep kind: ``{"0e": 0:2, "2e": 2:12, "4e": 12:21}``;
#: and ``(l, slice)`` of each copy: ``(0, 0:1), (0, 1:2), (2, 2:7), (2, 7:12), (4, 12:21)``.
IRREP_SLICES, IRREP_COPIES = _layout_slices()


def _check_rotations(R, name: str = "rotation") -> np.ndarray:
    r = _array(R, name)
    _check_trailing(r, (3, 3), name)
    err = np.abs(np.swapaxes(r, -1, -2) @ r - np.eye(3))
    if r.size and err.max() > 1e-6:
        raise ValueError(f"{name} must be orthogonal (R^T R = I); max deviation {err.max():.3g}")
    return r


# --------------------------------------------------------------------------------------
# irreducible basis: 2x0e + 2x2e + 1x4e
# --------------------------------------------------------------------------------------
def _harmonic_polynomial(l: int, m: int) -> dict[tuple[int, int, int], float]:
    """Real solid harmonic r^l Y_lm as {(px, py, pz): coefficient}, up to a positive factor.

    The real harmonics are the textbook ones (no Condon-Shortley phase) in the primed
    coordinates ``(x', y', z') = (z, x, y)``: e3nn-jax takes y as the polar axis, which
    makes its l=1 components exactly (x, y, z).

    r^l Y_l^{|m|} = Pi_l^{|m|}(z', r) * [Re or Im] (x' + i y')^{|m|}, with
    Pi_l^m = sum_k (-1)^k 2^-l C(l,k) C(2l-2k,l) (l-2k)!/(l-2k-m)! r^2k z'^(l-2k-m).
    """
    am = abs(m)
    # (x' + i y')^am = sum_p C(am,p) x'^p (i y')^(am-p); i^q real for q even, imaginary odd.
    planar: dict[tuple[int, int, int], float] = {}
    for p in range(am + 1):
        q = am - p
        phase = [1, 1j, -1, -1j][q % 4]
        part = phase.real if m >= 0 else phase.imag
        if part:
            # x' = z, y' = x  -> exponents (px, py, pz) = (q, 0, p)
            key = (q, 0, p)
            planar[key] = planar.get(key, 0.0) + math.comb(am, p) * part
    radial: dict[tuple[int, int, int], float] = {}
    for k in range((l - am) // 2 + 1):
        c = (
            (-1) ** k
            * 2.0**-l
            * math.comb(l, k)
            * math.comb(2 * l - 2 * k, l)
            * math.factorial(l - 2 * k)
            / math.factorial(l - 2 * k - am)
        )
        # r^{2k} = (x^2 + y^2 + z^2)^k, z' = y
        for a in range(k + 1):
            for b in range(k - a + 1):
                cc = k - a - b
                mult = math.factorial(k) // (
                    math.factorial(a) * math.factorial(b) * math.factorial(cc)
                )
                key = (2 * a, 2 * b + (l - 2 * k - am), 2 * cc)
                radial[key] = radial.get(key, 0.0) + c * mult
    poly: dict[tuple[int, int, int], float] = {}
    for k1, c1 in planar.items():
        for k2, c2 in radial.items():
            key = (k1[0] + k2[0], k1[1] + k2[1], k1[2] + k2[2])
            poly[key] = poly.get(key, 0.0) + c1 * c2
    return poly


def _harmonic_tensor(l: int, m: int) -> np.ndarray:
    """Unit-norm symmetric traceless rank-l tensor T with T . x^l = r^l Y_lm (up to scale)."""
    poly = _harmonic_polynomial(l, m)
    T = np.zeros((3,) * l)
    for idx in product(range(3), repeat=l):
        counts = (idx.count(0), idx.count(1), idx.count(2))
        mult = math.factorial(l) // math.prod(math.factorial(c) for c in counts)
        T[idx] = poly.get(counts, 0.0) / mult
    return T / np.linalg.norm(T)


@functools.lru_cache(maxsize=1)
def _basis() -> np.ndarray:
    d = np.eye(3)
    dd = np.einsum("ij,kl->ijkl", d, d)
    sym = 0.5 * (np.einsum("ik,jl->ijkl", d, d) + np.einsum("il,jk->ijkl", d, d))
    cols = [dd / 3.0, (sym - dd / 3.0) / math.sqrt(5.0)]
    first, second = [], []
    for m in range(-2, 3):
        E = _harmonic_tensor(2, m)
        a = np.einsum("ij,kl->ijkl", d, E) + np.einsum("ij,kl->ijkl", E, d)
        a /= np.linalg.norm(a)
        b = (
            np.einsum("ik,jl->ijkl", d, E)
            + np.einsum("il,jk->ijkl", d, E)
            + np.einsum("jk,il->ijkl", d, E)
            + np.einsum("jl,ik->ijkl", d, E)
        )
        b -= np.sum(a * b) * a
        b /= np.linalg.norm(b)
        first.append(a)
        second.append(b)
    cols += first + second
    cols += [_harmonic_tensor(4, m) for m in range(-4, 5)]
    Q = np.stack(cols, axis=-1)
    assert Q.shape[-1] == N_IRREPS  # the columns follow IRREP_LAYOUT
    Q.setflags(write=False)
    return Q


def elasticity_basis() -> np.ndarray:
    """Orthonormal basis of the 21-dimensional elasticity space, shape (3, 3, 3, 3, 21).

    Column ``c`` is a unit-Frobenius-norm tensor with the symmetries ij, kl and ij<->kl. The
    columns transform as ``2x0e + 2x2e + 1x4e`` under e3nn-jax's real Wigner matrices with
    Cartesian axes (x, y, z); they equal
    ``e3nn_jax.reduced_tensor_product_basis("ijkl=jikl=klij", i="1o")``. Built once in numpy
    and cached (read-only).
    """
    return _basis()


def cartesian_to_irreps(C) -> np.ndarray:
    """(..., 3, 3, 3, 3) -> (..., 21) coefficients in :func:`elasticity_basis`."""
    c = _check_cartesian(C)
    return np.einsum("...ijkl,ijklc->...c", c, _basis())


def irreps_to_cartesian(x) -> np.ndarray:
    """(..., 21) irreps -> (..., 3, 3, 3, 3) Cartesian tensor."""
    a = _array(x, "irreps vector")
    _check_trailing(a, (N_IRREPS,), "irreps vector")
    return np.einsum("...c,ijklc->...ijkl", a, _basis())


def voigt_to_irreps(C_voigt) -> np.ndarray:
    """(..., 6, 6) Voigt -> (..., 21) irreps."""
    return cartesian_to_irreps(voigt_to_cartesian(C_voigt))


def irreps_to_voigt(x) -> np.ndarray:
    """(..., 21) irreps -> (..., 6, 6) Voigt."""
    return cartesian_to_voigt(irreps_to_cartesian(x))


# --------------------------------------------------------------------------------------
# rotation and symmetry
# --------------------------------------------------------------------------------------
def rotate(C, R) -> np.ndarray:
    """Rotate ``C'_ijkl = R_ia R_jb R_kc R_ld C_abcd``.

    ``C`` may be Voigt (..., 6, 6) or Cartesian (..., 3, 3, 3, 3); the result has the same
    form. ``R`` is an orthogonal (..., 3, 3) matrix (proper or improper), broadcast against
    the batch axes of ``C``.
    """
    c, was_voigt = _any_to_cartesian(C)
    r = _check_rotations(R)
    out = np.einsum("...ia,...jb,...kc,...ld,...abcd->...ijkl", r, r, r, r, c)
    return cartesian_to_voigt(out) if was_voigt else out


def _rotate_all(c: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Cartesian c (..., 3,3,3,3), rotations r (n, 3, 3) -> (..., n, 3, 3, 3, 3)."""
    return np.einsum("nia,njb,nkc,nld,...abcd->...nijkl", r, r, r, r, c)


def nearest_orthogonal(R) -> np.ndarray:
    """The orthogonal matrix nearest to each ``(..., 3, 3)`` matrix (its polar factor).

    Symmetry operations found within a tolerance (a lattice symmetric only within spglib's
    ``symprec``) are slightly non-orthogonal in Cartesian form; this makes them exact.
    """
    u, _, vt = np.linalg.svd(np.asarray(R, dtype=np.float64))
    return u @ vt


def symmetrize(C, rotations) -> np.ndarray:
    """Average of ``rotate(C, R)`` over the Cartesian rotations (n, 3, 3) of a point group.

    The rotations should form a group; the result is then invariant under each of them.
    Returns the same form (Voigt or Cartesian) as the input.
    """
    c, was_voigt = _any_to_cartesian(C)
    r = _check_rotations(rotations, "rotations")
    if r.ndim != 3 or r.shape[0] == 0:
        raise ValueError(f"rotations must have shape (n, 3, 3) with n >= 1, got {r.shape}")
    out = _rotate_all(c, r).mean(axis=-5)
    return cartesian_to_voigt(out) if was_voigt else out


def symmetry_residual(C, rotations) -> np.ndarray:
    """``max_R ||R.C - C|| / ||C||`` (Frobenius, Cartesian) over rotations (n, 3, 3).

    Returns shape (...) for C of shape (..., 6, 6) or (..., 3, 3, 3, 3); 0 means C is
    invariant under every rotation given.
    """
    c, _ = _any_to_cartesian(C)
    r = _check_rotations(rotations, "rotations")
    if r.ndim != 3 or r.shape[0] == 0:
        raise ValueError(f"rotations must have shape (n, 3, 3) with n >= 1, got {r.shape}")
    diff = _rotate_all(c, r) - c[..., None, :, :, :, :]
    num = np.sqrt(np.sum(diff**2, axis=(-4, -3, -2, -1))).max(axis=-1)
    den = np.sqrt(np.sum(c**2, axis=(-4, -3, -2, -1)))
    if np.any(den == 0):
        raise ValueError("symmetry residual is undefined for a zero tensor")
    return num / den
