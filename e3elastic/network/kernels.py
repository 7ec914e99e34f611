"""The equivariant kernels of a point convolution, as plain functions of arrays.

What one interaction block computes on the edges of a crystal graph, apart from the flax
modules that hold its weights (:mod:`e3elastic.network.model`):

* :func:`edge_vectors` - edge vectors from positions, lattices and integer cell shifts;
* :func:`envelope` - the smooth polynomial cutoff of the radial basis;
* :func:`path_blocks` - the Clebsch-Gordan blocks of every path of a tensor product with the
  edge harmonics;
* :func:`edge_tensor_product` and :func:`summed_messages` - sender features times edge
  harmonics, per edge, or summed on the receivers without forming the per-edge messages
  (a custom JVP keeps its gradient as cheap);
* :func:`scale_paths` - the radial weights applied per path.
"""

from __future__ import annotations

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

__all__ = [
    "edge_tensor_product",
    "edge_vectors",
    "envelope",
    "path_blocks",
    "scale_paths",
    "summed_messages",
]


def edge_vectors(inputs: dict[str, jax.Array]) -> jax.Array:
    """``(E, 3)`` edge vectors (Angstrom): ``pos[recv] - pos[send] + shift @ lattice[graph]``."""
    pos = inputs["positions"]
    lattice = inputs["lattice"][inputs["edge_graph"]]  # (E, 3, 3)
    shift = jnp.einsum("ei,eij->ej", inputs["cell_shifts"].astype(pos.dtype), lattice)
    return pos[inputs["receivers"]] - pos[inputs["senders"]] + shift


def envelope(x: jax.Array, p: int) -> jax.Array:
    """Smooth cutoff: 1 at x=0, zero with two vanishing derivatives at x>=1."""
    u = (
        1.0
        - (p + 1) * (p + 2) / 2 * x**p
        + p * (p + 2) * x ** (p + 1)
        - p * (p + 1) / 2 * x ** (p + 2)
    )
    return jnp.where(x < 1.0, u, 0.0)


def path_blocks(
    ir_in: e3nn.Irrep, sh_irreps: e3nn.Irreps, filter_ir_out: list[e3nn.Irrep]
) -> tuple[np.ndarray, list[e3nn.Irrep]]:
    """The Clebsch-Gordan blocks of every path from ``ir_in`` through the harmonics
    ``sh_irreps`` (one copy of each l) to an irrep of ``filter_ir_out``, stacked into one
    ``(2l1+1, sh_irreps.dim, K)`` array, and the output irrep of each path in order.
    Normalised as ``e3nn.tensor_product`` (``e3nn.config("irrep_normalization")``)."""
    assert all(mul == 1 for mul, _ in sh_irreps), sh_irreps  # one harmonic per l
    norm = e3nn.config("irrep_normalization")
    blocks, outs = [], []
    for (_, ir_sh), sl in zip(sh_irreps, sh_irreps.slices(), strict=True):
        for ir_out in ir_in * ir_sh:
            if ir_out not in filter_ir_out:
                continue
            cg = np.zeros((ir_in.dim, sh_irreps.dim, ir_out.dim))
            cg[:, sl, :] = e3nn.clebsch_gordan(ir_in.l, ir_sh.l, ir_out.l)
            if norm == "component":
                cg *= np.sqrt(ir_out.dim)
            elif norm == "norm":
                cg *= np.sqrt(ir_in.dim * ir_sh.dim)
            blocks.append(cg)
            outs.append(ir_out)
    if not blocks:
        return np.zeros((ir_in.dim, sh_irreps.dim, 0)), []
    return np.concatenate(blocks, axis=-1), outs


@jax.custom_jvp
def _edge_vecmat(x: jax.Array, m: jax.Array) -> jax.Array:
    """``y[e, u, k] = sum_i x[e, u, i] m[e, i, k]``: a small matrix per edge.

    Computed as a broadcast product summed over ``i`` (at most 9 terms), which XLA fuses into
    one loop over the edges; as a batched matrix product it also transposes ``m``. The
    tangents (and so the gradients) stay batched matrix products, which differentiate faster
    than the fused sum (``benchmarks/bench_peer.py``)."""
    return jnp.sum(x[:, :, :, None] * m[:, None, :, :], axis=2)


def _edge_vecmat_jvp(primals, tangents):
    x, m = primals
    dx, dm = tangents
    terms = []  # one per tangent that is not a symbolic zero
    if not isinstance(dx, SymbolicZero):
        terms.append(jnp.einsum("eui,eik->euk", dx, m))
    if not isinstance(dm, SymbolicZero):
        terms.append(jnp.einsum("eui,eik->euk", x, dm))
    y = _edge_vecmat(x, m)
    if not terms:
        return y, jnp.zeros_like(y)
    return y, terms[0] if len(terms) == 1 else terms[0] + terms[1]


_edge_vecmat.defjvp(_edge_vecmat_jvp, symbolic_zeros=True)


def _contract(x_in: jax.Array, ir_in: e3nn.Irrep, sh: jax.Array, cg_all: np.ndarray) -> jax.Array:
    """``(E, mul, 2l1+1)`` features of one irrep times the ``(E, sh.dim)`` harmonics through
    the stacked blocks of :func:`path_blocks`: ``(E, mul, K)``. The harmonics meet the
    blocks first (``(E, 2l1+1, K)``, one matrix product), then each edge's features. Scalars
    need no contraction over ``m``: an outer product with the harmonics the paths select."""
    if ir_in.l == 0:
        return x_in * (sh @ cg_all[0])[:, None, :]
    i, j, k = cg_all.shape
    # the harmonics are a concatenation of one block per l; unbarriered, XLA splits the
    # product into one full-size product per block and adds them
    sh = jax.lax.optimization_barrier(sh)
    sh_cg = sh @ np.transpose(cg_all, (1, 0, 2)).reshape(j, i * k)  # (E, i * k)
    return _edge_vecmat(x_in, sh_cg.reshape(-1, i, k))


def edge_tensor_product(
    x: e3nn.IrrepsArray, sh: e3nn.IrrepsArray, filter_ir_out: list[e3nn.Irrep]
) -> e3nn.IrrepsArray:
    """``e3nn.tensor_product(x, sh, filter_ir_out=filter_ir_out)``, contracted per irrep of ``x``.

    ``x`` ``(E, irreps)`` are sender features on edges and ``sh`` ``(E, 0e+1o+...)`` the edge
    harmonics (one copy of each l). e3nn-jax runs one small contraction per path
    (irrep of ``x``, harmonic, output irrep); here the Clebsch-Gordan blocks of all the paths
    from one irrep of ``x`` are stacked into one ``(2l1+1, sh.dim, K)`` array, so there is one
    contraction per irrep of ``x`` against all harmonics at once. Same output irreps, order and
    normalisation (``e3nn.config("irrep_normalization")``); equal to float round-off
    (``tests/test_model.py``).
    """
    x, sh = x.regroup(), sh.regroup()
    irreps_out, chunks = [], []
    for (mul, ir_in), x_in in zip(x.irreps, x.chunks, strict=True):
        cg_all, outs = path_blocks(ir_in, sh.irreps, filter_ir_out)
        if not outs or x_in is None:
            continue
        cg_all = cg_all.astype(x_in.dtype)  # (2l1+1, sh.dim, K)
        y = _contract(x_in, ir_in, sh.array, cg_all)  # (E, mul, K)
        start = 0
        for ir_out in outs:
            irreps_out.append((mul, ir_out))
            chunks.append(y[:, :, start : start + ir_out.dim])
            start += ir_out.dim
    out = e3nn.from_chunks(irreps_out, chunks, x.shape[:-1], x.dtype)
    return out.sort().regroup()


def summed_messages(
    x: e3nn.IrrepsArray,
    sh: e3nn.IrrepsArray,
    weights: jax.Array,
    filter_ir_out: list[e3nn.Irrep],
    receivers: jax.Array,
    n_node: int,
) -> e3nn.IrrepsArray:
    """``scatter_sum(scale_paths(edge_tensor_product(x, sh, filter_ir_out), weights))``.

    The same sums, without building the sorted ``(E, irreps_msg)`` message on the edges: the
    contraction of each irrep of ``x`` is weighted and summed on receivers as it comes (path
    by path for scalars, which need no contraction), and only the node sums ``(N, ...)`` are
    sorted into the message irreps. Equal to float round-off (``tests/test_model.py``).
    """
    x, sh = x.regroup(), sh.regroup()
    entries = []  # (mul, ir_out, node chunk) in edge_tensor_product's order before sorting
    pending = []  # per irrep of x: ((x_in, ir_in, CG blocks), [(entry index, start, dim)])
    for (mul, ir_in), x_in in zip(x.irreps, x.chunks, strict=True):
        cg_all, outs = path_blocks(ir_in, sh.irreps, filter_ir_out)
        if not outs or x_in is None:
            continue
        parts, start = [], 0
        for ir_out in outs:
            parts.append((len(entries), start, ir_out.dim))
            entries.append([mul, ir_out, None])
            start += ir_out.dim
        pending.append(((x_in, ir_in, cg_all.astype(x_in.dtype)), parts))
    # the weights follow the stable sort of the entries by irrep (scale_paths' order)
    order = sorted(range(len(entries)), key=lambda i: entries[i][1])
    at = sum(mul for mul, _, _ in entries)
    if at != weights.shape[-1]:
        raise ValueError(f"{weights.shape[-1]} weights for {at} message irreps")
    # one split (its gradient is one concatenation, where slices would each add a padded copy)
    pieces = jnp.split(weights, np.cumsum([entries[i][0] for i in order])[:-1], axis=-1)
    w_of = {i: piece for i, piece in zip(order, pieces, strict=True)}  # (E, mul) per entry
    for (x_in, ir_in, cg_all), parts in pending:
        mul = x_in.shape[1]
        if ir_in.l == 0:
            # scalars: each path is (x_u w_pu) Y_l, weighted and summed path by path, so
            # neither the (E, mul, K) product nor its weights are built
            harmonics = sh.array @ cg_all[0]  # (E, K)
            for i, start, d in parts:
                z = x_in[:, :, 0] * w_of[i]  # (E, mul)
                entries[i][2] = jax.ops.segment_sum(
                    z[:, :, None] * harmonics[:, None, start : start + d],
                    receivers,
                    num_segments=n_node,
                )  # (N, mul, d)
            continue
        y = _contract(x_in, ir_in, sh.array, cg_all)  # (E, mul, K)
        w = jnp.concatenate(
            [jnp.broadcast_to(w_of[i][:, :, None], (y.shape[0], mul, d)) for i, _, d in parts],
            axis=-1,
        )  # (E, mul, K)
        agg = jax.ops.segment_sum(y * w, receivers, num_segments=n_node)  # (N, mul, K)
        for i, start, d in parts:
            entries[i][2] = agg[:, :, start : start + d]
    irreps = e3nn.Irreps([(entries[i][0], entries[i][1]) for i in order])
    out = e3nn.from_chunks(irreps, [entries[i][2] for i in order], (n_node,), x.dtype)
    return out.regroup()


def scale_paths(msg: e3nn.IrrepsArray, weights: jax.Array) -> e3nn.IrrepsArray:
    """``msg * weights`` for ``weights (E, msg.irreps.num_irreps)``: one scalar per irrep copy.

    e3nn-jax's ``IrrepsArray * array`` runs an elementwise tensor product with ``0e``; the same
    numbers come from broadcasting each chunk ``(E, mul, 2l+1)`` against its weights, which is
    what this does (equal to float round-off; faster on the edges of the default network,
    ``benchmarks/bench_tensor_product.py``).
    """
    chunks, start = [], 0
    for (mul, _), chunk in zip(msg.irreps, msg.chunks, strict=True):
        chunks.append(None if chunk is None else chunk * weights[..., start : start + mul, None])
        start += mul
    return e3nn.from_chunks(msg.irreps, chunks, msg.shape[:-1], msg.dtype)
