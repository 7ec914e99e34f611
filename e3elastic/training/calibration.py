"""How far an ensemble's spread can be trusted: coverage of its errors, and the scales fitted
on a validation split.

:class:`Evaluated` holds every member's Voigt tensors for a set of records (made by
:func:`e3elastic.training.evaluation.predict_records`). On it:

* :func:`coverage` - the share of errors within 1 and 2 standard deviations, per quantity;
* :func:`fit_sigma_scale` - the factor per quantity that makes the 2-sigma coverage 95 %
  (written to an ensemble's ``calibration.json``);
* :func:`fit_interval_scale` and :func:`interval_coverage` - the log-space 68 % and 95 %
  intervals of K_VRH, G_VRH and Young's modulus (floor and k per level), and their coverage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import tensors
from ..errors import E3ElasticError

__all__ = [
    "SIGMA_QUANTITIES",
    "EvaluationError",
    "Evaluated",
    "coverage",
    "fit_interval_scale",
    "fit_sigma_scale",
    "interval_coverage",
    "reference_moduli",
]

#: Quantities whose ensemble spread is calibrated: the Voigt components symmetry leaves free,
#: K_VRH and G_VRH.
SIGMA_QUANTITIES = ("voigt", "K_VRH", "G_VRH")


class EvaluationError(E3ElasticError, ValueError):
    """A model or dataset cannot be evaluated; the message says why."""


@dataclass
class Evaluated:
    """Predictions of every member for the records of a dataset."""

    records: list[Any]
    member_voigt: np.ndarray  # (M, n, 6, 6)
    skipped: list[str]

    @property
    def mean(self) -> np.ndarray:
        return self.member_voigt.mean(axis=0)

    @property
    def true(self) -> np.ndarray:
        return np.stack([r.voigt for r in self.records])

    def spread(self) -> dict[str, np.ndarray]:
        """Uncalibrated standard deviations over members (zeros for one member)."""
        v = self.member_voigt
        if len(v) < 2:
            z = np.zeros(v.shape[1])
            return {"voigt": np.zeros(v.shape[1:]), "K_VRH": z, "G_VRH": z}
        return {
            "voigt": v.std(axis=0, ddof=1),
            "K_VRH": tensors.bulk_modulus(v)["hill"].std(axis=0, ddof=1),
            "G_VRH": tensors.shear_modulus(v)["hill"].std(axis=0, ddof=1),
        }


def _free_components(ev: Evaluated) -> np.ndarray:
    """``(n, 21)`` mask of the upper-triangle Voigt components the members do not all predict
    alike: those the structure's symmetry fixes (zero, or tied to others) have a spread at
    float32 round-off, and error / sigma means nothing there."""
    iu = np.triu_indices(6)
    spread = ev.spread()["voigt"][:, iu[0], iu[1]]
    size = np.abs(ev.mean).max(axis=(1, 2))[:, None]
    return spread > 1e-4 * size


def coverage(ev: Evaluated, scale: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """Share of errors (ensemble mean vs reference) within 1 and 2 (scaled) standard
    deviations, per quantity. Voigt components fixed by symmetry (no spread) are left out."""
    if ev.member_voigt.shape[0] < 2:
        raise EvaluationError("coverage needs an ensemble (two or more members)")
    scale = scale or {}
    iu = np.triu_indices(6)
    true, mean, spread = ev.true, ev.mean, ev.spread()
    nonzero = _free_components(ev)
    errors = {
        "voigt": np.abs(mean - true)[:, iu[0], iu[1]][nonzero],
        "K_VRH": np.abs(tensors.bulk_modulus(mean)["hill"] - tensors.bulk_modulus(true)["hill"]),
        "G_VRH": np.abs(tensors.shear_modulus(mean)["hill"] - tensors.shear_modulus(true)["hill"]),
    }
    sigmas = {
        "voigt": spread["voigt"][:, iu[0], iu[1]][nonzero],
        "K_VRH": spread["K_VRH"],
        "G_VRH": spread["G_VRH"],
    }
    out = {}
    for q in SIGMA_QUANTITIES:
        e, s = errors[q], sigmas[q] * scale.get(q, 1.0)
        out[q] = {
            "n": int(e.size),
            "within_1_sigma": float(np.mean(e <= s)),
            "within_2_sigma": float(np.mean(e <= 2 * s)),
            "mean_abs_error_GPa": float(e.mean()),
            "mean_sigma_GPa": float(s.mean()),
        }
    return out


def fit_sigma_scale(ev: Evaluated, target: float = 0.95) -> dict[str, float]:
    """Per-quantity factor for the ensemble's standard deviation, fitted on ``ev`` (use the
    validation split): the ``target`` quantile of |error| / sigma, divided by the Gaussian
    z-value of that quantile (1.96 for 0.95). A calibrated Gaussian needs a factor of 1; an
    over-confident ensemble gets a factor above 1."""
    from statistics import NormalDist

    if ev.member_voigt.shape[0] < 2:
        raise EvaluationError("a sigma scale needs an ensemble (two or more members)")
    z = NormalDist().inv_cdf(0.5 + target / 2)
    true, mean, spread = ev.true, ev.mean, ev.spread()
    nonzero = _free_components(ev)
    with np.errstate(divide="ignore", invalid="ignore"):  # fixed components: 0 / 0, masked
        ratios = _error_ratios(mean, true, spread)
    ratios["voigt"] = ratios["voigt"][nonzero]
    return {q: float(np.quantile(r[np.isfinite(r)], target) / z) for q, r in ratios.items()}


def _log_errors(
    ev: Evaluated,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], np.ndarray]:
    """|ln(q_true / q_centre)| and the members' std of ln q, ``(n,)`` each, for K_VRH, G_VRH
    and Young's modulus, and the central shear modulus ``(n,)``; q_centre is the modulus of
    the ensemble mean tensor."""
    from ..inference.prediction import INTERVAL_QUANTITIES, log_spread

    spread = log_spread(ev.member_voigt)
    centre = _moduli_of(ev.mean)
    true = reference_moduli(ev.records)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = {q: np.abs(np.log(true[q] / centre[q])) for q in INTERVAL_QUANTITIES}
    return err, spread, centre["G_VRH"]


def reference_moduli(records) -> dict[str, np.ndarray]:
    """K_VRH, G_VRH and Young's modulus E = 9KG / (3K + G) of each record's label, ``(n,)``
    each: the Hill averages of its tensor (``voigt``), or for a crystal with K and G only
    (``moduli``), those."""
    n = len(records)
    out = {q: np.full(n, np.nan) for q in ("K_VRH", "G_VRH", "youngs_modulus")}
    has = np.array([r.voigt is not None for r in records], bool)
    if has.any():
        from_tensor = _moduli_of(np.stack([r.voigt for r in records if r.voigt is not None]))
        for q, v in out.items():
            v[has] = from_tensor[q]
    if not has.all():
        kg = np.array([r.moduli for r in records if r.voigt is None], np.float64)
        k, g = kg[:, 0], kg[:, 1]
        out["K_VRH"][~has], out["G_VRH"][~has] = k, g
        out["youngs_modulus"][~has] = 9 * k * g / (3 * k + g)
    return out


def _moduli_of(voigts: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "K_VRH": tensors.bulk_modulus(voigts)["hill"],
        "G_VRH": tensors.shear_modulus(voigts)["hill"],
        "youngs_modulus": tensors.youngs_modulus(voigts),
    }


def fit_interval_scale(ev: Evaluated, soft: bool = True) -> dict[str, dict[str, float]]:
    """Log-space intervals of K_VRH, G_VRH and Young's modulus fitted on ``ev`` (use the
    validation split): ``{q: {"floor": f, "softness": a, "soft_reference_GPa": G_ref, "68": k68,
    "95": k95}}``.

    The interval is ``q_centre * exp(+-k w)`` with ``w = sqrt(s^2 + f^2 + (a ln+(G_ref /
    G))^2)``, ``s`` the members' std of ln q and ``G`` the central shear modulus
    (:func:`e3elastic.inference.prediction.interval_width`). Members share much of their error,
    so ``s`` alone is too small where they agree; the floor ``f`` carries that part, and ``a``
    the larger error of soft crystals (``G`` below ``G_ref``). For each candidate ``(f, a)``, k of
    a level is that level's quantile of |ln(q_true / q_centre)| / w (so the level's coverage
    holds on ``ev``); the pair chosen gives the narrowest 95 % intervals on average. ``soft=False``
    fixes ``a = 0``."""
    from ..inference.prediction import INTERVAL_LEVELS, SOFT_REFERENCE_GPA, interval_width

    if ev.member_voigt.shape[0] < 2:
        raise EvaluationError("intervals need an ensemble (two or more members)")
    errors, spreads, shear = _log_errors(ev)
    floors = np.concatenate([[0.0], np.geomspace(1e-3, 1.0, 61)])
    softness = np.linspace(0.0, 1.0, 21) if soft else np.zeros(1)
    out = {}
    for q, err in errors.items():
        ok = np.isfinite(err) & np.isfinite(spreads[q]) & (shear > 0)
        e, s, g = err[ok], spreads[q][ok], shear[ok]
        best = None
        for a in softness:
            for floor in floors:
                fitted = {"floor": float(floor), "softness": float(a)}
                w = interval_width(s, fitted, g)
                width = float(np.mean(np.quantile(e / w, 0.95) * w))
                if best is None or width < best[0]:
                    best = (width, fitted, w)
        _, fitted, w = best
        out[q] = {**fitted, "soft_reference_GPa": SOFT_REFERENCE_GPA}
        out[q].update({lv: float(np.quantile(e / w, int(lv) / 100)) for lv in INTERVAL_LEVELS})
    return out


#: Central shear modulus (GPa) below which :func:`interval_coverage` also reports a crystal
#: among the soft ones.
SOFT_REPORT_GPA = 20.0


def interval_coverage(
    ev: Evaluated, scale: dict[str, dict[str, float]] | None = None
) -> dict[str, dict[str, float]]:
    """Share of crystals whose reference K_VRH, G_VRH and Young's modulus fall inside the
    ensemble's 68 % and 95 % intervals (``scale``: as fitted, else Gaussian without a
    floor), and the median width ``(high - low) / centre`` of each interval. ``n_soft`` and
    ``within_{68,95}_soft``: the same coverage over the crystals whose central shear modulus is
    below :data:`SOFT_REPORT_GPA` (NaN when there are none)."""
    from ..inference.prediction import INTERVAL_LEVELS, interval_width

    scale = scale or {}
    errors, spreads, shear = _log_errors(ev)
    out = {}
    for q, err in errors.items():
        w = interval_width(spreads[q], scale.get(q), shear)
        ok = np.isfinite(err) & np.isfinite(w)
        soft = ok & (shear < SOFT_REPORT_GPA)
        row: dict[str, float] = {"n": int(ok.sum()), "n_soft": int(soft.sum())}
        for lv, z in INTERVAL_LEVELS.items():
            k = (scale.get(q) or {}).get(lv, z)
            inside = err <= k * w
            row[f"within_{lv}"] = float(np.mean(inside[ok]))
            row[f"within_{lv}_soft"] = float(np.mean(inside[soft])) if soft.any() else np.nan
            row[f"median_width_{lv}"] = float(np.median(2 * np.sinh(k * w[ok])))
        out[q] = row
    return out


def _error_ratios(mean, true, spread) -> dict[str, np.ndarray]:
    """|error| / sigma: ``voigt`` ``(n, 21)`` (upper triangle), ``K_VRH`` and ``G_VRH`` ``(n,)``."""
    iu = np.triu_indices(6)
    return {
        "voigt": np.abs(mean - true)[:, iu[0], iu[1]] / spread["voigt"][:, iu[0], iu[1]],
        "K_VRH": np.abs(tensors.bulk_modulus(mean)["hill"] - tensors.bulk_modulus(true)["hill"])
        / spread["K_VRH"],
        "G_VRH": np.abs(tensors.shear_modulus(mean)["hill"] - tensors.shear_modulus(true)["hill"])
        / spread["G_VRH"],
    }
