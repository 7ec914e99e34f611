"""Physics of the shipped model's predictions on crystals it never saw.

* every prediction is positive-definite (the log head makes it so by construction): on the
  example CIFs, on crystals built here from textbook lattices and on random valid structures;
* compressing a crystal stiffens it: K_VRH falls monotonically with volume for lattice scales
  0.97, 1.00 and 1.03, on ten crystals built here: six absent from every data file, and four
  whose formula the MP 2025 binaries now hold (as K and G only, or in another polymorph);
* an element absent from training is placed by its chemistry.

The structures are built here from published lattice parameters (room temperature, Angstrom).
Absent from the data: PbS a = 5.936 (rock salt); Au a = 4.078 (fcc); KMgF3 a = 3.973 and
KZnF3 a = 4.055 (cubic perovskite); BaZrO3 a = 4.193 (cubic perovskite); ZnAl2O4 a = 8.086,
O at u = 0.264 (spinel, origin choice 2; 0.389 in pymatgen's origin choice 1). In the MP 2025
binaries: CsCl a = 4.123 (B2); LiCl a = 5.130, TiN a = 4.242 (rock salt); MgF2 rutile
a = 4.621, c = 3.052, F at x = 0.303.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("jax")

from conftest import model_records
from pymatgen.core import Lattice, Structure

import e3elastic
from e3elastic import runtime, tensors

runtime.enable_compilation_cache()

SCALES = (0.97, 1.00, 1.03)


def _rock_salt(a, x, y):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [x, y], [[0, 0, 0], [0.5] * 3])


def _perovskite(a, x, y, z):
    return Structure.from_spacegroup(
        "Pm-3m", Lattice.cubic(a), [x, y, z], [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0]]
    )


def unseen_crystals() -> dict[str, Structure]:
    """Crystals whose formula no data file holds."""
    spinel = Structure.from_spacegroup(
        "Fd-3m",
        Lattice.cubic(8.086),
        ["Zn", "Al", "O"],
        [[0, 0, 0], [0.625, 0.625, 0.625], [0.389, 0.389, 0.389]],
    )
    return {
        "PbS": _rock_salt(5.936, "Pb", "S"),
        "Au": Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.078), ["Au"], [[0, 0, 0]]),
        "KMgF3": _perovskite(3.973, "K", "Mg", "F"),
        "KZnF3": _perovskite(4.055, "K", "Zn", "F"),
        "BaZrO3": _perovskite(4.193, "Ba", "Zr", "O"),
        "ZnAl2O4": spinel.get_primitive_structure(),
    }


def binaries_in_the_data() -> dict[str, Structure]:
    """Crystals built here whose formula the MP 2025 binaries hold (K and G only, or another
    polymorph)."""
    return {
        "CsCl": Structure(Lattice.cubic(4.123), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
        "LiCl": _rock_salt(5.130, "Li", "Cl"),
        "TiN": _rock_salt(4.242, "Ti", "N"),
        "MgF2": Structure.from_spacegroup(
            "P4_2/mnm",
            Lattice.tetragonal(4.621, 3.052),
            ["Mg", "F"],
            [[0, 0, 0], [0.303, 0.303, 0]],
        ),
    }


def _scaled(s: Structure, f: float) -> Structure:
    return Structure(Lattice(s.lattice.matrix * f), s.species, s.frac_coords)


@pytest.fixture(scope="module")
def model():
    return e3elastic.load_model("default")


@pytest.fixture(scope="module", params=["default", "ensemble"])
def shipped_model(request):
    """Each shipped model in turn: the physics below must hold for both."""
    return e3elastic.load_model(request.param)


def test_unseen_crystals_are_absent_from_the_training_data(model, data_folder):
    # guards the test below: these must be crystals the shipped model never saw (its split
    # ids, looked up in the data; newer data files may well hold these formulas)
    seen = {i for part in model.info["split"].values() for i in part}
    records = model_records(model, data_folder)
    formulas = {r.formula for r in records if r.id in seen}
    # every crystal it saw is found, but the test binary GeTe mp-2612 (in the splits of bundles
    # trained before it was dropped as a duplicate of the GeTe tensor mp-938, docs/data.md)
    assert seen - {r.id for r in records} <= {"mp-2612"}
    assert not set(unseen_crystals()) & formulas


@pytest.mark.parametrize(
    "name",
    ["PbS", "Au", "KMgF3", "KZnF3", "BaZrO3", "ZnAl2O4", "CsCl", "LiCl", "TiN", "MgF2"],
)
def test_bulk_modulus_falls_with_volume(shipped_model, name):
    s = (unseen_crystals() | binaries_in_the_data())[name]
    results = e3elastic.predict([_scaled(s, f) for f in SCALES], model=shipped_model)
    assert all(r["error"] is None for r in results)
    k = [r["K_VRH_GPa"] for r in results]
    assert k[0] > k[1] > k[2], (name, np.round(k, 2).tolist())


def test_predictions_are_positive_definite(shipped_model, rng):
    from pathlib import Path

    examples = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.cif"))
    structures = [str(p) for p in examples] + list(unseen_crystals().values())
    # random valid structures: random cells of 1-4 atoms of random elements, no two atoms
    # closer than 1.8 Angstrom
    symbols = "H Li C N O F Na Mg Al Si S Cl K Ca Ti Fe Cu Zn Sr Zr Ag Sn Ba W Pb Xe Ce".split()
    while len(structures) < len(examples) + 6 + 24:
        n = int(rng.integers(1, 5))
        lengths = rng.uniform(2.5, 6.0, 3)
        angles = rng.uniform(70, 110, 3)
        s = Structure(
            Lattice.from_parameters(*lengths, *angles),
            list(rng.choice(symbols, n)),
            rng.uniform(0, 1, (n, 3)),
        )
        d = s.distance_matrix + 1e3 * np.eye(n)
        if d.min() > 1.8 and min(s.lattice.abc) > 1.8 and s.volume / n > 8:
            structures.append(s)
    results = e3elastic.predict(structures, model=shipped_model)
    assert all(r["error"] is None for r in results), [r["error"] for r in results]
    for r in results:
        assert r["born_stable"] and r["min_eigenvalue_GPa"] > 0
        w = np.linalg.eigvalsh(tensors.voigt_to_mandel(r["voigt_GPa"]))
        assert w.min() > 0


def test_unseen_element_lands_near_its_group_neighbour(model):
    # Xe, Rn and Ne never occur in training: their species embedding is the descriptor
    # network's output with a zero per-element correction
    import jax.numpy as jnp

    from e3elastic.graph import SYMBOLS
    from e3elastic.network.model import SpeciesEmbedding

    counts = model.info["training_set"]["elements"]
    assert not {"Xe", "Rn", "Ne"} & set(counts)
    cfg = model.config.model
    names = ["Xe", "Rn", "Ne", "Fe", "O", "Li", "W", "La"]
    inp = {
        "species": jnp.asarray([SYMBOLS.index(s) for s in names], jnp.int32),
        "theory": jnp.zeros(1, jnp.int32),
        "node_graph": jnp.zeros(len(names), jnp.int32),
    }
    n_scalar = model.members[0][0]["params"]["species"]["descriptor_out"]["bias"].shape[0]
    species_params = {"params": model.members[0][0]["params"]["species"]}
    e = np.asarray(SpeciesEmbedding(cfg, n_scalar).apply(species_params, inp))
    assert np.all(np.isfinite(e))
    emb = dict(zip(names, e, strict=True))
    d_rn = np.linalg.norm(emb["Xe"] - emb["Rn"])
    for other in ("Fe", "O", "Li", "W", "La"):
        assert d_rn < np.linalg.norm(emb["Xe"] - emb[other]), other


def test_b3lyp_d2_is_the_level_the_zeolites_were_trained_at(model, data_folder):
    # The zeolites' tensors are B3LYP-D2 (Coudert's set). Told that level, the model must fit
    # its training zeolites better than when told PBE: the level vector it uses at prediction
    # is the one it learned them with. Training zeolites of up to 48 sites, read from the file.
    import gzip
    import json

    f = data_folder / "coudert_zeolites_sio2_b3lyp_d2_combined.json.gz"
    if not f.is_file():
        pytest.skip(f"real-data test: {f} is absent")
    train_ids = set(model.info["split"]["train"])
    rows = [
        e
        for e in json.load(gzip.open(f))
        if f"zeolite:{e['framework']}" in train_ids and len(e["structure"]["sites"]) <= 48
    ]
    assert len(rows) >= 10
    structures = [Structure.from_dict(e["structure"]) for e in rows]
    true = tensors.voigt_to_cartesian(np.array([e["elastic_tensor_voigt_GPa"] for e in rows]))

    def rel_errors(theory):
        results = e3elastic.predict(structures, model=model, theory=theory)
        assert {r["theory"] for r in results} == {theory.upper()}
        pred = tensors.voigt_to_cartesian(np.array([r["voigt_GPa"] for r in results]))
        axes = (1, 2, 3, 4)
        return np.linalg.norm((pred - true).reshape(len(rows), -1), axis=1) / np.sqrt(
            np.sum(true**2, axis=axes)
        )

    b3, pbe = rel_errors("b3lyp-d2"), rel_errors("pbe")
    # measured: mean 0.22 against 0.35, lower for each of 22 zeolites
    assert b3.mean() < 0.8 * pbe.mean(), (b3.round(3), pbe.round(3))
    assert np.mean(b3 < pbe) >= 0.9, (b3.round(3), pbe.round(3))
