"""benchmarks/bench_experiment.py: its measured tensors fit its hand-built structures.

A reference tensor in a frame other than its structure's would score the model against noise
(the frame rule the data loader enforces for DFT tensors): every rotation of the structure's
point group must leave the measured tensor unchanged, and the tensor must be stable.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_experiment import MEASURED  # noqa: E402

from e3elastic import tensors  # noqa: E402
from e3elastic.inference.structures import read_structure, symmetry_or_none  # noqa: E402

FORMULAS = {"Cu": "Cu", "Al": "Al", "diamond": "C", "MgO": "MgO", "GaAs": "GaAs"}
FORMULAS |= {"rutile": "TiO2", "ZnO": "ZnO", "corundum": "Al2O3"}
POINT_GROUPS = {"Cu": "m-3m", "Al": "m-3m", "diamond": "m-3m", "MgO": "m-3m", "GaAs": "-43m"}
POINT_GROUPS |= {"rutile": "4/mmm", "ZnO": "6mm", "corundum": "-3m"}


@pytest.mark.parametrize("name", sorted(MEASURED))
def test_measured_tensor_has_its_structures_symmetry(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s = read_structure(BENCH / "crystals" / f"{name}.cif")
    assert s.composition.reduced_formula == FORMULAS[name]
    rotations, info = symmetry_or_none(s, 0.01)
    assert info["point_group"] == POINT_GROUPS[name]
    c = MEASURED[name]
    np.testing.assert_allclose(c, c.T)
    sym = tensors.cartesian_to_voigt(tensors.symmetrize(tensors.voigt_to_cartesian(c), rotations))
    assert np.abs(sym - c).max() < 1e-9 * np.abs(c).max()
    assert tensors.born_stability(c)["stable"]
