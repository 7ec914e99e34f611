"""Periodic neighbour list: every (sender, receiver, integer cell shift) within a cutoff.

Also the checks of its inputs (cutoff, lattice, positions) and :class:`GraphError`, which every
part of :mod:`e3elastic.graph` raises.

The search is dense numpy, vectorised over receivers and images. vesin's cell list gives the same
lists bit for bit and is much faster on cells of 400 or more sites, but not on this data set
(at most 200 sites), and importing vesin imports torch wherever torch is installed (about 4 s
on every start of ``e3elastic predict``); benchmarks/bench_neighbours.py measures both.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import E3ElasticError

#: Default neighbour cutoff (Angstrom).
DEFAULT_CUTOFF = 5.0

# A lattice whose volume is below this fraction of |a||b||c| counts as degenerate.
_MIN_NORMALISED_VOLUME = 1e-6
# Two distinct sites (or a site and another's image) closer than this are an error: their edge
# vector would be (nearly) zero, which gives NaN directions in the spherical harmonics.
_MIN_DISTANCE = 1e-3
# At most this many periodic images are searched (a guard against absurdly thin cells).
_MAX_IMAGES = 100_000
# Largest temporary of the neighbour search, in float64 elements (about 48 MB).
_CHUNK_ELEMENTS = 6_000_000


class GraphError(E3ElasticError, ValueError):
    """A structure cannot be turned into a graph (or graphs into a batch)."""


class OverlapError(GraphError):
    """Two sites (or a site and a periodic image) coincide."""


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def check_cutoff(cutoff: Any) -> float:
    """``cutoff`` as a float; :class:`GraphError` unless it is a positive finite length."""
    try:
        c = float(cutoff)
    except (TypeError, ValueError):
        c = math.nan
    if not (math.isfinite(c) and c > 0):
        raise GraphError(f"cutoff must be a positive finite length in Angstrom, got {cutoff!r}")
    return c


def check_lattice(lattice: Any, name: str) -> np.ndarray:
    """``lattice`` as a ``(3, 3)`` float64 array; :class:`GraphError` when it is not finite or
    is degenerate (volume below ``1e-6 |a||b||c|``)."""
    try:
        lat = np.asarray(lattice, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise GraphError(f"{name}: lattice is not a (3, 3) array of numbers: {err}") from None
    if lat.shape != (3, 3):
        raise GraphError(f"{name}: lattice must have shape (3, 3), got {lat.shape}")
    if not np.all(np.isfinite(lat)):
        raise GraphError(f"{name}: lattice contains NaN or inf")
    lengths = np.linalg.norm(lat, axis=1)
    volume = abs(float(np.linalg.det(lat)))
    if np.any(lengths <= 0) or volume <= _MIN_NORMALISED_VOLUME * float(np.prod(lengths)):
        raise GraphError(
            f"{name}: degenerate (near-singular) lattice: volume {volume:.3g} Å^3 with "
            f"vector lengths {np.round(lengths, 4).tolist()} Å"
        )
    return lat


def check_positions(positions: Any, name: str) -> np.ndarray:
    """``positions`` as a non-empty ``(n, 3)`` float64 array of finite numbers."""
    try:
        pos = np.asarray(positions, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise GraphError(f"{name}: positions are not an (n, 3) array of numbers: {err}") from None
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise GraphError(f"{name}: positions must have shape (n, 3), got {pos.shape}")
    if pos.shape[0] == 0:
        raise GraphError(f"{name}: empty structure (no sites)")
    bad = np.flatnonzero(~np.all(np.isfinite(pos), axis=1))
    if bad.size:
        raise GraphError(f"{name}: site {int(bad[0])} has NaN or inf coordinates")
    return pos


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------


def _image_shifts(lattice: np.ndarray, cutoff: float, name: str) -> np.ndarray:
    """All integer shifts that can reach within ``cutoff`` of a point of the (wrapped) cell.

    With ``b_i`` the reciprocal rows (no 2 pi), ``b_i . x`` is the fractional coordinate i of x,
    so ``|x| >= |f_i| / |b_i|``. Wrapped fractional differences lie in (-1, 1), hence
    ``|n_i| <= ceil(cutoff * |b_i|)`` covers every neighbour.
    """
    recip = np.linalg.inv(lattice).T  # rows b_i with a_i . b_j = delta_ij
    n = np.ceil(cutoff * np.linalg.norm(recip, axis=1) - 1e-12).astype(np.int64)
    n_images = int(np.prod(2 * n + 1))
    if n_images > _MAX_IMAGES:
        raise GraphError(
            f"{name}: cell too thin for cutoff {cutoff} Å ({n_images} periodic images, plane "
            f"spacings {np.round(1 / np.linalg.norm(recip, axis=1), 4).tolist()} Å); "
            "check the lattice"
        )
    axes = [np.arange(-k, k + 1) for k in n]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    return grid  # (n_images, 3), lexicographic order


def _wrap_into_cell(pos: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(wrapped, k)`` with fractional coordinates of ``wrapped`` in [0, 1) and
    ``pos = wrapped + k @ lat`` for integer ``k`` ``(n, 3)``."""
    frac = pos @ np.linalg.inv(lat)
    k = np.floor(frac)
    fw = frac - k
    over = fw >= 1.0  # -1e-17 - floor(...) rounds to 1.0
    fw[over] -= 1.0
    k[over] += 1.0
    return fw @ lat, k.astype(np.int64)


def _search_wrapped(
    wrapped: np.ndarray,
    shifts: np.ndarray,
    lat: np.ndarray,
    cutoff: float,
    max_edges: int | None,
    name: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(senders, receivers, image, d2)`` of every pair of wrapped sites within ``cutoff``,
    with ``image`` indexing ``shifts``; vectorised over receivers and images, chunked over
    senders so the largest temporary stays under ~50 MB."""
    n, m = wrapped.shape[0], shifts.shape[0]
    zero_image = int(np.flatnonzero(np.all(shifts == 0, axis=1))[0])
    targets = wrapped[:, None, :] + (shifts.astype(np.float64) @ lat)[None, :, :]  # (n, M, 3)
    cut2 = cutoff * cutoff
    rows = max(1, _CHUNK_ELEMENTS // (3 * n * m))
    found_s, found_r, found_m, found_d2 = [], [], [], []
    total = 0
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        diff = targets[None, :, :, :] - wrapped[start:stop, None, None, :]  # (b, n, M, 3)
        d2 = np.einsum("bnmx,bnmx->bnm", diff, diff)
        keep = d2 <= cut2
        local = np.arange(stop - start)
        keep[local, start + local, zero_image] = False  # the zero-shift self pair
        s, r, im = np.nonzero(keep)
        total += s.size
        if max_edges is not None and total > max_edges:
            raise GraphError(
                f"{name}: more than max_edges={max_edges} edges within {cutoff} Å "
                f"(already {total} after {stop} of {n} sites)"
            )
        found_s.append(s + start)
        found_r.append(r)
        found_m.append(im)
        found_d2.append(d2[s, r, im])
    return tuple(np.concatenate(x) for x in (found_s, found_r, found_m, found_d2))


def _check_no_overlap(senders, receivers, cell_shifts, dist, name: str) -> None:
    close = np.flatnonzero(dist < _MIN_DISTANCE)
    if close.size:
        e = int(close[0])
        raise OverlapError(
            f"{name}: sites {int(senders[e])} and {int(receivers[e])} (shift "
            f"{cell_shifts[e].tolist()}) overlap: distance {dist[e]:.2e} Å"
        )


def neighbour_list(
    positions: Any,
    lattice: Any,
    cutoff: float = DEFAULT_CUTOFF,
    *,
    max_edges: int | None = None,
    name: str = "structure",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Periodic neighbour list: all (i, j, shift) with ``0 < d <= cutoff``.

    Args:
        positions: ``(n, 3)`` Cartesian coordinates (Angstrom), inside the cell or not.
        lattice: ``(3, 3)``, rows are lattice vectors (Angstrom).
        cutoff: radius (Angstrom).
        max_edges: raise :class:`GraphError` when the list would be longer than this.
        name: how errors name the structure.

    Returns:
        ``senders (E,) int32, receivers (E,) int32, cell_shifts (E, 3) int32, distances (E,)``,
        sorted by (sender, receiver, shift), where
        ``positions[r] - positions[s] + shift @ lattice`` has length ``distance``.
    """
    cutoff = check_cutoff(cutoff)
    pos = check_positions(positions, name)
    lat = check_lattice(lattice, name)
    wrapped, k = _wrap_into_cell(pos, lat)
    shifts = _image_shifts(lat, cutoff, name)  # (M, 3)
    s, r, image, d2 = _search_wrapped(wrapped, shifts, lat, cutoff, max_edges, name)
    senders, receivers = s.astype(np.int32), r.astype(np.int32)
    # Shift in terms of the caller's (unwrapped) positions.
    cell_shifts = (shifts[image] + k[senders] - k[receivers]).astype(np.int32)
    dist = np.sqrt(d2)
    _check_no_overlap(senders, receivers, cell_shifts, dist, name)
    return senders, receivers, cell_shifts, dist
