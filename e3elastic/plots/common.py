"""What every figure shares: the output path and format, the tensor checks, a matplotlib figure
on the Agg canvas (matplotlib imported only here, when a figure is drawn) and saving it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from e3elastic import tensors

FORMATS = {".png": "png", ".svg": "svg"}


def output_path(out) -> tuple[Path, str]:
    path = Path(out)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        want = " or ".join(FORMATS)
        raise ValueError(
            f"cannot tell the image format of {str(path)!r}: its suffix must be {want}"
        )
    return path, fmt


def as_voigt(C, name: str) -> np.ndarray:
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


def single_tensor(C) -> np.ndarray:
    """One invertible elastic tensor in Voigt form (6, 6), GPa."""
    v = as_voigt(C, "elastic tensor")
    if v.shape != (6, 6):
        raise ValueError(
            f"expected one elastic tensor, got a batch of shape {v.shape[:-2]}; "
            "plot each tensor separately"
        )
    tensors.compliance_voigt(v)  # raises ValueError for a singular tensor
    return v


def new_figure(figsize: tuple[float, float]):
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


def save(fig, path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt, dpi=150, bbox_inches="tight", pad_inches=0.15)
    return path
