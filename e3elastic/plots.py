"""Figures of elastic tensors: directional Young's modulus, linear compressibility, parity.

Every plotting function writes one file whose format follows the suffix of ``out``
(``.png`` or ``.svg``), returns its :class:`~pathlib.Path`, and raises ``ValueError`` for an
unknown suffix or an invalid tensor before anything is drawn.

Directions are unit vectors in the Cartesian frame of the tensor, which for a tensor
predicted from a structure is the frame of the structure's Cartesian (Å) coordinates.

matplotlib is imported only when a figure is drawn, so this module imports without it;
drawing then raises ``ImportError`` saying how to install it. Figures are rendered with
the non-interactive Agg canvas and never touch pyplot's global state, so the functions are
safe to call from scripts, servers and tests.

The numbers behind the polar sections are available without matplotlib from
:func:`section_values`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from e3elastic import tensors

__all__ = [
    "PLANES",
    "NEGATIVE_LABEL",
    "POSITIVE_LABEL",
    "Section",
    "section_values",
    "youngs_surface",
    "youngs_sections",
    "compressibility_sections",
    "parity",
    "plot_tensor",
]

#: Plane name -> the two Cartesian axes (0 = x, 1 = y, 2 = z) that span it. The angle in a
#: plane is measured from its first axis towards its second.
PLANES: dict[str, tuple[int, int]] = {"xy": (0, 1), "xz": (0, 2), "yz": (1, 2)}

_FORMATS = {".png": "png", ".svg": "svg"}
_AXIS_NAMES = "xyz"
_QUANTITIES = {
    # name -> (symbol, unit, scale from the tensors module's unit to the plotted one)
    "youngs": ("E", "GPa", 1.0),
    "compressibility": ("β", "1/TPa", 1000.0),
}
_KINDS = ("surface", "sections", "compressibility")
# Annotating more points than this makes the parity plot unreadable.
_MAX_ANNOTATED = 30


class Section(NamedTuple):
    """A directional property sampled around a great circle of directions.

    ``angles`` (radians, from the plane's first axis towards its second, 0 to 2 pi with
    both ends included so the curve closes), ``directions`` the unit vectors (n, 3), and
    ``values`` the property along them in ``unit``.
    """

    plane: str
    quantity: str
    angles: np.ndarray
    directions: np.ndarray
    values: np.ndarray
    unit: str


# --------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------
def _output_path(out) -> tuple[Path, str]:
    path = Path(out)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        want = " or ".join(_FORMATS)
        raise ValueError(
            f"cannot tell the image format of {str(path)!r}: its suffix must be {want}"
        )
    return path, fmt


def _as_voigt(C, name: str) -> np.ndarray:
    """Voigt form (..., 6, 6) of a Voigt or Cartesian tensor, validated by the tensors module."""
    try:
        a = np.asarray(C, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of real numbers: {err}") from None
    if a.ndim >= 4 and a.shape[-4:] == (3, 3, 3, 3):
        return tensors.cartesian_to_voigt(a)
    if a.ndim >= 2 and a.shape[-2:] == (6, 6):
        # the round trip returns the same numbers and checks symmetry and finiteness
        return tensors.cartesian_to_voigt(tensors.voigt_to_cartesian(a))
    raise ValueError(
        f"{name} must have shape (6, 6) (Voigt) or (3, 3, 3, 3) (Cartesian) per tensor, "
        f"got {a.shape}"
    )


def _single_tensor(C) -> np.ndarray:
    """One invertible elastic tensor in Voigt form (6, 6), GPa."""
    v = _as_voigt(C, "elastic tensor")
    if v.shape != (6, 6):
        raise ValueError(
            f"expected one elastic tensor, got a batch of shape {v.shape[:-2]}; "
            "plot each tensor separately"
        )
    tensors.compliance_voigt(v)  # raises ValueError for a singular tensor
    return v


def _check_young(values: np.ndarray) -> None:
    if not np.all(np.isfinite(values) & (values > 0)):
        raise ValueError(
            "Young's modulus is negative or infinite along some directions: the tensor is "
            "not positive definite (mechanically unstable), so E(n) has no surface to draw. "
            "Check tensors.born_stability(C)"
        )


def _unit_directions(plane: str, angles: np.ndarray) -> np.ndarray:
    i, j = PLANES[plane]
    n = np.zeros((*angles.shape, 3))
    n[..., i] = np.cos(angles)
    n[..., j] = np.sin(angles)
    return n


def _property(v: np.ndarray, quantity: str, n: np.ndarray) -> np.ndarray:
    if quantity == "youngs":
        return tensors.directional_youngs_modulus(v, n)
    return tensors.linear_compressibility(v, n) * _QUANTITIES[quantity][2]


def section_values(C, plane: str, n_angles: int = 361, quantity: str = "youngs") -> Section:
    """Sample Young's modulus (GPa) or linear compressibility (1/TPa) in one plane.

    ``plane`` is ``"xy"``, ``"xz"`` or ``"yz"``; direction k is
    ``cos(t_k) e_first + sin(t_k) e_second`` with ``t_k`` evenly spaced over [0, 2 pi],
    both ends included. ``quantity`` is ``"youngs"`` or ``"compressibility"``. This is
    exactly what :func:`youngs_sections` and :func:`compressibility_sections` draw.
    """
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {sorted(PLANES)}, got {plane!r}")
    if quantity not in _QUANTITIES:
        raise ValueError(f"quantity must be one of {sorted(_QUANTITIES)}, got {quantity!r}")
    if isinstance(n_angles, bool) or not isinstance(n_angles, int | np.integer) or n_angles < 3:
        raise ValueError(f"n_angles must be an integer >= 3, got {n_angles!r}")
    v = _single_tensor(C)
    angles = np.linspace(0.0, 2.0 * math.pi, int(n_angles))
    n = _unit_directions(plane, angles)
    values = _property(v, quantity, n)
    return Section(plane, quantity, angles, n, values, _QUANTITIES[quantity][1])


# --------------------------------------------------------------------------------------
# matplotlib, loaded on demand
# --------------------------------------------------------------------------------------
def _new_figure(figsize: tuple[float, float]):
    """A matplotlib Figure on an Agg canvas (no pyplot, no global backend change)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            "e3elastic.plots needs matplotlib to draw figures; install it with "
            "`pip install 'e3elastic[plot]'` (or `pip install matplotlib`)"
        ) from err
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt, dpi=150, bbox_inches="tight", pad_inches=0.15)
    return path


# --------------------------------------------------------------------------------------
# Young's modulus
# --------------------------------------------------------------------------------------
def youngs_surface(C, out, title: str | None = None, resolution: int = 60) -> Path:
    """3D surface r(n) = E(n) n of the directional Young's modulus, coloured by E (GPa).

    ``resolution`` is the number of polar angles; twice as many azimuths are used.
    """
    path, fmt = _output_path(out)
    if isinstance(resolution, bool) or not isinstance(resolution, int | np.integer):
        raise ValueError(f"resolution must be an integer, got {resolution!r}")
    if resolution < 8:
        raise ValueError(f"resolution must be at least 8, got {resolution}")
    v = _single_tensor(C)
    theta = np.linspace(0.0, math.pi, int(resolution))
    phi = np.linspace(0.0, 2.0 * math.pi, 2 * int(resolution))
    t, p = np.meshgrid(theta, phi, indexing="ij")
    n = np.stack([np.sin(t) * np.cos(p), np.sin(t) * np.sin(p), np.cos(t)], axis=-1)
    # the poles and the seam are computed from rounded trig values: renormalise exactly
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    E = tensors.directional_youngs_modulus(v, n)
    _check_young(E)
    xyz = E[..., None] * n

    from matplotlib import cm, colormaps, colors

    fig = _new_figure((7.0, 6.0))
    ax = fig.add_subplot(projection="3d")
    lo, hi = float(E.min()), float(E.max())
    if hi - lo < 1e-9 * max(hi, 1.0):  # isotropic: give the colour scale some width
        lo, hi = lo * 0.999, hi * 1.001
    norm = colors.Normalize(vmin=lo, vmax=hi)
    cmap = colormaps["viridis"]
    ax.plot_surface(
        xyz[..., 0],
        xyz[..., 1],
        xyz[..., 2],
        facecolors=cmap(norm(E)),
        rstride=1,
        cstride=1,
        linewidth=0,
        antialiased=False,
        shade=False,
    )
    r = float(np.abs(xyz).max())
    for setter in (ax.set_xlim, ax.set_ylim, ax.set_zlim):
        setter(-r, r)
    ax.set_box_aspect((1.0, 1.0, 1.0))
    ax.set_xlabel("x (GPa)")
    ax.set_ylabel("y (GPa)")
    ax.set_zlabel("z (GPa)")
    sm = cm.ScalarMappable(norm=norm, cmap=cmap)
    sm.set_array(E)
    fig.colorbar(sm, ax=ax, shrink=0.7, pad=0.08, label="Young's modulus E (GPa)")
    ax.set_title(title or "Directional Young's modulus")
    fig.text(
        0.01,
        0.99,
        "radius = E(n) along the unit vector n\naxes: Cartesian frame of the structure\n"
        f"E from {E.min():.4g} to {E.max():.4g} GPa",
        fontsize=8,
        va="top",
    )
    return _save(fig, path, fmt)


def _all_sections(C, quantity: str, n_angles: int) -> dict[str, Section]:
    return {plane: section_values(C, plane, n_angles, quantity) for plane in PLANES}


def _polar_panels(fig, sections: dict[str, Section]):
    axes = []
    for k, (plane, sec) in enumerate(sections.items()):
        ax = fig.add_subplot(1, len(sections), k + 1, projection="polar")
        i, j = PLANES[plane]
        ax.set_title(f"{plane} plane (0° = +{_AXIS_NAMES[i]}, 90° = +{_AXIS_NAMES[j]})", pad=14)
        axes.append((ax, sec))
    return axes


def _widen_mask(mask: np.ndarray) -> np.ndarray:
    """Extend a boolean run by one sample each side, so neighbouring runs share end points."""
    wide = mask.copy()
    wide[1:] |= mask[:-1]
    wide[:-1] |= mask[1:]
    return wide


def youngs_sections(
    C, out, title: str | None = None, n_angles: int = 361, return_data: bool = False
):
    """Polar plots of Young's modulus E(n) (GPa) for n in the xy, xz and yz planes.

    Returns the output path, or ``(path, sections)`` with ``return_data=True``, where
    ``sections`` maps each plane to the :class:`Section` that was drawn.
    """
    path, fmt = _output_path(out)
    sections = _all_sections(C, "youngs", n_angles)
    for sec in sections.values():
        _check_young(sec.values)
    _save(_youngs_sections_figure(sections, title), path, fmt)
    return (path, sections) if return_data else path


def _youngs_sections_figure(sections: dict[str, Section], title: str | None):
    fig = _new_figure((13.0, 4.8))
    for ax, sec in _polar_panels(fig, sections):
        label = f"E(n) (GPa)\nmin {sec.values.min():.4g}, max {sec.values.max():.4g}"
        ax.plot(sec.angles, sec.values, color="tab:blue", lw=1.8, label=label)
        ax.set_rlim(0.0, 1.08 * float(sec.values.max()))
        ax.set_rlabel_position(22.5)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.06), fontsize=8)
    fig.suptitle(title or "Young's modulus E(n) (GPa) in the coordinate planes", y=1.1)
    return fig


def compressibility_sections(
    C, out, title: str | None = None, n_angles: int = 361, return_data: bool = False
):
    """Polar plots of the linear compressibility beta(n) (1/TPa) in the xy, xz, yz planes.

    The radius is |beta|; directions where beta < 0 (the crystal expands along n under
    hydrostatic pressure) are drawn dashed in red and labelled as such in the legend.
    Returns the path, or ``(path, sections)`` with ``return_data=True``.
    """
    path, fmt = _output_path(out)
    sections = _all_sections(C, "compressibility", n_angles)
    _save(_compressibility_figure(sections, title), path, fmt)
    return (path, sections) if return_data else path


#: Legend entries of the compressibility sections.
NEGATIVE_LABEL = "β < 0, drawn as |β| (negative linear compressibility)"
POSITIVE_LABEL = "β > 0"


def _compressibility_figure(sections: dict[str, Section], title: str | None):
    fig = _new_figure((13.0, 4.8))
    for ax, sec in _polar_panels(fig, sections):
        beta = sec.values
        mag = np.abs(beta)
        neg = beta < 0
        handles = []
        if np.any(~neg):
            pos_r = np.where(_widen_mask(~neg), mag, np.nan)
            (h,) = ax.plot(sec.angles, pos_r, color="tab:blue", lw=1.8, ls="-")
            h.set_label(POSITIVE_LABEL)
            handles.append(h)
        if np.any(neg):
            neg_r = np.where(_widen_mask(neg), mag, np.nan)
            (h,) = ax.plot(sec.angles, neg_r, color="tab:red", lw=1.8, ls="--")
            h.set_label(NEGATIVE_LABEL)
            handles.append(h)
        top = float(mag.max())
        ax.set_rlim(0.0, 1.08 * top if top > 0 else 1.0)
        ax.set_rlabel_position(22.5)
        extra = "" if np.any(neg) else "\nβ > 0 in every direction of this plane"
        ax.legend(
            handles=handles,
            title=f"β(n) (1/TPa): min {beta.min():.4g}, max {beta.max():.4g}{extra}",
            loc="upper center",
            bbox_to_anchor=(0.5, -0.06),
            fontsize=8,
            title_fontsize=8,
        )
    fig.suptitle(title or "Linear compressibility β(n) (1/TPa) in the coordinate planes", y=1.1)
    return fig


# --------------------------------------------------------------------------------------
# parity
# --------------------------------------------------------------------------------------
_UPPER = np.triu_indices(6)
_COMPONENT_GROUPS = {
    # label -> predicate on (I, J), 0-based Voigt indices with I <= J
    "C11, C22, C33": lambda i, j: i == j and i < 3,
    "C12, C13, C23": lambda i, j: i != j and j < 3,
    "C44, C55, C66": lambda i, j: i == j and i >= 3,
    "other (normal-shear, shear-shear)": lambda i, j: i != j and j >= 3,
}


def _batch(x, name: str) -> np.ndarray:
    v = _as_voigt(x, name)
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
    path, fmt = _output_path(out)
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

    fig = _new_figure((12.0, 5.6))
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
        f"21 Voigt components of {p.shape[0]} tensor(s): MAE {_mae(p, t):.3g} GPa "
        "(36 entries, as evaluate)"
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
    return _save(fig, path, fmt)


def _identity_line(ax, values: np.ndarray, label: str = "y = x") -> None:
    v = values[np.isfinite(values)]
    lo, hi = (float(v.min()), float(v.max())) if v.size else (0.0, 1.0)
    pad = 0.05 * (hi - lo) if hi > lo else 1.0
    lim = (lo - pad, hi + pad)
    ax.plot(lim, lim, color="0.3", lw=1.0, ls="--", label=label, zorder=0)
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_aspect("equal", adjustable="box")


# --------------------------------------------------------------------------------------
# several figures at once
# --------------------------------------------------------------------------------------
def plot_tensor(
    C,
    out_prefix,
    kinds: Sequence[str] = _KINDS,
    fmt: str = "png",
    title: str | None = None,
    resolution: int = 60,
) -> list[Path]:
    """Write several figures of one tensor; return their paths in the order of ``kinds``.

    ``kinds`` are among ``"surface"`` (:func:`youngs_surface`), ``"sections"``
    (:func:`youngs_sections`) and ``"compressibility"`` (:func:`compressibility_sections`);
    files are named ``<out_prefix>_youngs_surface.<fmt>`` and so on. ``resolution`` is
    passed to :func:`youngs_surface`.
    """
    suffix = "." + str(fmt).lower().lstrip(".")
    if suffix not in _FORMATS:
        raise ValueError(f"fmt must be one of {sorted(f[1:] for f in _FORMATS)}, got {fmt!r}")
    if isinstance(kinds, str):
        kinds = (kinds,)
    unknown = [k for k in kinds if k not in _KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty selection of {list(_KINDS)}, got {kinds!r}")
    _single_tensor(C)  # fail before writing anything
    prefix = str(out_prefix)
    writers = {
        "surface": ("youngs_surface", youngs_surface),
        "sections": ("youngs_sections", youngs_sections),
        "compressibility": ("compressibility_sections", compressibility_sections),
    }
    paths = []
    for kind in kinds:
        stem, fn = writers[kind]
        extra = {"resolution": resolution} if kind == "surface" else {}
        paths.append(fn(C, f"{prefix}_{stem}{suffix}", title=title, **extra))
    return paths
