"""e3elastic's default network in JAX against the same network in PyTorch + e3nn, in one process.

    python benchmarks/bench_peer.py [--data DIR] [--n 128] [--rounds 5] [--threads N]

The PyTorch side is a module-by-module port of :class:`e3elastic.model.ElasticityNet` (the
``default`` config's architecture) to e3nn (``o3.FullTensorProduct``, ``o3.Linear``,
``o3.SphericalHarmonics``, ``o3.ElementwiseTensorProduct``), up to the 21 output irreps. The
head (``log``) only post-processes these 21 numbers, so it is left out of both sides.

What the script checks before timing:

* both networks have the same number of trainable parameters (asserted);
* the shipped ``default`` weights, copied into the port, give the same 21 outputs as JAX on the
  benchmark crystals, and the same loss gradients on the first batch (largest differences
  reported, and asserted below ``--tolerance`` relative to the largest output / gradient).

Crystals: the first ``--n`` matminer 2015 crystals of e3elastic's PBE data set
(:func:`e3elastic.data.load_dataset` on ``--data``, default ``$E3ELASTIC_DATA`` or
``../shared/data``), made into graphs and padded batches by :mod:`e3elastic.graph` and
:func:`e3elastic.model.batch_inputs`; both networks read the same numpy arrays. Timed, in
alternating rounds (a JAX round, then a PyTorch round, one pass over all batches each):
training steps (forward, masked MSE on the 21 outputs against fixed random targets, backward,
Adam) and forward passes, float32 on the CPU, with as many PyTorch threads as XLA uses.
Compilation and warm-up are excluded and reported apart. Prints a table and writes
benchmarks/results/peer.json (medians of crystals/s, ratios JAX / PyTorch, versions, device).

Needs the ``bench`` extra (``pip install -e '.[bench]'``: torch and e3nn).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
from _env import environment

try:
    import torch
    from e3nn import o3
except ImportError:
    print("skipped: torch and e3nn are not installed (pip install -e '.[bench]')")
    sys.exit(0)

#: Output irreps of the network (the 21 numbers of an elasticity tensor).
OUTPUT_IRREPS = "2x0e+2x2e+1x4e"


# --------------------------------------------------------------------------------------------
# The PyTorch port
# --------------------------------------------------------------------------------------------


def _jax_irrep_key(ir) -> tuple[int, int]:
    """Sort key of an irrep in e3nn-jax: by ``l``, the natural parity ``(-1)^l`` first.

    e3nn sorts ``(l, p)`` as plain tuples (odd parity first); both agree whenever a degree
    occurs with one parity only, as in this network (checked in :class:`TorchInteraction`).
    """
    return (ir.l, -ir.p * (-1) ** ir.l)


def _gate_irreps(hidden):
    """Input irreps of a gate producing ``hidden``; mirrors ``e3elastic.model._gate_irreps``."""
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

    Mirrors ``e3nn_jax.bessel(length, n_radial, cutoff) * e3elastic.model._envelope(x, p)``.
    """

    def __init__(self, n_radial: int, cutoff: float, p: int):
        super().__init__()
        self.cutoff = float(cutoff)
        self.p = int(p)
        self.register_buffer("n", torch.arange(1, n_radial + 1, dtype=torch.float32))

    def forward(self, length):
        c, p = self.cutoff, self.p
        r = length[:, None]
        r_safe = torch.where(r == 0.0, torch.ones_like(r), r)
        k = self.n * (math.pi / c)
        bessel = math.sqrt(2.0 / c) * torch.where(r == 0.0, k, torch.sin(k * r_safe) / r_safe)
        x = length / c
        u = (
            1.0
            - (p + 1) * (p + 2) / 2 * x**p
            + p * (p + 2) * x ** (p + 1)
            - p * (p + 1) / 2 * x ** (p + 2)
        )
        envelope = torch.where(x < 1.0, u, torch.zeros_like(u))
        return bessel * envelope[:, None]


class TorchRadialMLP(torch.nn.Module):
    """Radial basis ``(E, n_radial)`` -> per-path weights ``(E, n_out)``.

    Mirrors ``e3elastic.model.RadialMLP`` (flax ``Dense`` layers with biases and SiLU), so it
    is plain ``torch.nn.Linear`` rather than e3nn's ``FullyConnectedNet`` (no biases, weights
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

    Mirrors ``e3elastic.model.SpeciesEmbedding`` (``element_descriptors``: an MLP of the
    element's standardised descriptors plus a per-element correction; ``n_theories``: a learned
    vector per level of theory added to every atom of the crystal), and the plain species table
    of configs without either.
    """

    def __init__(self, config, n_scalar: int):
        super().__init__()
        self.use_descriptors = bool(config.element_descriptors)
        if self.use_descriptors:
            from e3elastic.elements import descriptor_table

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


class TorchGate(torch.nn.Module):
    """Gate nonlinearity; mirrors ``e3nn_jax.gate`` with its defaults.

    Input ``S x 0e + G x 0e + gated`` (``G`` = number of gated irreps, gates last among the
    scalars): the first ``S`` scalars go through GELU (tanh form, ``jax.nn.gelu``), the ``G``
    gates through a sigmoid, both normalised as in e3nn-jax (:func:`_normalised`), and each
    gated irrep is multiplied by its gate (``o3.ElementwiseTensorProduct``). Output
    ``S x 0e + gated``. (``e3nn.nn.Gate`` has the same structure but normalises the activations
    with ``normalize2mom``.)
    """

    def __init__(self, hidden):
        super().__init__()
        if any(ir.l == 0 and ir.p != 1 for _, ir in hidden):
            raise NotImplementedError("odd scalars (0o) are not ported")
        self.n_scalar = sum(m for m, ir in hidden if ir.l == 0)
        gated = o3.Irreps([(m, ir) for m, ir in hidden if ir.l > 0])
        self.n_gate = gated.num_irreps
        self.act = _normalised(_gelu)
        self.gate_act = _normalised(torch.sigmoid)
        self.mul = o3.ElementwiseTensorProduct(gated, f"{self.n_gate}x0e") if self.n_gate else None

    def forward(self, x):
        s, g = self.n_scalar, self.n_gate
        scalars = self.act(x[:, :s])
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

    Mirrors ``e3elastic.model.Interaction``: the full tensor product ``x[senders] (x) sh``
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
        # scalar inputs: mix on the edges, as e3elastic.model.Interaction._scalar_messages does
        self.scalar_input = irreps_in.lmax == 0 and len(irreps_in) == 1
        if self.scalar_input:
            self._setup_scalar(irreps_in, irreps_sh, irreps_msg, gate_in)
        # other inputs led by scalars: those are weighted and summed path by path, as
        # e3elastic.model.summed_messages does; the rest goes through e3nn's product
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
        self.paths = [ir for _, ir in irreps_msg]
        out, sh = _unit_scalar_product(irreps_in, irreps_sh, self.paths)
        self.sh_slices = [
            irreps_sh.slices()[[i for _, i in irreps_sh].index(ir)] for ir in self.paths
        ]
        self.factors = [
            _path_factor(out[sl_msg][: ir.dim], sh[sl_sh], ir)
            for (_, ir), sl_msg, sl_sh in zip(
                irreps_msg, irreps_msg.slices(), self.sh_slices, strict=True
            )
        ]
        self.out_index = [[i for _, i in gate_in].index(ir) for ir in self.paths]
        self.gate_in = gate_in
        self.mul = mul

    def _scalar_forward(self, x, sh, radial, senders, receivers):
        mul, weights = self.mul, self.radial(radial)  # (E, n_paths * mul)
        # mix's matrix per path: its output on unit vectors of the channels (m = 0 only)
        basis = torch.zeros(mul, self.mix.irreps_in.dim, dtype=x.dtype, device=x.device)
        start = 0
        for ir in self.paths:
            basis[torch.arange(mul), start + torch.arange(mul) * ir.dim] = 1.0
            start += mul * ir.dim
        mixed = self.mix(basis)  # (mul, gate_in)
        out_slices = self.gate_in.slices()
        xe = x[senders]  # (E, mul)
        parts = [None] * len(self.gate_in)
        for p, ir in enumerate(self.paths):
            j = self.out_index[p]
            c = self.gate_in[j].mul
            w = mixed[:, out_slices[j]].reshape(mul, c, ir.dim)[:, :, 0] * self.factors[p]
            z = (xe * weights[:, p * mul : (p + 1) * mul]) @ w  # (E, c)
            parts[j] = (z[:, :, None] * sh[:, None, self.sh_slices[p]]).reshape(len(xe), -1)
        for j, (c, ir) in enumerate(self.gate_in):
            if parts[j] is None:
                parts[j] = torch.zeros(len(xe), c * ir.dim, dtype=x.dtype, device=x.device)
        msg = torch.cat(parts, dim=1)
        agg = torch.zeros(x.shape[0], msg.shape[1], dtype=msg.dtype, device=msg.device)
        return agg.index_add(0, receivers, msg) * self.inv_sqrt_neighbours

    def _split_sums(self, x, sh, radial, senders, receivers):
        """Summed messages ``(N, irreps_msg)``: scalar-input paths one by one, the rest in one
        ``tp_rest``, each summed on receivers before it is placed in its columns."""
        weights = self.radial(radial)  # (E, n_paths * mul)
        xs = x[senders]
        agg = torch.zeros(x.shape[0], self.tp.irreps_out.dim, dtype=x.dtype, device=x.device)
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
    """Crystal graphs -> normalised irreps ``(G, 21)``; mirrors ``e3elastic.model.ElasticityNet``.

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
                    config.n_radial,
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
        radial = self.radial_basis(torch.linalg.norm(vec, dim=-1))
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


def _linear_slices(linear) -> dict[tuple[int, int], tuple[int, tuple[int, int]]]:
    """``(i_in, i_out) -> (offset, shape)`` of each path's block in an ``o3.Linear`` weight."""
    out, offset = {}, 0
    for ins in linear.instructions:
        if ins.i_in == -1:
            continue
        out[(ins.i_in, ins.i_out)] = (offset, tuple(ins.path_shape))
        offset += int(np.prod(ins.path_shape))
    return out


def load_flax_params(net: TorchElasticityNet, flat: dict[str, np.ndarray]) -> None:
    """Copy flattened flax parameters (``params.npz`` names, with or without ``params/``) into
    the port; raises ``KeyError``/``ValueError`` unless every array and every torch parameter
    is used exactly once with the same shape."""
    flat = {k.removeprefix("params/"): np.asarray(v, np.float32) for k, v in flat.items()}
    filled: set[str] = set()
    used: set[str] = set()
    params = dict(net.named_parameters())

    def put(torch_name: str, value: np.ndarray, index=None) -> None:
        p = params[torch_name]
        t = torch.from_numpy(np.array(value, np.float32))
        with torch.no_grad():
            if index is None:
                if tuple(p.shape) != tuple(t.shape):
                    raise ValueError(f"{torch_name}: shape {tuple(p.shape)} != {tuple(t.shape)}")
                p.copy_(t)
            else:
                p[index[0] : index[0] + t.numel()] = t.reshape(-1)
        filled.add(torch_name if index is None else f"{torch_name}[{index[0]}]")

    def dense(prefix: str, module: str) -> None:
        put(f"{module}.weight", flat[f"{prefix}/kernel"].T)
        put(f"{module}.bias", flat[f"{prefix}/bias"])
        used.update({f"{prefix}/kernel", f"{prefix}/bias"})

    def linear(prefix: str, module: str, lin) -> None:
        slices = _linear_slices(lin)
        names = [k for k in flat if k.startswith(prefix + "/w[")]
        if len(names) != len(slices):
            raise ValueError(f"{prefix}: {len(names)} paths in JAX, {len(slices)} in the port")
        for k in names:
            i_in, i_out = map(int, re.match(r".*/w\[(\d+),(\d+)\]", k).groups())
            offset, shape = slices[(i_in, i_out)]
            if flat[k].shape != shape:
                raise ValueError(f"{k}: shape {flat[k].shape}, port path {shape}")
            put(f"{module}.weight", flat[k], index=(offset, shape))
            used.add(k)

    emb = "species/" if any(k.startswith("species/") for k in flat) else ""
    for name, module in (
        ("descriptor_in", "species.descriptor_in"),
        ("descriptor_out", "species.descriptor_out"),
    ):
        if f"{emb}{name}/kernel" in flat:
            dense(f"{emb}{name}", module)
    for name, module in (
        ("element_correction", "species.element_correction"),
        ("theory", "species.theory"),
        ("embed", "species.embed"),
    ):
        if f"{emb}{name}/embedding" in flat:
            put(f"{module}.weight", flat[f"{emb}{name}/embedding"])
            used.add(f"{emb}{name}/embedding")
    for i, block in enumerate(net.interactions):
        pre = f"interaction_{i}"
        for j in range(len(block.radial.hidden)):
            dense(f"{pre}/radial/dense_{j}", f"interactions.{i}.radial.hidden.{j}")
        dense(f"{pre}/radial/out", f"interactions.{i}.radial.out")
        linear(f"{pre}/mix", f"interactions.{i}.mix", block.mix)
        linear(f"{pre}/self", f"interactions.{i}.self_interaction", block.self_interaction)
        linear(f"{pre}/skip", f"interactions.{i}.skip", block.skip)
    linear("readout", "readout", net.readout)

    unused = sorted(set(flat) - used)
    if unused:
        raise KeyError(f"JAX parameters not copied: {unused}")
    covered = {n.split("[")[0] for n in filled}
    missing = sorted(n for n, p in params.items() if p.requires_grad and n not in covered)
    if missing:
        raise KeyError(f"port parameters not filled: {missing}")
    n_copied = sum(v.size for v in flat.values())
    n_port = sum(p.numel() for p in params.values() if p.requires_grad)
    if n_copied != n_port:
        raise ValueError(f"copied {n_copied} numbers into {n_port} parameters")


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
    ``e3elastic.train.make_steps``)."""
    per_graph = ((y - targets) ** 2).mean(dim=-1)
    return (per_graph * graph_mask).sum() / torch.clamp(graph_mask.sum(), min=1.0)


def compare_gradients(net, params, port, inputs, targets) -> tuple[float, float]:
    """Largest difference between the loss gradients of the JAX network and of the port (same
    weights, one batch), and the largest gradient: ``(max |dg|, max |g|)``.

    The JAX gradients are copied into a second port with :func:`load_flax_params`, so both
    are compared parameter by parameter in the port's layout.
    """
    import jax
    import jax.numpy as jnp

    from e3elastic.checkpoint import flatten_params

    def loss(p):
        y = net.apply(p, inputs)
        mask = jnp.asarray(inputs["graph_mask"], y.dtype)
        per_graph = jnp.mean((y - targets) ** 2, axis=-1)
        return jnp.sum(per_graph * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    grads = jax.jit(jax.grad(loss))(params)
    reference = TorchElasticityNet(net.config)
    load_flax_params(reference, flatten_params(grads))
    want = dict(reference.named_parameters())
    x = to_torch(inputs)
    port.zero_grad(set_to_none=True)
    torch_loss(port(x), torch.from_numpy(targets), x["graph_mask"]).backward()
    diff = max((p.grad - want[n]).abs().max().item() for n, p in port.named_parameters())
    scale = max(p.abs().max().item() for p in want.values())
    port.zero_grad(set_to_none=True)
    return diff, scale


# --------------------------------------------------------------------------------------------
# Benchmark
# --------------------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _load_crystals(folder: str, n: int, cfg):
    from e3elastic import data

    ds = data.load_dataset(
        folder, subset="pbe", max_sites=cfg.data.max_sites, cutoff=cfg.model.cutoff
    )
    recs = [r for r in ds.records if r.source == "matminer2015"][:n]
    return recs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("E3ELASTIC_DATA") or "../shared/data")
    ap.add_argument("--n", type=int, default=128, help="crystals (first matminer 2015 ones)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating timed rounds (>= 1)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch threads")
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (both sides)")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="largest |dy| / max |y|")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "peer.json"))
    args = ap.parse_args()

    if not Path(args.data).is_dir():
        print(f"skipped: no data folder at {args.data} (pass --data or set E3ELASTIC_DATA)")
        return

    import jax
    import optax

    import e3elastic
    from e3elastic import checkpoint, graph, train
    from e3elastic import config as cfg
    from e3elastic.model import batch_inputs

    torch.set_num_threads(args.threads)
    config = cfg.default()

    # parameters: the current default architecture, and the shipped weights
    n_jax = int(sum(np.prod(s) for s in checkpoint.expected_param_shapes(config).values()))
    shipped = e3elastic.load_model("default")
    if shipped.config.model != config.model:
        raise SystemExit("the shipped default model is not the current default architecture")
    if shipped.n_parameters != n_jax:
        raise SystemExit(f"shipped default has {shipped.n_parameters} parameters, config {n_jax}")
    params = jax.tree.map(lambda a: jax.numpy.asarray(a, jax.numpy.float32), shipped.members[0][0])

    port = TorchElasticityNet(config.model)
    n_torch = count_torch(port)
    assert n_torch == n_jax, f"parameter counts differ: JAX {n_jax}, PyTorch {n_torch}"
    load_flax_params(port, checkpoint.flatten_params(params))

    # crystals and padded batches (shared by both networks)
    recs = _load_crystals(args.data, args.n, config)
    graphs = [graph.structure_to_graph(r.structure, config.model.cutoff, id=r.id) for r in recs]
    theories = np.array([cfg.theory_index(r.theory) for r in recs], np.int32)
    targets = np.random.default_rng(0).normal(size=(len(graphs), 21)).astype(np.float32)
    buckets = graph.make_buckets(graphs, config.data.batch_size, config.data.n_buckets)
    batches = list(
        graph.batches(graphs, targets, batch_size=config.data.batch_size, buckets=buckets)
    )
    np_inputs = [batch_inputs(b, np.float32, theory=theories) for b in batches]
    np_targets = [b.targets.astype(np.float32) for b in batches]
    n_real = [b.n_real for b in batches]
    n_cryst = sum(n_real)
    jx_inputs = [jax.device_put(x) for x in np_inputs]
    jx_targets = [jax.device_put(t) for t in np_targets]
    th_inputs = [to_torch(x) for x in np_inputs]
    th_targets = [torch.from_numpy(t) for t in np_targets]
    print(
        f"{n_cryst} crystals, {len(batches)} batches, {len(buckets)} buckets, "
        f"{np.mean([g.n_edge for g in graphs]):.0f} edges/crystal; "
        f"params JAX {n_jax}, PyTorch {n_torch}; torch threads {torch.get_num_threads()}",
        flush=True,
    )

    net = train.create_model(config)
    tx = optax.adam(args.lr)
    step, predict = train.make_steps(net, tx)
    opt = tx.init(params)

    # compile every bucket shape (forward first: it also gives the outputs to compare)
    t = time.perf_counter()
    first = jax.block_until_ready(predict(params, jx_inputs[0]))
    fwd_compile_first = time.perf_counter() - t
    seen = {tuple(batches[0].bucket)}
    t = time.perf_counter()
    y_jax = [np.asarray(first)]
    for b, x in zip(batches[1:], jx_inputs[1:], strict=True):
        y_jax.append(np.asarray(jax.block_until_ready(predict(params, x))))
        seen.add(tuple(b.bucket))
    fwd_compile_all = fwd_compile_first + time.perf_counter() - t

    port.eval()
    with torch.inference_mode():
        y_torch = [port(x).numpy() for x in th_inputs]
    diffs = [
        np.abs(a - b)[np.asarray(x["graph_mask"], bool)]
        for a, b, x in zip(y_jax, y_torch, np_inputs, strict=True)
    ]
    scale = max(
        float(np.abs(a[np.asarray(x["graph_mask"], bool)]).max())
        for a, x in zip(y_jax, np_inputs, strict=True)
    )
    max_diff = float(max(d.max() for d in diffs))
    rel_diff = max_diff / scale
    print(
        f"outputs: max |JAX - PyTorch| = {max_diff:.2e} (max |y| = {scale:.2f}, "
        f"relative {rel_diff:.1e})",
        flush=True,
    )
    if not rel_diff < args.tolerance:
        raise SystemExit(f"outputs differ by {rel_diff:.1e} relative > {args.tolerance:g}")
    grad_diff, grad_scale = compare_gradients(net, params, port, np_inputs[0], np_targets[0])
    grad_rel = grad_diff / grad_scale
    print(
        f"loss gradients (first batch): max |JAX - PyTorch| = {grad_diff:.2e} "
        f"(max |g| = {grad_scale:.2e}, relative {grad_rel:.1e})",
        flush=True,
    )
    if not grad_rel < args.tolerance:
        raise SystemExit(f"gradients differ by {grad_rel:.1e} relative > {args.tolerance:g}")

    t = time.perf_counter()
    state = step(params, opt, jx_inputs[0], jx_targets[0])
    jax.block_until_ready(state)
    train_compile_first = time.perf_counter() - t
    t = time.perf_counter()
    done = {tuple(batches[0].bucket)}
    for b, x, y in zip(batches, jx_inputs, jx_targets, strict=True):
        if tuple(b.bucket) not in done:
            done.add(tuple(b.bucket))
            jax.block_until_ready(step(params, opt, x, y))
    train_compile_all = train_compile_first + time.perf_counter() - t

    port.train()
    adam = torch.optim.Adam(port.parameters(), lr=args.lr)

    def torch_train_round() -> None:
        for x, y in zip(th_inputs, th_targets, strict=True):
            adam.zero_grad(set_to_none=True)
            loss = torch_loss(port(x), y, x["graph_mask"])
            loss.backward()
            adam.step()

    def torch_forward_round() -> None:
        with torch.inference_mode():
            for x in th_inputs:
                port(x)

    jstate = {"params": params, "opt": opt}

    def jax_train_round() -> None:
        p, o = jstate["params"], jstate["opt"]
        for x, y in zip(jx_inputs, jx_targets, strict=True):
            p, o, loss, _ = step(p, o, x, y)
        jax.block_until_ready((p, o, loss))
        jstate["params"], jstate["opt"] = p, o

    def jax_forward_round() -> None:
        out = [predict(jstate["params"], x) for x in jx_inputs]
        jax.block_until_ready(out)

    t = time.perf_counter()
    torch_train_round()
    torch_forward_round()
    torch_warmup = time.perf_counter() - t
    jax_train_round()  # warm-up, compiled already
    jax_forward_round()

    def timed(fn) -> float:
        t = time.perf_counter()
        fn()
        return n_cryst / (time.perf_counter() - t)

    rates = {k: [] for k in ("jax_train", "torch_train", "jax_forward", "torch_forward")}
    for r in range(args.rounds):
        rates["jax_train"].append(timed(jax_train_round))
        rates["torch_train"].append(timed(torch_train_round))
        rates["jax_forward"].append(timed(jax_forward_round))
        rates["torch_forward"].append(timed(torch_forward_round))
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items())
            + " crystals/s",
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in rates.items()}
    train_ratio = med["jax_train"] / med["torch_train"]
    forward_ratio = med["jax_forward"] / med["torch_forward"]

    versions = {
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "e3nn_jax": _version("e3nn-jax"),
        "flax": _version("flax"),
        "optax": _version("optax"),
        "torch": torch.__version__,
        "e3nn": _version("e3nn"),
        "numpy": np.__version__,
    }
    result = {
        "config": config.name,
        "crystals": n_cryst,
        "batches": len(batches),
        "buckets": [list(b) for b in buckets],
        "mean_edges_per_crystal": float(np.mean([g.n_edge for g in graphs])),
        "rounds": args.rounds,
        "train_ratio": train_ratio,
        "forward_ratio": forward_ratio,
        "jax_train_crystals_per_s": med["jax_train"],
        "torch_train_crystals_per_s": med["torch_train"],
        "jax_forward_crystals_per_s": med["jax_forward"],
        "torch_forward_crystals_per_s": med["torch_forward"],
        "rates_per_round": rates,
        "jax_compile_first_train_step_s": train_compile_first,
        "jax_compile_all_train_shapes_s": train_compile_all,
        "jax_compile_first_forward_s": fwd_compile_first,
        "jax_compile_all_forward_shapes_s": fwd_compile_all,
        "torch_warmup_s": torch_warmup,
        "shapes_compiled": len(seen),
        "params_jax": n_jax,
        "params_torch": n_torch,
        "weights": "e3elastic/pretrained/default",
        "max_output_diff": max_diff,
        "max_output_diff_relative": rel_diff,
        "max_abs_output": scale,
        "max_grad_diff": grad_diff,
        "max_grad_diff_relative": grad_rel,
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "adam_lr": args.lr,
        "versions": versions,
        **environment(),
    }
    print()
    print("| network | params | train crystals/s | forward crystals/s | first step compile s |")
    print("|---|---|---|---|---|")
    print(
        f"| JAX + e3nn-jax | {n_jax} | {med['jax_train']:.1f} | {med['jax_forward']:.1f} "
        f"| {train_compile_first:.1f} |"
    )
    print(
        f"| PyTorch + e3nn | {n_torch} | {med['torch_train']:.1f} | "
        f"{med['torch_forward']:.1f} | - |"
    )
    print(f"| JAX / PyTorch | | {train_ratio:.2f}x | {forward_ratio:.2f}x | |")
    print(
        f"\nmedians of {args.rounds} alternating rounds over {n_cryst} crystals on "
        f"{result['device']} ({result['platform']}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}); max output difference {max_diff:.1e} "
        f"({rel_diff:.1e} of max |y|) with the shipped default weights"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
