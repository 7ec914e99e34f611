"""Published elastic constants of a few well-known crystals (GPa, Voigt, room temperature).

These are measured single-crystal constants quoted from the literature, in each crystal's
standard setting (hexagonal and trigonal: c along z, a along x). They serve as example input
for ``e3elastic tensor`` and as physically sensible test tensors.
"""

from __future__ import annotations

import numpy as np

from e3elastic.tensors import isotropic_voigt


def _cubic(c11: float, c12: float, c44: float) -> np.ndarray:
    v = np.zeros((6, 6))
    v[:3, :3] = c12
    v[[0, 1, 2], [0, 1, 2]] = c11
    v[[3, 4, 5], [3, 4, 5]] = c44
    return v


def _hexagonal(c11: float, c12: float, c13: float, c33: float, c44: float) -> np.ndarray:
    v = np.zeros((6, 6))
    v[0, 0] = v[1, 1] = c11
    v[0, 1] = v[1, 0] = c12
    v[0, 2] = v[2, 0] = v[1, 2] = v[2, 1] = c13
    v[2, 2] = c33
    v[3, 3] = v[4, 4] = c44
    v[5, 5] = 0.5 * (c11 - c12)
    return v


def _trigonal(c11, c12, c13, c14, c33, c44) -> np.ndarray:
    v = _hexagonal(c11, c12, c13, c33, c44)
    v[0, 3] = v[3, 0] = c14
    v[1, 3] = v[3, 1] = -c14
    v[4, 5] = v[5, 4] = c14
    return v


def _tetragonal(c11, c12, c13, c33, c44, c66) -> np.ndarray:
    v = _hexagonal(c11, c12, c13, c33, c44)
    v[5, 5] = c66
    return v


#: name -> (description, Voigt matrix in GPa)
EXAMPLE_TENSORS: dict[str, tuple[str, np.ndarray]] = {
    "silicon": (
        "Si, diamond cubic (McSkimin & Andreatch 1964): C11 165.7, C12 63.9, C44 79.6",
        _cubic(165.7, 63.9, 79.6),
    ),
    "copper": (
        "Cu, fcc (Simmons & Wang 1971): C11 168.4, C12 121.4, C44 75.4",
        _cubic(168.4, 121.4, 75.4),
    ),
    "magnesium": (
        "Mg, hcp (Slutsky & Garland 1957): C11 59.4, C12 25.6, C13 21.4, C33 61.6, C44 16.4",
        _hexagonal(59.4, 25.6, 21.4, 61.6, 16.4),
    ),
    "alpha-quartz": (
        "SiO2 alpha-quartz, trigonal 32 (Heyliger et al. 2003): C11 86.6, C12 6.7, C13 12.6, "
        "C14 17.8, C33 106.1, C44 57.8 (the sign of C14 depends on handedness and setting)",
        _trigonal(86.6, 6.7, 12.6, 17.8, 106.1, 57.8),
    ),
    "stishovite": (
        "SiO2 stishovite, tetragonal (Weidner et al. 1982): C11 453, C12 211, C13 203, "
        "C33 776, C44 252, C66 302",
        _tetragonal(453.0, 211.0, 203.0, 776.0, 252.0, 302.0),
    ),
    "isotropic-steel": (
        "an isotropic solid with K = 160 GPa, G = 79.3 GPa (typical of steel)",
        isotropic_voigt(160.0, 79.3),
    ),
}


def example_voigt(name: str) -> np.ndarray:
    """Voigt matrix (GPa) of a built-in example; a fresh copy."""
    return EXAMPLE_TENSORS[name][1].copy()


def describe(name: str) -> str:
    return f"{name}: {EXAMPLE_TENSORS[name][0]}"
