"""Directional figures of one elastic tensor: the 3D surface of Young's modulus, and polar
sections of Young's modulus and of the linear compressibility in the coordinate planes.

Directions are unit vectors in the Cartesian frame of the tensor. :func:`section_values` gives
the numbers behind the polar sections without matplotlib.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from e3elastic import tensors

from .common import FORMATS, new_figure, output_path, save, single_tensor

#: Plane name -> the two Cartesian axes (0 = x, 1 = y, 2 = z) that span it. The angle in a
#: plane is measured from its first axis towards its second.
PLANES: dict[str, tuple[int, int]] = {"xy": (0, 1), "xz": (0, 2), "yz": (1, 2)}
_AXIS_NAMES = "xyz"
_QUANTITIES = {
    # name -> (symbol, unit, scale from the tensors module's unit to the plotted one)
    "youngs": ("E", "GPa", 1.0),
    "compressibility": ("β", "1/TPa", 1000.0),
}
_KINDS = ("surface", "sections", "compressibility")


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
    v = single_tensor(C)
    angles = np.linspace(0.0, 2.0 * math.pi, int(n_angles))
    n = _unit_directions(plane, angles)
    values = _property(v, quantity, n)
    return Section(plane, quantity, angles, n, values, _QUANTITIES[quantity][1])


# --------------------------------------------------------------------------------------
# Young's modulus
# --------------------------------------------------------------------------------------
def youngs_surface(C, out, title: str | None = None, resolution: int = 60) -> Path:
    """3D surface r(n) = E(n) n of the directional Young's modulus, coloured by E (GPa).

    ``resolution`` is the number of polar angles; twice as many azimuths are used.
    """
    path, fmt = output_path(out)
    if isinstance(resolution, bool) or not isinstance(resolution, int | np.integer):
        raise ValueError(f"resolution must be an integer, got {resolution!r}")
    if resolution < 8:
        raise ValueError(f"resolution must be at least 8, got {resolution}")
    v = single_tensor(C)
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

    fig = new_figure((7.0, 6.0))
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
    # the title above the figure, the notes in the axes' title slot below it: the layout
    # makes room for both, so neither is drawn over the other
    fig.suptitle(title or "Directional Young's modulus")
    ax.set_title(
        "radius = E(n) along the unit vector n\naxes: Cartesian frame of the structure\n"
        f"E from {E.min():.4g} to {E.max():.4g} GPa",
        loc="left",
        fontsize=8,
    )
    return save(fig, path, fmt)


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
    path, fmt = output_path(out)
    sections = _all_sections(C, "youngs", n_angles)
    for sec in sections.values():
        _check_young(sec.values)
    save(_youngs_sections_figure(sections, title), path, fmt)
    return (path, sections) if return_data else path


def _youngs_sections_figure(sections: dict[str, Section], title: str | None):
    fig = new_figure((13.0, 4.8))
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
    path, fmt = output_path(out)
    sections = _all_sections(C, "compressibility", n_angles)
    save(_compressibility_figure(sections, title), path, fmt)
    return (path, sections) if return_data else path


#: Legend entries of the compressibility sections.
NEGATIVE_LABEL = "β < 0, drawn as |β| (negative linear compressibility)"
POSITIVE_LABEL = "β > 0"


def _compressibility_figure(sections: dict[str, Section], title: str | None):
    fig = new_figure((13.0, 4.8))
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
    if suffix not in FORMATS:
        raise ValueError(f"fmt must be one of {sorted(f[1:] for f in FORMATS)}, got {fmt!r}")
    if isinstance(kinds, str):
        kinds = (kinds,)
    unknown = [k for k in kinds if k not in _KINDS]
    if unknown or not kinds:
        raise ValueError(f"kinds must be a non-empty selection of {list(_KINDS)}, got {kinds!r}")
    single_tensor(C)  # fail before writing anything
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
