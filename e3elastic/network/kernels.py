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
* :func:`scale_paths` - the radial weights applied per path;
* :class:`LinearWeights` - per-edge path weights left as ``hidden @ kernel + bias``, so that
  :func:`summed_messages` can compute each input irrep's weights already laid out per output
  component, with one matrix product.
"""

from __future__ import annotations

from typing import NamedTuple

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.custom_derivatives import SymbolicZero

__all__ = [
    "LinearWeights",
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
    # only the harmonics some path uses (parity and the output filter rule the others out)
    rows = np.flatnonzero(np.any(cg_all != 0, axis=(0, 2)))
    if len(rows) < cg_all.shape[1]:
        sh, cg_all = sh[:, rows], cg_all[:, rows, :]
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


class LinearWeights(NamedTuple):
    """Per-edge weights ``hidden @ kernel + bias`` ``(E, n)``, not yet multiplied out.

    The last layer of a radial MLP. :meth:`columns` gives any selection of the ``n`` columns,
    repeated or reordered, as one matrix product with the selected kernel columns; the
    selection of a small ``(H, n)`` kernel is cheap, where the same selection of the ``(E, n)``
    product (a concatenation of broadcast slices) is a slow copy on the edges, forward and in
    the gradient.
    """

    hidden: jax.Array  # (E, H)
    kernel: jax.Array  # (H, n)
    bias: jax.Array  # (n,)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.hidden.shape[0], self.kernel.shape[1])

    def columns(self, index: np.ndarray) -> jax.Array:
        """``(hidden @ kernel + bias)[:, index]``, ``(E, len(index))``."""
        index = np.asarray(index)
        return self.hidden @ self.kernel[:, index] + self.bias[index]

    def evaluate(self) -> jax.Array:
        """All ``(E, n)`` weights."""
        return self.hidden @ self.kernel + self.bias


def summed_messages(
    x: e3nn.IrrepsArray,
    sh: e3nn.IrrepsArray,
    weights: jax.Array,
    filter_ir_out: list[e3nn.Irrep],
    receivers: jax.Array,
    n_node: int,
    mix=None,
) -> e3nn.IrrepsArray:
    """``scatter_sum(scale_paths(edge_tensor_product(x, sh, filter_ir_out), weights))``, or
    ``mix`` of it.

    The same sums, without building the sorted ``(E, irreps_msg)`` message on the edges: the
    contraction of each irrep of ``x`` is weighted and summed on receivers as it comes (path
    by path for scalars, which need no contraction), and only the node sums ``(N, ...)`` are
    sorted into the message irreps. Equal to float round-off (``tests/test_model.py``).

    ``weights`` is an ``(E, n)`` array or :class:`LinearWeights`. With the latter, the weights
    of each input irrep are made in the ``(E, mul, K)`` layout of its contraction by one matrix
    product (:meth:`LinearWeights.columns`), instead of broadcasting and concatenating the
    weights of its paths on the edges.

    ``mix``, a linear map of the node sums (an ``e3nn.flax.Linear``, called as ``mix(sums)``),
    is applied to the result. A path from a scalar input to an irrep of which ``mix`` makes
    fewer channels than the input has is then mixed on the edges, before the product with
    the harmonic and the sum (the message of a scalar is ``x_u w_u(r) Y_l``, linear in the
    channel ``u``): in the default network's second block the paths ``0e -> 2e, 4e`` carry
    8 and 4 channels on the edges instead of 32. The matrix of ``mix`` on those paths is its
    output on unit inputs.
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
    starts = np.cumsum([0] + [entries[i][0] for i in order])
    first = {i: int(starts[j]) for j, i in enumerate(order)}  # entry -> its first weight column
    lazy = isinstance(weights, LinearWeights)
    if lazy:  # (E, mul) per entry, made where a scalar input needs it

        def piece(i):
            return weights.columns(first[i] + np.arange(entries[i][0]))

    else:
        # one split (its gradient is one concatenation, where slices would each add a copy)
        pieces = jnp.split(weights, starts[1:-1], axis=-1)
        w_of = dict(zip(order, pieces, strict=True))  # (E, mul) per entry

        def piece(i):
            return w_of[i]

    irreps = e3nn.Irreps([(entries[i][0], entries[i][1]) for i in order])
    premix = {} if mix is None else _scalar_mix_matrices(mix, irreps, entries, order, pending)
    mixed = {}  # mix's output chunk -> (N, c, d) sums of the paths mixed on the edges
    for (x_in, ir_in, cg_all), parts in pending:
        mul = x_in.shape[1]
        if ir_in.l == 0:
            # scalars: each path is (x_u w_pu) Y_l, weighted and summed path by path, so
            # neither the (E, mul, K) product nor its weights are built
            harmonics = sh.array @ cg_all[0]  # (E, K)
            for i, start, d in parts:
                z = x_in[:, :, 0] * piece(i)  # (E, mul)
                if i in premix:
                    j, matrix = premix[i]
                    z = z @ matrix  # (E, c)
                    mixed[j] = jax.ops.segment_sum(
                        z[:, :, None] * harmonics[:, None, start : start + d],
                        receivers,
                        num_segments=n_node,
                    )  # (N, c, d)
                    continue
                entries[i][2] = jax.ops.segment_sum(
                    z[:, :, None] * harmonics[:, None, start : start + d],
                    receivers,
                    num_segments=n_node,
                )  # (N, mul, d)
            continue
        y = _contract(x_in, ir_in, sh.array, cg_all)  # (E, mul, K)
        if lazy:  # column of weight (u, k): entry of k's path, channel u
            col = np.concatenate([np.full(d, first[i]) for i, _, d in parts])  # (K,)
            index = np.arange(mul)[:, None] + col[None, :]  # (mul, K)
            w = weights.columns(index.reshape(-1)).reshape(y.shape)
        else:
            w = jnp.concatenate(
                [jnp.broadcast_to(piece(i)[:, :, None], (y.shape[0], mul, d)) for i, _, d in parts],
                axis=-1,
            )  # (E, mul, K)
        agg = jax.ops.segment_sum(y * w, receivers, num_segments=n_node)  # (N, mul, K)
        for i, start, d in parts:
            entries[i][2] = agg[:, :, start : start + d]
    out = e3nn.from_chunks(irreps, [entries[i][2] for i in order], (n_node,), x.dtype)
    out = out.regroup()
    if mix is None:
        return out
    out = mix(out)
    if not mixed:
        return out
    extra = [mixed.get(j) for j in range(len(out.irreps))]
    return out + e3nn.from_chunks(out.irreps, extra, (n_node,), x.dtype)


def _scalar_mix_matrices(mix, irreps, entries, order, pending) -> dict:
    """``{entry: (output chunk, (mul, c) matrix)}``: for each path from a scalar input whose
    output irrep ``mix`` makes in one chunk of fewer channels ``c`` than the path's ``mul``,
    that chunk's index and the matrix of ``mix`` from the path's channels to it (see
    :func:`summed_messages`)."""
    dtype = pending[0][0][0].dtype
    merged = irreps.regroup()  # what mix is called on; an irrep's entries sit in order
    offsets, at = {}, {}
    for i in order:
        ir = entries[i][1]
        offsets[i] = at.get(ir, 0)
        at[ir] = offsets[i] + entries[i][0]
    out_irreps = None
    found = {}
    for (_, ir_in, _), parts in pending:
        if ir_in.l != 0:
            continue
        for i, _, _ in parts:
            mul, ir_out = entries[i][0], entries[i][1]
            if ir_out.l == 0:
                continue
            # unit inputs: channel u of this path set to 1 in component m = 0 (zeros, not
            # None, elsewhere: mix names its weights by the input chunks it is given)
            chunks = []
            for m2, ir2 in merged:
                unit = np.zeros((mul, m2, ir2.dim), np.float32)
                if ir2 == ir_out:
                    unit[np.arange(mul), offsets[i] + np.arange(mul), 0] = 1.0
                chunks.append(jnp.asarray(unit, dtype))
            y = mix(e3nn.from_chunks(merged, chunks, (mul,), dtype))
            out_irreps = y.irreps
            slots = [j for j, (_, ir) in enumerate(out_irreps) if ir == ir_out]
            if len(slots) != 1 or out_irreps[slots[0]].mul >= mul:
                continue
            found[i] = (slots[0], y.chunks[slots[0]][:, :, 0])  # (mul, c)
    return found


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
