"""Domain warnings on predictions (inference.domain through e3elastic.predict, shipped model).

Out-of-domain inputs built here must raise exactly the documented codes that their geometry
calls for (worked out by hand below); the example CIFs must raise none, and the held-out test
split (real crystals) only the warnings the manual lists (docs/json-schema.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")

from conftest import model_records
from pymatgen.core import Lattice, Structure

import e3elastic
from e3elastic import runtime
from e3elastic.inference import domain

runtime.enable_compilation_cache()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def model():
    return e3elastic.load_model("default")


def _codes(result) -> set[str]:
    return {w.split(":")[0] for w in result["warnings"]}


def _fcc(el, a):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [el], [[0, 0, 0]])


# Expected codes, worked out by hand from the thresholds in e3elastic/inference/domain.py and
# the covalent radii (Cordero 2008, as tabulated in pymatgen): C 0.73, O 0.66, Na 1.66, Cl 1.02,
# Si 1.11, Ne 0.58, Ar 1.06, Kr 1.16, Xe 1.40 Angstrom. The shipped model's training set holds
# at most 103.8 A^3 per atom (low-density above 207.5), 1 crystal with Kr (rare below 3) and none
# with Ne, Ar or Xe (its info.json). Nearest-neighbour ratio = distance / sum of covalent radii.
def _nacl_conventional(a):
    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(a), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )


def _diamond(a):
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(a), ["C"], [[0, 0, 0]])


def _cases():
    si = Structure.from_file(str(EXAMPLES / "silicon.cif"))
    c = si.lattice.c
    slab = Structure(  # 5.4 Angstrom of silicon, 54.6 Angstrom of vacuum
        Lattice.from_parameters(si.lattice.a, si.lattice.b, 60.0, 90, 90, 90),
        si.species,
        [[f[0], f[1], f[2] * c / 60.0] for f in si.frac_coords],
    )
    return {
        # a 28.9 A empty band; 13500 A^3 per atom; C-O ratio 1.128 / 1.39 = 0.81 is ordinary
        "CO in a box": (
            Structure(Lattice.cubic(30), ["C", "O"], [[0, 0, 0], [1.128 / 30, 0, 0]]),
            {"vacuum", "low-density"},
        ),
        # a dimer in a big box: Na-Na 3.0 / 3.32 = 0.90; 8000 A^3 per atom; 17 A of vacuum
        "Na2 in a 20 A box": (
            Structure(Lattice.cubic(20), ["Na", "Na"], [[0, 0, 0], [0.15, 0, 0]]),
            {"vacuum", "low-density"},
        ),
        # 54.6 A of vacuum; 5.43^2 x 60 / 8 = 221 A^3 per atom (> 207.5); Si-Si 2.35 / 2.22 = 1.06
        "slab": (slab, {"vacuum", "low-density"}),
        # ratio 0.04 / 2.68 = 0.015: below 0.7 (short) and, as the median, below 0.75 (strained)
        "atoms 0.04 A apart": (
            Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.04 / 5.64, 0, 0]]),
            {"short-distance", "strained"},
        ),
        # rock salt squeezed to a = 0.7 x 5.64: Na-Cl 1.974 / 2.68 = 0.737, just under 0.75
        "NaCl compressed to 0.7 a": (_nacl_conventional(0.7 * 5.64), {"strained"}),
        # and stretched to 1.6 a: 4.51 / 2.68 = 1.68, over 1.45 but under 1.7 (not isolated)
        "NaCl expanded to 1.6 a": (_nacl_conventional(1.6 * 5.64), {"strained"}),
        # fcc neon: 3.154 / 1.16 = 2.72, over 1.7 (isolated) and 1.45 (strained)
        "solid neon": (_fcc("Ne", 4.46), {"unseen-element", "isolated-atom", "strained"}),
        # fcc argon: 3.719 / 2.12 = 1.75, over 1.7 and 1.45
        "solid argon": (_fcc("Ar", 5.26), {"unseen-element", "isolated-atom", "strained"}),
        # fcc xenon: 4.335 / 2.80 = 1.55, over 1.45 but not 1.7
        "solid xenon": (_fcc("Xe", 6.13), {"unseen-element", "strained"}),
        # diamond squeezed to 0.9 a: C-C 1.391 / 1.46 = 0.95, an ordinary geometry; but the
        # prediction is far stiffer than diamond (the model extrapolates the volume response)
        "diamond compressed to 0.9 a": (_diamond(0.9 * 3.567), {"stiffer-than-diamond"}),
        # fcc krypton (a = 5.72): 4.045 / 2.32 = 1.74, over 1.7 and 1.45; Kr is in 1 training
        # crystal
        "solid krypton": (_fcc("Kr", 5.72), {"rare-element", "isolated-atom", "strained"}),
        # within the covalent-radius range, but outside the training contacts of the pair
        # (Cl-Na from 2.76 Angstrom, to 3.19; Si-Si from 2.29): Na-Cl 2.54 / 2.76 = 0.92 and
        # 3.67 / 3.19 = 1.15, Si-Si 2.12 / 2.29 = 0.93, each beyond the 6 % margin
        "NaCl compressed to 0.9 a": (_nacl_conventional(0.9 * 5.64), {"strained"}),
        "NaCl expanded to 1.3 a": (_nacl_conventional(1.3 * 5.64), {"strained"}),
        "Si compressed to 0.9 a": (_diamond_si(0.9 * 5.431), {"strained"}),
        # low-dimensional bonded networks (bonded: under 1.3 x the sum of covalent radii;
        # Mo 1.54, S 1.05, Se 1.20). Graphite: C-C 1.42 < 1.90 in the layers, 3.36 between
        # them. 2H-MoS2: Mo-S 2.42 < 3.37, Mo-Mo 3.16 < 4.00 in a layer; S-S 3.49 > 2.73 across
        # the gap. Trigonal Se: 2.37 < 3.12 along the helices, 3.44 between them. Solid CO2:
        # C-O 1.15 < 1.81 in a molecule, nothing under 2.9 between molecules. Every contact
        # lies within its pair's training range (guarded above), so no other code fires.
        "graphite": (_graphite(), {"low-dimensional"}),
        "2H-MoS2": (_mos2(), {"low-dimensional"}),
        "trigonal Se (chains)": (_selenium(), {"low-dimensional"}),
        "solid CO2 (molecules)": (_co2(), {"low-dimensional"}),
    }


def _graphite():
    return Structure(
        Lattice.hexagonal(2.464, 6.711),
        ["C"] * 4,
        [[0, 0, 0.25], [0, 0, 0.75], [1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]],
    )


def _mos2():
    return Structure.from_spacegroup(
        "P6_3/mmc",
        Lattice.hexagonal(3.160, 12.294),
        ["Mo", "S"],
        [[1 / 3, 2 / 3, 0.25], [1 / 3, 2 / 3, 0.621]],
    )


def _selenium():
    return Structure.from_spacegroup(
        "P3_121", Lattice.hexagonal(4.366, 4.954), ["Se"], [[0.2254, 0, 1 / 3]]
    )


def _co2():
    return Structure.from_spacegroup(
        "Pa-3", Lattice.cubic(5.624), ["C", "O"], [[0, 0, 0], [0.1185, 0.1185, 0.1185]]
    )


@pytest.mark.parametrize(
    ("name", "build", "dimension"),
    [
        ("graphite", _graphite, 2),
        ("2H-MoS2", _mos2, 2),
        ("trigonal Se", _selenium, 1),
        ("solid CO2", _co2, 0),
        ("diamond", lambda: _diamond(3.567), 3),
        ("rock salt", lambda: _nacl_conventional(5.64), 3),
        ("silicon", lambda: _diamond_si(5.431), 3),
    ],
)
def test_bonded_dimension_of_built_crystals(name, build, dimension):
    from e3elastic.graph import structure_to_graph

    s = build()
    assert domain.bonded_dimension(structure_to_graph(s, cutoff=5.0)) == dimension, name
    # a supercell, or the cell turned and shifted, describes the same crystal
    big = s.copy()
    big.make_supercell([2, 1, 1])
    assert domain.bonded_dimension(structure_to_graph(big, cutoff=5.0)) == dimension, name
    turned = Structure(
        Lattice(s.lattice.matrix @ _rotation(0.7).T), s.species, (s.frac_coords + 0.31) % 1.0
    )
    assert domain.bonded_dimension(structure_to_graph(turned, cutoff=5.0)) == dimension, name


def _rotation(angle):
    c, s = np.cos(angle), np.sin(angle)
    axis = np.array([1.0, 2.0, 2.0]) / 3.0
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + s * k + (1 - c) * k @ k


def _diamond_si(a):
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(a), ["Si"], [[0, 0, 0]])


def test_the_counts_behind_the_expected_codes(model):
    # guards the hand-worked expectations below against a retrained model
    ts = model.info["training_set"]
    assert 0 < ts["elements"].get("Kr", 0) < domain.RARE_ELEMENT
    assert not {"Ne", "Ar", "Xe"} & set(ts["elements"])
    assert 20.0 < domain.DENSITY_FACTOR * ts["volume_per_atom_A3"]["max"] < 221.0  # the slab
    assert domain.STRAIN_RANGE == (0.75, 1.45) and domain.ISOLATED_RATIO == 1.7
    assert domain.SHORT_RATIO == 0.7 and domain.VACUUM_GAP_A == 6.0
    contacts, margin = ts["contacts"], domain.CONTACT_MARGIN
    assert contacts["Cl-Na"][2] >= domain.CONTACT_MIN_COUNT
    assert 2.54 / contacts["Cl-Na"][0] < 1 - margin < 2.82 / contacts["Cl-Na"][0]
    assert 3.67 / contacts["Cl-Na"][1] > 1 + margin > 2.82 / contacts["Cl-Na"][1]
    assert 2.117 / contacts["Si-Si"][0] < 1 - margin < 2.352 / contacts["Si-Si"][0]
    assert domain.BOND_RATIO == 1.3
    # the low-dimensional cases' contacts lie inside their pairs' training ranges
    for pair, d in (("C-C", 1.423), ("Mo-S", 2.417), ("Se-Se", 2.37), ("C-O", 1.154)):
        low, high, n = contacts[pair]
        assert n >= domain.CONTACT_MIN_COUNT and 1 - margin < d / low and d / high < 1 + margin


def test_contact_ranges_from_training_crystals_flag_strain():
    """A hand-made training set of rock salt at 5.60-5.70 Angstrom: NaCl within the range gets
    no warning, 8 % shorter or longer contacts do; a pair seen in too few crystals is not
    judged."""
    from e3elastic.graph import build_graph

    def graph(s):
        return build_graph(s.cart_coords, s.lattice.matrix, [x.specie.Z for x in s], 5.0)

    train = [graph(_nacl_conventional(a)) for a in (5.60, 5.64, 5.70)]
    table = domain.contact_table(train)
    assert list(table) == ["Cl-Na"]
    low, high, n = table["Cl-Na"]
    assert n == 3 and 2.80 <= low < 2.81 and 2.84 < high <= 2.85  # a / 2, 2 and 98 % quantiles
    ts = {"contacts": table}

    def codes(a):
        s = _nacl_conventional(a)
        return [w.split(":")[0] for w in domain.structure_warnings(s, graph(s), ts)]

    assert codes(5.64) == [] and codes(5.60 * 0.95) == [] and codes(5.70 * 1.05) == []
    assert codes(5.60 * 0.92) == ["strained"] and codes(5.70 * 1.08) == ["strained"]
    [w] = domain.structure_warnings(_nacl_conventional(5.0), graph(_nacl_conventional(5.0)), ts)
    assert "compressed" in w and "Cl-Na 2.50 Å" in w
    few = {"contacts": domain.contact_table(train[:2])}
    s = _nacl_conventional(5.0)
    assert domain.structure_warnings(s, graph(s), few) == []  # 2 crystals: not judged


#: Codes that a case may add depending on how far the model extrapolates: rock salt at 0.343 of
#: its volume is predicted at K 583 GPa by the shipped `default` (156 by the one before it), so
#: whether it also crosses 1.15 x diamond's K is the model's extrapolation, not the geometry.
MODEL_DEPENDENT = {"NaCl compressed to 0.7 a": {"stiffer-than-diamond"}}


def test_out_of_domain_inputs_raise_exactly_their_warnings(model):
    cases = _cases()
    results = e3elastic.predict([s for s, _ in cases.values()], model=model)
    for (name, (_, want)), r in zip(cases.items(), results, strict=True):
        assert r["error"] is None, name
        codes = _codes(r)
        assert want <= codes <= want | MODEL_DEPENDENT.get(name, set()), (name, r["warnings"])
        assert len(r["warnings"]) == len(codes)  # one line per code
        assert all(": " in w for w in r["warnings"])


def test_examples_get_no_warning(model):
    paths = sorted(str(p) for p in EXAMPLES.glob("*.cif"))
    results = e3elastic.predict([*paths, _diamond(3.567)], model=model)  # diamond as measured
    assert len(results) == 6
    for r in results:
        assert r["error"] is None and r["warnings"] == [], (r["file"], r["warnings"])


#: The test-split crystals that get a warning, as the manual lists them (docs/json-schema.md):
#: three layered sulfides whose van der Waals gap is an atom-free band of 6 Angstrom or more,
#: a hypothetical perovskite with K on the octahedral site (K-O 2.24 Angstrom), nine whose
#: nearest-neighbour contacts lie outside their element pair's range in training, and 33 whose
#: bonded network is made of layers, chains or molecules.
WARNED_TEST_CRYSTALS = {
    "mp-554134": {"vacuum"},  # SnS
    "mp-8781": {"vacuum"},  # SnS
    "mp-849060": {"vacuum"},  # VS2
    "mp-984357": {"strained"},  # CsKO3
    # nearest-neighbour contacts outside their element pair's range in training (2 %)
    "mp-22556": {"strained"},  # Tm3TlC, Tl-Tm 2.77 against 3.19 Angstrom and up
    "mp-5621": {"strained"},  # NbCu3S4, Nb-S
    "mp-1032": {"strained"},  # Ta2B, B-B
    "mp-580287": {"strained"},  # Zr3Cu, Cu-Zr
    "mp-975511": {"strained"},  # InSb3, Sb-Sb
    "mp-13480": {"strained"},  # Cu3N, Cu-N
    "mp-2362466": {"strained"},  # GaAs, As-Ga
    "mp-10759": {"strained"},  # GeSe, Ge-Se
    "mp-2853": {"strained"},  # GaN, Ga-N
    # bonded networks of layers, chains or molecules (low-dimensional): van der Waals halides
    # and chalcogenides, graphite, molecular solids
    "mp-23288": {"low-dimensional"},  # AlBr3, molecules or clusters
    "mp-30930": {"low-dimensional"},  # AlI3, molecules or clusters
    "mp-27725": {"low-dimensional"},  # AuI, layers
    "mp-570886": {"low-dimensional"},  # BeI2, chains
    "mp-22849": {"low-dimensional"},  # BiI3, layers
    "mp-28460": {"low-dimensional"},  # Br2O, chains
    "mp-48": {"low-dimensional"},  # C, layers, tensor
    "mp-27934": {"low-dimensional"},  # CdBr2, layers
    "mp-27630": {"low-dimensional"},  # CrCl3, layers
    "mp-23229": {"low-dimensional"},  # FeCl2, layers, tensor
    "mp-2507": {"low-dimensional"},  # GaS, layers
    "mp-706": {"low-dimensional"},  # HgF, molecules or clusters
    "mp-27639": {"low-dimensional"},  # IBr, chains
    "mp-28306": {"low-dimensional"},  # MnBr2, layers
    "mp-23312": {"low-dimensional"},  # MoBr3, chains
    "mp-1416": {"low-dimensional"},  # NbF4, layers
    "mp-571133": {"low-dimensional"},  # NbSe2, layers
    "mp-7597": {"low-dimensional"},  # NbSe2, layers, tensor
    "mp-27637": {"low-dimensional"},  # NiBr2, layers
    "mp-27396": {"low-dimensional"},  # NiCl2, layers
    "mp-27638": {"low-dimensional"},  # NiI2, layers
    "mp-567503": {"low-dimensional"},  # PbI2, layers
    "mp-19921": {"low-dimensional"},  # PbO, layers
    "mp-13682": {"low-dimensional"},  # PdS2, layers
    "mp-1390618": {"low-dimensional"},  # SnO2, layers
    "mp-628773": {"low-dimensional"},  # SnSe, layers
    "mp-1984": {"low-dimensional"},  # TaS2, layers
    "mp-863264": {"low-dimensional"},  # TbI3, chains
    "mp-28116": {"low-dimensional"},  # TiCl2, layers
    "mp-29556": {"low-dimensional"},  # Tl2WCl6, molecules or clusters, tensor
    "mp-865353": {"low-dimensional"},  # TmI3, chains
    "mp-2275": {"low-dimensional"},  # UF6, molecules or clusters
    "mp-224": {"low-dimensional"},  # WS2, layers
}


def test_test_split_warnings_are_the_documented_ones(model, data_folder):
    # what the manual says (docs/json-schema.md): every crystal of the test split but the ones
    # listed above is predicted without a warning
    test_ids = set(model.info["split"]["test"])
    records = [r for r in model_records(model, data_folder) if r.id in test_ids]
    # the data still hold every test crystal but the binary GeTe mp-2612 (in the splits of
    # bundles trained before it was dropped as a duplicate of the GeTe tensor mp-938)
    assert test_ids - {r.id for r in records} <= {"mp-2612"}
    results = e3elastic.predict([r.structure for r in records], model=model)
    warned = {r.id: _codes(p) for r, p in zip(records, results, strict=True) if p["warnings"]}
    assert warned == WARNED_TEST_CRYSTALS


def test_ensemble_disagreement():
    base = np.diag([100.0, 100, 100, 40, 40, 40])
    assert domain.ensemble_warnings(np.stack([base, base * 1.05])) == []
    [w] = domain.ensemble_warnings(np.stack([base, base * 2.0]))
    assert w.startswith("ensemble-disagreement:")


def test_stiffer_than_diamond_thresholds():
    k, g = (domain.STIFFNESS_FACTOR * domain.DIAMOND_MODULI_GPA[q] for q in ("K_VRH", "G_VRH"))
    assert domain.stiffness_warnings(442.0, 535.0) == []  # diamond itself
    assert domain.stiffness_warnings(0.99 * k, 0.99 * g) == []
    [w] = domain.stiffness_warnings(1.01 * k, 100.0)
    assert w.startswith("stiffer-than-diamond:") and "K_VRH" in w and "G_VRH" not in w
    [w] = domain.stiffness_warnings(100.0, 1.01 * g)
    assert "G_VRH" in w and "K_VRH" not in w
