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


def _log_errors(ev: Evaluated) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """|ln(q_true / q_centre)| and the members' std of ln q, ``(n,)`` each, for K_VRH, G_VRH
    and Young's modulus; q_centre is the modulus of the ensemble mean tensor."""
    from ..inference.prediction import INTERVAL_QUANTITIES, log_spread

    spread = log_spread(ev.member_voigt)
    centre = _moduli_of(ev.mean)
    true = reference_moduli(ev.records)
    with np.errstate(divide="ignore", invalid="ignore"):
        err = {q: np.abs(np.log(true[q] / centre[q])) for q in INTERVAL_QUANTITIES}
    return err, spread


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


def fit_interval_scale(ev: Evaluated) -> dict[str, dict[str, float]]:
    """Log-space intervals of K_VRH, G_VRH and Young's modulus fitted on ``ev`` (use the
    validation split): ``{q: {"floor": f, "68": k68, "95": k95}}``.

    The interval is ``q_centre * exp(+-k w)`` with ``w = sqrt(s^2 + f^2)``, ``s`` the
    members' std of ln q (:func:`e3elastic.inference.prediction.moduli_intervals`). Members share
    much of their error, so ``s`` alone is too small where they agree; the floor ``f`` carries that
    part. For each candidate floor, k of a level is that level's quantile of |ln(q_true / q_centre)|
    / w (so the level's coverage holds on ``ev``); the floor chosen gives the narrowest 95 %
    intervals on average."""
    from ..inference.prediction import INTERVAL_LEVELS

    if ev.member_voigt.shape[0] < 2:
        raise EvaluationError("intervals need an ensemble (two or more members)")
    errors, spreads = _log_errors(ev)
    out = {}
    for q, err in errors.items():
        ok = np.isfinite(err) & np.isfinite(spreads[q])
        e, s = err[ok], spreads[q][ok]
        best = None
        for floor in np.concatenate([[0.0], np.geomspace(1e-3, 1.0, 61)]):
            w = np.hypot(s, floor)
            k95 = float(np.quantile(e / w, 0.95))
            width = float(np.mean(k95 * w))
            if best is None or width < best[0]:
                best = (width, float(floor), w)
        _, floor, w = best
        out[q] = {"floor": floor}
        out[q].update({lv: float(np.quantile(e / w, int(lv) / 100)) for lv in INTERVAL_LEVELS})
    return out


def interval_coverage(
    ev: Evaluated, scale: dict[str, dict[str, float]] | None = None
) -> dict[str, dict[str, float]]:
    """Share of crystals whose reference K_VRH, G_VRH and Young's modulus fall inside the
    ensemble's 68 % and 95 % intervals (``scale``: as fitted, else Gaussian without a
    floor), and the median width ``(high - low) / centre`` of each interval."""
    from ..inference.prediction import INTERVAL_LEVELS, interval_width

    scale = scale or {}
    errors, spreads = _log_errors(ev)
    out = {}
    for q, err in errors.items():
        w = interval_width(spreads[q], scale.get(q))
        ok = np.isfinite(err) & np.isfinite(w)
        row: dict[str, float] = {"n": int(ok.sum())}
        for lv, z in INTERVAL_LEVELS.items():
            k = (scale.get(q) or {}).get(lv, z)
            row[f"within_{lv}"] = float(np.mean(err[ok] <= k * w[ok]))
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
