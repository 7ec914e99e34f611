"""The shipped model: it loads, and its prediction for one example is pinned.

The pinned numbers were written when the bundle in ``e3elastic/pretrained/default`` was
exported; a change to the model code, the bundle or the graph construction that alters
predictions fails here. Re-pin only together with a new bundle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")

import e3elastic
from e3elastic import runtime, tensors

runtime.enable_compilation_cache()
ROOT = Path(__file__).resolve().parents[1]

# alpha-quartz (examples/alpha-quartz.cif): upper triangle of the Voigt matrix, GPa
QUARTZ_PINNED = {
    (0, 0): 99.302374,
    (0, 1): 17.085188,
    (0, 2): 20.739326,
    (0, 3): -4.688184,
    (1, 1): 99.302385,
    (1, 2): 20.739327,
    (1, 3): 4.688177,
    (2, 2): 107.332713,
    (3, 3): 61.147543,
    (4, 4): 61.147545,
    (4, 5): -4.688188,
    (5, 5): 41.108597,
}
QUARTZ_K_VRH, QUARTZ_G_VRH = 46.94609486317452, 48.09911321420073


@pytest.fixture(scope="module")
def quartz():
    [r] = e3elastic.predict([ROOT / "examples" / "alpha-quartz.cif"])
    assert r["error"] is None
    return r


def test_shipped_bundle_loads_and_is_small():
    model = e3elastic.load_model("default")
    folder = Path(model.path)
    assert (folder / "README.md").is_file()
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 5e6
    info = json.loads((folder / "info.json").read_text())
    assert len(info["split"]["test"]) > 100  # the held-out ids travel with the weights


def test_pinned_quartz_prediction(quartz):
    v = quartz["voigt_GPa"]
    for (i, j), expected in QUARTZ_PINNED.items():
        assert v[i, j] == pytest.approx(expected, abs=2e-3), (i, j)
    assert quartz["K_VRH_GPa"] == pytest.approx(QUARTZ_K_VRH, rel=1e-5)
    assert quartz["G_VRH_GPa"] == pytest.approx(QUARTZ_G_VRH, rel=1e-5)


def test_quartz_prediction_has_trigonal_form(quartz):
    # physics, not a pin: point group 32 with a along x gives C11 = C22, C14 = -C24 = C56,
    # C66 = (C11 - C12) / 2 and C15 = C16 = 0 (up to float32 rounding in the network)
    v = quartz["voigt_GPa"]
    scale = np.abs(v).max()
    assert abs(v[0, 0] - v[1, 1]) < 1e-5 * scale
    assert abs(v[0, 3] + v[1, 3]) < 1e-5 * scale
    assert abs(v[0, 3] - v[4, 5]) < 1e-5 * scale
    assert abs(v[5, 5] - 0.5 * (v[0, 0] - v[0, 1])) < 1e-5 * scale
    assert np.abs(v[0, 4:]).max() < 1e-5 * scale
    assert tensors.born_stability(v)["stable"]


def test_shipped_ensemble_gives_spread():
    model = e3elastic.load_model("ensemble")
    assert model.n_members == 5
    # two architectures: the default network and the deeper wide one, sharing graphs and head
    assert len(model.others) == 1 and model.others[0].n_parameters > model.n_parameters
    assert model.others[0].config.model.n_layers == model.config.model.n_layers + 1
    # calibrated on its validation split: the raw spread under-states the error
    assert set(model.sigma_scale) == {"voigt", "K_VRH", "G_VRH"}
    assert all(v > 1.0 for v in model.sigma_scale.values())
    [r] = e3elastic.predict([ROOT / "examples" / "silicon.cif"], model=model)
    assert r["error"] is None
    std = r["voigt_std_GPa"]
    assert std[0, 0] > 0 and std[3, 3] > 0
    assert np.abs(std[0, 3:]).max() < 1e-3  # components zero by symmetry have no spread
