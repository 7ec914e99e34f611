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
  ``[2:12]`` (two 2e), ``[12:21]`` (4e). The basis is orthonormal, so the Frobenius norm
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

This module imports numpy only, so it can be used without JAX or pymatgen installed.
"""

from __future__ import annotations

import functools
import math
from itertools import product

import numpy as np

__all__ = [
    "VOIGT_PAIRS",
    "voigt_to_cartesian",
    "cartesian_to_voigt",
    "voigt_to_mandel",
    "mandel_to_voigt",
    "log_voigt",
    "exp_voigt",
    "MANDEL_IDENTITY_VOIGT",
    "compliance_voigt",
    "compliance_cartesian",
    "elasticity_basis",
    "cartesian_to_irreps",
    "irreps_to_cartesian",
    "voigt_to_irreps",
    "irreps_to_voigt",
    "IRREPS",
    "IRREP_SLICES",
    "rotate",
    "symmetrize",
    "symmetry_residual",
    "nearest_orthogonal",
    "isotropic_voigt",
    "bulk_modulus",
    "shear_modulus",
    "youngs_modulus",
    "poisson_ratio",
    "universal_anisotropy",
    "born_stability",
    "directional_youngs_modulus",
    "linear_compressibility",
    "derived_properties",
]

#: Voigt index -> Cartesian pair, in the order 11, 22, 33, 23, 13, 12.
VOIGT_PAIRS: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))

#: Irreps of the 21-vector, as a string e3nn-jax understands.
IRREPS = "2x0e+2x2e+1x4e"
#: Slices of the 21-vector by irrep kind.
IRREP_SLICES = {"0e": slice(0, 2), "2e": slice(2, 12), "4e": slice(12, 21)}

# Cartesian pair (i, j) -> Voigt index.
_PAIR_TO_VOIGT = np.array([[0, 5, 4], [5, 1, 3], [4, 3, 2]])
_MANDEL_W = np.array([1.0, 1.0, 1.0, math.sqrt(2.0), math.sqrt(2.0), math.sqrt(2.0)])
_COMPLIANCE_W = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 2.0])

# Relative tolerance for index-symmetry checks. Tensors read from files are often rounded,
# but a genuinely asymmetric tensor differs by far more than this.
SYMMETRY_RTOL = 1e-6


# --------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------
def _array(x, name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of real numbers: {err}") from None
    if a.size and not np.all(np.isfinite(a)):
        bad = int(np.count_nonzero(~np.isfinite(a)))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s)")
    return a


def _check_trailing(a: np.ndarray, shape: tuple[int, ...], name: str) -> None:
    if a.ndim < len(shape) or a.shape[a.ndim - len(shape) :] != shape:
        want = "(..., " + ", ".join(map(str, shape)) + ")"
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")


def _scale(a: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Largest magnitude per tensor, at least 1, for relative tolerances."""
    return np.maximum(np.max(np.abs(a), axis=axes, keepdims=True), 1.0)


def _check_voigt(C, name: str = "Voigt tensor") -> np.ndarray:
    a = _array(C, name)
    _check_trailing(a, (6, 6), name)
    asym = np.abs(a - np.swapaxes(a, -1, -2))
    if np.any(asym > SYMMETRY_RTOL * _scale(a, (-2, -1))):
        raise ValueError(
            f"{name} is not symmetric (max |C_IJ - C_JI| = {asym.max():.3g}); an elastic "
            "stiffness has the major symmetry ij<->kl. Symmetrise it first, e.g. (C + C.T) / 2"
        )
    return a


def _check_cartesian(C, name: str = "Cartesian tensor") -> np.ndarray:
    a = _array(C, name)
    _check_trailing(a, (3, 3, 3, 3), name)
    n = a.ndim
    tol = SYMMETRY_RTOL * _scale(a, (-4, -3, -2, -1))
    perms = {
        "ij (C_ijkl = C_jikl)": (n - 3, n - 4, n - 2, n - 1),
        "kl (C_ijkl = C_ijlk)": (n - 4, n - 3, n - 1, n - 2),
        "ij<->kl (C_ijkl = C_klij)": (n - 2, n - 1, n - 4, n - 3),
    }
    lead = tuple(range(n - 4))
    for what, p in perms.items():
        diff = np.abs(a - np.transpose(a, lead + p))
        if np.any(diff > tol):
            raise ValueError(
                f"{name} lacks the index symmetry {what}: max deviation {diff.max():.3g}"
            )
    return a


def _any_to_voigt(C, name: str = "elastic tensor") -> np.ndarray:
    """Accept a Voigt (..., 6, 6) or Cartesian (..., 3, 3, 3, 3) tensor, return Voigt."""
    a = _array(C, name)
    if a.ndim >= 4 and a.shape[-4:] == (3, 3, 3, 3):
        return cartesian_to_voigt(a)
    if a.ndim >= 2 and a.shape[-2:] == (6, 6):
        return _check_voigt(a, name)
    raise ValueError(
        f"{name} must have shape (..., 6, 6) (Voigt) or (..., 3, 3, 3, 3) (Cartesian), "
        f"got {a.shape}"
    )


def _any_to_cartesian(C, name: str = "elastic tensor") -> tuple[np.ndarray, bool]:
    """Return (Cartesian tensor, input_was_voigt)."""
    a = _array(C, name)
    if a.ndim >= 4 and a.shape[-4:] == (3, 3, 3, 3):
        return _check_cartesian(a, name), False
    if a.ndim >= 2 and a.shape[-2:] == (6, 6):
        return voigt_to_cartesian(a), True
    raise ValueError(
        f"{name} must have shape (..., 6, 6) (Voigt) or (..., 3, 3, 3, 3) (Cartesian), "
        f"got {a.shape}"
    )


def _check_rotations(R, name: str = "rotation") -> np.ndarray:
    r = _array(R, name)
    _check_trailing(r, (3, 3), name)
    err = np.abs(np.swapaxes(r, -1, -2) @ r - np.eye(3))
    if r.size and err.max() > 1e-6:
        raise ValueError(f"{name} must be orthogonal (R^T R = I); max deviation {err.max():.3g}")
    return r


# --------------------------------------------------------------------------------------
# Voigt, Cartesian, Mandel, compliance
# --------------------------------------------------------------------------------------
def voigt_to_cartesian(C_voigt) -> np.ndarray:
    """(..., 6, 6) Voigt stiffness -> (..., 3, 3, 3, 3) Cartesian stiffness (same units)."""
    v = _check_voigt(C_voigt)
    idx = _PAIR_TO_VOIGT
    return v[..., idx[:, :, None, None], idx[None, None, :, :]]


def cartesian_to_voigt(C) -> np.ndarray:
    """(..., 3, 3, 3, 3) Cartesian stiffness -> (..., 6, 6) Voigt stiffness (same units)."""
    c = _check_cartesian(C)
    i = np.array([p[0] for p in VOIGT_PAIRS])
    j = np.array([p[1] for p in VOIGT_PAIRS])
    return c[..., i[:, None], j[:, None], i[None, :], j[None, :]]


def voigt_to_mandel(C_voigt) -> np.ndarray:
    """Voigt stiffness -> Mandel matrix: normal-shear x sqrt(2), shear-shear x 2."""
    v = _check_voigt(C_voigt)
    return v * _MANDEL_W[:, None] * _MANDEL_W[None, :]


def mandel_to_voigt(C_mandel) -> np.ndarray:
    """Mandel matrix -> Voigt stiffness (inverse of :func:`voigt_to_mandel`)."""
    m = _check_voigt(C_mandel, "Mandel matrix")
    return m / (_MANDEL_W[:, None] * _MANDEL_W[None, :])


def log_voigt(C_voigt, reference: float = 1.0) -> np.ndarray:
    """Matrix logarithm of a positive-definite stiffness, in Voigt layout (dimensionless).

    ``L = logm(Mandel(C) / reference)`` via ``eigh``, returned as the Voigt matrix whose Mandel
    form is ``L``. Because the Mandel form of a rotation is an orthogonal 6x6 matrix ``Q`` and
    ``logm(Q M Q^T) = Q logm(M) Q^T``, ``L`` rotates exactly like a stiffness tensor: it has the
    same 21 irreps (2x0e+2x2e+1x4e). Raises ``ValueError`` if C is not positive-definite.

    >>> C = isotropic_voigt(100.0, 50.0)
    >>> bool(np.allclose(exp_voigt(log_voigt(C, 100.0), 100.0), C))
    True
    """
    m = voigt_to_mandel(C_voigt) / float(reference)
    w, v = np.linalg.eigh(m)
    if not np.all(w > 0):
        bad = np.argwhere(~np.all(w > 0, axis=-1))
        where = f" at batch index {tuple(int(i) for i in bad[0])}" if m.ndim > 2 else ""
        raise ValueError(f"elastic tensor is not positive-definite{where}; it has no logarithm")
    log_m = np.einsum("...ik,...k,...jk->...ij", v, np.log(w), v)
    return mandel_to_voigt(0.5 * (log_m + np.swapaxes(log_m, -1, -2)))


def exp_voigt(L_voigt, reference: float = 1.0) -> np.ndarray:
    """Inverse of :func:`log_voigt`: ``C = reference * expm(Mandel(L))`` (Voigt, GPa).

    The result is positive-definite for any symmetric ``L``; a non-finite ``L`` or one so large
    that ``expm`` overflows raises ``ValueError``.
    """
    m = voigt_to_mandel(L_voigt)
    w, v = np.linalg.eigh(0.5 * (m + np.swapaxes(m, -1, -2)))
    if np.any(w > 700.0):
        raise ValueError("log-stiffness too large: its exponential overflows float64")
    exp_m = np.einsum("...ik,...k,...jk->...ij", v, np.exp(w), v)
    return mandel_to_voigt(float(reference) * 0.5 * (exp_m + np.swapaxes(exp_m, -1, -2)))


#: Voigt form of the 6x6 identity in Mandel space (the symmetric identity tensor I_s):
#: adding ``t * MANDEL_IDENTITY_VOIGT`` to :func:`log_voigt` multiplies C by ``exp(t)``.
MANDEL_IDENTITY_VOIGT = np.diag([1.0, 1.0, 1.0, 0.5, 0.5, 0.5])
MANDEL_IDENTITY_VOIGT.setflags(write=False)


_MAX_CONDITION = 1e14


def _singular(m: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        cond = np.linalg.cond(m)
    return ~np.isfinite(cond) | (cond > _MAX_CONDITION)


def _inverse(m: np.ndarray, what: str) -> np.ndarray:
    bad = _singular(m)
    if np.any(bad):
        where = ""
        if m.ndim > 2:
            where = f" at batch index {tuple(int(i) for i in np.argwhere(bad)[0])}"
        raise ValueError(f"{what} is singular{where}; its compliance does not exist")
    return np.linalg.inv(m)


def _inverse_or_nan(m: np.ndarray) -> np.ndarray:
    """Inverse of each matrix; all-NaN for singular ones, so one bad tensor spoils no other."""
    bad = _singular(m)
    safe = np.where(bad[..., None, None], np.eye(m.shape[-1]), m)
    return np.where(bad[..., None, None], np.nan, np.linalg.inv(safe))


def compliance_voigt(C) -> np.ndarray:
    """Compliance in Voigt form (1/GPa), i.e. ``inv(C_voigt)``.

    It maps stress to engineering strain, so relative to the Cartesian ``S_ijkl`` its
    normal-shear entries carry a factor 2 and its shear-shear entries a factor 4.
    """
    v = _any_to_voigt(C)
    return _inverse(v, "elastic tensor")


def compliance_cartesian(C) -> np.ndarray:
    """Compliance ``S_ijkl`` (1/GPa) with ``S_ijkl C_klmn = (d_im d_jn + d_in d_jm) / 2``."""
    v = _any_to_voigt(C)
    return _compliance_cartesian(_inverse(voigt_to_mandel(v), "elastic tensor"))


def _compliance_cartesian(s_mandel: np.ndarray) -> np.ndarray:
    s_plain = s_mandel / (_MANDEL_W[:, None] * _MANDEL_W[None, :])
    return s_plain[..., _PAIR_TO_VOIGT[:, :, None, None], _PAIR_TO_VOIGT[None, None, :, :]]


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
    _check_trailing(a, (21,), "irreps vector")
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


# --------------------------------------------------------------------------------------
# derived properties (GPa where they have units)
# --------------------------------------------------------------------------------------
def isotropic_voigt(bulk: float, shear: float) -> np.ndarray:
    """Voigt stiffness (GPa) of an isotropic solid with bulk modulus K and shear modulus G."""
    lam = bulk - 2.0 * shear / 3.0
    v = np.zeros((6, 6))
    v[:3, :3] = lam
    v[[0, 1, 2], [0, 1, 2]] = lam + 2.0 * shear
    v[[3, 4, 5], [3, 4, 5]] = shear
    return v


def _voigt_and_compliance(C) -> tuple[np.ndarray, np.ndarray]:
    """Voigt C and Voigt S; S is NaN for singular C (Reuss bounds are then undefined)."""
    v = _any_to_voigt(C)
    return v, _inverse_or_nan(v)


def _kg(v: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
    d = np.diagonal(v, axis1=-2, axis2=-1)
    ds = np.diagonal(s, axis1=-2, axis2=-1)
    normal = d[..., :3].sum(-1)
    off = v[..., 0, 1] + v[..., 0, 2] + v[..., 1, 2]
    shear = d[..., 3:].sum(-1)
    s_normal = ds[..., :3].sum(-1)
    s_off = s[..., 0, 1] + s[..., 0, 2] + s[..., 1, 2]
    s_shear = ds[..., 3:].sum(-1)
    kv = (normal + 2.0 * off) / 9.0
    gv = (normal - off + 3.0 * shear) / 15.0
    kr = 1.0 / (s_normal + 2.0 * s_off)
    gr = 15.0 / (4.0 * s_normal - 4.0 * s_off + 3.0 * s_shear)
    return {"kv": kv, "gv": gv, "kr": kr, "gr": gr}


def bulk_modulus(C) -> dict[str, np.ndarray]:
    """Bulk modulus (GPa): ``{"voigt", "reuss", "hill"}``, each of shape (...)."""
    m = _kg(*_voigt_and_compliance(C))
    return {"voigt": m["kv"], "reuss": m["kr"], "hill": 0.5 * (m["kv"] + m["kr"])}


def shear_modulus(C) -> dict[str, np.ndarray]:
    """Shear modulus (GPa): ``{"voigt", "reuss", "hill"}``, each of shape (...)."""
    m = _kg(*_voigt_and_compliance(C))
    return {"voigt": m["gv"], "reuss": m["gr"], "hill": 0.5 * (m["gv"] + m["gr"])}


def _young_poisson(k: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return 9.0 * k * g / (3.0 * k + g), (3.0 * k - 2.0 * g) / (6.0 * k + 2.0 * g)


def youngs_modulus(C) -> np.ndarray:
    """Isotropic Young's modulus E = 9KG / (3K + G) from the Hill averages (GPa)."""
    m = _kg(*_voigt_and_compliance(C))
    return _young_poisson(0.5 * (m["kv"] + m["kr"]), 0.5 * (m["gv"] + m["gr"]))[0]


def poisson_ratio(C) -> np.ndarray:
    """Isotropic Poisson's ratio (3K - 2G) / (6K + 2G) from the Hill averages."""
    m = _kg(*_voigt_and_compliance(C))
    return _young_poisson(0.5 * (m["kv"] + m["kr"]), 0.5 * (m["gv"] + m["gr"]))[1]


def universal_anisotropy(C) -> np.ndarray:
    """Universal anisotropy index A^U = 5 G_V / G_R + K_V / K_R - 6 (0 when isotropic)."""
    m = _kg(*_voigt_and_compliance(C))
    return 5.0 * m["gv"] / m["gr"] + m["kv"] / m["kr"] - 6.0


def born_stability(C, tol: float = 0.0) -> dict[str, np.ndarray]:
    """Born (mechanical) stability: C is stable iff its Mandel matrix is positive definite.

    Returns ``{"min_eigenvalue": (...) GPa, "stable": (...) bool}``; stable means
    ``min_eigenvalue > tol``.
    """
    v = _any_to_voigt(C)
    lam = np.linalg.eigvalsh(voigt_to_mandel(v))[..., 0]
    return {"min_eigenvalue": lam, "stable": lam > tol}


def _unit_vectors(n) -> np.ndarray:
    u = _array(n, "directions")
    _check_trailing(u, (3,), "directions")
    norm = np.linalg.norm(u, axis=-1)
    if u.size and np.max(np.abs(norm - 1.0)) > 1e-6:
        raise ValueError(
            "directions must be unit vectors; normalise them first "
            f"(norms range from {norm.min():.3g} to {norm.max():.3g})"
        )
    return u


def directional_youngs_modulus(C, n) -> np.ndarray:
    """Young's modulus along unit vectors n: ``E(n) = 1 / (S_ijkl n_i n_j n_k n_l)`` (GPa).

    ``C`` has batch shape B, ``n`` has shape (..., 3); the result has shape B + n.shape[:-1].
    """
    S = _compliance_cartesian(_inverse_or_nan(voigt_to_mandel(_any_to_voigt(C))))
    u = _unit_vectors(n)
    nb = S.ndim - 4
    S = S.reshape(S.shape[:nb] + (1,) * (u.ndim - 1) + (3, 3, 3, 3))
    return 1.0 / np.einsum("...ijkl,...i,...j,...k,...l->...", S, u, u, u, u)


def linear_compressibility(C, n) -> np.ndarray:
    """Linear compressibility along unit vectors n: ``beta(n) = S_ijkk n_i n_j`` (1/GPa).

    Shapes as in :func:`directional_youngs_modulus`. Negative values mean the crystal
    expands along n under hydrostatic pressure.
    """
    S = _compliance_cartesian(_inverse_or_nan(voigt_to_mandel(_any_to_voigt(C))))
    u = _unit_vectors(n)
    nb = S.ndim - 4
    Sk = np.einsum("...ijkk->...ij", S)
    Sk = Sk.reshape(Sk.shape[:nb] + (1,) * (u.ndim - 1) + (3, 3))
    return np.einsum("...ij,...i,...j->...", Sk, u, u)


def derived_properties(C) -> dict[str, np.ndarray]:
    """All scalar moduli of C in one pass; keys carry units.

    Keys: ``K_V_GPa, K_R_GPa, K_VRH_GPa, G_V_GPa, G_R_GPa, G_VRH_GPa, youngs_modulus_GPa,
    poisson_ratio, universal_anisotropy, min_eigenvalue_GPa, born_stable``.
    """
    v, s = _voigt_and_compliance(C)
    m = _kg(v, s)
    k = 0.5 * (m["kv"] + m["kr"])
    g = 0.5 * (m["gv"] + m["gr"])
    e, nu = _young_poisson(k, g)
    born = born_stability(v)
    return {
        "K_V_GPa": m["kv"],
        "K_R_GPa": m["kr"],
        "K_VRH_GPa": k,
        "G_V_GPa": m["gv"],
        "G_R_GPa": m["gr"],
        "G_VRH_GPa": g,
        "youngs_modulus_GPa": e,
        "poisson_ratio": nu,
        "universal_anisotropy": 5.0 * m["gv"] / m["gr"] + m["kv"] / m["kr"] - 6.0,
        "min_eigenvalue_GPa": born["min_eigenvalue"],
        "born_stable": born["stable"],
    }
