"""Voigt, Mandel and Cartesian forms of a stiffness, its compliance, and the checks on them.

The conventions are those of :mod:`e3elastic.tensors` (which re-exports everything public
here): Voigt order 11, 22, 33, 23, 13, 12 with no factors in the stiffness; Mandel with sqrt(2)
on normal-shear and 2 on shear-shear entries; Voigt compliance ``inv(C_voigt)`` (1/GPa).
Invalid input (wrong shape, missing index symmetry, NaN or inf) raises ``ValueError``. Numpy
only.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "MANDEL_IDENTITY_VOIGT",
    "MANDEL_WEIGHTS",
    "SYMMETRY_RTOL",
    "VOIGT_PAIRS",
    "cartesian_to_voigt",
    "compliance_cartesian",
    "compliance_voigt",
    "exp_voigt",
    "log_voigt",
    "mandel_to_voigt",
    "voigt_to_cartesian",
    "voigt_to_mandel",
]

#: Voigt index -> Cartesian pair, in the order 11, 22, 33, 23, 13, 12.
VOIGT_PAIRS: tuple[tuple[int, int], ...] = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))

# Cartesian pair (i, j) -> Voigt index.
_PAIR_TO_VOIGT = np.array([[0, 5, 4], [5, 1, 3], [4, 3, 2]])
#: Mandel weight of each Voigt index: 1 for normal, sqrt(2) for shear components.
MANDEL_WEIGHTS = np.array([1.0, 1.0, 1.0, math.sqrt(2.0), math.sqrt(2.0), math.sqrt(2.0)])

# Relative tolerance for index-symmetry checks. Tensors read from files are often rounded,
# but a genuinely asymmetric tensor differs by far more than this.
SYMMETRY_RTOL = 1e-6


# --------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------
def _array(x, name: str) -> np.ndarray:
    try:
        a = np.asarray(x)
        complex_values = a.dtype.kind == "c"
        if not complex_values:
            a = a.astype(np.float64, copy=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of real numbers: {err}") from None
    if complex_values:  # numpy would drop the imaginary part with only a ComplexWarning
        raise ValueError(f"{name} must be an array of real numbers, got complex values")
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
    return v * MANDEL_WEIGHTS[:, None] * MANDEL_WEIGHTS[None, :]


def mandel_to_voigt(C_mandel) -> np.ndarray:
    """Mandel matrix -> Voigt stiffness (inverse of :func:`voigt_to_mandel`)."""
    m = _check_voigt(C_mandel, "Mandel matrix")
    return m / (MANDEL_WEIGHTS[:, None] * MANDEL_WEIGHTS[None, :])


def log_voigt(C_voigt, reference: float = 1.0) -> np.ndarray:
    """Matrix logarithm of a positive-definite stiffness, in Voigt layout (dimensionless).

    ``L = logm(Mandel(C) / reference)`` via ``eigh``, returned as the Voigt matrix whose Mandel
    form is ``L``. Because the Mandel form of a rotation is an orthogonal 6x6 matrix ``Q`` and
    ``logm(Q M Q^T) = Q logm(M) Q^T``, ``L`` rotates exactly like a stiffness tensor: it has the
    same 21 irreps (2x0e+2x2e+1x4e). Raises ``ValueError`` if C is not positive-definite.

    >>> from e3elastic.moduli import isotropic_voigt
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
    s_plain = s_mandel / (MANDEL_WEIGHTS[:, None] * MANDEL_WEIGHTS[None, :])
    return s_plain[..., _PAIR_TO_VOIGT[:, :, None, None], _PAIR_TO_VOIGT[None, None, :, :]]
