"""Domain warnings on predictions (e3elastic.domain through e3elastic.predict, shipped model).

Out-of-domain inputs built here must be flagged with the documented codes; the example CIFs
and the held-out test split (real crystals) must almost never be.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import require_data

pytest.importorskip("jax")

from pymatgen.core import Lattice, Structure

import e3elastic
from e3elastic import domain, runtime

runtime.enable_compilation_cache()
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def model():
    return e3elastic.load_model("default")


def _codes(result) -> set[str]:
    return {w.split(":")[0] for w in result["warnings"]}


def _fcc(el, a):
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), [el], [[0, 0, 0]])


def test_out_of_domain_inputs_are_flagged(model):
    si = Structure.from_file(str(EXAMPLES / "silicon.cif"))
    c = si.lattice.c
    slab = Structure(  # 5.4 Angstrom of silicon, 54.6 Angstrom of vacuum
        Lattice.from_parameters(si.lattice.a, si.lattice.b, 60.0, 90, 90, 90),
        si.species,
        [[f[0], f[1], f[2] * c / 60.0] for f in si.frac_coords],
    )
    cases = {
        "CO in a box": (Structure(Lattice.cubic(30), ["C", "O"], [[0, 0, 0], [1.128 / 30, 0, 0]]),
                        {"vacuum"}),
        "slab": (slab, {"vacuum"}),
        "atoms 0.04 A apart": (
            Structure(Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.04 / 5.64, 0, 0]]),
            {"short-distance"},
        ),
        "solid neon": (_fcc("Ne", 4.46), {"unseen-element"}),
        "solid argon": (_fcc("Ar", 5.26), {"unseen-element"}),
        "solid xenon": (_fcc("Xe", 6.13), {"unseen-element"}),
    }  # fmt: skip
    results = e3elastic.predict([s for s, _ in cases.values()], model=model)
    for (name, (_, want)), r in zip(cases.items(), results, strict=True):
        assert r["error"] is None, name
        assert want <= _codes(r), (name, r["warnings"])
        assert all(": " in w for w in r["warnings"])


def test_examples_get_no_warning(model):
    results = e3elastic.predict(sorted(str(p) for p in EXAMPLES.glob("*.cif")), model=model)
    assert len(results) == 5
    for r in results:
        assert r["error"] is None and r["warnings"] == [], (r["file"], r["warnings"])


def test_test_split_false_warning_rate_is_below_two_percent(model):
    require_data()
    from e3elastic import data

    test_ids = set(model.info["split"]["test"])
    records = [
        r for r in data.load_dataset(None, subset="all", max_sites=420).records
        if r.id in test_ids
    ]  # fmt: skip
    assert len(records) > 150
    results = e3elastic.predict([r.structure for r in records], model=model)
    warned = [r["warnings"] for r in results if r["warnings"]]
    assert len(warned) / len(results) < 0.02, warned[:5]


def test_ensemble_disagreement():
    base = np.diag([100.0, 100, 100, 40, 40, 40])
    assert domain.ensemble_warnings(np.stack([base, base * 1.05])) == []
    [w] = domain.ensemble_warnings(np.stack([base, base * 2.0]))
    assert w.startswith("ensemble-disagreement:")
