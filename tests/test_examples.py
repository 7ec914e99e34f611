"""The example CIFs in examples/: they parse, and describe the crystals they claim to.

Each structure is checked against facts computed here from its lattice alone: formula,
number of sites, space group (spglib through pymatgen, symprec 0.01), and the shortest
interatomic distances, which for these crystals follow from the lattice parameters by
elementary geometry (e.g. Si-Si = sqrt(3) a / 4 in diamond).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Structure
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:spglib.*")

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# name -> (reduced formula, number of sites, space-group symbol, International number)
EXPECTED = {
    "alpha-quartz": ("SiO2", 9, "P3_221", 154),
    "stishovite": ("SiO2", 6, "P4_2/mnm", 136),
    "silicon": ("Si", 8, "Fd-3m", 227),
    "nacl": ("NaCl", 8, "Fm-3m", 225),
    "magnesium": ("Mg", 2, "P6_3/mmc", 194),
}


def load(name: str) -> Structure:
    path = EXAMPLES / f"{name}.cif"
    assert path.is_file(), f"missing example {path}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Structure.from_file(path)


def pair_distances(s: Structure, a: str, b: str, cutoff: float = 5.0) -> np.ndarray:
    """Sorted periodic distances from the first `a` site to every `b` site within `cutoff`
    Å, the site itself excluded."""
    i = next(k for k, site in enumerate(s) if site.specie.symbol == a)
    out = [
        nb.nn_distance
        for nb in s.get_neighbors(s[i], cutoff)
        if nb.specie.symbol == b and nb.nn_distance > 1e-6
    ]
    return np.sort(np.array(out))


def test_every_example_is_listed():
    found = {p.stem for p in EXAMPLES.glob("*.cif")}
    assert found == set(EXPECTED), f"unexpected or missing CIFs: {found ^ set(EXPECTED)}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_formula_sites_space_group(name):
    formula, nsites, symbol, number = EXPECTED[name]
    s = load(name)
    assert s.composition.reduced_formula == formula
    assert len(s) == nsites
    sga = SpacegroupAnalyzer(s, symprec=0.01)
    assert sga.get_space_group_symbol() == symbol
    assert sga.get_space_group_number() == number
    assert s.is_ordered


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cif_cites_its_source(name):
    head = (EXAMPLES / f"{name}.cif").read_text().splitlines()[:12]
    assert any(ln.startswith("# Source:") for ln in head), f"{name}.cif has no source line"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_readme_lists_the_example(name):
    readme = (EXAMPLES / "README.md").read_text()
    assert f"`{name}.cif`" in readme


def test_silicon_bond_length():
    s = load("silicon")
    a = s.lattice.a
    assert a == pytest.approx(5.431, abs=1e-4)
    d = pair_distances(s, "Si", "Si")
    # diamond: 4 neighbours at sqrt(3) a / 4 = 2.352 Å, then 12 at a / sqrt(2)
    assert np.allclose(d[:4], math.sqrt(3.0) * a / 4.0, atol=1e-4)
    assert d[:4] == pytest.approx(2.35, abs=0.01)
    assert d[4] == pytest.approx(a / math.sqrt(2.0), abs=1e-4)


def test_nacl_bond_length():
    s = load("nacl")
    a = s.lattice.a
    d = pair_distances(s, "Na", "Cl")
    # rock salt: octahedral, 6 Cl at a / 2 = 2.82 Å
    assert np.allclose(d[:6], a / 2.0, atol=1e-4)
    assert d[:6] == pytest.approx(2.82, abs=0.01)
    assert d[6] == pytest.approx(math.sqrt(3.0) * a / 2.0, abs=1e-4)
    # like ions at a / sqrt(2)
    assert pair_distances(s, "Na", "Na")[0] == pytest.approx(a / math.sqrt(2.0), abs=1e-4)


def test_magnesium_hcp_distances():
    s = load("magnesium")
    a, c = s.lattice.a, s.lattice.c
    assert (a, c) == pytest.approx((3.2094, 5.2108), abs=1e-4)
    d = pair_distances(s, "Mg", "Mg")
    # 6 in-plane neighbours at a and 6 out of plane at sqrt(a^2 / 3 + c^2 / 4)
    out_of_plane = math.sqrt(a * a / 3.0 + c * c / 4.0)
    assert np.allclose(np.sort(d[:12]), np.sort([a] * 6 + [out_of_plane] * 6), atol=1e-4)
    assert d[:12] == pytest.approx(3.2, abs=0.02)
    # c/a close to ideal sqrt(8/3): magnesium is nearly ideally packed
    assert c / a == pytest.approx(math.sqrt(8.0 / 3.0), abs=0.01)


def test_quartz_tetrahedra():
    s = load("alpha-quartz")
    # every Si has 4 O within 1.60-1.62 Å (two pairs, ~1.605 and ~1.614), the next O > 3 Å
    for i, site in enumerate(s):
        if site.specie.symbol != "Si":
            continue
        d = np.sort(
            [nb.nn_distance for nb in s.get_neighbors(s[i], 4.0) if nb.specie.symbol == "O"]
        )
        assert np.all((d[:4] > 1.60) & (d[:4] < 1.62)), d[:4]
        assert d[4] > 3.0
    # every O bridges two Si; Si-O-Si angle near the textbook 144 degrees
    o = next(k for k, site in enumerate(s) if site.specie.symbol == "O")
    nbs = sorted(
        (nb for nb in s.get_neighbors(s[o], 2.0) if nb.specie.symbol == "Si"),
        key=lambda nb: nb.nn_distance,
    )
    assert len(nbs) == 2
    u, v = (nb.coords - s[o].coords for nb in nbs)
    angle = math.degrees(math.acos(np.dot(u, v) / np.linalg.norm(u) / np.linalg.norm(v)))
    assert angle == pytest.approx(143.7, abs=1.0)
    # Si-Si across the shared O
    assert pair_distances(s, "Si", "Si")[0] == pytest.approx(3.06, abs=0.02)


def test_stishovite_octahedra():
    s = load("stishovite")
    a, c = s.lattice.a, s.lattice.c
    x = 0.3062
    for i, site in enumerate(s):
        if site.specie.symbol != "Si":
            continue
        d = np.sort(
            [nb.nn_distance for nb in s.get_neighbors(s[i], 3.0) if nb.specie.symbol == "O"]
        )
        assert len(d) == 6
        # 4 equatorial bonds sqrt(2 (1/2 - x)^2 a^2 + c^2 / 4), 2 apical sqrt(2) x a
        eq = math.sqrt(2.0 * ((0.5 - x) * a) ** 2 + (c / 2.0) ** 2)
        ap = math.sqrt(2.0) * x * a
        assert np.allclose(d[:4], eq, atol=1e-3)
        assert np.allclose(d[4:], ap, atol=1e-3)
        assert np.all((d > 1.75) & (d < 1.82)), d
    # edge-sharing chains along c: the shortest Si-Si is c itself
    assert pair_distances(s, "Si", "Si")[0] == pytest.approx(c, abs=1e-4)


def test_densities_are_the_known_ones():
    # g/cm^3: quartz 2.65, stishovite 4.29, Si 2.33, NaCl 2.16, Mg 1.74
    known = {
        "alpha-quartz": 2.65,
        "stishovite": 4.29,
        "silicon": 2.33,
        "nacl": 2.16,
        "magnesium": 1.74,
    }
    for name, rho in known.items():
        assert float(load(name).density) == pytest.approx(rho, abs=0.02), name
