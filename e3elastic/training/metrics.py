"""Accuracy metrics for predicted elastic tensors (numpy only; GPa).

For each crystal, with C and C_pred as 3x3x3x3 Cartesian tensors:

* ``mae_voigt_GPa``: mean absolute error over the 36 Voigt components;
* ``rel_frobenius``: ``||C_pred - C|| / ||C||`` (Frobenius norm of the full tensor, which is
  rotation invariant), averaged over crystals;
* ``median_rel_frobenius``: the median of the same;
* ``ewt_5``, ``ewt_10``, ``ewt_25``: share of crystals with relative error under 5, 10, 25 %;
* ``positive_definite``: share of predictions whose Mandel matrix is positive-definite (Born
  stable);
* ``mae_K_VRH_GPa``, ``mae_G_VRH_GPa`` and the same in log10 (moduli clipped at 1e-3 GPa before
  the log, since a poor prediction can have a non-positive Hill average).

:func:`tensor_metrics` also reports them per crystal system and, optionally, per any other label.
:func:`moduli_metrics` scores predicted tensors against K_VRH and G_VRH alone (crystals whose
reference has no tensor): the moduli MAE in GPa and in log10, and the median relative errors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import tensors

__all__ = ["moduli_metrics", "per_crystal_errors", "tensor_metrics"]

_LOG_FLOOR = 1e-3


def per_crystal_errors(pred_voigt: np.ndarray, true_voigt: np.ndarray) -> dict[str, np.ndarray]:
    """Per-crystal errors ``(n,)`` used by :func:`tensor_metrics`."""
    p = np.asarray(pred_voigt, np.float64)
    t = np.asarray(true_voigt, np.float64)
    if p.shape != t.shape or p.shape[-2:] != (6, 6) or p.ndim != 3:
        raise ValueError(f"need (n, 6, 6) predictions and targets, got {p.shape} and {t.shape}")
    pc, tc = tensors.voigt_to_cartesian(p), tensors.voigt_to_cartesian(t)
    diff = np.sqrt(np.sum((pc - tc) ** 2, axis=(1, 2, 3, 4)))
    norm = np.sqrt(np.sum(tc**2, axis=(1, 2, 3, 4)))
    kp, kt = _hill(p, "K"), _hill(t, "K")
    gp, gt = _hill(p, "G"), _hill(t, "G")
    return {
        "abs_voigt": np.abs(p - t).mean(axis=(1, 2)),
        "rel_frobenius": diff / np.maximum(norm, 1e-12),
        "K_pred": kp,
        "K_true": kt,
        "G_pred": gp,
        "G_true": gt,
        "pd_pred": np.linalg.eigvalsh(tensors.voigt_to_mandel(p)).min(axis=-1) > 0,
    }


def _hill(v: np.ndarray, which: str) -> np.ndarray:
    """Hill average; the Voigt-Reuss mean, or the Voigt bound alone when C is singular."""
    d = tensors.bulk_modulus(v) if which == "K" else tensors.shear_modulus(v)
    return np.where(np.isfinite(d["hill"]), d["hill"], d["voigt"])


def _summarise(e: dict[str, np.ndarray]) -> dict[str, Any]:
    n = len(e["rel_frobenius"])
    if n == 0:
        return {"n": 0}
    rel = e["rel_frobenius"]

    def log10(x):
        return np.log10(np.maximum(x, _LOG_FLOOR))

    return {
        "n": int(n),
        "mae_voigt_GPa": float(e["abs_voigt"].mean()),
        "rel_frobenius": float(rel.mean()),
        "median_rel_frobenius": float(np.median(rel)),
        "positive_definite": float(np.mean(e["pd_pred"])),
        "ewt_5": float(np.mean(rel < 0.05)),
        "ewt_10": float(np.mean(rel < 0.10)),
        "ewt_25": float(np.mean(rel < 0.25)),
        "mae_K_VRH_GPa": float(np.abs(e["K_pred"] - e["K_true"]).mean()),
        "mae_G_VRH_GPa": float(np.abs(e["G_pred"] - e["G_true"]).mean()),
        "mae_log10_K_VRH": float(np.abs(log10(e["K_pred"]) - log10(e["K_true"])).mean()),
        "mae_log10_G_VRH": float(np.abs(log10(e["G_pred"]) - log10(e["G_true"])).mean()),
    }


def tensor_metrics(
    pred_voigt: np.ndarray,
    true_voigt: np.ndarray,
    crystal_systems: Sequence[str] | None = None,
    groups: dict[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """All metrics over the crystals, plus ``by_crystal_system`` and ``by_<group>`` breakdowns.

    ``groups`` maps a name (e.g. ``theory``) to one label per crystal.
    """
    e = per_crystal_errors(pred_voigt, true_voigt)
    out = _summarise(e)
    labels = {} if groups is None else dict(groups)
    if crystal_systems is not None:
        labels = {"crystal_system": crystal_systems, **labels}
    for name, lab in labels.items():
        lab = np.asarray(list(lab), dtype=object)
        if len(lab) != len(e["rel_frobenius"]):
            raise ValueError(f"{len(lab)} {name} labels for {len(e['rel_frobenius'])} crystals")
        out[f"by_{name}"] = {
            str(v): _summarise({k: a[lab == v] for k, a in e.items()})
            for v in sorted(set(lab.tolist()))
        }
    return out


def moduli_metrics(pred_voigt: np.ndarray, true_kg: np.ndarray) -> dict[str, Any]:
    """Predicted tensors ``(n, 6, 6)`` against reference ``(n, 2)`` ``(K_VRH, G_VRH)`` (GPa):
    ``n``, ``mae_K_VRH_GPa``, ``mae_G_VRH_GPa``, ``mae_log10_K_VRH``, ``mae_log10_G_VRH``,
    ``median_rel_K_VRH``, ``median_rel_G_VRH`` (|pred - ref| / ref) and ``positive_definite``."""
    p = np.asarray(pred_voigt, np.float64)
    t = np.asarray(true_kg, np.float64)
    if p.ndim != 3 or p.shape[-2:] != (6, 6) or t.shape != (len(p), 2):
        raise ValueError(f"need (n, 6, 6) predictions and (n, 2) moduli, got {p.shape}, {t.shape}")
    if len(p) == 0:
        return {"n": 0}
    out: dict[str, Any] = {"n": len(p)}
    for j, q in enumerate(("K", "G")):
        pred, true = _hill(p, q), t[:, j]
        out[f"mae_{q}_VRH_GPa"] = float(np.abs(pred - true).mean())
        out[f"mae_log10_{q}_VRH"] = float(
            np.abs(np.log10(np.maximum(pred, _LOG_FLOOR)) - np.log10(true)).mean()
        )
        out[f"median_rel_{q}_VRH"] = float(np.median(np.abs(pred - true) / true))
    mandel = tensors.voigt_to_mandel(p)
    out["positive_definite"] = float(np.mean(np.linalg.eigvalsh(mandel).min(axis=-1) > 0))
    return out
