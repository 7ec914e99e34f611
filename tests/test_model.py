"""The network's symmetries, end to end on crystals (tiny config, float32 and float64).

Every check compares the model with itself under a transformation whose effect on C is known
from physics: rotation/inversion (C' = R R R R C), atom order, supercell, batch padding, and the
point group of a cubic crystal.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import quartz_structure, random_rotation, require_data, rotated_structure

jax = pytest.importorskip("jax")

from e3elastic import config as C  # noqa: E402
from e3elastic import graph as G  # noqa: E402
from e3elastic import runtime, tensors  # noqa: E402
from e3elastic.model import ElasticityNet, batch_inputs, irrep_stats  # noqa: E402

runtime.enable_compilation_cache()

BUCKET = G.Bucket(n_node=200, n_edge=16384, n_graph=5)  # one shape for every call here


def _nacl():
    from pymatgen.core import Lattice, Structure

    return Structure.from_spacegroup(
        "Fm-3m", Lattice.cubic(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]
    )




def _real_structures():
    """A few real stored structures of different crystal systems (matminer 2015)."""
    import gzip
    import json

    from pymatgen.core import Structure

    f = require_data("matminer_elastic_tensor_2015.json.gz")
    d = json.load(gzip.open(f))
    cols = d["columns"]
    i_s, i_id = cols.index("structure"), cols.index("material_id")
    out = []
    for row in d["data"]:
        s = Structure.from_dict(row[i_s])
        if 3 <= len(s) <= 12 and len(out) < 3:
            out.append((row[i_id], s))
    return out


class Runner:
    """One jitted forward per dtype, shared by all tests (one compiled shape each)."""

    def __init__(self):
        self.cfg = C.tiny()
        self.net = ElasticityNet(self.cfg.model)
        self._fns = {}
        self._params = {}

    def _setup(self, dtype):
        if dtype not in self._fns:
            g = G.structure_to_graph(_nacl(), self.cfg.model.cutoff, id="nacl")
            with jax.enable_x64(dtype == np.float64):
                inp = batch_inputs(G.pad_batch([g], BUCKET), dtype)
                params = jax.jit(self.net.init)(jax.random.PRNGKey(0), inp)
                params = jax.tree.map(lambda a: np.asarray(a, dtype), params)
                self._params[dtype] = params
                self._fns[dtype] = jax.jit(self.net.apply)
        return self._fns[dtype], self._params[dtype]

    def __call__(self, structures, dtype=np.float64, bucket=BUCKET) -> np.ndarray:
        """Cartesian tensors ``(n, 3, 3, 3, 3)`` (model units) of structures, in one batch."""
        fn, params = self._setup(dtype)
        graphs = [G.structure_to_graph(s, self.cfg.model.cutoff) for s in structures]
        with jax.enable_x64(dtype == np.float64):
            y = np.asarray(fn(params, batch_inputs(G.pad_batch(graphs, bucket), dtype)))
        return tensors.irreps_to_cartesian(y[: len(structures)].astype(np.float64))


@pytest.fixture(scope="module")
def run():
    return Runner()




def _rel(a, b):
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("improper", [False, True])
def test_equivariance_synthetic(run, rng, dtype, tol, improper):
    s = quartz_structure()
    R = random_rotation(rng, improper=improper)
    c, c_rot = run([s, rotated_structure(s, R)], dtype)
    assert np.max(np.abs(c[0])) > 1e-3  # the model output is not trivially zero
    assert _rel(c_rot, tensors.rotate(c, R)) < tol


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
def test_equivariance_real_crystals(run, rng, dtype, tol):
    structures = [s for _, s in _real_structures()]
    for improper in (False, True):
        R = random_rotation(rng, improper=improper)
        c = run(structures, dtype)
        c_rot = run([rotated_structure(s, R) for s in structures], dtype)
        for a, b in zip(c, c_rot, strict=True):
            assert _rel(b, tensors.rotate(a, R)) < tol


def test_rotation_actually_changes_the_tensor(run, rng):
    # guards the equivariance tests: the prediction is not rotation invariant by accident
    s = quartz_structure()
    R = random_rotation(rng)
    c, c_rot = run([s, rotated_structure(s, R)])
    assert _rel(c_rot, c) > 1e-3


def test_atom_order_invariance(run, rng):
    from pymatgen.core import Structure

    s = quartz_structure()
    perm = rng.permutation(len(s))
    s2 = Structure(s.lattice, [s.species[i] for i in perm], s.frac_coords[perm])
    c = run([s, s2])
    assert _rel(c[1], c[0]) < 1e-10


def test_supercell_invariance(run):
    s = quartz_structure()
    c = run([s, s * (2, 1, 1)])
    assert _rel(c[1], c[0]) < 1e-10


def test_batch_and_padding_invariance(run):
    s, other = quartz_structure(), _nacl()
    alone = run([s])[0]
    with_others = run([other, s, other])[1]
    bigger = run([s], bucket=G.Bucket(400, 20000, 9))[0]
    assert _rel(with_others, alone) < 1e-10
    assert _rel(bigger, alone) < 1e-10


def test_cubic_prediction_has_cubic_symmetry(run):
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    s = _nacl()
    for dtype in (np.float64, np.float32):
        c = run([s], dtype)[0]
        ops = SpacegroupAnalyzer(s).get_point_group_operations(cartesian=True)
        rotations = np.array([op.rotation_matrix for op in ops])
        assert len(rotations) == 48
        assert float(tensors.symmetry_residual(c, rotations)) < 1e-5
        # a cubic tensor has C11 = C22 = C33 and no 2e part
        v = tensors.cartesian_to_voigt(c)
        assert abs(v[0, 0] - v[2, 2]) < 1e-5 * np.abs(v).max()
        x = tensors.cartesian_to_irreps(c)
        assert np.abs(x[2:12]).max() < 1e-5 * np.abs(x).max()


def test_irrep_stats_normalise_each_irrep(rng):
    x = rng.normal(size=(50, 21)) * np.r_[[100, 10], [5] * 10, [1] * 9] + np.r_[[300, 50], [0] * 19]
    st = irrep_stats(x)
    z = (x - st["shift"]) / st["scale"]
    assert np.allclose(z[:, :2].mean(0), 0, atol=1e-12)
    for sl in (slice(2, 7), slice(7, 12), slice(12, 21)):
        assert np.sum(z[:, sl] ** 2, axis=1).mean() / (sl.stop - sl.start) == pytest.approx(
            1, rel=1e-5
        )
    assert np.all(st["shift"][2:] == 0)  # no shift on non-scalars (would break equivariance)
