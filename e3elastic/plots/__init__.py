"""Figures of elastic tensors: directional Young's modulus, linear compressibility, parity.

Every plotting function writes one file whose format follows the suffix of ``out``
(``.png`` or ``.svg``), returns its :class:`~pathlib.Path`, and raises ``ValueError`` for an
unknown suffix or an invalid tensor before anything is drawn.

Directions are unit vectors in the Cartesian frame of the tensor, which for a tensor
predicted from a structure is the frame of the structure's Cartesian (Å) coordinates.

matplotlib is imported only when a figure is drawn, so this package imports without it;
drawing then raises ``ImportError`` saying how to install it. Figures are rendered with
the non-interactive Agg canvas and never touch pyplot's global state, so the functions are
safe to call from scripts, servers and tests.

The numbers behind the polar sections are available without matplotlib from
:func:`section_values`.
"""

from .directional import (
    NEGATIVE_LABEL,
    PLANES,
    POSITIVE_LABEL,
    Section,
    compressibility_sections,
    plot_tensor,
    section_values,
    youngs_sections,
    youngs_surface,
)
from .parity import parity

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
