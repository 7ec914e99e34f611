"""Scalar properties derived from a stiffness (GPa where they have units).

Voigt, Reuss and Hill bounds of the bulk and shear moduli, the isotropic Young's modulus and
Poisson's ratio, the universal anisotropy index, Born stability, and the directional Young's
modulus and linear compressibility. Every function takes a Voigt ``(..., 6, 6)`` or Cartesian
``(..., 3, 3, 3, 3)`` stiffness with leading batch axes. A singular stiffness gives NaN for the
quantities that need its compliance (Reuss bounds, Hill averages, directional moduli), so one
such tensor in a batch does not spoil the others. Re-exported by :mod:`e3elastic.tensors`.
Numpy only.

>>> round(float(bulk_modulus(isotropic_voigt(bulk=100.0, shear=50.0))["hill"]), 6)
100.0
"""

from __future__ import annotations

import numpy as np

from .voigt import (
    _any_to_voigt,
    _array,
    _check_trailing,
    _compliance_cartesian,
    _inverse_or_nan,
    voigt_to_mandel,
)

__all__ = [
    "born_stability",
    "bulk_modulus",
    "derived_properties",
    "directional_youngs_modulus",
    "isotropic_voigt",
    "linear_compressibility",
    "poisson_ratio",
    "shear_modulus",
    "universal_anisotropy",
    "youngs_modulus",
]


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


def _voigt_reuss(v: np.ndarray, s: np.ndarray) -> dict[str, np.ndarray]:
    """Voigt and Reuss bounds of K and G (GPa) from Voigt C and S: ``kv, gv, kr, gr``."""
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
    m = _voigt_reuss(*_voigt_and_compliance(C))
    return {"voigt": m["kv"], "reuss": m["kr"], "hill": 0.5 * (m["kv"] + m["kr"])}


def shear_modulus(C) -> dict[str, np.ndarray]:
    """Shear modulus (GPa): ``{"voigt", "reuss", "hill"}``, each of shape (...)."""
    m = _voigt_reuss(*_voigt_and_compliance(C))
    return {"voigt": m["gv"], "reuss": m["gr"], "hill": 0.5 * (m["gv"] + m["gr"])}


def _young_poisson(k: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return 9.0 * k * g / (3.0 * k + g), (3.0 * k - 2.0 * g) / (6.0 * k + 2.0 * g)


def youngs_modulus(C) -> np.ndarray:
    """Isotropic Young's modulus E = 9KG / (3K + G) from the Hill averages (GPa)."""
    m = _voigt_reuss(*_voigt_and_compliance(C))
    return _young_poisson(0.5 * (m["kv"] + m["kr"]), 0.5 * (m["gv"] + m["gr"]))[0]


def poisson_ratio(C) -> np.ndarray:
    """Isotropic Poisson's ratio (3K - 2G) / (6K + 2G) from the Hill averages."""
    m = _voigt_reuss(*_voigt_and_compliance(C))
    return _young_poisson(0.5 * (m["kv"] + m["kr"]), 0.5 * (m["gv"] + m["gr"]))[1]


def universal_anisotropy(C) -> np.ndarray:
    """Universal anisotropy index A^U = 5 G_V / G_R + K_V / K_R - 6 (0 when isotropic)."""
    return _anisotropy(_voigt_reuss(*_voigt_and_compliance(C)))


def _anisotropy(m: dict[str, np.ndarray]) -> np.ndarray:
    """A^U from the Voigt and Reuss bounds; round-off below 1e-9 (an isotropic C gives
    -2e-16) is set to 0, so that it never shows as -0.0000."""
    a = 5.0 * m["gv"] / m["gr"] + m["kv"] / m["kr"] - 6.0
    return np.where(np.abs(a) < 1e-9, 0.0, a)[()]  # a scalar for one tensor


def born_stability(C, tol: float = 0.0) -> dict[str, np.ndarray]:
    """Born (mechanical) stability: C is stable iff its Mandel matrix is positive definite.

    Returns ``{"min_eigenvalue": (...) GPa, "stable": (...) bool}``; stable means
    ``min_eigenvalue > tol``.
    """
    v = _any_to_voigt(C)
    lam = np.linalg.eigvalsh(voigt_to_mandel(v))[..., 0][()]  # a scalar for one tensor
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
    m = _voigt_reuss(v, s)
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
        "universal_anisotropy": _anisotropy(m),
        "min_eigenvalue_GPa": born["min_eigenvalue"],
        "born_stable": born["stable"],
    }
