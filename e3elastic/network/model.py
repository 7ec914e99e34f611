"""The E(3)-equivariant network: crystal graph -> 21 irreps coefficients of C_ijkl.

Linen modules on e3nn-jax core functions (no haiku):

* a species embedding (scalars ``0e``): a learned table row per element, or (with
  ``element_descriptors``) an MLP of the element's physical descriptors plus a per-element
  correction that starts at zero; with ``n_theories`` a learned vector per level of theory is
  added; with ``density_input`` a learned function of the crystal's log volume per atom too;
* ``n_layers`` interaction blocks. Each is a point convolution: edge spherical harmonics up to
  ``sh_lmax``, a radial MLP on a Bessel basis times a polynomial cutoff envelope, and the tensor
  product of sender features with the harmonics, weighted per path by the radial MLP. Messages
  are summed on receivers; a self-interaction (linear), a gate nonlinearity and a residual
  connection follow;
* a per-atom readout to ``2x0e+2x2e+1x4e`` and a masked mean over each crystal's atoms (with
  ``density_input``, plus a learned function of the log volume per atom on the two ``0e``).

Parity is kept (O(3) irreps), so the output of a crystal keeps all of its point-group
symmetry, inversion included. Edge vectors are computed here from positions, lattices and
integer cell shifts (see :mod:`e3elastic.graph`), so rotating positions and lattice rotates the
prediction as ``C'_ijkl = R_ia R_jb R_kc R_ld C_abcd``.

The output is in normalised units: ``irreps = shift + scale * output`` with per-irrep statistics
of the training targets (see :func:`denormalise`). Inputs are the arrays of a padded
:class:`e3elastic.graph.Batch` (:func:`batch_inputs`).

What the irreps are depends on ``config.head`` (:func:`targets_from_voigt`,
:func:`voigt_from_outputs`): C itself in GPa (``linear``), or the log-stiffness
``L = logm(Mandel(C) / log_reference)`` (``log``), whose exponential is positive-definite
whatever the network outputs. A symmetric-matrix function commutes with the orthogonal Mandel
form of a rotation, so the log head is exactly as equivariant as the linear one.
"""

from __future__ import annotations

from typing import Any

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from .. import tensors
from ..config import ModelConfig
from .interface import (
    INPUT_FIELDS,
    INPUT_SPEC,
    batch_inputs,
    dummy_inputs,
    irrep_stats,
    targets_from_voigt,
    voigt_from_outputs,
)
from .kernels import (
    LinearWeights,
    edge_vectors,
    envelope,
    path_blocks,
    summed_messages,
)

__all__ = [
    "INPUT_FIELDS",
    "INPUT_SPEC",
    "OUTPUT_IRREPS",
    "ElasticityNet",
    "batch_inputs",
    "denormalise",
    "dummy_inputs",
    "irrep_stats",
    "targets_from_voigt",
    "voigt_from_outputs",
    "voigt_from_outputs_jax",
    "mandel_from_outputs_jax",
]

#: Irreps of the elasticity tensor: 2 scalars, 2 quadrupoles and 1 hexadecapole (21 numbers),
#: as laid out once in :data:`e3elastic.tensors.IRREP_LAYOUT`.
OUTPUT_IRREPS = e3nn.Irreps(tensors.IRREPS)


def _gate_irreps(hidden: e3nn.Irreps) -> e3nn.Irreps:
    """Input irreps of a gate producing ``hidden``: its scalars, one gate per non-scalar, the
    non-scalars."""
    scalars = e3nn.Irreps([(m, ir) for m, ir in hidden if ir.l == 0])
    others = e3nn.Irreps([(m, ir) for m, ir in hidden if ir.l > 0])
    return (scalars + e3nn.Irreps(f"{others.num_irreps}x0e") + others).simplify()


class _DenseParams(nn.Module):
    """The parameters of ``nn.Dense(features)`` on ``n_in`` inputs (same names, shapes and
    initial values), returned instead of applied."""

    features: int

    @nn.compact
    def __call__(self, n_in: int) -> tuple[jax.Array, jax.Array]:
        kernel = self.param(
            "kernel", nn.initializers.lecun_normal(), (n_in, self.features), jnp.float32
        )
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        return kernel, bias


class RadialMLP(nn.Module):
    """Radial basis ``(E, n_radial)`` -> per-path weights ``(E, n_out)``.

    With ``lazy`` the last layer is returned unevaluated, as
    :class:`e3elastic.network.kernels.LinearWeights` (same parameters, same values once
    multiplied out), for :func:`e3elastic.network.kernels.summed_messages` to lay out per input
    irrep.
    """

    hidden: tuple[int, ...]
    n_out: int
    lazy: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array | LinearWeights:
        for i, width in enumerate(self.hidden):
            x = jax.nn.silu(nn.Dense(width, name=f"dense_{i}")(x))
        if not self.lazy:
            return nn.Dense(self.n_out, name="out")(x)
        kernel, bias = _DenseParams(self.n_out, name="out")(x.shape[-1])
        dtype = jnp.promote_types(x.dtype, kernel.dtype)
        return LinearWeights(x.astype(dtype), kernel.astype(dtype), bias.astype(dtype))


class IrrepsLayerNorm(nn.Module):
    """Per-atom normalisation of each ``mul x ir`` block of node features.

    Scalars (``0e``) lose their mean over the channels and are divided by their standard
    deviation; every other block is divided by the root of its mean squared component, an
    invariant, so the map stays equivariant. Odd scalars are scaled like the other blocks. A
    learned gain per channel follows, and a bias on ``0e`` only (a bias on anything else
    would break the symmetry). Padding atoms with zero features stay zero.
    """

    eps: float = 1e-6

    @nn.compact
    def __call__(self, x: e3nn.IrrepsArray) -> e3nn.IrrepsArray:
        chunks = []
        for k, ((mul, ir), c) in enumerate(zip(x.irreps, x.chunks, strict=True)):
            if c is None:
                chunks.append(None)
                continue
            if ir == e3nn.Irrep("0e"):
                c = c - jnp.mean(c, axis=(-2, -1), keepdims=True)
            ms = jnp.mean(jnp.square(c), axis=(-2, -1), keepdims=True)
            c = c * jax.lax.rsqrt(ms + self.eps)
            gain = self.param(f"gain_{k}", nn.initializers.ones_init(), (mul,), jnp.float32)
            c = c * gain.astype(c.dtype)[:, None]
            if ir == e3nn.Irrep("0e"):
                bias = self.param(f"bias_{k}", nn.initializers.zeros_init(), (mul,), jnp.float32)
                c = c + bias.astype(c.dtype)[:, None]
            chunks.append(c)
        return e3nn.from_chunks(x.irreps, chunks, x.shape[:-1], x.dtype)


class Interaction(nn.Module):
    """One point convolution with self-interaction, gate and residual (with ``norm``, the
    messages and self-interaction see the input through :class:`IrrepsLayerNorm`)."""

    hidden_irreps: e3nn.Irreps
    sh_lmax: int
    radial_hidden: tuple[int, ...]
    avg_num_neighbors: float
    norm: str = "none"

    @nn.compact
    def __call__(
        self,
        x: e3nn.IrrepsArray,  # (N, irreps_in)
        sh: e3nn.IrrepsArray,  # (E, 0e+1o+...+lmax)
        radial: jax.Array,  # (E, n_radial), already times the envelope
        senders: jax.Array,  # (E,)
        receivers: jax.Array,  # (E,)
    ) -> e3nn.IrrepsArray:
        n_node = x.shape[0]
        gate_in = _gate_irreps(self.hidden_irreps)
        x_raw = x
        if self.norm == "layer":
            x = IrrepsLayerNorm(name="norm")(x.regroup())
        # messages: tensor product of sender features with edge harmonics, only the irreps a
        # gate input can use.
        mix = e3nn.flax.Linear(gate_in, force_irreps_out=True, name="mix")
        norm = jnp.sqrt(self.avg_num_neighbors).astype(x.dtype)
        if len(x.regroup().irreps) == 1 and x.irreps.lmax == 0:  # one kind of scalar
            h = self._scalar_messages(x, sh, radial, senders, receivers, gate_in, mix) / norm
        else:
            wanted = [ir for _, ir in gate_in]
            n_paths = sum(
                mul * len(path_blocks(ir, sh.irreps, wanted)[1]) for mul, ir in x.irreps
            )  # one weight per path and channel
            weights = RadialMLP(self.radial_hidden, n_paths, lazy=True, name="radial")(radial)
            h = summed_messages(x[senders], sh, weights, wanted, receivers, n_node, mix) / norm
        h = h + e3nn.flax.Linear(gate_in, force_irreps_out=True, name="self")(x)  # self-interaction
        h = e3nn.gate(h)  # (N, hidden)
        skip = e3nn.flax.Linear(self.hidden_irreps, force_irreps_out=True, name="skip")(x_raw)
        return (skip + h).regroup()

    def _scalar_messages(self, x, sh, radial, senders, receivers, gate_in, mix):
        """``mix(sum of messages on receivers)`` for scalar node features, mixed on the edges.

        With scalar inputs the message of harmonic ``l`` is ``x_u w_lu(r) Y_lm``: ``mix``
        (linear, acting on the channel ``u`` alone) can be applied to ``x_u w_lu`` before the
        outer product with ``Y_l``, so each edge carries the mixed ``gate_in`` irreps instead
        of every channel times every harmonic (184 floats instead of 800 in the default
        network). Same parameters and, up to float round-off, the same result as the general
        path (``tests/test_model.py``).
        """
        x = x.regroup()
        (mul, ir_in), x_in = x.irreps[0], x.chunks[0]
        cg_all, outs = path_blocks(ir_in, sh.irreps, [ir for _, ir in gate_in])
        paths = e3nn.Irreps([(mul, ir) for ir in outs])  # what edge_tensor_product returns
        assert paths.sort().irreps == paths, paths  # one path per harmonic, in order
        weights = RadialMLP(self.radial_hidden, paths.num_irreps, name="radial")(radial)
        # mix's matrix per path: its output on unit vectors of the channels (m = 0 only)
        eye = np.eye(mul, dtype=np.float32)
        basis = e3nn.from_chunks(
            paths,
            [
                jnp.asarray(np.pad(eye[:, :, None], ((0, 0), (0, 0), (0, ir.dim - 1))), x.dtype)
                for _, ir in paths
            ],
            (mul,),
            x.dtype,
        )
        mixed = mix(basis)  # (mul, gate_in)
        xe = x_in[senders, :, 0]  # (E, mul)
        harmonics = sh.regroup().array @ jnp.asarray(cg_all[0], x.dtype)  # (E, K)
        w_paths = jnp.split(weights, len(outs), axis=-1)  # (E, mul) per path
        offsets = np.cumsum([0] + [ir.dim for ir in outs])
        # one chunk per entry of gate_in (an irrep can appear twice, e.g. the activated and
        # the gating 0e around the 0o); an irrep no path produces stays None (zero)
        chunks = []
        for j, (_, ir) in enumerate(gate_in):
            if ir not in outs:
                chunks.append(None)
                continue
            p = outs.index(ir)
            w = mixed.chunks[j][:, :, 0]  # (mul, c)
            z = (xe * w_paths[p]) @ w  # (E, c)
            harm = harmonics[:, None, offsets[p] : offsets[p + 1]]
            chunks.append(z[:, :, None] * harm)  # (E, c, 2l+1)
        msg = e3nn.from_chunks(gate_in, chunks, senders.shape, x.dtype)
        return e3nn.scatter_sum(msg, dst=receivers, output_size=x.shape[0])


#: Centres (in ``log(V / N / 1 A^3)``) and width of the Gaussian basis of the volume per atom:
#: 5 to 250 A^3 per atom, dense metals to open frameworks and cells with vacuum.
_DENSITY_CENTRES = np.linspace(np.log(5.0), np.log(250.0), 10)
_DENSITY_WIDTH = float(_DENSITY_CENTRES[1] - _DENSITY_CENTRES[0])


def density_features(inputs: dict[str, jax.Array], dtype: Any) -> jax.Array:
    """``(G, 10)`` Gaussian basis of each crystal's log volume per atom (padding slots: zeros).

    The volume per atom does not depend on the choice of cell, and is invariant under rotations
    and inversion, so it can enter the scalars without breaking equivariance."""
    n_graph = inputs["lattice"].shape[0]
    count = jax.ops.segment_sum(
        inputs["node_mask"].astype(dtype), inputs["node_graph"], num_segments=n_graph
    )
    volume = jnp.abs(jnp.linalg.det(inputs["lattice"].astype(dtype)))
    real = inputs["graph_mask"] & (count > 0) & (volume > 0)
    per_atom = jnp.where(real, volume / jnp.maximum(count, 1.0), 1.0)
    u = jnp.log(per_atom)[:, None] - jnp.asarray(_DENSITY_CENTRES, dtype)[None, :]
    basis = jnp.exp(-0.5 * jnp.square(u / _DENSITY_WIDTH))
    return basis * real[:, None].astype(dtype)


#: Range of the ``bond_basis`` Gaussians: edge length over the sum of covalent radii.
_BOND_RANGE = (0.6, 2.6)


def bond_features(inputs: dict[str, jax.Array], length: jax.Array, cfg: ModelConfig) -> jax.Array:
    """``(E, bond_basis)`` Gaussian basis of each edge's length over the sum of its atoms'
    covalent radii (Cordero 2008, the element table of :mod:`e3elastic.network.elements`;
    1.5 Angstrom where unknown). Invariant under rotations, like the length itself."""
    from .elements import covalent_radii

    radii = jnp.asarray(covalent_radii()[: cfg.n_species], length.dtype)
    species = inputs["species"]
    total = radii[species[inputs["senders"]]] + radii[species[inputs["receivers"]]]
    ratio = length / total
    lo, hi = _BOND_RANGE
    centres = jnp.linspace(lo, hi, cfg.bond_basis, dtype=length.dtype)
    width = (hi - lo) / max(cfg.bond_basis - 1, 1)
    return jnp.exp(-0.5 * jnp.square((ratio[:, None] - centres[None, :]) / width))


class SpeciesEmbedding(nn.Module):
    """Initial atom scalars ``(N, n_scalar)`` from species (and level of theory)."""

    config: ModelConfig
    n_scalar: int

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array]) -> jax.Array:
        cfg = self.config
        species = inputs["species"]  # (N,)
        if not cfg.element_descriptors:
            emb = nn.Embed(cfg.n_species, self.n_scalar, name="embed", param_dtype=jnp.float32)
            h = emb(species)
        else:
            from .elements import descriptor_table

            table = jnp.asarray(descriptor_table()[: cfg.n_species], jnp.float32)  # (Z, F)
            d = table[species]  # (N, F)
            d = jax.nn.silu(nn.Dense(self.n_scalar, name="descriptor_in")(d))
            h = nn.Dense(self.n_scalar, name="descriptor_out")(d)
            # per-element correction; an element absent from training keeps exactly zero
            h = h + nn.Embed(
                cfg.n_species,
                self.n_scalar,
                embedding_init=nn.initializers.zeros,
                name="element_correction",
            )(species)
        if cfg.n_theories:
            theory = inputs["theory"]  # (G,)
            per_graph = nn.Embed(
                cfg.n_theories,
                self.n_scalar,
                embedding_init=nn.initializers.zeros,
                name="theory",
            )(theory)  # (G, S)
            h = h + per_graph[inputs["node_graph"]]
        if cfg.density_input:
            dens = density_features(inputs, jnp.float32)  # (G, 10)
            d = jax.nn.silu(nn.Dense(self.n_scalar, name="density_in")(dens))
            d = nn.Dense(self.n_scalar, kernel_init=nn.initializers.zeros, name="density_out")(d)
            h = h + d[inputs["node_graph"]]
        return h  # (N, S)


class ElasticityNet(nn.Module):
    """Crystal graphs -> normalised irreps ``(G, 21)`` of C_ijkl (see module docstring)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, inputs: dict[str, jax.Array]) -> jax.Array:
        cfg = self.config
        pos = inputs["positions"]
        dtype = pos.dtype
        n_graph = inputs["lattice"].shape[0]

        vec = edge_vectors(inputs)  # (E, 3)
        length = jnp.linalg.norm(vec, axis=-1)  # (E,), padding edges >= 2 * cutoff
        x = length / cfg.cutoff
        env = envelope(x, cfg.envelope_p)[:, None]
        radial = e3nn.bessel(length, cfg.n_radial, cfg.cutoff) * env
        # (E, n_radial); exactly 0 beyond the cutoff (padding edges included)
        if cfg.bond_basis:
            radial = jnp.concatenate([radial, bond_features(inputs, length, cfg) * env], -1)
        sh = e3nn.spherical_harmonics(
            e3nn.Irreps.spherical_harmonics(cfg.sh_lmax),
            e3nn.IrrepsArray("1o", vec),
            normalize=True,
            normalization="component",
        )  # (E, sh)

        hidden = e3nn.Irreps(cfg.hidden_irreps)
        n_scalar = sum(m for m, ir in hidden if ir == e3nn.Irrep("0e"))
        if cfg.element_descriptors or cfg.n_theories or cfg.density_input:
            h0 = SpeciesEmbedding(cfg, n_scalar, name="species")(inputs)
        else:  # the original table, at the parameter path older bundles use
            h0 = nn.Embed(cfg.n_species, n_scalar, name="embed", param_dtype=jnp.float32)(
                inputs["species"]
            )
        h = e3nn.IrrepsArray(f"{n_scalar}x0e", h0.astype(dtype))  # (N, S)

        for i in range(cfg.n_layers):
            layer_irreps = hidden
            if cfg.even_last_layer and i == cfg.n_layers - 1:
                # the readout only uses 0e, 2e and 4e: the last block need not make the rest
                layer_irreps = e3nn.Irreps([(m, ir) for m, ir in hidden if ir in OUTPUT_IRREPS])
            h = Interaction(
                hidden_irreps=layer_irreps,
                sh_lmax=cfg.sh_lmax,
                radial_hidden=tuple(cfg.radial_hidden),
                avg_num_neighbors=cfg.avg_num_neighbors,
                norm=cfg.norm,
                name=f"interaction_{i}",
            )(h, sh, radial, inputs["senders"], inputs["receivers"])

        out = e3nn.flax.Linear(OUTPUT_IRREPS, force_irreps_out=True, name="readout")(
            h
        ).array  # (N, 21)
        out = out * inputs["node_mask"][:, None].astype(dtype)
        total = jax.ops.segment_sum(out, inputs["node_graph"], num_segments=n_graph)
        count = jax.ops.segment_sum(
            inputs["node_mask"].astype(dtype), inputs["node_graph"], num_segments=n_graph
        )
        mean = total / jnp.maximum(count, 1.0)[:, None]  # guard empty (padding) graphs
        if cfg.density_input:  # the two scalars (the first outputs) as a function of packing
            dens = density_features(inputs, dtype)
            iso = nn.Dense(2, kernel_init=nn.initializers.zeros, use_bias=False, name="density")(
                dens
            )
            mean = mean + jnp.pad(iso, ((0, 0), (0, mean.shape[1] - 2)))
        return mean * inputs["graph_mask"][:, None].astype(dtype)  # (G, 21)


def denormalise(y: jax.Array, stats: dict[str, Any]) -> jax.Array:
    """Normalised model output -> irreps coefficients in GPa: ``shift + scale * y``."""
    return jnp.asarray(stats["shift"], y.dtype) + jnp.asarray(stats["scale"], y.dtype) * y


def mandel_from_outputs_jax(irreps: jax.Array, config: ModelConfig) -> jax.Array:
    """The Mandel 6x6 of C (GPa) from the head's irreps in GPa units, ``(G, 21) -> (G, 6, 6)``,
    differentiable in JAX.

    The log head uses ``jax.scipy.linalg.expm``, whose gradient stays finite where the
    eigenvalues are degenerate (cubic and hexagonal crystals), unlike one through ``eigh``.
    For a loss on C itself; training in log space needs no matrix function.
    """
    basis = jnp.asarray(tensors.elasticity_basis(), irreps.dtype)  # (3, 3, 3, 3, 21)
    cart = jnp.einsum("ijklc,gc->gijkl", basis, irreps)
    i = np.array([p[0] for p in tensors.VOIGT_PAIRS])
    j = np.array([p[1] for p in tensors.VOIGT_PAIRS])
    v = cart[:, i[:, None], j[:, None], i[None, :], j[None, :]]  # (G, 6, 6)
    w = jnp.asarray(tensors.MANDEL_WEIGHTS, irreps.dtype)
    m = v * w[:, None] * w[None, :]
    if config.head != "log":
        return m
    return config.log_reference * jax.vmap(jax.scipy.linalg.expm)(m)


def voigt_from_outputs_jax(irreps: jax.Array, config: ModelConfig) -> jax.Array:
    """Differentiable :func:`voigt_from_outputs` in JAX, ``(G, 21) -> (G, 6, 6)`` (see
    :func:`mandel_from_outputs_jax`)."""
    w = jnp.asarray(tensors.MANDEL_WEIGHTS, irreps.dtype)
    return mandel_from_outputs_jax(irreps, config) / (w[:, None] * w[None, :])
