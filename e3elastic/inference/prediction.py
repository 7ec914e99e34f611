"""The result of predicting one structure: :class:`Prediction` (a dict with methods).

>>> import numpy as np
>>> from e3elastic import tensors
>>> p = Prediction.from_voigt(tensors.isotropic_voigt(100.0, 50.0), file="iso.cif")
>>> round(p.K_VRH_GPa, 6), p.born_stable, p.warnings
(100.0, True, [])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import tensors

__all__ = [
    "INTERVAL_LEVELS",
    "INTERVAL_QUANTITIES",
    "Prediction",
    "SOFT_REFERENCE_GPA",
    "interval_width",
    "log_spread",
    "moduli_intervals",
    "tensor_fields",
    "to_json_ready",
]

#: Moduli that get intervals: the result keys without ``_GPa``.
INTERVAL_QUANTITIES = ("K_VRH", "G_VRH", "youngs_modulus")
#: Coverage levels of the intervals (percent), and the Gaussian half-widths (in log-space
#: standard deviations) an uncalibrated ensemble uses for them.
INTERVAL_LEVELS = {"68": 0.994457883209753, "95": 1.959963984540054}
#: Shear modulus (GPa) below which a fitted ``softness`` widens the intervals
#: (:func:`interval_width`).
SOFT_REFERENCE_GPA = 40.0

#: Fields every result has; a failed structure has them as None.
RESULT_KEYS = (
    "voigt_GPa",
    "cartesian_GPa",
    "K_V_GPa",
    "K_R_GPa",
    "K_VRH_GPa",
    "G_V_GPa",
    "G_R_GPa",
    "G_VRH_GPa",
    "youngs_modulus_GPa",
    "poisson_ratio",
    "universal_anisotropy",
    "min_eigenvalue_GPa",
    "born_stable",
)


class Prediction(dict):
    """One structure's predicted stiffness and what goes with it.

    A ``dict`` (``p["K_VRH_GPa"]`` works, and so does ``p.K_VRH_GPa``) with the keys of the JSON
    output: ``file``, ``id``, ``formula``, ``voigt_GPa`` (6x6, Voigt order 11 22 33 23 13 12),
    ``cartesian_GPa`` (3x3x3x3), the derived moduli (``K_VRH_GPa``, ``G_VRH_GPa``, ...),
    ``born_stable``, ``warnings`` (list of ``"code: sentence"``, see
    :mod:`e3elastic.inference.domain`), ``error`` (None, or why this structure failed; the numbers
    are then None), provenance (``model``, ``lattice_A``, ``space_group``, ``point_group``) and, for
    an ensemble, the standard deviations ``voigt_std_GPa``, ``K_VRH_std_GPa``, ``G_VRH_std_GPa`` and
    the intervals ``K_VRH_interval68_GPa``, ``K_VRH_interval95_GPa`` (and the same for ``G_VRH`` and
    ``youngs_modulus``): ``[low, high]`` around the central value, from the members' spread in log
    space (see :func:`moduli_intervals`), so a bound never goes below zero.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        head = self.get("file") or self.get("id") or "structure"
        if self.get("error") is not None:
            return f"Prediction({head!r}, error={self['error']!r})"
        w = f", {len(self['warnings'])} warning(s)" if self.get("warnings") else ""
        return (
            f"Prediction({head!r}, {self.get('formula')}, K_VRH={self['K_VRH_GPa']:.1f} GPa, "
            f"G_VRH={self['G_VRH_GPa']:.1f} GPa{w})"
        )

    @property
    def ok(self) -> bool:
        """True when the structure was predicted (no error)."""
        return self.get("error") is None

    @property
    def voigt(self) -> np.ndarray:
        """The 6x6 Voigt stiffness (GPa); ``ValueError`` for a failed structure."""
        self._require()
        return np.asarray(self["voigt_GPa"], np.float64)

    @property
    def compliance_voigt(self) -> np.ndarray:
        """6x6 Voigt compliance (1/GPa), with the factors 2 and 4 on shear terms."""
        return tensors.compliance_voigt(self.voigt)

    def to_pymatgen(self):
        """The stiffness as ``pymatgen.analysis.elasticity.ElasticTensor`` (GPa)."""
        from pymatgen.analysis.elasticity import ElasticTensor

        return ElasticTensor.from_voigt(self.voigt)

    def to_dict(self, cartesian: bool = False) -> dict[str, Any]:
        """JSON-ready plain dict (see :func:`to_json_ready`)."""
        return to_json_ready(self, cartesian=cartesian)

    def _require(self) -> None:
        if self.get("error") is not None:
            raise ValueError(f"no tensor: this structure failed ({self['error']})")

    @classmethod
    def from_voigt(cls, voigt: np.ndarray, **fields: Any) -> Prediction:
        """A result for a given tensor: its derived moduli, no warnings, no error."""
        voigt = np.asarray(voigt, np.float64)
        out = cls(fields)
        out.setdefault("error", None)
        out.setdefault("warnings", [])
        out.update(tensor_fields(voigt))
        return out

    @classmethod
    def failed(cls, error: str, **fields: Any) -> Prediction:
        out = cls(fields)
        out["error"] = error
        out.setdefault("warnings", [])
        for k in RESULT_KEYS:
            out.setdefault(k, None)
        return out


def tensor_fields(voigt: np.ndarray, props: dict[str, Any] | None = None) -> dict[str, Any]:
    """``voigt_GPa``, ``cartesian_GPa`` and the derived moduli (plain floats, ``born_stable`` a
    bool) of one Voigt tensor (GPa); ``props``: its :func:`~e3elastic.tensors.derived_properties`
    when already computed."""
    voigt = np.asarray(voigt, np.float64)
    props = tensors.derived_properties(voigt) if props is None else props
    out: dict[str, Any] = {"voigt_GPa": voigt, "cartesian_GPa": tensors.voigt_to_cartesian(voigt)}
    for k, v in props.items():
        out[k] = bool(v) if k == "born_stable" else float(v)
    return out


def _member_moduli(member_voigts: np.ndarray) -> dict[str, np.ndarray]:
    """K_VRH, G_VRH and Young's modulus ``(M, ...)`` of the members' Voigt tensors."""
    return {
        "K_VRH": tensors.bulk_modulus(member_voigts)["hill"],
        "G_VRH": tensors.shear_modulus(member_voigts)["hill"],
        "youngs_modulus": tensors.youngs_modulus(member_voigts),
    }


def interval_width(
    spread: np.ndarray, fitted: dict[str, float] | None, shear: np.ndarray | float | None = None
) -> np.ndarray:
    """The log-space width ``sqrt(s^2 + f^2 + (a ln+(G_ref / G))^2)`` of :func:`moduli_intervals`.

    ``s``: the members' spread (:func:`log_spread`); ``f``: ``fitted["floor"]``; ``a``:
    ``fitted["softness"]``, which widens the intervals of crystals whose central shear modulus
    ``shear`` (GPa) lies below ``fitted["soft_reference_GPa"]`` (default
    :data:`SOFT_REFERENCE_GPA`): soft crystals are predicted less well than their members'
    agreement shows. ``ln+`` is ``max(0, ln)``; a shear modulus <= 0 gives NaN."""
    fitted = fitted or {}
    w2 = np.square(spread) + fitted.get("floor", 0.0) ** 2
    a = fitted.get("softness", 0.0)
    if a and shear is not None:
        g = np.asarray(shear, np.float64)
        ref = fitted.get("soft_reference_GPa", SOFT_REFERENCE_GPA)
        with np.errstate(divide="ignore", invalid="ignore"):
            soft = np.where(g > 0, np.maximum(np.log(ref / g), 0.0), np.nan)
        w2 = w2 + np.square(a * soft)
    return np.sqrt(w2)


def log_spread(member_voigts: np.ndarray) -> dict[str, np.ndarray]:
    """Standard deviation over members (axis 0, ddof 1) of ln K_VRH, ln G_VRH and ln E.

    Members of a log-head ensemble disagree by factors, not by GPa: the spread of the logs is
    the natural width. A member with a modulus <= 0 (not positive-definite) gives NaN."""
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for q, v in _member_moduli(np.asarray(member_voigts, np.float64)).items():
            out[q] = np.log(np.where(v > 0, v, np.nan)).std(axis=0, ddof=1)
    return out


def moduli_intervals(
    member_voigts: np.ndarray,
    centre: dict[str, float],
    scale: dict[str, dict[str, float]] | None = None,
) -> dict[str, list[float]]:
    """``{q}_interval{level}_GPa: [low, high]`` for K_VRH, G_VRH and Young's modulus.

    ``[c exp(-k w), c exp(+k w)]``: ``c`` the central value (``centre[q + "_GPa"]``),
    ``w = sqrt(s^2 + f^2 + (a ln+(G_ref / G))^2)`` (:func:`interval_width`) with ``s`` the
    members' standard deviation of ln q (:func:`log_spread`), ``f`` a floor for the error the
    members share, ``a`` a widening for crystals whose central shear modulus ``G`` is below
    ``G_ref``, and ``k`` the half-width of the level. ``scale[q]`` holds ``floor``, ``softness``
    and a ``k`` per level as fitted on validation data
    (:func:`e3elastic.training.evaluation.fit_interval_scale`); without it, ``f = a = 0`` and the
    Gaussian values of :data:`INTERVAL_LEVELS`. Always positive, and wider above than below the
    centre."""
    scale = scale or {}
    spread = log_spread(member_voigts)
    out: dict[str, list[float]] = {}
    for q in INTERVAL_QUANTITIES:
        fitted = scale.get(q) or {}
        c = float(centre[f"{q}_GPa"])
        s = float(interval_width(spread[q], fitted, centre.get("G_VRH_GPa")))
        for level, z in INTERVAL_LEVELS.items():
            k = float(fitted.get(level, z))
            ok = np.isfinite(s) and c > 0
            out[f"{q}_interval{level}_GPa"] = (
                [c * float(np.exp(-k * s)), c * float(np.exp(k * s))] if ok else [np.nan, np.nan]
            )
    return out


def to_json_ready(result: dict[str, Any], cartesian: bool = False) -> dict[str, Any]:
    """Arrays as nested lists, NaN as None (also inside nested dicts and lists); drops the
    81-number Cartesian tensor unless asked."""
    return {k: _plain(v) for k, v in result.items() if cartesian or k != "cartesian_GPa"}


def _plain(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x
