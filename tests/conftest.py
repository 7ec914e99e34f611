"""Shared fixtures: the real-data folder, and reproducible random tensors."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """Data folder, absolute: $E3ELASTIC_DATA, else ../shared/data beside the repository
    (never relative to the working directory, so tests run the same from any folder)."""
    env = os.environ.get("E3ELASTIC_DATA")
    return (Path(env) if env else REPO.parent / "shared" / "data").resolve()


def require_data(name: str | None = None) -> Path:
    """Return the data folder (or one file in it), or skip the test with the reason."""
    d = data_dir()
    if not d.is_dir():
        pytest.skip(f"real-data test: data folder {d} is absent (set E3ELASTIC_DATA)")
    if name is not None:
        f = d / name
        if not f.is_file():
            pytest.skip(f"real-data test: {f} is absent")
        return f
    return d


def real_voigt_tensors() -> dict[str, np.ndarray]:
    """Every 6x6 Voigt tensor (GPa) in the real data files, read directly from the raw JSON.

    Independent of e3elastic.data on purpose: the tensor tests must not depend on it.
    Keys are '<source>:<id>'.
    """
    d = require_data()
    out: dict[str, np.ndarray] = {}
    f = d / "matminer_elastic_tensor_2015.json.gz"
    if f.is_file():
        raw = json.load(gzip.open(f))
        col = raw["columns"].index("elastic_tensor")
        idc = raw["columns"].index("material_id")
        for row in raw["data"]:
            out[f"matminer:{row[idc]}"] = np.array(row[col]["data"], dtype=float)
    f = d / "strainnet_mp_val_clean.json.gz"
    if f.is_file():
        raw = json.load(gzip.open(f))
        for mid, t in raw["elasticity.elastic_tensor"].items():
            out[f"strainnet:{mid}"] = np.array(t, dtype=float)
    f = d / "matten_example_crystal_elasticity_tensor_n100.json.gz"
    if f.is_file():
        raw = json.load(gzip.open(f))
        for k, t in raw["elastic_tensor_voigt"].items():
            out[f"matten:{k}"] = np.array(t, dtype=float)
    f = d / "coudert_zeolites_sio2_b3lyp_d2_combined.json.gz"
    if f.is_file():
        for e in json.load(gzip.open(f)):
            out[f"zeolite:{e['framework']}"] = np.array(e["elastic_tensor_voigt_GPa"], float)
    if not out:
        pytest.skip(f"real-data test: no known data files in {d}")
    return out


@pytest.fixture(scope="session")
def data_folder() -> Path:
    """The real-data folder, resolved once (absolute); the test is skipped when it is absent.
    Pass it to the loaders explicitly: their own default is relative to the working folder."""
    return require_data()


def model_records(model, folder: Path) -> list:
    """The records of ``folder`` loaded with the data settings a model was trained with (its
    bundle's ``info.json``): the crystals its split ids refer to."""
    from e3elastic import data

    dcfg = model.info["data"]
    return list(
        data.load_dataset(
            folder,
            subset=dcfg["subset"],
            max_sites=dcfg["max_sites"],
            tolerance=dcfg["tolerance"],
            keep_unstable=dcfg["keep_unstable"],
        ).records
    )


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261125)


def random_voigt(rng: np.random.Generator, batch: tuple[int, ...] = (), pd: bool = True):
    """Random symmetric 6x6 (GPa scale); positive definite when pd=True."""
    a = rng.normal(size=(*batch, 6, 6)) * 30.0
    if pd:
        return a @ np.swapaxes(a, -1, -2) / 6.0 + 20.0 * np.eye(6)
    return 0.5 * (a + np.swapaxes(a, -1, -2))


def random_rotation(rng: np.random.Generator, improper: bool = False) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return -q if improper else q


def quartz_structure():
    """alpha-quartz, P3_221 (Levien et al. 1980; origin shifted by c/3 to the standard setting)."""
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup(
        "P3_221",
        Lattice.hexagonal(4.916, 5.4054),
        ["Si", "O"],
        [[0.4697, 0.0, 2 / 3], [0.4135, 0.2669, 0.1191 + 2 / 3]],
    )


def rotated_structure(structure, R: np.ndarray):
    """The structure with its lattice (rows) rotated by R; fractional coordinates kept."""
    from pymatgen.core import Lattice, Structure

    return Structure(
        Lattice(structure.lattice.matrix @ R.T), structure.species, structure.frac_coords
    )


def random_model_stats(model_config) -> dict[str, np.ndarray]:
    """Output normalisation for a randomly initialised test model: moderate stiffnesses (a few
    hundred GPa at most) for either head, so derived moduli stay finite."""
    if model_config.head == "log":  # log-stiffness in units of log_reference (100 GPa)
        return {"shift": np.r_[[0.5, 1.0], np.zeros(19)], "scale": np.full(21, 0.3)}
    return {"shift": np.r_[[300.0, 60.0], np.zeros(19)], "scale": np.full(21, 40.0)}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A loaded ``tiny`` model with random weights (seed 0): predictions are arbitrary but
    deterministic. Shared by the reliability and fuzz tests, so its programs compile once."""
    pytest.importorskip("jax")
    from e3elastic import config as cfg
    from e3elastic import inference
    from e3elastic.training import checkpoint as ckpt

    config = cfg.tiny()
    rng = np.random.default_rng(0)
    params = ckpt.unflatten_params(
        {
            k: rng.normal(size=v).astype(np.float32) * 0.5
            for k, v in ckpt.expected_param_shapes(config).items()
        }
    )
    stats = random_model_stats(config.model)
    path = tmp_path_factory.mktemp("tiny-model") / "bundle"
    ckpt.export_bundle(path, config, params, stats, {"note": "random weights"})
    return inference.load_model(path)
