"""Tests of e3elastic.graph: periodic neighbour lists, padded batches in buckets, the npz cache.

Expected edges come from a brute-force search written here (a plain loop over a generous block of
integer cell shifts), never from the code under test. Real structures are read straight from the
raw JSON files in the data folder (stdlib json + gzip); tests that need them skip with a reason
when the folder is absent.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import itertools
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import random_rotation, require_data

from e3elastic import graph as G
from e3elastic.graph import cache as graph_cache

MATMINER = "matminer_elastic_tensor_2015.json.gz"
ZEOLITES = "coudert_zeolites_sio2_b3lyp_d2_combined.json.gz"
TOL = 1e-9  # Angstrom: distances this close to the cutoff count as ties

# Real structures are pinned to two named files (published sets that do not change when other
# files join the data folder), and read from them alone.
# One entry of MATMINER per crystal system, one each of: tetragonal, trigonal, cubic,
# orthorhombic, hexagonal, monoclinic (test_real_ids_cover_the_crystal_systems checks this).
REAL_IDS = ("mp-10003", "mp-10010", "mp-10015", "mp-10021", "mp-10125", "mp-10390")
REAL_SYSTEMS = ("tetragonal", "trigonal", "cubic", "orthorhombic", "hexagonal", "monoclinic")
# An orthorhombic SiO2 zeolite of ZEOLITES (36 sites).
ZEOLITE_ID = "BIK"


# --------------------------------------------------------------------------------------------
# independent references
# --------------------------------------------------------------------------------------------
def brute_force(pos: np.ndarray, lattice: np.ndarray, cutoff: float) -> dict[tuple, float]:
    """All (i, j, s0, s1, s2) with 0 < |pos[j] - pos[i] + s @ lattice| <= cutoff + TOL.

    The shift range is worked out from the cell heights (plane spacings) and the spread of the
    fractional coordinates, plus one spare shell, and then every shift in the block is tried.
    """
    pos = np.asarray(pos, float)
    lattice = np.asarray(lattice, float)
    frac = np.linalg.solve(lattice.T, pos.T).T
    volume = abs(np.linalg.det(lattice))
    # height along a_i is the volume over the area of the face spanned by the other two
    faces = np.cross(lattice[[1, 2, 0]], lattice[[2, 0, 1]])
    heights = volume / np.linalg.norm(faces, axis=1)
    spread = frac.max(axis=0) - frac.min(axis=0)
    reach = np.ceil(cutoff / heights + spread).astype(int) + 1
    out: dict[tuple, float] = {}
    for s in itertools.product(*(range(-r, r + 1) for r in reach)):
        d = pos[None, :, :] + np.asarray(s, float) @ lattice - pos[:, None, :]  # [i, j]
        dist = np.sqrt(np.sum(d * d, axis=-1))
        for i, j in zip(*np.nonzero(dist <= cutoff + TOL), strict=True):
            if i == j and s == (0, 0, 0):
                continue
            out[(int(i), int(j), *s)] = float(dist[i, j])
    return out


def edge_keys(g) -> list[tuple]:
    return [
        (int(i), int(j), *map(int, s))
        for i, j, s in zip(g.senders, g.receivers, g.cell_shifts, strict=True)
    ]


def my_vectors(pos, lattice, senders, receivers, shifts) -> np.ndarray:
    return pos[receivers] - pos[senders] + shifts.astype(float) @ lattice


def assert_matches_brute_force(pos, lattice, cutoff, senders, receivers, shifts, dist=None):
    ref = brute_force(pos, lattice, cutoff)
    strict = {k for k, d in ref.items() if d <= cutoff - TOL}
    got = [
        (int(i), int(j), *map(int, s)) for i, j, s in zip(senders, receivers, shifts, strict=True)
    ]
    got_set = set(got)
    assert len(got_set) == len(got), "duplicate edges"
    missing = strict - got_set
    extra = got_set - set(ref)
    assert not missing, f"{len(missing)} missing edges, e.g. {sorted(missing)[:5]}"
    assert not extra, f"{len(extra)} edges beyond the cutoff, e.g. {sorted(extra)[:5]}"
    vec = my_vectors(np.asarray(pos, float), np.asarray(lattice, float), senders, receivers, shifts)
    lengths = np.linalg.norm(vec, axis=1)
    want = np.array([ref[k] for k in got])
    np.testing.assert_allclose(lengths, want, rtol=0, atol=1e-9)
    assert np.all(lengths > 0) and np.all(lengths <= cutoff + TOL)
    if dist is not None:
        np.testing.assert_allclose(dist, want, rtol=0, atol=1e-9)
    return ref


def _z(symbol: str) -> int:
    pmg = pytest.importorskip("pymatgen.core")
    return int(pmg.Element(symbol).Z)


# --------------------------------------------------------------------------------------------
# real structures, read from the raw JSON
# --------------------------------------------------------------------------------------------
def _arrays_from_dict(d: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(lattice, fractional coordinates, element symbols) of a pymatgen Structure dict."""
    lattice = np.array(d["lattice"]["matrix"], float)
    frac = np.array([site["abc"] for site in d["sites"]], float)
    symbols = []
    for site in d["sites"]:
        (sp,) = site["species"]
        assert float(sp.get("occu", 1)) == 1.0
        symbols.append(sp["element"])
    return lattice, frac, symbols


@functools.cache
def _matminer_rows(path: str) -> dict[str, dict]:
    raw = json.load(gzip.open(path))
    cols = raw["columns"]
    idc, sc = cols.index("material_id"), cols.index("structure")
    return {row[idc]: row[sc] for row in raw["data"]}


@functools.cache
def _zeolites(path: str) -> dict[str, dict]:
    return {e["framework"]: e["structure"] for e in json.load(gzip.open(path))}


def real_structure_dict(key: str) -> dict:
    if key == ZEOLITE_ID:
        return _zeolites(str(require_data(ZEOLITES)))[key]
    return _matminer_rows(str(require_data(MATMINER)))[key]


def real_arrays(key: str):
    lattice, frac, symbols = _arrays_from_dict(real_structure_dict(key))
    return frac @ lattice, lattice, np.array([_z(s) for s in symbols])


def test_real_ids_cover_the_crystal_systems():
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    def system(key):
        return SpacegroupAnalyzer(
            Structure.from_dict(real_structure_dict(key))
        ).get_crystal_system()

    assert tuple(system(k) for k in REAL_IDS) == REAL_SYSTEMS
    zeolite = Structure.from_dict(real_structure_dict(ZEOLITE_ID))
    assert SpacegroupAnalyzer(zeolite).get_crystal_system() == "orthorhombic"
    assert len(zeolite) == 36


@pytest.fixture(scope="session")
def real_dataset(tmp_path_factory):
    """Every matminer 2015 structure as (id, pymatgen Structure), and their graphs (cutoff 5)
    built through the disk cache. Also returns the build time and the cache folder."""
    pmg = pytest.importorskip("pymatgen.core")
    rows = _matminer_rows(str(require_data(MATMINER)))
    items = [(mid, pmg.Structure.from_dict(d)) for mid, d in rows.items()]
    cache = tmp_path_factory.mktemp("graph-cache")
    t0 = time.perf_counter()
    graphs = G.build_graphs_cached(items, 5.0, cache)
    seconds = time.perf_counter() - t0
    return items, graphs, seconds, cache


# --------------------------------------------------------------------------------------------
# synthetic cells
# --------------------------------------------------------------------------------------------
def _synthetic() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, float]]:
    """name -> (Cartesian positions, lattice rows, Z, cutoff). No distance ties at the cutoff."""
    out = {}
    # one atom, a = 2, cutoff 4.5: every image with |n|^2 <= 5 (5 shells)
    out["sc-1atom-5shells"] = (np.zeros((1, 3)), 2.0 * np.eye(3), np.array([26]), 4.5)
    # very skewed triclinic cell: plane spacings well under 1 Angstrom
    lat = np.array([[4.0, 0.0, 0.0], [3.7, 0.8, 0.0], [3.6, 0.5, 0.9]])
    frac = np.array([[0.0, 0.0, 0.0], [0.3, 0.6, 0.2], [0.7, 0.1, 0.55]])
    out["skewed-triclinic"] = (frac @ lat, lat, np.array([8, 14, 8]), 3.2)
    # atoms far outside [0, 1) in fractional coordinates, one at -1e-17 and one at exactly 1
    lat = np.array([[3.1, 0.0, 0.0], [0.0, 3.6, 0.0], [-1.1, 0.0, 4.2]])
    frac = np.array([[1.3, -0.7, 2.2], [-2.1, 0.5, 0.5], [0.25, 0.25, -1e-17], [1.0, 0.5, 3.0]])
    out["outside-cell"] = (frac @ lat, lat, np.array([3, 9, 11, 17]), 4.1)
    # left-handed lattice (negative determinant)
    lat = np.array([[0.0, 3.3, 0.2], [2.9, 0.1, 0.0], [0.3, 0.0, 3.8]])
    frac = np.array([[0.1, 0.2, 0.3], [0.6, 0.7, 0.8]])
    out["left-handed"] = (frac @ lat, lat, np.array([55, 17]), 4.3)
    # small cell, cutoff of several lattice constants
    lat = 2.5 * np.eye(3)
    out["cscl-big-cutoff"] = (
        np.array([[0, 0, 0], [1.25, 1.25, 1.25]]),
        lat,
        np.array([55, 17]),
        6.1,
    )
    # random cells (seeded)
    rng = np.random.default_rng(7)
    for k in range(4):
        lat = rng.normal(size=(3, 3)) * 1.2 + np.diag(rng.uniform(2.5, 5.0, size=3))
        n = int(rng.integers(1, 7))
        frac = rng.uniform(-1.5, 2.5, size=(n, 3))
        out[f"random-{k}"] = (frac @ lat, lat, rng.integers(1, 101, size=n), rng.uniform(2, 6))
    return out


SYNTHETIC = _synthetic()


# --------------------------------------------------------------------------------------------
# 0. module hygiene
# --------------------------------------------------------------------------------------------
def test_import_is_numpy_only():
    code = (
        "import sys, e3elastic.graph\n"
        "bad = [m for m in ('jax', 'pymatgen', 'e3nn_jax', 'flax') if m in sys.modules]\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, f"importing e3elastic.graph pulled in {res.stdout}{res.stderr}"


# --------------------------------------------------------------------------------------------
# 1. edges equal a brute-force periodic neighbour search
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_edges_match_brute_force_synthetic(name):
    pos, lat, z, cutoff = SYNTHETIC[name]
    g = G.build_graph(pos, lat, z, cutoff, id=name, allow_isolated=True)
    assert_matches_brute_force(pos, lat, cutoff, g.senders, g.receivers, g.cell_shifts)
    s, r, sh, dist = G.neighbour_list(pos, lat, cutoff)
    assert_matches_brute_force(pos, lat, cutoff, s, r, sh, dist)


def test_one_atom_cell_bonds_to_its_own_images():
    """a = 2, cutoff 4.5: the images with n.n in {1, 2, 3, 4, 5}; 6 + 12 + 8 + 6 + 24 = 56."""
    pos, lat, z, cutoff = SYNTHETIC["sc-1atom-5shells"]
    g = G.build_graph(pos, lat, z, cutoff)
    assert g.n_edge == 56
    assert np.all(g.senders == 0) and np.all(g.receivers == 0)
    n2 = np.sum(g.cell_shifts.astype(int) ** 2, axis=1)
    assert sorted(np.bincount(n2).tolist()) == sorted([0, 6, 12, 8, 6, 24])


def test_edges_at_exactly_the_cutoff_are_kept():
    """a = 2 with cutoff 2 or 4: the images at exactly the cutoff are edges (d <= cutoff)."""
    for cutoff, n_edge in [(2.0, 6), (4.0, 6 + 12 + 8 + 6)]:
        g = G.build_graph(np.zeros((1, 3)), 2.0 * np.eye(3), [26], cutoff)
        assert g.n_edge == n_edge
        *_, dist = G.neighbour_list(np.zeros((1, 3)), 2.0 * np.eye(3), cutoff)
        assert dist.max() == cutoff


@pytest.mark.parametrize(
    ("key", "cutoff"),
    [*((k, 5.0) for k in REAL_IDS), ("mp-10015", 7.5), ("mp-10021", 3.0), (ZEOLITE_ID, 5.0)],
)
def test_edges_match_brute_force_real(key, cutoff):
    pos, lat, z = real_arrays(key)
    g = G.build_graph(pos, lat, z, cutoff, id=key)
    assert_matches_brute_force(pos, lat, cutoff, g.senders, g.receivers, g.cell_shifts)
    assert g.n_edge > 0


def test_edges_match_brute_force_real_sample(real_dataset):
    """A seeded sample of the cached real graphs (the cache path, not just build_graph)."""
    items, graphs, _, _ = real_dataset
    rng = np.random.default_rng(11)
    sizes = np.array([g.n_node for g in graphs])
    small = np.flatnonzero(sizes <= 40)
    for i in rng.choice(small, size=30, replace=False):
        mid, _ = items[i]
        d = _matminer_rows(str(require_data(MATMINER)))[mid]
        lattice, frac, _ = _arrays_from_dict(d)
        g = graphs[i]
        assert g.id == mid
        np.testing.assert_allclose(g.lattice, lattice, atol=1e-12)
        np.testing.assert_allclose(g.positions, frac @ lattice, atol=1e-9)
        assert_matches_brute_force(
            g.positions, g.lattice, 5.0, g.senders, g.receivers, g.cell_shifts
        )


# --------------------------------------------------------------------------------------------
# 2. structural properties
# --------------------------------------------------------------------------------------------
def _structural_checks(g, n_node):
    assert g.senders.dtype == np.int32 and g.receivers.dtype == np.int32
    assert g.cell_shifts.dtype == np.int32 and g.cell_shifts.shape == (g.n_edge, 3)
    assert g.species.dtype == np.int32 and g.species.shape == (n_node,)
    assert g.positions.shape == (n_node, 3) and g.lattice.shape == (3, 3)
    keys = edge_keys(g)
    assert len(set(keys)) == len(keys)
    reverse = {(j, i, -a, -b, -c) for i, j, a, b, c in keys}
    assert reverse == set(keys), "edges do not come in reverse pairs"
    assert not any(i == j and (a, b, c) == (0, 0, 0) for i, j, a, b, c in keys)
    assert keys == sorted(keys), "edges are not sorted by (sender, receiver, shift)"
    assert np.all((g.senders >= 0) & (g.senders < n_node))
    assert np.all((g.receivers >= 0) & (g.receivers < n_node))


@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_structure_synthetic(name):
    pos, lat, z, cutoff = SYNTHETIC[name]
    g = G.build_graph(pos, lat, z, cutoff, allow_isolated=True)
    _structural_checks(g, len(z))
    assert g.species.tolist() == [int(x) - 1 for x in z]
    assert g.cutoff == cutoff
    np.testing.assert_array_equal(g.positions, pos)  # the caller's positions, not wrapped
    np.testing.assert_array_equal(g.lattice, lat)


@pytest.mark.parametrize("key", [*REAL_IDS, ZEOLITE_ID])
def test_structure_real_and_species(key):
    lattice, frac, symbols = _arrays_from_dict(real_structure_dict(key))
    g = G.build_graph(frac @ lattice, lattice, [_z(s) for s in symbols], 5.0, id=key)
    _structural_checks(g, len(symbols))
    assert g.species.tolist() == [_z(s) - 1 for s in symbols]
    assert [G.SYMBOLS[i] for i in g.species] == symbols
    assert g.id == key


@pytest.mark.parametrize("key", [*REAL_IDS, ZEOLITE_ID])
def test_structure_to_graph_matches_build_graph(key):
    pmg = pytest.importorskip("pymatgen.core")
    d = real_structure_dict(key)
    lattice, frac, symbols = _arrays_from_dict(d)
    a = G.structure_to_graph(pmg.Structure.from_dict(d), 5.0, id=key)
    b = G.build_graph(frac @ lattice, lattice, [_z(s) for s in symbols], 5.0, id=key)
    for field in ("species", "senders", "receivers", "cell_shifts"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
    np.testing.assert_allclose(a.positions, b.positions, atol=1e-12)
    np.testing.assert_allclose(a.lattice, b.lattice, atol=0)
    assert a.id == b.id == key and a.cutoff == b.cutoff == 5.0
    # without an id the graph's id stays empty
    assert G.structure_to_graph(pmg.Structure.from_dict(d), 5.0).id == ""


def test_species_index_table():
    assert G.species_index([1, 8, 14, 100]).tolist() == [0, 7, 13, 99]
    assert G.atomic_numbers(G.species_index([1, 8, 14, 100])).tolist() == [1, 8, 14, 100]
    assert G.N_SPECIES == 100 and G.SYMBOLS[0] == "H" and G.SYMBOLS[25] == "Fe"
    assert G.SYMBOLS[99] == "Fm" and G.SYMBOLS[13] == "Si"
    for bad in ([0], [101], [-3], [1.5], [np.nan]):
        with pytest.raises(G.GraphError, match="atomic number"):
            G.species_index(bad, name="X1")


# --------------------------------------------------------------------------------------------
# 3. rotation
# --------------------------------------------------------------------------------------------
def _rotation_case(pos, lat, z, cutoff, rot):
    g = G.build_graph(pos, lat, z, cutoff, allow_isolated=True)
    h = G.build_graph(pos @ rot.T, lat @ rot.T, z, cutoff, allow_isolated=True)
    assert set(edge_keys(g)) == set(edge_keys(h))
    vg = dict(
        zip(
            edge_keys(g),
            my_vectors(g.positions, g.lattice, g.senders, g.receivers, g.cell_shifts),
            strict=True,
        )
    )
    vh = dict(
        zip(
            edge_keys(h),
            my_vectors(h.positions, h.lattice, h.senders, h.receivers, h.cell_shifts),
            strict=True,
        )
    )
    keys = list(vg)
    a = np.array([vg[k] for k in keys]) @ rot.T
    b = np.array([vh[k] for k in keys])
    np.testing.assert_allclose(b, a, atol=1e-9)
    # edge_vectors (the helper the tests of the model will use) agrees too
    np.testing.assert_allclose(G.edge_vectors(h), G.edge_vectors(g) @ rot.T, atol=1e-9)


@pytest.mark.parametrize("improper", [False, True])
@pytest.mark.parametrize("name", ["skewed-triclinic", "outside-cell", "cscl-big-cutoff"])
def test_rotation_synthetic(name, improper, rng):
    pos, lat, z, cutoff = SYNTHETIC[name]
    _rotation_case(pos, lat, z, cutoff, random_rotation(rng, improper))


@pytest.mark.parametrize("key", ["mp-10390", "mp-10010", ZEOLITE_ID])
def test_rotation_real(key, rng):
    pos, lat, z = real_arrays(key)
    for improper in (False, True):
        _rotation_case(pos, lat, z, 5.0, random_rotation(rng, improper))


# --------------------------------------------------------------------------------------------
# 4. errors
# --------------------------------------------------------------------------------------------
def _isolated_case():
    lat = 20.0 * np.eye(3)
    pos = np.array([[0.0, 0.0, 0.0], [1.5, 0.0, 0.0], [10.0, 10.0, 10.0]])
    return pos, lat, np.array([8, 8, 26])


def test_isolated_atom_is_named():
    pos, lat, z = _isolated_case()
    with pytest.raises(G.GraphError, match=r"mp-isolated-1.*site 2 \(Fe\).*allow_isolated"):
        G.build_graph(pos, lat, z, 3.0, id="mp-isolated-1")
    g = G.build_graph(pos, lat, z, 3.0, id="mp-isolated-1", allow_isolated=True)
    assert g.n_node == 3
    assert set(edge_keys(g)) == {(0, 1, 0, 0, 0), (1, 0, 0, 0, 0)}
    assert 2 not in g.senders and 2 not in g.receivers


def test_isolated_atom_is_named_from_structure():
    pmg = pytest.importorskip("pymatgen.core")
    pos, lat, z = _isolated_case()
    s = pmg.Structure(lat, [int(x) for x in z], pos, coords_are_cartesian=True)
    with pytest.raises(G.GraphError, match="mp-lonely"):
        G.structure_to_graph(s, 3.0, id="mp-lonely")
    with pytest.raises(G.GraphError, match="FeO2"):  # no id: the reduced formula names it
        G.structure_to_graph(s, 3.0)
    with pytest.raises(G.GraphError, match="mp-lonely"):
        G.build_graphs_cached([("mp-lonely", s)], 3.0)
    assert G.structure_to_graph(s, 3.0, allow_isolated=True).n_edge == 2


@pytest.mark.parametrize(
    ("lattice", "match"),
    [
        (np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 0]]), "degenerate"),
        (np.zeros((3, 3)), "degenerate"),
        (np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 1.0, 1e-9]]), "degenerate"),
        (np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1e-9]]), "too thin"),
        (np.array([[np.nan, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]), "NaN or inf"),
        (np.array([[np.inf, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]), "NaN or inf"),
        (np.eye(2), "shape"),
        ([[1, 2], [3]], "lattice"),
        ("abc", "lattice"),
        (np.array([[0.05, 0, 0], [0, 0.05, 0], [0, 0, 0.05]]), "too thin"),
    ],
)
def test_bad_lattice(lattice, match):
    with pytest.raises(G.GraphError, match=match) as err:
        G.build_graph(np.zeros((1, 3)), lattice, [6], 5.0, id="bad-cell-7")
    assert "bad-cell-7" in str(err.value)


@pytest.mark.parametrize("cutoff", [0.0, -1.0, np.nan, np.inf, None, "abc"])
def test_bad_cutoff(cutoff):
    with pytest.raises(G.GraphError, match="cutoff"):
        G.build_graph(np.zeros((1, 3)), 3.0 * np.eye(3), [6], cutoff)
    with pytest.raises(G.GraphError, match="cutoff"):
        G.neighbour_list(np.zeros((1, 3)), 3.0 * np.eye(3), cutoff)


@pytest.mark.parametrize(
    ("positions", "z", "match"),
    [
        (np.array([[0.0, 0.0, 0.0], [np.nan, 0.0, 0.0]]), [6, 6], "site 1 has NaN"),
        (np.array([[0.0, 0.0, 0.0], [0.0, np.inf, 0.0]]), [6, 6], "site 1 has NaN"),
        (np.zeros((0, 3)), [], "empty"),
        (np.zeros((2, 2)), [6, 6], "shape"),
        (np.zeros((2, 3)), [6], "2 positions"),
        (np.array([[0.0, 0, 0], [1e-5, 0, 0]]), [6, 6], "overlap"),
        # an atom on another's periodic image
        (np.array([[0.0, 0, 0], [3.0, 0, 0]]), [6, 6], "overlap"),
        (np.zeros((1, 3)), [0], "atomic number 0"),
        (np.zeros((1, 3)), [101], "atomic number 101"),
    ],
)
def test_bad_sites(positions, z, match):
    with pytest.raises(G.GraphError, match=match) as err:
        G.build_graph(positions, 3.0 * np.eye(3), z, 2.5, id="mp-bad-99")
    assert "mp-bad-99" in str(err.value)


def test_max_edges():
    pos, lat, z, cutoff = SYNTHETIC["sc-1atom-5shells"]
    assert G.build_graph(pos, lat, z, cutoff, max_edges=56).n_edge == 56
    with pytest.raises(G.GraphError, match="max_edges=55"):
        G.build_graph(pos, lat, z, cutoff, max_edges=55, id="sc")


# --------------------------------------------------------------------------------------------
# 5. padding and batching
# --------------------------------------------------------------------------------------------
def _synthetic_graphs() -> list:
    return [
        G.build_graph(pos, lat, z, cutoff, id=name, allow_isolated=True)
        for name, (pos, lat, z, cutoff) in sorted(SYNTHETIC.items())
    ]


def _check_batch(batch, graphs, bucket, targets=None, indices=None):
    """Every property of a padded batch, checked against the input graphs directly."""
    N, E, Gs = bucket
    g = len(graphs)
    n_tot = sum(x.n_node for x in graphs)
    e_tot = sum(x.n_edge for x in graphs)
    assert batch.bucket == bucket
    assert batch.species.shape == (N,) and batch.positions.shape == (N, 3)
    assert batch.senders.shape == batch.receivers.shape == (E,)
    assert batch.cell_shifts.shape == (E, 3) and batch.lattice.shape == (Gs, 3, 3)
    assert batch.n_real == g and batch.ids == tuple(x.id for x in graphs)
    # counts and slots
    assert batch.n_node.sum() == N and batch.n_edge.sum() == E
    assert batch.n_node[:g].tolist() == [x.n_node for x in graphs]
    assert batch.n_edge[:g].tolist() == [x.n_edge for x in graphs]
    assert np.all(batch.n_node[g + 1 :] == 0) and np.all(batch.n_edge[g + 1 :] == 0)
    np.testing.assert_array_equal(batch.node_graph, np.repeat(np.arange(Gs), batch.n_node))
    np.testing.assert_array_equal(batch.edge_graph, np.repeat(np.arange(Gs), batch.n_edge))
    np.testing.assert_array_equal(batch.edge_graph, batch.node_graph[batch.senders])
    np.testing.assert_array_equal(batch.edge_graph, batch.node_graph[batch.receivers])
    # masks
    assert batch.graph_mask.tolist() == [True] * g + [False] * (Gs - g)
    assert batch.node_mask.tolist() == [True] * n_tot + [False] * (N - n_tot)
    assert batch.edge_mask.tolist() == [True] * e_tot + [False] * (E - e_tot)
    # real data, graph by graph
    n0 = e0 = 0
    for k, x in enumerate(graphs):
        ns, es = slice(n0, n0 + x.n_node), slice(e0, e0 + x.n_edge)
        np.testing.assert_array_equal(batch.species[ns], x.species)
        np.testing.assert_array_equal(batch.positions[ns], x.positions)
        np.testing.assert_array_equal(batch.senders[es], x.senders + n0)
        np.testing.assert_array_equal(batch.receivers[es], x.receivers + n0)
        np.testing.assert_array_equal(batch.cell_shifts[es], x.cell_shifts)
        np.testing.assert_array_equal(batch.lattice[k], x.lattice)
        n0, e0 = n0 + x.n_node, e0 + x.n_edge
    # edge vectors, computed here with each edge's own graph lattice
    lat_e = batch.lattice[batch.edge_graph]
    vec = (
        batch.positions[batch.receivers]
        - batch.positions[batch.senders]
        + np.einsum("ei,eij->ej", batch.cell_shifts.astype(float), lat_e)
    )
    length = np.linalg.norm(vec, axis=1)
    real_vec = (
        np.concatenate(
            [
                my_vectors(x.positions, x.lattice, x.senders, x.receivers, x.cell_shifts)
                for x in graphs
            ]
        )
        if g
        else np.zeros((0, 3))
    )
    np.testing.assert_allclose(vec[:e_tot], real_vec, atol=1e-12)
    cutoff = max((x.cutoff for x in graphs), default=G.DEFAULT_CUTOFF)
    assert np.all(length[e_tot:] >= 2 * cutoff - 1e-12), "padding edge shorter than 2 cutoff"
    assert np.all(length > 0)
    np.testing.assert_allclose(G.edge_vectors(batch), vec, atol=1e-12)
    # padding nodes are plain zeros
    assert np.all(batch.species[n_tot:] == 0) and np.all(batch.positions[n_tot:] == 0)
    # targets and indices
    want_index = list(range(g)) if indices is None else list(indices)
    assert batch.graph_index.tolist() == want_index + [-1] * (Gs - g)
    if targets is None:
        assert batch.targets is None
    else:
        t = np.asarray(targets)
        assert batch.targets.shape == (Gs, *t.shape[1:])
        np.testing.assert_array_equal(batch.targets[:g], t)
        assert np.all(batch.targets[g:] == 0)


def test_pad_batch_synthetic():
    graphs = _synthetic_graphs()
    n_tot = sum(x.n_node for x in graphs)
    e_tot = sum(x.n_edge for x in graphs)
    targets = np.arange(len(graphs) * 36, dtype=float).reshape(len(graphs), 6, 6)
    for extra_n, extra_e, extra_g in [(1, 0, 1), (7, 100, 3), (64, 1024, 9)]:
        bucket = G.Bucket(n_tot + extra_n, e_tot + extra_e, len(graphs) + extra_g)
        indices = [10 * k + 3 for k in range(len(graphs))]
        b = G.pad_batch(graphs, bucket, targets, indices=indices)
        _check_batch(b, graphs, bucket, targets, indices)
    b = G.pad_batch(graphs[:3], G.Bucket(50, 2000, 4), pad_scale=3.5)
    _check_batch(b, graphs[:3], G.Bucket(50, 2000, 4))
    pad_edges = G.edge_vectors(b)[~b.edge_mask]
    np.testing.assert_allclose(
        np.linalg.norm(pad_edges, axis=1), 3.5 * max(x.cutoff for x in graphs[:3])
    )
    # only padding
    b = G.pad_batch([], G.Bucket(8, 16, 2))
    _check_batch(b, [], G.Bucket(8, 16, 2))


def test_pad_batch_real(real_dataset):
    _, graphs, _, _ = real_dataset
    chosen = graphs[:16]
    n_tot = sum(x.n_node for x in chosen)
    e_tot = sum(x.n_edge for x in chosen)
    bucket = G.Bucket(n_tot + 5, e_tot + 77, 17)
    _check_batch(G.pad_batch(chosen, bucket), chosen, bucket)


def test_pad_batch_rejects_what_does_not_fit():
    graphs = _synthetic_graphs()[:3]
    n_tot = sum(x.n_node for x in graphs)
    e_tot = sum(x.n_edge for x in graphs)
    for bucket in [
        G.Bucket(n_tot, e_tot, 4),  # no room for the padding node
        G.Bucket(n_tot + 1, e_tot - 1, 4),
        G.Bucket(n_tot + 1, e_tot, 3),  # no room for the padding graph
    ]:
        with pytest.raises(G.GraphError, match="do not fit"):
            G.pad_batch(graphs, bucket)
    with pytest.raises(G.GraphError, match="pad_scale"):
        G.pad_batch(graphs, G.Bucket(n_tot + 1, e_tot, 4), pad_scale=1.5)
    with pytest.raises(G.GraphError, match="targets"):
        G.pad_batch(graphs, G.Bucket(n_tot + 1, e_tot, 4), np.zeros(2))


def _epoch(graphs, targets=None, **kw):
    out = list(G.batches(graphs, targets, **kw))
    return out, [b.graph_index[b.graph_mask].tolist() for b in out]


def _check_epoch(graphs, batches, order, batch_size, buckets, targets=None):
    flat = [i for o in order for i in o]
    assert sorted(flat) == list(range(len(graphs))), "not every graph exactly once"
    for b, o in zip(batches, order, strict=True):
        assert 1 <= len(o) <= batch_size
        assert b.ids == tuple(graphs[i].id for i in o)
        assert b.n_node[: len(o)].tolist() == [graphs[i].n_node for i in o]
        assert b.n_edge[: len(o)].tolist() == [graphs[i].n_edge for i in o]
        if buckets is not None:
            assert b.bucket in set(buckets)
        if targets is not None:
            np.testing.assert_array_equal(b.targets[: len(o)], np.asarray(targets)[o])
    return flat


def test_batches_small(real_dataset):
    _, all_graphs, _, _ = real_dataset
    graphs = all_graphs[:150]
    buckets = G.make_buckets(graphs, batch_size=8, n_buckets=3)
    targets = np.arange(len(graphs), dtype=float) * 1.5
    kw = {"batch_size": 8, "buckets": buckets}
    out, order = _epoch(graphs, targets, **kw)
    flat = _check_epoch(graphs, out, order, 8, buckets, targets)
    assert flat == list(range(len(graphs)))  # no shuffle: dataset order
    for b, o in zip(out[:3], order[:3], strict=True):
        _check_batch(b, [graphs[i] for i in o], b.bucket, targets[o], o)
    seen = {}
    for seed in (0, 1, 2):
        out_a, order_a = _epoch(graphs, targets, shuffle=True, seed=seed, **kw)
        _check_epoch(graphs, out_a, order_a, 8, buckets, targets)
        _, order_b = _epoch(graphs, targets, shuffle=True, seed=seed, **kw)
        assert order_a == order_b, "not deterministic for a seed"
        seen[seed] = [i for o in order_a for i in o]
    assert seen[0] != seen[1] != seen[2] and seen[0] != seen[2]
    assert seen[0] != list(range(len(graphs)))


def test_batches_oversize_graph_goes_alone():
    graphs = _synthetic_graphs()
    small = G.Bucket(8, 64, 5)
    out, order = _epoch(graphs, batch_size=4, buckets=[small])
    _check_epoch(graphs, out, order, 4, None)
    for b, o in zip(out, order, strict=True):
        n = sum(graphs[i].n_node for i in o)
        e = sum(graphs[i].n_edge for i in o)
        if b.bucket != small:
            assert len(o) == 1, "an oversize graph must go alone"
            assert not (n + 1 <= small.n_node and e <= small.n_edge)
            # powers of two, at least the largest bucket
            for have, need, floor in [(b.bucket.n_node, n + 1, 8), (b.bucket.n_edge, e, 64)]:
                assert have >= max(need, floor) and have & (have - 1) == 0
        _check_batch(b, [graphs[i] for i in o], b.bucket, indices=o)
    assert any(b.bucket != small for b in out)


def test_batches_with_buckets_that_are_not_nested():
    """One bucket with more nodes, another with more edges: every batch must fit a real one."""
    pos, lat, z, cutoff = SYNTHETIC["sc-1atom-5shells"]
    edgy = G.build_graph(pos, lat, z, cutoff, id="edgy")  # 1 node, 56 edges
    lonely = G.build_graph(
        np.array([[0.0, 0, 0], [5.0, 5.0, 5.0]]),
        10.0 * np.eye(3),
        [1, 1],
        1.0,
        id="lonely",
        allow_isolated=True,
    )  # 2 nodes, 0 edges
    graphs = [edgy, edgy, lonely, lonely, lonely, edgy, lonely, lonely]
    buckets = [G.Bucket(4, 120, 5), G.Bucket(12, 8, 5)]
    out, order = _epoch(graphs, batch_size=4, buckets=buckets)
    _check_epoch(graphs, out, order, 4, buckets)
    for b, o in zip(out, order, strict=True):
        _check_batch(b, [graphs[i] for i in o], b.bucket, indices=o)


def test_batches_and_buckets_reject_bad_arguments():
    graphs = _synthetic_graphs()
    with pytest.raises(G.GraphError, match="batch_size"):
        list(G.batches(graphs, batch_size=0, buckets=[G.Bucket(64, 4096, 2)]))
    with pytest.raises(G.GraphError, match="bucket"):
        list(G.batches(graphs, batch_size=2, buckets=[]))
    with pytest.raises(G.GraphError, match="n_graph"):
        list(G.batches(graphs, batch_size=4, buckets=[G.Bucket(64, 4096, 4)]))
    with pytest.raises(G.GraphError, match="targets"):
        list(G.batches(graphs, np.zeros(2), batch_size=2, buckets=[G.Bucket(64, 4096, 3)]))
    with pytest.raises(G.GraphError):
        G.make_buckets([], batch_size=4)
    with pytest.raises(G.GraphError, match="batch_size"):
        G.make_buckets(graphs, batch_size=0)
    with pytest.raises(G.GraphError, match="n_buckets"):
        G.make_buckets(graphs, batch_size=2, n_buckets=0)


def test_make_buckets_shapes(real_dataset):
    _, graphs, _, _ = real_dataset
    buckets = G.make_buckets(graphs, batch_size=16, n_buckets=4)
    assert 1 <= len(buckets) <= 4
    assert all(b.n_graph == 17 for b in buckets)
    for a, b in itertools.pairwise(buckets):
        assert a.n_node <= b.n_node and a.n_edge <= b.n_edge and a != b
    big = buckets[-1]
    assert max(x.n_node for x in graphs) + 1 <= big.n_node
    assert max(x.n_edge for x in graphs) <= big.n_edge
    # the largest bucket holds the largest sampled batch, which is at least an average one
    n = len(graphs)
    assert big.n_node >= sum(x.n_node for x in graphs) / -(-n // 16)
    assert big.n_edge >= sum(x.n_edge for x in graphs) / -(-n // 16)


def test_real_epochs_use_at_most_the_buckets(real_dataset):
    items, graphs, seconds, _ = real_dataset
    assert len(graphs) == len(items) > 1000
    buckets = G.make_buckets(graphs, batch_size=16, n_buckets=4)
    shapes_seen = set()
    for shuffle, seed in [(False, 0), (True, 0), (True, 1), (True, 2), (True, 3)]:
        out, order = _epoch(graphs, batch_size=16, buckets=buckets, shuffle=shuffle, seed=seed)
        _check_epoch(graphs, out, order, 16, buckets)
        shapes = {b.bucket for b in out}
        assert len(shapes) <= len(buckets), f"{len(shapes)} shapes for {len(buckets)} buckets"
        shapes_seen |= shapes
        # greedy packing: a batch closes early only when the next graph would overflow it
        assert len(out) <= 2 * -(-len(graphs) // 16)
    assert shapes_seen <= set(buckets)
    print(
        f"\n[graph] {len(graphs)} real graphs built in {seconds:.2f} s; "
        f"{len(buckets)} buckets, {len(shapes_seen)} distinct shapes over 5 epochs"
    )


# --------------------------------------------------------------------------------------------
# 6. the npz cache
# --------------------------------------------------------------------------------------------
def _assert_same_graphs(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.id == y.id and x.cutoff == y.cutoff
        for field in ("species", "positions", "lattice", "senders", "receivers", "cell_shifts"):
            u, v = getattr(x, field), getattr(y, field)
            assert u.dtype == v.dtype and u.shape == v.shape, field
            np.testing.assert_array_equal(u, v, err_msg=f"{x.id}: {field}")


def test_save_load_round_trip(tmp_path):
    graphs = _synthetic_graphs()
    pos, lat, z = _isolated_case()
    graphs.append(G.build_graph(pos, lat, z, 3.0, allow_isolated=True))  # id "" + lone site
    graphs.append(dataclasses.replace(graphs[0], id="Å-ünïcode-1"))
    path = G.save_graphs(tmp_path / "sub" / "g.npz", graphs, key="k1")
    assert path == tmp_path / "sub" / "g.npz" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["g.npz"]  # no temporary left behind
    _assert_same_graphs(G.load_graphs(path), graphs)
    _assert_same_graphs(G.load_graphs(path, key="k1"), graphs)
    with pytest.raises(G.GraphError, match="key"):
        G.load_graphs(path, key="k2")
    # nothing in the file needs pickle
    with np.load(path, allow_pickle=False) as zf:
        assert all(zf[name].dtype != object for name in zf.files)
    empty = G.save_graphs(tmp_path / "empty.npz", [], key="")
    assert G.load_graphs(empty) == []


@pytest.fixture(scope="module")
def small_items(real_dataset):
    items, graphs, _, _ = real_dataset
    return items[:12], graphs[:12]


def _npz_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("graphs-*.npz"))


def test_cached_build_is_identical_and_read_back(tmp_path, small_items, monkeypatch):
    items, _ = small_items
    fresh = G.build_graphs_cached(items, 5.0)  # no cache folder: nothing written
    first = G.build_graphs_cached(items, 5.0, tmp_path)
    (path,) = _npz_files(tmp_path)
    _assert_same_graphs(first, fresh)

    def boom(*a, **k):
        raise AssertionError("rebuilt although the cache is valid")

    monkeypatch.setattr(graph_cache, "structure_to_graph", boom)
    second = G.build_graphs_cached(items, 5.0, tmp_path)
    _assert_same_graphs(second, fresh)
    assert _npz_files(tmp_path) == [path]
    # an edge budget is enforced on cached graphs too
    with pytest.raises(G.GraphError, match="max_edges"):
        G.build_graphs_cached(items, 5.0, tmp_path, max_edges=min(g.n_edge for g in fresh) - 1)


def test_cache_of_the_session_fixture_is_read_back(real_dataset):
    items, graphs, _, cache = real_dataset
    (path,) = _npz_files(cache)
    _assert_same_graphs(G.load_graphs(path, G.dataset_key(items, 5.0)), graphs)


def test_cache_rebuilds_on_any_change(tmp_path, small_items):
    pmg = pytest.importorskip("pymatgen.core")
    items, _ = small_items
    base = G.build_graphs_cached(items, 5.0, tmp_path)
    key = G.dataset_key(items, 5.0)
    # the same content in new objects gives the same key
    again = [(i, pmg.Structure.from_dict(s.as_dict())) for i, s in items]
    assert G.dataset_key(again, 5.0) == key
    # another cutoff
    other = G.build_graphs_cached(items, 4.0, tmp_path)
    assert len(_npz_files(tmp_path)) == 2
    assert all(g.cutoff == 4.0 for g in other)
    _assert_same_graphs(other, G.build_graphs_cached(items, 4.0))
    assert sum(g.n_edge for g in other) < sum(g.n_edge for g in base)
    # one structure moved a little
    moved = list(items)
    s = items[3][1].copy()
    s.translate_sites([0], [0.05, 0.0, 0.0], frac_coords=False, to_unit_cell=False)
    moved[3] = (items[3][0], s)
    assert G.dataset_key(moved, 5.0) != key
    rebuilt = G.build_graphs_cached(moved, 5.0, tmp_path)
    assert len(_npz_files(tmp_path)) == 3
    np.testing.assert_allclose(
        rebuilt[3].positions[0], base[3].positions[0] + [0.05, 0.0, 0.0], atol=1e-12
    )
    _assert_same_graphs(rebuilt[:3], base[:3])
    # another id, another flag
    renamed = [("x-" + i, s) for i, s in items]
    assert G.dataset_key(renamed, 5.0) != key
    assert G.dataset_key(items, 5.0, allow_isolated=True) != key
    assert [g.id for g in G.build_graphs_cached(renamed, 5.0, tmp_path)] == [i for i, _ in renamed]


class _Payload:
    """Unpickling this creates a folder: it shows whether a loader ran pickle at all."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _corrupt(path: Path, how: str, marker: Path, key: str) -> None:
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "flipped-byte":
        data = bytearray(raw)
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "text":
        path.write_text("not a zip file at all\n")
    elif how == "missing-array":
        with zipfile.ZipFile(path) as zin:
            members = {n: zin.read(n) for n in zin.namelist() if n != "senders.npy"}
        with zipfile.ZipFile(path, "w") as zout:
            for n, b in members.items():
                zout.writestr(n, b)
    elif how == "bad-offsets":
        with np.load(path) as zf:
            arrays = {n: zf[n] for n in zf.files}
        arrays["edge_offsets"] = arrays["edge_offsets"] + 1
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    elif how == "pickled-object":
        with np.load(path) as zf:
            arrays = {n: zf[n] for n in zf.files}
        arrays["ids"] = np.array([_Payload(str(marker))] * len(arrays["ids"]), dtype=object)
        with open(path, "wb") as f:
            np.savez(f, **arrays)  # allow_pickle is True when saving
    else:
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "truncated",
        "empty",
        "flipped-byte",
        "text",
        "missing-array",
        "bad-offsets",
        "pickled-object",
    ],
)
def test_corrupted_cache_is_rebuilt(tmp_path, small_items, how):
    items, _ = small_items
    expected = G.build_graphs_cached(items, 5.0, tmp_path)
    (path,) = _npz_files(tmp_path)
    key = G.dataset_key(items, 5.0)
    marker = tmp_path / "unpickled"
    _corrupt(path, how, marker, key)
    with pytest.raises(G.GraphError):
        G.load_graphs(path, key)
    got = G.build_graphs_cached(items, 5.0, tmp_path)
    _assert_same_graphs(got, expected)
    assert _npz_files(tmp_path) == [path]
    _assert_same_graphs(G.load_graphs(path, key), expected)  # rewritten, readable again
    assert not marker.exists(), "the cache loader unpickled data"


def test_stale_format_version_is_rebuilt(tmp_path, small_items, monkeypatch):
    items, _ = small_items
    expected = G.build_graphs_cached(items, 5.0)
    key = G.dataset_key(items, 5.0)
    path = tmp_path / f"graphs-{key[:32]}.npz"
    monkeypatch.setattr(graph_cache, "CACHE_FORMAT_VERSION", G.CACHE_FORMAT_VERSION + 1)
    G.save_graphs(path, expected[:2], key)  # a file from "another version", with the same key
    monkeypatch.undo()
    with pytest.raises(G.GraphError, match="format"):
        G.load_graphs(path)
    _assert_same_graphs(G.build_graphs_cached(items, 5.0, tmp_path), expected)
    _assert_same_graphs(G.load_graphs(path, key), expected)


def test_coincident_sites_raise_the_overlap_error_and_only_they_do():
    with pytest.raises(G.OverlapError):
        G.build_graph(np.array([[0.0, 0, 0], [1e-5, 0, 0]]), 3.0 * np.eye(3), [6, 6], 2.5)
    with pytest.raises(G.GraphError) as err:  # a lattice with zero volume is another error
        G.build_graph(np.zeros((1, 3)), np.diag([3.0, 3.0, 0.0]), [6], 2.5)
    assert not isinstance(err.value, G.OverlapError)
