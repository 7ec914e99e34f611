"""The parity figure: predicted against reference (e.g. DFT) elastic tensors of many crystals,
component by component and as Voigt-Reuss-Hill moduli."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from e3elastic import tensors

from .common import as_voigt, new_figure, output_path, save

# Annotating more points than this makes the parity plot unreadable.
_MAX_ANNOTATED = 30

_UPPER = np.triu_indices(6)
_COMPONENT_GROUPS = {
    # label -> predicate on (I, J), 0-based Voigt indices with I <= J
    "C11, C22, C33": lambda i, j: i == j and i < 3,
    "C12, C13, C23": lambda i, j: i != j and j < 3,
    "C44, C55, C66": lambda i, j: i == j and i >= 3,
    "other (normal-shear, shear-shear)": lambda i, j: i != j and j >= 3,
}


def _batch(x, name: str) -> np.ndarray:
    v = as_voigt(x, name)
    if v.ndim == 2:
        v = v[None]
    if v.ndim != 3:
        raise ValueError(f"{name} must be one tensor or a flat batch (n, 6, 6), got {v.shape}")
    return v


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    d = np.abs(np.asarray(a) - np.asarray(b))
    d = d[np.isfinite(d)]
    return float(d.mean()) if d.size else float("nan")


def parity(pred, true, out, labels: Sequence[str] | None = None, title: str | None = None) -> Path:
    """Parity plot of predicted against reference (e.g. DFT) elastic tensors.

    ``pred`` and ``true`` are arrays of Voigt (n, 6, 6) or Cartesian (n, 3, 3, 3, 3)
    tensors in GPa (a single tensor counts as n = 1). The left panel shows the 21
    independent components (upper triangle of the Voigt matrix) of every tensor, the right
    panel the Voigt-Reuss-Hill bulk and shear moduli from
    :func:`e3elastic.tensors.derived_properties`; both carry the line y = x and the mean
    absolute error in their legends. The overall MAE is the one ``evaluate`` reports (over all
    36 Voigt entries); the per-group MAEs are over the group's components. ``labels``
    (optional, one name per tensor) are written next to the K/G points when there are at most
    30 tensors.
    """
    path, fmt = output_path(out)
    p = _batch(pred, "pred")
    t = _batch(true, "true")
    if p.shape != t.shape:
        raise ValueError(
            f"pred and true must hold the same number of tensors, got {p.shape[0]} and {t.shape[0]}"
        )
    if p.shape[0] == 0:
        raise ValueError("pred and true are empty: nothing to plot")
    if labels is not None:
        labels = [str(s) for s in labels]
        if len(labels) != p.shape[0]:
            raise ValueError(f"labels has {len(labels)} names for {p.shape[0]} tensors")
    pc, tc = p[:, _UPPER[0], _UPPER[1]], t[:, _UPPER[0], _UPPER[1]]
    dp, dt = tensors.derived_properties(p), tensors.derived_properties(t)

    fig = new_figure((12.0, 5.6))
    ax1 = fig.add_subplot(1, 2, 1)
    for k, (group, member) in enumerate(_COMPONENT_GROUPS.items()):
        cols = [c for c, (i, j) in enumerate(zip(*_UPPER, strict=True)) if member(i, j)]
        ax1.scatter(
            tc[:, cols].ravel(),
            pc[:, cols].ravel(),
            s=12,
            alpha=0.7,
            color=f"C{k}",
            label=f"{group}: MAE {_mae(pc[:, cols], tc[:, cols]):.3g} GPa",
        )
    _identity_line(
        ax1,
        np.concatenate([pc.ravel(), tc.ravel()]),
        f"y = x; MAE over the 36 Voigt entries {_mae(p, t):.3g} GPa",
    )
    ax1.set_xlabel("reference C_IJ (GPa)")
    ax1.set_ylabel("predicted C_IJ (GPa)")
    ax1.set_title(
        f"the 21 independent C_IJ of {p.shape[0]} tensor(s) plotted; MAE {_mae(p, t):.3g} GPa "
        "over all 36 entries (as e3elastic evaluate)"
    )
    ax1.legend(fontsize=8, loc="upper left")

    ax2 = fig.add_subplot(1, 2, 2)
    both = []
    for k, (key, name) in enumerate((("K_VRH_GPa", "K_VRH"), ("G_VRH_GPa", "G_VRH"))):
        x, y = np.asarray(dt[key]), np.asarray(dp[key])
        both += [x, y]
        ax2.scatter(x, y, s=22, color=f"C{k + 4}", label=f"{name}: MAE {_mae(y, x):.3g} GPa")
        if labels is not None and len(labels) <= _MAX_ANNOTATED:
            for xi, yi, s in zip(x, y, labels, strict=True):
                if np.isfinite(xi) and np.isfinite(yi):
                    ax2.annotate(s, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    _identity_line(ax2, np.concatenate(both))
    ax2.set_xlabel("reference modulus (GPa)")
    ax2.set_ylabel("predicted modulus (GPa)")
    ax2.set_title("Voigt-Reuss-Hill bulk and shear moduli")
    ax2.legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title)
    return save(fig, path, fmt)


def _identity_line(ax, values: np.ndarray, label: str = "y = x") -> None:
    v = values[np.isfinite(values)]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    lim = (lo - pad, hi + pad)
    ax.plot(lim, lim, color="0.3", lw=1.0, ls="--", label=label, zorder=0)
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_aspect("equal", adjustable="box")
