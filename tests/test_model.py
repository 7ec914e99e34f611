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

from e3elastic import config as cfg  # noqa: E402
from e3elastic import graph as G  # noqa: E402
from e3elastic import runtime, tensors  # noqa: E402
from e3elastic.network.model import ElasticityNet, batch_inputs, irrep_stats  # noqa: E402

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

    def __init__(self, overrides=()):
        self.cfg = cfg.tiny().override(list(overrides))
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


#: odd scalars and vectors next to the even channels (as in MatTen's hidden layers), 3 blocks
PARITY = ("model.hidden_irreps=8x0e+4x0o+2x1o+2x1e+2x2e+1x2o+1x3o+1x3e+2x4e", "model.n_layers=3")


@pytest.mark.parametrize("improper", [False, True])
def test_equivariance_with_parity_channels(rng, improper):
    """Channels of both parities: E(3) equivariance (inversion included) must still hold."""
    run = Runner(PARITY)
    s = quartz_structure()  # chiral: its mirror image is another crystal
    R = random_rotation(rng, improper=improper)
    c, c_rot = run([s, rotated_structure(s, R)], np.float64)
    assert np.max(np.abs(c[0])) > 1e-3
    assert _rel(c_rot, tensors.rotate(c, R)) < 1e-10


@pytest.mark.parametrize("improper", [False, True])
def test_equivariance_with_layer_norm(rng, improper):
    """``model.norm=layer`` with channels of both parities: still E(3) equivariant, and the
    normalisation changes the prediction (it is applied)."""
    run = Runner((*PARITY, "model.norm=layer"))
    plain = Runner(PARITY)
    s = quartz_structure()
    R = random_rotation(rng, improper=improper)
    c, c_rot = run([s, rotated_structure(s, R)], np.float64)
    assert np.max(np.abs(c[0])) > 1e-3
    assert _rel(c_rot, tensors.rotate(c, R)) < 1e-10
    assert _rel(c, plain([s, rotated_structure(s, R)], np.float64)) > 1e-3


def test_layer_norm_statistics_and_equivariance(rng):
    import e3nn_jax as e3nn

    from e3elastic.network.model import IrrepsLayerNorm

    irreps = e3nn.Irreps("6x0e+3x0o+4x1o+2x2e+3x4e")
    with jax.enable_x64(True):
        x = e3nn.IrrepsArray(irreps, rng.normal(size=(5, irreps.dim)) * 3.0 + 1.0)
        x = x.regroup()
        norm = IrrepsLayerNorm()
        params = norm.init(jax.random.PRNGKey(0), x)
        y = norm.apply(params, x)
        for (_mul, ir), c in zip(y.irreps, y.chunks, strict=True):
            c = np.asarray(c)
            if ir == e3nn.Irrep("0e"):
                np.testing.assert_allclose(c.mean(axis=(1, 2)), 0.0, atol=1e-12)
                np.testing.assert_allclose(c.var(axis=(1, 2)), 1.0, rtol=1e-5)
            else:  # odd scalars are scaled, not shifted
                np.testing.assert_allclose((c**2).mean(axis=(1, 2)), 1.0, rtol=1e-5)
        R = random_rotation(rng, improper=True)
        D = np.asarray(x.irreps.D_from_matrix(R))
        y_rot = norm.apply(params, e3nn.IrrepsArray(x.irreps, x.array @ D.T))
        np.testing.assert_allclose(np.asarray(y_rot.array), np.asarray(y.array) @ D.T, atol=1e-10)
        zeros = norm.apply(params, e3nn.IrrepsArray(x.irreps, np.zeros((2, irreps.dim))))
        assert np.all(np.asarray(zeros.array) == 0.0)  # padding atoms stay zero, no NaN


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


@pytest.mark.parametrize("runner", ["run", "density_run"])
def test_batch_and_padding_invariance(runner, request):
    """Padding and the other crystals of a batch change nothing (``density_run``: the volume
    per atom, counted per crystal, must ignore padding slots and other crystals' atoms)."""
    run = request.getfixturevalue(runner)
    s, other = quartz_structure(), _nacl()
    alone = run([s])[0]
    with_others = run([other, s, other])[1]
    bigger = run([s], bucket=G.Bucket(400, 20000, 9))[0]
    assert _rel(with_others, alone) < 1e-10
    assert _rel(bigger, alone) < 1e-10


def test_cubic_prediction_has_cubic_symmetry(run):
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    s = _nacl()
    # The symmetry is exact in the arithmetic: what is left is rounding, a few hundred
    # operations deep, so some 1e-13 relative in float64 (1e-10 leaves a margin of 1000) and
    # some 1e-6 in float32 (eps 6e-8; 1e-5 leaves a margin of 10).
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-5)):
        c = run([s], dtype)[0]
        ops = SpacegroupAnalyzer(s).get_point_group_operations(cartesian=True)
        rotations = np.array([op.rotation_matrix for op in ops])
        assert len(rotations) == 48
        assert float(tensors.symmetry_residual(c, rotations)) < tol, dtype
        # a cubic tensor has C11 = C22 = C33 and no 2e part
        v = tensors.cartesian_to_voigt(c)
        assert abs(v[0, 0] - v[2, 2]) < tol * np.abs(v).max(), dtype
        x = tensors.cartesian_to_irreps(c)
        assert np.abs(x[2:12]).max() < tol * np.abs(x).max(), dtype


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


def test_output_irreps_follow_the_one_layout():
    import e3nn_jax as e3nn

    from e3elastic.network.model import OUTPUT_IRREPS

    assert OUTPUT_IRREPS == e3nn.Irreps("2x0e+2x2e+1x4e")
    assert OUTPUT_IRREPS.dim == tensors.N_IRREPS == 21
    assert [(mul, ir.l, ir.p) for mul, ir in OUTPUT_IRREPS] == [
        (m, l, 1) for m, l in tensors.IRREP_LAYOUT
    ]
    copies, kinds, start = [], {}, 0
    for mul, ir in OUTPUT_IRREPS:
        kinds[f"{ir.l}e"] = slice(start, start + mul * ir.dim)
        for _ in range(mul):
            copies.append((ir.l, slice(start, start + ir.dim)))
            start += ir.dim
    assert copies == list(tensors.IRREP_COPIES)
    assert kinds == tensors.IRREP_SLICES


def test_dummy_inputs_match_a_real_batch():
    from e3elastic.inference.programs import inference_buckets
    from e3elastic.network.interface import INPUT_FIELDS, dummy_inputs

    g = G.structure_to_graph(_nacl(), cfg.tiny().model.cutoff, id="nacl")
    [b] = list(G.batches([g], batch_size=1, buckets=inference_buckets([g], 1)))
    real = batch_inputs(b, np.float32, 0)
    fake = dummy_inputs(n_node=len(b.species), n_edge=len(b.senders), n_graph=len(b.lattice))
    assert tuple(real) == tuple(fake) == INPUT_FIELDS
    for k in INPUT_FIELDS:
        assert (real[k].shape, real[k].dtype.kind) == (fake[k].shape, fake[k].dtype.kind), k


# --------------------------------------------------------------------------------------------
# The log head: C = reference * expm(L), positive-definite and exactly equivariant
# --------------------------------------------------------------------------------------------


def _head_tensors(run, structures, dtype):
    """Voigt stiffness (GPa) from the tiny model's log head, via its denormalised outputs."""
    from e3elastic.network.model import voigt_from_outputs

    assert run.cfg.model.head == "log"
    y = tensors.cartesian_to_irreps(run(structures, dtype))  # (n, 21) normalised outputs
    stats = {"shift": np.r_[[0.5, 1.0], np.zeros(19)], "scale": np.full(21, 0.3)}
    return voigt_from_outputs(stats["shift"] + stats["scale"] * y, run.cfg.model)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-10), (np.float32, 1e-5)])
@pytest.mark.parametrize("improper", [False, True])
def test_log_head_equivariance_with_a_cubic_crystal(run, rng, dtype, tol, improper):
    # NaCl is cubic: its stiffness has degenerate Mandel eigenvalues, where a careless matrix
    # function loses equivariance; quartz is trigonal with a non-zero C14.
    structures = [_nacl(), quartz_structure()]
    R = random_rotation(rng, improper=improper)
    v = _head_tensors(run, structures, dtype)
    v_rot = _head_tensors(run, [rotated_structure(s, R) for s in structures], dtype)
    for a, b in zip(v, v_rot, strict=True):
        want = tensors.cartesian_to_voigt(tensors.rotate(tensors.voigt_to_cartesian(a), R))
        assert _rel(b, want) < tol
    # positive-definite by construction
    assert np.all(np.linalg.eigvalsh(tensors.voigt_to_mandel(v)) > 0)
    w = np.linalg.eigvalsh(tensors.voigt_to_mandel(v[0]))
    # cubic: the Mandel spectrum is {3K-like x1, 2G' x2, 2C44 x3}: only 3 distinct values
    assert len(np.unique(np.round(w / w.max(), 6))) <= 3


def test_log_head_equivariance_real_crystals(run, rng):
    structures = [s for _, s in _real_structures()] + [_nacl()]
    for improper in (False, True):
        R = random_rotation(rng, improper=improper)
        v = _head_tensors(run, structures, np.float64)
        v_rot = _head_tensors(run, [rotated_structure(s, R) for s in structures], np.float64)
        for a, b in zip(v, v_rot, strict=True):
            want = tensors.cartesian_to_voigt(tensors.rotate(tensors.voigt_to_cartesian(a), R))
            assert _rel(b, want) < 1e-10


_SILICON = np.array(
    [[165.7, 63.9, 63.9, 0, 0, 0], [63.9, 165.7, 63.9, 0, 0, 0], [63.9, 63.9, 165.7, 0, 0, 0],
     [0, 0, 0, 79.6, 0, 0], [0, 0, 0, 0, 79.6, 0], [0, 0, 0, 0, 0, 79.6]]
)  # fmt: skip


def test_expm_head_gradient_is_finite_at_degenerate_eigenvalues():
    # A linear-space loss through the log head differentiates expm at a cubic tensor, whose
    # Mandel eigenvalues repeat; eigh's gradient is infinite there, expm's is not.
    import jax.numpy as jnp

    from e3elastic.network.model import voigt_from_outputs, voigt_from_outputs_jax

    config = cfg.tiny().model
    silicon = _SILICON
    x = tensors.voigt_to_irreps(tensors.log_voigt(silicon, config.log_reference))[None]  # (1, 21)
    with jax.enable_x64(True):
        xj = jnp.asarray(x, jnp.float64)
        v = voigt_from_outputs_jax(xj, config)
        assert np.allclose(np.asarray(v)[0], silicon, rtol=1e-10, atol=1e-9)
        assert np.allclose(np.asarray(v), voigt_from_outputs(x, config), rtol=1e-10)

        def loss(z):
            return jnp.sum((voigt_from_outputs_jax(z, config) - 1.05 * silicon) ** 2)

        g = np.asarray(jax.grad(loss)(xj))
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0

        def loss_eigh(z):  # the route to avoid: expm through eigh
            cart = jnp.einsum("ijklc,c->ijkl", jnp.asarray(tensors.elasticity_basis()), z[0])
            i = np.array([p[0] for p in tensors.VOIGT_PAIRS])
            j = np.array([p[1] for p in tensors.VOIGT_PAIRS])
            w = jnp.asarray([1, 1, 1, np.sqrt(2), np.sqrt(2), np.sqrt(2)])
            mm = cart[i[:, None], j[:, None], i[None, :], j[None, :]] * w[:, None] * w[None, :]
            ev, vec = jnp.linalg.eigh(mm)
            return jnp.sum(((vec * jnp.exp(ev)) @ vec.T) ** 2)

        g_eigh = np.asarray(jax.grad(loss_eigh)(xj))
        assert not np.all(np.isfinite(g_eigh))  # confirms the degenerate case is hit


@pytest.mark.parametrize("head", ["log", "linear"])
def test_frobenius_loss_term_is_the_squared_metric(head, rng):
    # train.frobenius_weight adds w * rel_frobenius^2 of C; checked against the numpy metric
    # (full 3x3x3x3 tensors), through normalised outputs with non-trivial statistics.
    import jax.numpy as jnp

    from e3elastic.network.model import targets_from_voigt
    from e3elastic.training import metrics
    from e3elastic.training.steps import frobenius_term

    config = cfg.tiny().override([f"model.head={head}", "train.frobenius_weight=2.5"])

    def stable():
        a = rng.normal(size=(6, 6))
        return 40.0 * (a @ a.T / 6 + np.eye(6))

    true = np.stack([stable() for _ in range(4)] + [_SILICON])
    pred = np.stack([stable() for _ in range(4)] + [1.1 * _SILICON])
    t_ir, p_ir = targets_from_voigt(true, config.model), targets_from_voigt(pred, config.model)
    stats = {"shift": rng.normal(size=21), "scale": rng.uniform(0.5, 2.0, 21)}
    term = frobenius_term(config, stats)
    with jax.enable_x64(True):
        got = np.asarray(
            term(
                jnp.asarray((p_ir - stats["shift"]) / stats["scale"]),
                jnp.asarray((t_ir - stats["shift"]) / stats["scale"]),
            )
        )
    want = 2.5 * metrics.per_crystal_errors(pred, true)["rel_frobenius"] ** 2
    assert np.allclose(got, want, rtol=1e-9), (got, want)
    assert frobenius_term(cfg.tiny(), stats) is None  # weight 0: no term


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_frobenius_loss_gradient_is_finite_at_a_cubic_crystal(dtype):
    # The log head's Frobenius term goes through expm at a cubic tensor (repeated Mandel
    # eigenvalues), at the target itself and near it.
    import jax.numpy as jnp

    from e3elastic.network.model import targets_from_voigt
    from e3elastic.training.steps import frobenius_term

    config = cfg.tiny().override(["train.frobenius_weight=1.0"])
    t = targets_from_voigt(_SILICON[None], config.model)
    stats = {"shift": np.zeros(21), "scale": np.ones(21)}
    term = frobenius_term(config, stats)
    with jax.enable_x64(dtype == np.float64):
        tj = jnp.asarray(t, dtype)
        for y in (t, targets_from_voigt(1.05 * _SILICON[None], config.model)):
            g = np.asarray(jax.grad(lambda z: term(z, tj).sum())(jnp.asarray(y, dtype)))
            assert g.dtype == dtype and np.all(np.isfinite(g))
        assert np.abs(g).max() > 0  # away from the target the term pulls towards it


def test_unseen_element_embedding_is_finite_and_chemical():
    # Xe and Kr never occur in the training data; Fe does. The embedding of a species is the
    # model's first-layer scalars for one isolated-looking atom type.
    from e3elastic.network.elements import descriptor_table
    from e3elastic.network.model import SpeciesEmbedding

    config = cfg.tiny().model
    mod = SpeciesEmbedding(config, 8)
    z = {s: G.SYMBOLS.index(s) for s in ("Xe", "Kr", "Rn", "Fe", "Li", "W", "Ce")}
    inp = {
        "species": jnp_array(list(z.values())),
        "theory": jnp_array([0]),
        "node_graph": jnp_array([0] * len(z)),
    }
    params = mod.init(jax.random.PRNGKey(1), inp)
    e = np.asarray(mod.apply(params, inp))
    assert np.all(np.isfinite(e))
    name = list(z)
    d = {n: e[i] for i, n in enumerate(name)}
    near = np.linalg.norm(d["Xe"] - d["Kr"])
    for other in ("Fe", "Li", "W", "Ce"):
        assert near < np.linalg.norm(d["Xe"] - d[other]), other
    assert descriptor_table().shape[0] == G.N_SPECIES


def jnp_array(x):
    import jax.numpy as jnp

    return jnp.asarray(np.asarray(x, np.int32))


def _random_edges(rng, irreps_in, filter_out, n_node, n_edge):
    """Random sender features ``(E, irreps_in)``, edge harmonics to l = 4, the output filter
    and receivers, for the kernel tests (call inside ``jax.enable_x64``)."""
    import e3nn_jax as e3nn
    import jax.numpy as jnp

    irreps = e3nn.Irreps(irreps_in)
    x = e3nn.IrrepsArray(irreps, jnp.asarray(rng.normal(size=(n_edge, irreps.dim))))
    vec = e3nn.IrrepsArray("1o", jnp.asarray(rng.normal(size=(n_edge, 3))))
    sh = e3nn.spherical_harmonics("0e+1o+2e+3o+4e", vec, True, "component")
    filt = [e3nn.Irrep(ir) for ir in filter_out]
    receivers = jnp.asarray(rng.integers(0, n_node, n_edge))
    return x, sh, filt, receivers


@pytest.mark.parametrize(
    "irreps_in, filter_out",
    [
        ("32x0e+8x1o+8x2e+4x3o+4x4e", ["0e", "2e", "4e"]),  # the 30k default's second block
        ("32x0e+8x1o+8x2e+4x3o+4x4e", ["0e", "1o", "2e", "3o", "4e"]),
        ("5x0e", ["0e", "1o", "2e", "3o", "4e"]),  # the first block
        ("3x1e+2x2o+1x0o", ["0e", "0o", "1o", "1e", "2e", "2o"]),  # other parities
    ],
)
def test_edge_tensor_product_is_e3nns_tensor_product(irreps_in, filter_out):
    import e3nn_jax as e3nn
    import jax.numpy as jnp

    from e3elastic.network.kernels import edge_tensor_product

    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        irreps = e3nn.Irreps(irreps_in)
        x = e3nn.IrrepsArray(irreps, jnp.asarray(rng.normal(size=(7, irreps.dim))))
        vec = e3nn.IrrepsArray("1o", jnp.asarray(rng.normal(size=(7, 3))))
        sh = e3nn.spherical_harmonics("0e+1o+2e+3o+4e", vec, True, "component")
        filt = [e3nn.Irrep(ir) for ir in filter_out]
        want = e3nn.tensor_product(x, sh, filter_ir_out=filt)
        got = edge_tensor_product(x, sh, filt)
        assert got.irreps == want.irreps
        np.testing.assert_allclose(np.asarray(got.array), np.asarray(want.array), atol=1e-12)


def test_edge_tensor_product_derivatives_are_e3nns():
    """The contraction's own derivative rule: reverse and forward mode, with respect to the
    features and to the edge vectors, equal e3nn-jax's."""
    import e3nn_jax as e3nn
    import jax.numpy as jnp

    from e3elastic.network.kernels import edge_tensor_product

    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        irreps = e3nn.Irreps("3x0e+2x1o+2x2e+1x3o+1x4e")
        filt = [e3nn.Irrep(ir) for ir in ("0e", "1o", "2e", "4e")]
        x0 = jnp.asarray(rng.normal(size=(6, irreps.dim)))
        v0 = jnp.asarray(rng.normal(size=(6, 3)))

        def loss(tp):
            def f(xa, va):
                x = e3nn.IrrepsArray(irreps, xa)
                sh = e3nn.spherical_harmonics("0e+1o+2e+3o+4e", e3nn.IrrepsArray("1o", va), True)
                y = tp(x, sh, filt).array
                return jnp.sum(jnp.sin(y) * jnp.arange(y.size).reshape(y.shape))

            return f

        ours = loss(edge_tensor_product)
        ref = loss(lambda x, sh, filt: e3nn.tensor_product(x, sh, filter_ir_out=filt))
        got, want = jax.grad(ours, (0, 1))(x0, v0), jax.grad(ref, (0, 1))(x0, v0)
        for a, b in zip(got, want, strict=True):
            assert float(jnp.abs(b).max()) > 1e-3
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-10)
        dx, dv = jnp.asarray(rng.normal(size=x0.shape)), jnp.asarray(rng.normal(size=v0.shape))
        _, t_ours = jax.jvp(ours, (x0, v0), (dx, dv))
        _, t_ref = jax.jvp(ref, (x0, v0), (dx, dv))
        np.testing.assert_allclose(float(t_ours), float(t_ref), rtol=1e-10)
        _, t_ours = jax.jvp(ours, (x0, v0), (dx, jnp.zeros_like(dv)))  # one tangent only
        _, t_ref = jax.jvp(ref, (x0, v0), (dx, jnp.zeros_like(dv)))
        np.testing.assert_allclose(float(t_ours), float(t_ref), rtol=1e-10)


def test_scale_paths_is_e3nns_product_with_weights():
    import e3nn_jax as e3nn
    import jax.numpy as jnp

    from e3elastic.network.kernels import scale_paths

    with jax.enable_x64(True):
        rng = np.random.default_rng(1)
        irreps = e3nn.Irreps("3x0e+2x1o+4x2e+1x4e")
        msg = e3nn.IrrepsArray(irreps, jnp.asarray(rng.normal(size=(6, irreps.dim))))
        w = jnp.asarray(rng.normal(size=(6, irreps.num_irreps)))
        want = msg * w  # e3nn-jax: elementwise tensor product with 0e
        got = scale_paths(msg, w)
        assert got.irreps == want.irreps
        np.testing.assert_allclose(np.asarray(got.array), np.asarray(want.array), atol=1e-12)


@pytest.mark.parametrize(
    "hidden, irreps_in",
    [
        ("6x0e+2x1o+2x2e+1x3o+1x4e", "4x0e"),
        ("5x0e+3x2e+2x4e", "4x0e"),
        ("6x0e+2x0o+2x1e+2x2o", "4x0o"),  # odd scalars: paths 0o x l
        ("6x0e+2x1o+2x2e", "3x0e+1x0o"),  # two kinds of scalar: the general path
        # parity channels: the gate input repeats 0e (activated, 0o, then the gates) and
        # some irreps (0o, 1e, 2o) have no path from even scalars
        ("6x0e+2x0o+2x1o+2x1e+2x2e+1x2o", "4x0e"),
    ],
)
def test_scalar_block_mixes_on_edges_like_the_general_path(hidden, irreps_in):
    """A block with scalar inputs applies ``mix`` on the edges; the result must equal the
    general path (tensor product, per-path weights, scatter, then ``mix``) with the same
    parameters."""
    import e3nn_jax as e3nn
    import jax.numpy as jnp

    from e3elastic.network.kernels import edge_tensor_product, scale_paths
    from e3elastic.network.model import Interaction, RadialMLP, _gate_irreps

    with jax.enable_x64(True):
        rng = np.random.default_rng(2)
        n_node, n_edge, avg = 5, 23, 3.0
        x_irreps = e3nn.Irreps(irreps_in)
        x = e3nn.IrrepsArray(x_irreps, jnp.asarray(rng.normal(size=(n_node, x_irreps.dim))))
        vec = e3nn.IrrepsArray("1o", jnp.asarray(rng.normal(size=(n_edge, 3))))
        sh = e3nn.spherical_harmonics("0e+1o+2e+3o+4e", vec, True, "component")
        radial = jnp.asarray(rng.normal(size=(n_edge, 6)))
        senders = jnp.asarray(rng.integers(0, n_node, n_edge))
        receivers = jnp.asarray(rng.integers(0, n_node, n_edge))
        block = Interaction(e3nn.Irreps(hidden), 4, (7,), avg)
        params = block.init(jax.random.PRNGKey(0), x, sh, radial, senders, receivers)["params"]
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        got = block.apply({"params": params}, x, sh, radial, senders, receivers)

        gate_in = _gate_irreps(e3nn.Irreps(hidden))

        def linear(name, irreps_out, a):
            lin = e3nn.flax.Linear(irreps_out, force_irreps_out=True)
            return lin.apply({"params": params[name]}, a)

        msg = edge_tensor_product(x[senders], sh, [ir for _, ir in gate_in])
        mlp = RadialMLP((7,), msg.irreps.num_irreps)
        msg = scale_paths(msg, mlp.apply({"params": params["radial"]}, radial))
        agg = e3nn.scatter_sum(msg, dst=receivers, output_size=n_node) / np.sqrt(avg)
        h = e3nn.gate(linear("mix", gate_in, agg) + linear("self", gate_in, x))
        want = (linear("skip", e3nn.Irreps(hidden), x) + h).regroup()
        assert got.irreps == want.irreps
        assert float(jnp.abs(want.array).max()) > 1e-3  # not trivially zero
        np.testing.assert_allclose(np.asarray(got.array), np.asarray(want.array), atol=1e-10)


@pytest.mark.parametrize(
    "irreps_in, filter_out",
    [
        ("32x0e+8x1o+8x2e+4x3o+4x4e", ["0e", "2e", "4e"]),  # the 30k default's second block
        ("6x0e+2x1o+2x2e+1x3o+1x4e", ["0e", "1o", "2e", "3o", "4e"]),
        ("3x1e+2x2o+1x0o+2x0e", ["0e", "0o", "1o", "1e", "2e", "2o"]),  # other parities
    ],
)
def test_summed_messages_are_the_scattered_weighted_tensor_product(irreps_in, filter_out):
    import e3nn_jax as e3nn
    import jax.numpy as jnp

    from e3elastic.network.kernels import (
        LinearWeights,
        edge_tensor_product,
        scale_paths,
        summed_messages,
    )

    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        n_node, n_edge = 4, 19
        x, sh, filt, receivers = _random_edges(rng, irreps_in, filter_out, n_node, n_edge)
        msg = edge_tensor_product(x, sh, filt)
        w = jnp.asarray(rng.normal(size=(n_edge, msg.irreps.num_irreps)))
        want = e3nn.scatter_sum(scale_paths(msg, w), dst=receivers, output_size=n_node)
        got = summed_messages(x, sh, w, filt, receivers, n_node)
        assert got.irreps == want.irreps
        np.testing.assert_allclose(np.asarray(got.array), np.asarray(want.array), atol=1e-11)
        # the same weights as an unevaluated last layer (each input irrep's weights made by
        # one product with selected kernel columns): the same sums
        hidden = jnp.asarray(rng.normal(size=(n_edge, 5)))
        kernel = jnp.asarray(rng.normal(size=(5, msg.irreps.num_irreps)))
        bias = jnp.asarray(rng.normal(size=(msg.irreps.num_irreps,)))
        lazy = LinearWeights(hidden, kernel, bias)
        want = e3nn.scatter_sum(
            scale_paths(msg, hidden @ kernel + bias), dst=receivers, output_size=n_node
        )
        got = summed_messages(x, sh, lazy, filt, receivers, n_node)
        assert got.irreps == want.irreps
        np.testing.assert_allclose(np.asarray(got.array), np.asarray(want.array), atol=1e-10)


@pytest.mark.parametrize(
    "irreps_in, filter_out, irreps_out",
    [
        # the 30k default's second block: 0e -> 2e and 0e -> 4e are mixed on the edges
        ("32x0e+8x1o+8x2e+4x3o+4x4e", ["0e", "2e", "4e"], "44x0e+8x2e+4x4e"),
        # more output channels than input ones: nothing is mixed on the edges
        ("3x0e+2x1o+1x2e", ["0e", "1o", "2e"], "5x0e+4x1o+5x2e"),
        ("6x0e+1x1o+2x2e", ["0e", "1o", "2e", "3o"], "2x0e+1x1o+2x2e+1x3o"),
    ],
)
def test_summed_messages_with_mix_are_the_mixed_sums(irreps_in, filter_out, irreps_out):
    """``summed_messages(..., mix)`` (scalar paths mixed on the edges where ``mix`` narrows
    them) equals ``mix(summed_messages(...))``, values and parameter gradients."""
    import e3nn_jax as e3nn
    import jax.numpy as jnp

    from e3elastic.network.kernels import LinearWeights, edge_tensor_product, summed_messages

    with jax.enable_x64(True):
        rng = np.random.default_rng(5)
        n_node, n_edge = 5, 23
        x, sh, filt, receivers = _random_edges(rng, irreps_in, filter_out, n_node, n_edge)
        n_w = edge_tensor_product(x, sh, filt).irreps.num_irreps
        hidden = jnp.asarray(rng.normal(size=(n_edge, 4)))
        kernel = jnp.asarray(rng.normal(size=(4, n_w)))
        bias = jnp.asarray(rng.normal(size=(n_w,)))
        lin = e3nn.flax.Linear(e3nn.Irreps(irreps_out), force_irreps_out=True)
        plain = summed_messages(x, sh, LinearWeights(hidden, kernel, bias), filt, receivers, n_node)
        params = lin.init(jax.random.PRNGKey(0), plain)

        def both(params, kernel):
            w = LinearWeights(hidden, kernel, bias)
            want = lin.apply(params, summed_messages(x, sh, w, filt, receivers, n_node))

            def mix(a):
                return lin.apply(params, a)

            got = summed_messages(x, sh, w, filt, receivers, n_node, mix)
            return want, got

        want, got = both(params, kernel)
        assert got.irreps == want.irreps
        np.testing.assert_allclose(np.asarray(got.array), np.asarray(want.array), atol=1e-10)
        probe = jnp.asarray(rng.normal(size=want.array.shape))

        def loss(which):
            return lambda p, k: jnp.sum(both(p, k)[which].array * probe)

        g_want = jax.grad(loss(0), argnums=(0, 1))(params, kernel)
        g_got = jax.grad(loss(1), argnums=(0, 1))(params, kernel)
        for a, b in zip(jax.tree.leaves(g_want), jax.tree.leaves(g_got), strict=True):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-9)


def test_lazy_radial_mlp_is_the_radial_mlp():
    """``RadialMLP(lazy=True)`` has the parameters (names, shapes, initial values) of the plain
    one, and its :class:`LinearWeights` multiply out to the plain one's weights."""
    import jax.numpy as jnp

    from e3elastic.network.model import RadialMLP

    r = jnp.asarray(np.random.default_rng(0).normal(size=(11, 8)), jnp.float32)
    plain, lazy = RadialMLP((7,), 13), RadialMLP((7,), 13, lazy=True)
    p_plain = plain.init(jax.random.PRNGKey(4), r)
    p_lazy = lazy.init(jax.random.PRNGKey(4), r)
    assert jax.tree.structure(p_plain) == jax.tree.structure(p_lazy)
    for a, b in zip(jax.tree.leaves(p_plain), jax.tree.leaves(p_lazy), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    weights = lazy.apply(p_plain, r)
    assert weights.shape == (11, 13)
    np.testing.assert_allclose(
        np.asarray(weights.evaluate()), np.asarray(plain.apply(p_plain, r)), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(weights.columns(np.array([3, 3, 0, 12]))),
        np.asarray(plain.apply(p_plain, r))[:, [3, 3, 0, 12]],
        rtol=1e-5,
        atol=1e-6,
    )


class DensityRunner(Runner):
    """``model.density_input`` with its maps (zero at init) set to random values, so that the
    volume per atom really changes the output."""

    def __init__(self, overrides=()):
        super().__init__(("model.density_input=true", *overrides))

    def _setup(self, dtype):
        fn, params = super()._setup(dtype)
        import flax

        if not getattr(self, "_randomised", {}).get(dtype):
            rng = np.random.default_rng(7)
            flat = flax.traverse_util.flatten_dict(params)
            for path, a in flat.items():
                if any(p.startswith("density") for p in path):
                    flat[path] = np.asarray(rng.normal(0, 0.5, a.shape), a.dtype)
            params = flax.traverse_util.unflatten_dict(flat)
            self._params[dtype] = params
            self._randomised = {**getattr(self, "_randomised", {}), dtype: True}
        return fn, params


def _sheared_cell(s):
    """The same crystal in another cell of the same volume (c -> c + a)."""
    out = s.copy()
    out.make_supercell([[1, 0, 0], [0, 1, 0], [1, 0, 1]])
    return out


@pytest.fixture(scope="module")
def density_run():
    return DensityRunner()


@pytest.mark.parametrize("improper", [False, True])
def test_density_input_is_equivariant_and_cell_independent(density_run, run, rng, improper):
    s = quartz_structure()
    R = random_rotation(rng, improper=improper)
    c, c_rot, c_super, c_other_cell = density_run(
        [s, rotated_structure(s, R), s * (2, 1, 1), _sheared_cell(s)]
    )
    assert _rel(c_rot, tensors.rotate(c, R)) < 1e-10
    assert _rel(c_super, c) < 1e-10  # same volume per atom
    assert _rel(c_other_cell, c) < 1e-10
    # the volume per atom enters: the same structure differs from the plain network's
    assert _rel(c, run([s])[0]) > 1e-3


def test_density_input_sees_the_volume_beyond_the_cutoff():
    """Two crystals whose atoms have the same neighbours within the cutoff but different
    volumes per atom (a molecule-like cluster in a larger vacuum box) get different tensors;
    the plain network cannot tell them apart."""
    from pymatgen.core import Lattice, Structure

    short = ("model.cutoff=3.0",)
    coords = [[0, 0, 0], [1.6, 0, 0]]
    boxes = [  # 108 and 171 A^3 per atom; no periodic image within the cutoff
        Structure(Lattice.cubic(a), ["Si", "O"], coords, coords_are_cartesian=True)
        for a in (6.0, 7.0)
    ]
    c = DensityRunner(short)(boxes)
    assert _rel(c[1], c[0]) > 1e-3
    plain = Runner(short)
    p = plain(boxes)
    assert _rel(p[1], p[0]) < 1e-10


@pytest.mark.parametrize("improper", [False, True])
def test_bond_basis_is_equivariant(rng, improper):
    """``model.bond_basis``: the radial basis gains Gaussians of length / (sum of covalent
    radii); they are invariants, so E(3) equivariance still holds."""
    run = Runner(("model.bond_basis=6",))
    s = quartz_structure()
    R = random_rotation(rng, improper=improper)
    c, c_rot = run([s, rotated_structure(s, R)], np.float64)
    assert np.max(np.abs(c[0])) > 1e-3
    assert _rel(c_rot, tensors.rotate(c, R)) < 1e-10


def test_bond_features_measure_length_against_covalent_radii():
    """Rock salt: every Na-Cl edge at a / 2 = 2.82 Angstrom is 1.052 times Na 1.66 + Cl 1.02;
    the Gaussian centred nearest that ratio is the largest, and the features are those of
    the ratio (the same for any length with the same ratio, whatever the elements)."""
    from e3elastic.network.model import _BOND_RANGE, bond_features

    c = cfg.tiny().override(["model.bond_basis=11"]).model  # centres 0.6, 0.8, ..., 2.6
    batch = G.pad_batch([G.structure_to_graph(_nacl(), c.cutoff)], BUCKET)
    length = np.linalg.norm(G.edge_vectors(batch), axis=-1)
    with jax.enable_x64(True):
        inp = {k: jax.numpy.asarray(v) for k, v in batch_inputs(batch, np.float64).items()}
        f = np.asarray(bond_features(inp, jax.numpy.asarray(length), c))
    nearest = np.isclose(length, 5.64 / 2, atol=1e-6)
    assert nearest.sum() == 8 * 6  # each of the 8 atoms receives 6 nearest-neighbour edges
    centres = np.linspace(*_BOND_RANGE, 11)
    ratio = (5.64 / 2) / (1.66 + 1.02)
    assert np.all(np.argmax(f[nearest], axis=1) == np.argmin(np.abs(centres - ratio)))
    width = centres[1] - centres[0]
    np.testing.assert_allclose(
        f[nearest][0], np.exp(-0.5 * ((ratio - centres) / width) ** 2), rtol=1e-9
    )
