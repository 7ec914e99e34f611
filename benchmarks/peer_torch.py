"""e3elastic's default network ported to PyTorch + e3nn, for benchmarks/bench_peer.py.

A module-by-module port of :class:`e3elastic.network.model.ElasticityNet` (the ``default`` config's
architecture) to e3nn (``o3.FullTensorProduct``, ``o3.Linear``, ``o3.SphericalHarmonics``,
``o3.ElementwiseTensorProduct``), up to the 21 output irreps: spherical harmonics, enveloped
Bessel basis, radial MLP, species/descriptor and theory embedding, the tensor-product
convolution, mix/self/skip linears, gate, readout and the masked mean over atoms. Each class
names the flax module it mirrors.

``peer_weights.load_flax_params`` copies flax weights into it; :func:`to_torch` turns the
model's numpy inputs into torch tensors, and :func:`torch_loss` is the training loss on the 21
outputs. Needs torch and e3nn, not JAX.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from e3nn import o3

#: Output irreps of the network (the 21 numbers of an elasticity tensor).
OUTPUT_IRREPS = "2x0e+2x2e+1x4e"


def _jax_irrep_key(ir) -> tuple[int, int]:
    """Sort key of an irrep in e3nn-jax: by ``l``, the natural parity ``(-1)^l`` first.

    e3nn sorts ``(l, p)`` as plain tuples (odd parity first); both agree whenever a degree
    occurs with one parity only, as in this network (checked in :class:`TorchInteraction`).
    """
    return (ir.l, -ir.p * (-1) ** ir.l)


def _gate_irreps(hidden):
    """Input irreps of a gate producing ``hidden``; mirrors
    ``e3elastic.network.model._gate_irreps``."""
    scalars = o3.Irreps([(m, ir) for m, ir in hidden if ir.l == 0])
    others = o3.Irreps([(m, ir) for m, ir in hidden if ir.l > 0])
    return (scalars + o3.Irreps(f"{others.num_irreps}x0e") + others).simplify()


def _normalised(phi):
    """``phi / c`` with ``E[(phi(x) / c)^2] = 1`` for ``x ~ N(0, 1)``.

    Mirrors ``e3nn_jax.normalize_function``: the second moment is taken on the 1,000,001
    normal quantiles ``sqrt(2) erfinv(linspace(-1, 1))``. e3nn's ``normalize2mom`` estimates
    the same constant from 10^6 random normals instead, off by 1.6e-3 (relative) for the GELU
    and 2.6e-4 for the sigmoid.
    """
    with torch.no_grad():
        x = math.sqrt(2.0) * torch.erfinv(torch.linspace(-1.0, 1.0, 1_000_003, dtype=torch.float64))
        c = phi(x[1:-1]).pow(2).mean().sqrt().item()

    def rho(x):
        return phi(x) / c

    return rho


def _gelu(x):
    return torch.nn.functional.gelu(x, approximate="tanh")  # jax.nn.gelu's default


class TorchRadialBasis(torch.nn.Module):
    """Bessel basis times the polynomial cutoff envelope, ``(E,) -> (E, n_radial)``.

    Mirrors
    ``e3nn_jax.bessel(length, n_radial, cutoff) * e3elastic.network.kernels.envelope(x, p)``.
    """

    def __init__(self, n_radial: int, cutoff: float, p: int):
        super().__init__()
        self.cutoff = float(cutoff)
        self.p = int(p)
        self.register_buffer("n", torch.arange(1, n_radial + 1, dtype=torch.float32))

    def envelope(self, length):
        p, x = self.p, length / self.cutoff
        u = (
            1.0
            - (p + 1) * (p + 2) / 2 * x**p
            + p * (p + 2) * x ** (p + 1)
            - p * (p + 1) / 2 * x ** (p + 2)
        )
        return torch.where(x < 1.0, u, torch.zeros_like(u))

    def forward(self, length):
        c = self.cutoff
        r = length[:, None]
        r_safe = torch.where(r == 0.0, torch.ones_like(r), r)
        k = self.n * (math.pi / c)
        bessel = math.sqrt(2.0 / c) * torch.where(r == 0.0, k, torch.sin(k * r_safe) / r_safe)
        return bessel * self.envelope(length)[:, None]


class TorchBondBasis(torch.nn.Module):
    """Gaussians of edge length over the sum of covalent radii, ``(E,) -> (E, n)``; mirrors
    ``e3elastic.network.model.bond_features`` (before the envelope)."""

    def __init__(self, n: int, n_species: int):
        from e3elastic.network.elements import covalent_radii
        from e3elastic.network.model import _BOND_RANGE

        super().__init__()
        lo, hi = _BOND_RANGE
        radii = np.asarray(covalent_radii()[:n_species], np.float32)
        self.register_buffer("radii", torch.from_numpy(radii.copy()))
        self.register_buffer("centres", torch.linspace(lo, hi, n, dtype=torch.float32))
        self.width = (hi - lo) / max(n - 1, 1)

    def forward(self, length, species, senders, receivers):
        total = self.radii[species[senders]] + self.radii[species[receivers]]
        ratio = length / total
        return torch.exp(-0.5 * ((ratio[:, None] - self.centres[None, :]) / self.width) ** 2)


class TorchRadialMLP(torch.nn.Module):
    """Radial basis ``(E, n_radial)`` -> per-path weights ``(E, n_out)``.

    Mirrors ``e3elastic.network.model.RadialMLP`` (flax ``Dense`` layers with biases and SiLU), so
    it is plain ``torch.nn.Linear`` rather than e3nn's ``FullyConnectedNet`` (no biases, weights
    scaled by ``1/sqrt(fan_in)`` in the forward, normalised activations).
    """

    def __init__(self, n_in: int, hidden: tuple[int, ...], n_out: int):
        super().__init__()
        layers, width = [], n_in
        for h in hidden:
            layers.append(torch.nn.Linear(width, h))
            width = h
        self.hidden = torch.nn.ModuleList(layers)
        self.out = torch.nn.Linear(width, n_out)

    def forward(self, x):
        for layer in self.hidden:
            x = torch.nn.functional.silu(layer(x))
        return self.out(x)


class TorchSpeciesEmbedding(torch.nn.Module):
    """Initial atom scalars ``(N, n_scalar)`` from species and level of theory.

    Mirrors ``e3elastic.network.model.SpeciesEmbedding`` (``element_descriptors``: an MLP of the
    element's standardised descriptors plus a per-element correction; ``n_theories``: a learned
    vector per level of theory added to every atom of the crystal), and the plain species table
    of configs without either.
    """

    def __init__(self, config, n_scalar: int):
        super().__init__()
        self.use_descriptors = bool(config.element_descriptors)
        if self.use_descriptors:
            from e3elastic.network.elements import descriptor_table

            table = torch.tensor(
                np.asarray(descriptor_table()[: config.n_species]), dtype=torch.float32
            )
            self.register_buffer("table", table)
            self.descriptor_in = torch.nn.Linear(table.shape[1], n_scalar)
            self.descriptor_out = torch.nn.Linear(n_scalar, n_scalar)
            self.element_correction = torch.nn.Embedding(config.n_species, n_scalar)
            torch.nn.init.zeros_(self.element_correction.weight)
        else:
            self.embed = torch.nn.Embedding(config.n_species, n_scalar)
        self.theory = None
        if config.n_theories:
            self.theory = torch.nn.Embedding(config.n_theories, n_scalar)
            torch.nn.init.zeros_(self.theory.weight)

    def forward(self, inputs):
        species = inputs["species"]
        if self.use_descriptors:
            d = torch.nn.functional.silu(self.descriptor_in(self.table[species]))
            h = self.descriptor_out(d) + self.element_correction(species)
        else:
            h = self.embed(species)
        if self.theory is not None:
            h = h + self.theory(inputs["theory"])[inputs["node_graph"]]
        return h


def _soft_odd(x):
    return x * (1 - torch.exp(-(x**2)))  # e3nn_jax.soft_odd


class TorchGate(torch.nn.Module):
    """Gate nonlinearity; mirrors ``e3nn_jax.gate`` with its defaults.

    Input ``scalars + G x 0e + gated`` (``G`` = number of gated irreps, gates last among the
    scalars): the activated scalars go through GELU (tanh form, ``jax.nn.gelu``) where even and
    ``x (1 - exp(-x^2))`` where odd (0o), the ``G`` gates through a sigmoid, all normalised as
    in e3nn-jax (:func:`_normalised`), and each gated irrep is multiplied by its gate
    (``o3.ElementwiseTensorProduct``). Output ``scalars + gated``. (``e3nn.nn.Gate`` has the
    same structure but normalises the activations with ``normalize2mom``.)
    """

    def __init__(self, hidden):
        super().__init__()
        self.segments = []  # (start, stop, activation) of the activated scalars, in order
        start = 0
        even, odd = _normalised(_gelu), _normalised(_soft_odd)
        for m, ir in hidden:
            if ir.l == 0:
                self.segments.append((start, start + m, even if ir.p == 1 else odd))
                start += m
        self.n_scalar = start
        gated = o3.Irreps([(m, ir) for m, ir in hidden if ir.l > 0])
        self.n_gate = gated.num_irreps
        self.gate_act = _normalised(torch.sigmoid)
        self.mul = o3.ElementwiseTensorProduct(gated, f"{self.n_gate}x0e") if self.n_gate else None

    def forward(self, x):
        s, g = self.n_scalar, self.n_gate
        scalars = torch.cat([act(x[:, a:b]) for a, b, act in self.segments], dim=-1)
        if self.mul is None:
            return scalars
        gates = self.gate_act(x[:, s : s + g])
        return torch.cat([scalars, self.mul(x[:, s + g :], gates)], dim=-1)


def _unit_scalar_product(irreps_in, irreps_sh, wanted):
    """``(FullTensorProduct(e_0, Y)[0], Y)`` in float64 for a unit first input channel (a
    scalar) and the harmonics ``Y`` of a random direction: what each ``0e x Y_l`` path makes."""
    vec = torch.randn(1, 3, dtype=torch.float64)
    sh = o3.spherical_harmonics(irreps_sh, vec, normalize=True, normalization="component")
    one = torch.zeros(1, irreps_in.dim, dtype=torch.float64)
    one[0, 0] = 1.0
    tp = o3.FullTensorProduct(
        irreps_in, irreps_sh, filter_ir_out=wanted, irrep_normalization="component"
    ).double()
    return tp(one, sh)[0], sh[0]


def _path_factor(out, sh, ir) -> float:
    """The constant ``c`` with ``out = c Y_l`` (``out`` and ``sh`` of one path ``0e x Y_l``)."""
    ratio = out / sh
    if not torch.allclose(ratio, ratio[:1].expand_as(ratio), rtol=1e-9):
        raise NotImplementedError(f"path 0e x {ir} is not a multiple of Y_{ir.l}")
    return float(ratio[0])


class TorchInteraction(torch.nn.Module):
    """One point convolution with self-interaction, gate and skip connection.

    Mirrors ``e3elastic.network.model.Interaction``: the full tensor product ``x[senders] (x) sh``
    (``o3.FullTensorProduct``, every path whose output irrep the gate reads, outputs sorted,
    component normalisation), each output irrep copy scaled by one weight from the radial MLP
    (one weight per path and channel), summed on receivers and divided by
    ``sqrt(avg_num_neighbors)``; then ``mix(messages) + self(x)`` (``o3.Linear``), the gate, and
    ``skip(x)`` (``o3.Linear``) added. As in the JAX model, a block with only scalar inputs
    applies ``mix`` on the edges, and a block whose inputs lead with scalars weights and sums
    their paths one by one (``x_u w_pu Y_l``), leaving e3nn's product to the other irreps.
    """

    def __init__(self, irreps_in, hidden, sh_lmax, n_radial, radial_hidden, avg_num_neighbors):
        super().__init__()
        irreps_in = o3.Irreps(irreps_in).simplify()
        irreps_sh = o3.Irreps.spherical_harmonics(sh_lmax)
        gate_in = _gate_irreps(hidden)
        wanted = [ir for _, ir in gate_in]
        self.tp = o3.FullTensorProduct(
            irreps_in, irreps_sh, filter_ir_out=wanted, irrep_normalization="component"
        )
        irreps_msg = self.tp.irreps_out
        unsorted = [
            ir_out
            for _, ir1 in irreps_in
            for _, ir2 in irreps_sh
            for ir_out in ir1 * ir2
            if ir_out in wanted
        ]
        jax_order = [
            unsorted[k]
            for k in sorted(range(len(unsorted)), key=lambda k: (_jax_irrep_key(unsorted[k]), k))
        ]
        if [ir for _, ir in irreps_msg] != jax_order:
            raise NotImplementedError("message irreps sort differently in e3nn and e3nn-jax")
        dims = torch.tensor([ir.dim for mul, ir in irreps_msg for _ in range(mul)])
        self.register_buffer("weight_index", torch.repeat_interleave(torch.arange(len(dims)), dims))
        self.radial = TorchRadialMLP(n_radial, radial_hidden, irreps_msg.num_irreps)
        self.inv_sqrt_neighbours = 1.0 / math.sqrt(avg_num_neighbors)
        self.mix = o3.Linear(irreps_msg.simplify(), gate_in)
        self.self_interaction = o3.Linear(irreps_in, gate_in)
        self.gate = TorchGate(hidden)
        self.skip = o3.Linear(irreps_in, hidden)
        self.irreps_out = hidden
        self.msg_dim = irreps_msg.dim  # a plain int for forward (torch.compile)
        # scalar inputs: mix on the edges (as e3elastic.network.model.Interaction._scalar_messages)
        self.scalar_input = irreps_in.lmax == 0 and len(irreps_in) == 1
        if self.scalar_input:
            self._setup_scalar(irreps_in, irreps_sh, irreps_msg, gate_in)
        # other inputs led by scalars: those are weighted and summed path by path, as
        # e3elastic.network.kernels.summed_messages does; the rest goes through e3nn's product
        self.split_scalars = not self.scalar_input and irreps_in[0].ir == o3.Irrep("0e")
        if self.split_scalars:
            self._setup_split(irreps_in, irreps_sh, irreps_msg, wanted)

    def _setup_split(self, irreps_in, irreps_sh, irreps_msg, wanted):
        """Columns of the sorted message: which come from the leading scalars (path by path,
        ``x_u w_pu Y_l`` times the product's constant, measured here) and which from
        ``tp_rest``, the product of the other input irreps, whose outputs keep their order."""
        self.mul0 = irreps_in[0].mul
        rest = o3.Irreps(list(irreps_in)[1:])
        self.tp_rest = o3.FullTensorProduct(
            rest, irreps_sh, filter_ir_out=wanted, irrep_normalization="component"
        )
        entries = [
            (a, b, mul, ir_out)
            for a, (mul, ir1) in enumerate(irreps_in)
            for b, (_, ir2) in enumerate(irreps_sh)
            for ir_out in ir1 * ir2
            if ir_out in wanted
        ]
        order = sorted(range(len(entries)), key=lambda k: (_jax_irrep_key(entries[k][3]), k))
        out, sh = _unit_scalar_product(irreps_in, irreps_sh, wanted)
        self.scalar_paths, rest_cols, col = [], [], 0
        for k in order:
            a, b, mul, ir = entries[k]
            if a == 0:
                sl = irreps_sh.slices()[b]
                factor = _path_factor(out[col : col + ir.dim], sh[sl], ir)
                self.scalar_paths.append((col, sl, ir.dim, factor))
            else:
                rest_cols.append(torch.arange(col, col + mul * ir.dim))
            col += mul * ir.dim
        assert col == irreps_msg.dim, (col, irreps_msg.dim)
        self.register_buffer("rest_index", torch.cat(rest_cols))

    def _setup_scalar(self, irreps_in, irreps_sh, irreps_msg, gate_in):
        """Index tables for the edge-side mix: path ``l`` of channel ``u`` is ``x_u Y_lm``
        (times a constant the tensor product's normalisation fixes, measured here)."""
        mul = irreps_in[0].mul
        paths = [ir for _, ir in irreps_msg]
        out, sh = _unit_scalar_product(irreps_in, irreps_sh, paths)
        self.sh_slices = [irreps_sh.slices()[[i for _, i in irreps_sh].index(ir)] for ir in paths]
        self.factors = [
            _path_factor(out[sl_msg][: ir.dim], sh[sl_sh], ir)
            for (_, ir), sl_msg, sl_sh in zip(
                irreps_msg, irreps_msg.slices(), self.sh_slices, strict=True
            )
        ]
        self.out_index = [[i for _, i in gate_in].index(ir) for ir in paths]
        # plain ints and slices for forward: torch.compile cannot guard on e3nn's Irreps
        self.path_dims = [ir.dim for ir in paths]
        self.out_slices = list(gate_in.slices())
        self.gate_in_shapes = [(c, ir.dim) for c, ir in gate_in]
        self.mix_dim = self.mix.irreps_in.dim
        self.mul = mul

    def _scalar_forward(self, x, sh, radial, senders, receivers):
        mul, weights = self.mul, self.radial(radial)  # (E, n_paths * mul)
        # mix's matrix per path: its output on unit vectors of the channels (m = 0 only)
        basis = torch.zeros(mul, self.mix_dim, dtype=x.dtype, device=x.device)
        start = 0
        for dim in self.path_dims:
            basis[torch.arange(mul), start + torch.arange(mul) * dim] = 1.0
            start += mul * dim
        mixed = self.mix(basis)  # (mul, gate_in)
        xe = x[senders]  # (E, mul)
        parts = [None] * len(self.gate_in_shapes)
        for p, dim in enumerate(self.path_dims):
            j = self.out_index[p]
            c = self.gate_in_shapes[j][0]
            w = mixed[:, self.out_slices[j]].reshape(mul, c, dim)[:, :, 0] * self.factors[p]
            z = (xe * weights[:, p * mul : (p + 1) * mul]) @ w  # (E, c)
            parts[j] = (z[:, :, None] * sh[:, None, self.sh_slices[p]]).reshape(len(xe), -1)
        for j, (c, dim) in enumerate(self.gate_in_shapes):
            if parts[j] is None:
                parts[j] = torch.zeros(len(xe), c * dim, dtype=x.dtype, device=x.device)
        msg = torch.cat(parts, dim=1)
        agg = torch.zeros(x.shape[0], msg.shape[1], dtype=msg.dtype, device=msg.device)
        return agg.index_add(0, receivers, msg) * self.inv_sqrt_neighbours

    def _split_sums(self, x, sh, radial, senders, receivers):
        """Summed messages ``(N, irreps_msg)``: scalar-input paths one by one, the rest in one
        ``tp_rest``, each summed on receivers before it is placed in its columns."""
        weights = self.radial(radial)  # (E, n_paths * mul)
        xs = x[senders]
        agg = torch.zeros(x.shape[0], self.msg_dim, dtype=x.dtype, device=x.device)
        rest = self.tp_rest(xs[:, self.mul0 :], sh) * weights[:, self.weight_index[self.rest_index]]
        agg[:, self.rest_index] = torch.zeros_like(agg[:, : rest.shape[1]]).index_add(
            0, receivers, rest
        )
        x0 = xs[:, : self.mul0]
        for col, sl, d, factor in self.scalar_paths:
            n = self.mul0 * d
            z = x0 * weights[:, self.weight_index[col : col + n : d]]  # (E, mul0)
            m = (z[:, :, None] * (factor * sh[:, sl])[:, None, :]).reshape(len(x0), n)
            agg[:, col : col + n] = torch.zeros_like(agg[:, :n]).index_add(0, receivers, m)
        return agg * self.inv_sqrt_neighbours

    def forward(self, x, sh, radial, senders, receivers):
        if self.scalar_input:
            h = self._scalar_forward(x, sh, radial, senders, receivers)
        elif self.split_scalars:
            h = self.mix(self._split_sums(x, sh, radial, senders, receivers))
        else:
            msg = self.tp(x[senders], sh) * self.radial(radial)[:, self.weight_index]
            agg = torch.zeros(x.shape[0], msg.shape[1], dtype=msg.dtype, device=msg.device)
            agg = agg.index_add(0, receivers, msg) * self.inv_sqrt_neighbours
            h = self.mix(agg)
        h = self.gate(h + self.self_interaction(x))
        return self.skip(x) + h


class TorchElasticityNet(torch.nn.Module):
    """Crystal graphs -> normalised irreps ``(G, 21)``; mirrors
    ``e3elastic.network.model.ElasticityNet``.

    Edge vectors from positions, lattices and cell shifts, spherical harmonics (component
    normalisation) and the enveloped Bessel basis; species embedding; ``n_layers`` interaction
    blocks (the last one making only 0e/2e/4e with ``even_last_layer``); a linear readout to
    ``2x0e+2x2e+1x4e`` and a masked mean over each crystal's atoms.
    """

    def __init__(self, config):
        super().__init__()
        hidden = o3.Irreps(config.hidden_irreps).simplify()
        n_scalar = sum(m for m, ir in hidden if ir == o3.Irrep("0e"))
        self.species = TorchSpeciesEmbedding(config, n_scalar)
        self.radial_basis = TorchRadialBasis(config.n_radial, config.cutoff, config.envelope_p)
        self.bond_basis = (
            TorchBondBasis(config.bond_basis, config.n_species) if config.bond_basis else None
        )
        self.sh = o3.SphericalHarmonics(
            o3.Irreps.spherical_harmonics(config.sh_lmax), normalize=True, normalization="component"
        )
        output = o3.Irreps(OUTPUT_IRREPS)
        blocks, irreps = [], o3.Irreps(f"{n_scalar}x0e")
        for i in range(config.n_layers):
            layer = hidden
            if config.even_last_layer and i == config.n_layers - 1:
                layer = o3.Irreps([(m, ir) for m, ir in hidden if ir in {ir for _, ir in output}])
            blocks.append(
                TorchInteraction(
                    irreps,
                    layer,
                    config.sh_lmax,
                    config.n_radial + config.bond_basis,
                    tuple(config.radial_hidden),
                    config.avg_num_neighbors,
                )
            )
            irreps = layer
        self.interactions = torch.nn.ModuleList(blocks)
        self.readout = o3.Linear(irreps, output)

    def forward(self, inputs):
        pos = inputs["positions"]
        senders, receivers = inputs["senders"], inputs["receivers"]
        lattice = inputs["lattice"][inputs["edge_graph"]]
        shift = torch.einsum("ei,eij->ej", inputs["cell_shifts"].to(pos.dtype), lattice)
        vec = pos[receivers] - pos[senders] + shift
        length = torch.linalg.norm(vec, dim=-1)
        radial = self.radial_basis(length)
        if self.bond_basis is not None:
            bond = self.bond_basis(length, inputs["species"], senders, receivers)
            radial = torch.cat([radial, bond * self.radial_basis.envelope(length)[:, None]], -1)
        sh = self.sh(vec)
        h = self.species(inputs).to(pos.dtype)
        for block in self.interactions:
            h = block(h, sh, radial, senders, receivers)
        node_mask = inputs["node_mask"].to(pos.dtype)
        out = self.readout(h) * node_mask[:, None]
        n_graph = inputs["lattice"].shape[0]
        node_graph = inputs["node_graph"]
        total = torch.zeros(n_graph, out.shape[1], dtype=out.dtype).index_add(0, node_graph, out)
        count = torch.zeros(n_graph, dtype=out.dtype).index_add(0, node_graph, node_mask)
        mean = total / torch.clamp(count, min=1.0)[:, None]
        return mean * inputs["graph_mask"].to(pos.dtype)[:, None]


def count_torch(net) -> int:
    return int(sum(p.numel() for p in net.parameters() if p.requires_grad))


def to_torch(inputs: dict[str, np.ndarray]) -> dict:
    """The model's numpy inputs as torch tensors (int64 indices, float32 masks)."""
    out = {}
    for k, a in inputs.items():
        if a.dtype.kind in "iu":
            out[k] = torch.from_numpy(a.astype(np.int64))
        elif a.dtype.kind == "b":
            out[k] = torch.from_numpy(a.astype(np.float32))
        else:
            out[k] = torch.from_numpy(np.ascontiguousarray(a, np.float32))
    return out


def torch_loss(y, targets, graph_mask):
    """Masked mean over real crystals of the mean squared error over the 21 outputs (the loss of
    ``e3elastic.training.train.make_steps``)."""
    per_graph = ((y - targets) ** 2).mean(dim=-1)
    return (per_graph * graph_mask).sum() / torch.clamp(graph_mask.sum(), min=1.0)
