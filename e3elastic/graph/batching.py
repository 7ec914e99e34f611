"""Padded batches in a few fixed size buckets, so ``jit`` compiles only a handful of shapes.

Batches follow jraph's ``GraphsTuple``: graphs are concatenated, node and edge arrays are padded
to one of a few :class:`Bucket` shapes, and padding lives in extra graphs masked out by
``graph_mask`` (see :func:`pad_batch`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from .crystal import CrystalGraph, node_and_edge_counts
from .neighbours import DEFAULT_CUTOFF, GraphError


class Bucket(NamedTuple):
    """A padded batch shape: total nodes, total edges and graphs (real + padding)."""

    n_node: int
    n_edge: int
    n_graph: int


@dataclasses.dataclass(frozen=True, eq=False)
class Batch:
    """Padded graphs, concatenated jraph-style (numpy arrays; lengths in Angstrom).

    With ``N, E, G = bucket.n_node, bucket.n_edge, bucket.n_graph`` and ``g`` real graphs
    (``g < G``): real graphs take slots ``0..g-1`` and their nodes/edges come first; graph slot
    ``g`` is the padding graph that owns every padding node and edge; slots ``g+1..G-1`` are
    empty padding graphs. Padding graphs have ``lattice = pad_scale * cutoff * I`` and padding
    edges are self-loops of the first padding node with shift ``(1, 0, 0)``, so each padding edge
    has length ``>= 2 * cutoff`` (never zero).

    Attributes:
        species: ``(N,)`` int32 species index (0 for padding nodes).
        positions: ``(N, 3)`` float64 Cartesian (Angstrom); 0 for padding nodes.
        senders, receivers: ``(E,)`` int32 indices into the batch's nodes.
        cell_shifts: ``(E, 3)`` int32 shifts, applied with the lattice of the edge's graph.
        lattice: ``(G, 3, 3)`` float64 per-graph lattice (rows are vectors).
        n_node, n_edge: ``(G,)`` int32 node / edge counts per graph (padding graph included).
        node_graph: ``(N,)`` int32 graph slot of each node.
        edge_graph: ``(E,)`` int32 graph slot of each edge (``node_graph[senders]``).
        node_mask, edge_mask, graph_mask: ``(N,)``, ``(E,)``, ``(G,)`` bool, True for real
            entries.
        targets: ``(G, ...)`` targets (zeros in padding slots) or None.
        graph_index: ``(G,)`` int64 position of each real graph in the input list, -1 for
            padding.
        ids: the real graphs' ids, in slot order (length g).
    """

    species: np.ndarray
    positions: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    cell_shifts: np.ndarray
    lattice: np.ndarray
    n_node: np.ndarray
    n_edge: np.ndarray
    node_graph: np.ndarray
    edge_graph: np.ndarray
    node_mask: np.ndarray
    edge_mask: np.ndarray
    graph_mask: np.ndarray
    targets: np.ndarray | None
    graph_index: np.ndarray
    ids: tuple[str, ...]

    @property
    def bucket(self) -> Bucket:
        return Bucket(self.species.shape[0], self.senders.shape[0], self.lattice.shape[0])

    @property
    def n_real(self) -> int:
        return len(self.ids)


# --------------------------------------------------------------------------------------------
# Bucket shapes
# --------------------------------------------------------------------------------------------


def _round_up_to_eighth_of_power_of_two(x: int, min_step: int) -> int:
    """Round ``x`` up to a multiple of 1/8 of its power of two (at most 12.5 % waste), the
    step being at least ``min_step``."""
    x = max(int(x), 1)
    step = max(min_step, 2 ** max(0, x.bit_length() - 4))
    return -(-x // step) * step


def _next_power_of_two(x: int) -> int:
    """Smallest power of two ``>= x`` (1 for ``x <= 1``)."""
    return 1 << max(0, int(x) - 1).bit_length()


def _sampled_batch_totals(
    nodes: np.ndarray, edges: np.ndarray, batch_size: int, n_samples: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Node totals (+1 padding node) and edge totals of random batches: whole shuffled
    epochs of ``batch_size`` graphs, at least ``n_samples`` batches."""
    rng = np.random.default_rng(seed)
    n = nodes.shape[0]
    per_epoch = -(-n // batch_size)
    epochs = max(1, -(-n_samples // per_epoch))
    node_tot, edge_tot = [], []
    for _ in range(epochs):
        order = rng.permutation(n)
        pad = (-n) % batch_size
        idx = np.concatenate([order, np.full(pad, -1)]).reshape(-1, batch_size)
        valid = idx >= 0
        node_tot.append(np.where(valid, nodes[idx], 0).sum(axis=1))
        edge_tot.append(np.where(valid, edges[idx], 0).sum(axis=1))
    return np.concatenate(node_tot) + 1, np.concatenate(edge_tot)


def make_buckets(
    graphs: Sequence[CrystalGraph],
    batch_size: int,
    n_buckets: int = 4,
    *,
    n_samples: int = 2000,
    seed: int = 0,
) -> tuple[Bucket, ...]:
    """Choose up to ``n_buckets`` padded shapes from the data's size distribution.

    Random batches of ``batch_size`` graphs are drawn (shuffled epochs, ``n_samples`` batches
    at least one full epoch); bucket k takes the ``k / n_buckets`` quantile of their node and
    edge totals (+1 node for the padding graph), rounded up to within 12.5 %. The largest
    bucket is the largest batch seen, so it holds every single graph and full batches almost
    always fit. Every bucket has ``n_graph = batch_size + 1``. Buckets are returned sorted and
    increasing in both nodes and edges.
    """
    if batch_size < 1:
        raise GraphError(f"batch_size must be >= 1, got {batch_size}")
    if n_buckets < 1:
        raise GraphError(f"n_buckets must be >= 1, got {n_buckets}")
    if len(graphs) == 0:
        raise GraphError("make_buckets needs at least one graph")
    nodes, edges = node_and_edge_counts(graphs)
    node_tot, edge_tot = _sampled_batch_totals(nodes, edges, batch_size, n_samples, seed)
    qs = np.arange(1, n_buckets + 1) / n_buckets
    qn = np.quantile(node_tot, qs, method="higher")
    qe = np.quantile(edge_tot, qs, method="higher")
    buckets: list[Bucket] = []
    last = (0, 0)
    for a, b in zip(qn, qe, strict=True):
        bn = max(_round_up_to_eighth_of_power_of_two(int(a), 8), last[0])
        be = max(_round_up_to_eighth_of_power_of_two(int(b), 64), last[1])
        if (bn, be) != last:
            buckets.append(Bucket(bn, be, batch_size + 1))
            last = (bn, be)
    return tuple(buckets)


def _fits_bucket(n_node: int, n_edge: int, bucket: Bucket) -> bool:
    """Whether real graphs with these totals fit ``bucket`` beside one padding node."""
    return n_node + 1 <= bucket.n_node and n_edge <= bucket.n_edge


def _oversize_bucket(n_node: int, n_edge: int, largest: Bucket) -> Bucket:
    """Shape for a single graph larger than the largest bucket: each size rounded up to a
    power of two (at least the largest bucket's), so an epoch gets O(log size) extra shapes."""
    return Bucket(
        max(_next_power_of_two(n_node + 1), largest.n_node),
        max(_next_power_of_two(max(n_edge, 1)), largest.n_edge),
        largest.n_graph,
    )


# --------------------------------------------------------------------------------------------
# One padded batch
# --------------------------------------------------------------------------------------------


def _checked_targets(targets: Any, n_graph: int) -> np.ndarray:
    t = np.asarray(targets)
    if t.shape[0] != n_graph:
        raise GraphError(f"{t.shape[0]} targets for {n_graph} graphs")
    return t


def _padded_targets(targets: Any, n_real: int, n_graph: int) -> np.ndarray:
    """``(G, ...)`` targets: the real graphs' first, zeros in the padding slots."""
    t = _checked_targets(targets, n_real)
    out = np.zeros((n_graph, *t.shape[1:]), t.dtype)
    out[:n_real] = t
    return out


def _padded_nodes(graphs: Sequence[CrystalGraph], n_real: int, n_pad: int):
    """``species (N,), positions (N, 3)``: the graphs' nodes, then zeros."""
    species = np.zeros(n_pad, np.int32)
    positions = np.zeros((n_pad, 3), np.float64)
    if graphs:
        species[:n_real] = np.concatenate([gr.species for gr in graphs])
        positions[:n_real] = np.concatenate([gr.positions for gr in graphs])
    return species, positions


def _padded_edges(graphs: Sequence[CrystalGraph], nodes: np.ndarray, e_real: int, e_pad: int):
    """``senders, receivers (E,), cell_shifts (E, 3)``: the graphs' edges with node indices
    offset into the batch, then self-loops of the first padding node with shift (1, 0, 0)."""
    n_real = int(nodes.sum())
    senders = np.full(e_pad, n_real, np.int32)
    receivers = np.full(e_pad, n_real, np.int32)
    cell_shifts = np.zeros((e_pad, 3), np.int32)
    cell_shifts[e_real:, 0] = 1
    if graphs:
        node_off = np.concatenate([[0], np.cumsum(nodes)[:-1]])
        pairs = list(zip(graphs, node_off, strict=True))
        senders[:e_real] = np.concatenate([gr.senders + o for gr, o in pairs])
        receivers[:e_real] = np.concatenate([gr.receivers + o for gr, o in pairs])
        cell_shifts[:e_real] = np.concatenate([gr.cell_shifts for gr in graphs])
    return senders, receivers, cell_shifts


def _per_graph_counts(nodes: np.ndarray, edges: np.ndarray, bucket: Bucket):
    """``n_node, n_edge (G,)``: real graphs, then the padding graph with all the padding."""
    g = nodes.shape[0]
    n_node = np.zeros(bucket.n_graph, np.int32)
    n_edge = np.zeros(bucket.n_graph, np.int32)
    n_node[:g], n_edge[:g] = nodes, edges
    n_node[g], n_edge[g] = bucket.n_node - int(nodes.sum()), bucket.n_edge - int(edges.sum())
    return n_node, n_edge


def pad_batch(
    graphs: Sequence[CrystalGraph],
    bucket: Bucket,
    targets: Any = None,
    *,
    indices: Sequence[int] | None = None,
    pad_scale: float = 2.0,
) -> Batch:
    """Concatenate ``graphs`` and pad them to ``bucket`` (see :class:`Batch`).

    Args:
        graphs: the real graphs (at most ``bucket.n_graph - 1``).
        bucket: the padded shape; needs room for every real node plus one padding node.
        targets: ``(len(graphs), ...)`` per-graph targets, or None.
        indices: positions of the graphs in a dataset (stored as ``graph_index``).
        pad_scale: padding graphs get ``lattice = pad_scale * cutoff * I``; must be >= 2.
    """
    g = len(graphs)
    nodes, edges = node_and_edge_counts(graphs)
    n_tot, e_tot = int(nodes.sum()), int(edges.sum())
    if g + 1 > bucket.n_graph or not _fits_bucket(n_tot, e_tot, bucket):
        raise GraphError(
            f"{g} graphs with {n_tot} nodes and {e_tot} edges do not fit {bucket} "
            "(which must also hold one padding graph and one padding node)"
        )
    if pad_scale < 2.0:
        raise GraphError(f"pad_scale must be >= 2, got {pad_scale}")
    N, E, G = bucket
    cutoff = max((gr.cutoff for gr in graphs), default=DEFAULT_CUTOFF)
    species, positions = _padded_nodes(graphs, n_tot, N)
    senders, receivers, cell_shifts = _padded_edges(graphs, nodes, e_tot, E)
    lattice = np.broadcast_to(pad_scale * cutoff * np.eye(3), (G, 3, 3)).copy()
    if g:
        lattice[:g] = np.stack([gr.lattice for gr in graphs])
    n_node, n_edge = _per_graph_counts(nodes, edges, bucket)
    slots = np.arange(G, dtype=np.int32)
    node_graph = np.repeat(slots, n_node)
    edge_graph = np.repeat(slots, n_edge)
    graph_mask = slots < g

    out_targets = None if targets is None else _padded_targets(targets, g, G)
    graph_index = np.full(G, -1, np.int64)
    graph_index[:g] = np.arange(g) if indices is None else np.asarray(indices, np.int64)
    return Batch(
        species=species,
        positions=positions,
        senders=senders,
        receivers=receivers,
        cell_shifts=cell_shifts,
        lattice=lattice,
        n_node=n_node,
        n_edge=n_edge,
        node_graph=node_graph,
        edge_graph=edge_graph,
        node_mask=graph_mask[node_graph],
        edge_mask=graph_mask[edge_graph],
        graph_mask=graph_mask,
        targets=out_targets,
        graph_index=graph_index,
        ids=tuple(gr.id for gr in graphs),
    )


# --------------------------------------------------------------------------------------------
# An epoch of batches
# --------------------------------------------------------------------------------------------


def _sorted_buckets(buckets: Sequence[Bucket], batch_size: int) -> list[Bucket]:
    if batch_size < 1:
        raise GraphError(f"batch_size must be >= 1, got {batch_size}")
    if not buckets:
        raise GraphError("batches needs at least one bucket")
    ordered = sorted(buckets, key=lambda b: (b.n_node, b.n_edge))
    if any(b.n_graph < batch_size + 1 for b in ordered):
        raise GraphError(f"every bucket needs n_graph >= batch_size + 1 = {batch_size + 1}")
    return ordered


def _pack_greedily(
    order: Sequence[int],
    nodes: np.ndarray,
    edges: np.ndarray,
    batch_size: int,
    ordered: Sequence[Bucket],
) -> Iterator[tuple[list[int], Bucket]]:
    """``(graph indices, bucket)`` of each batch: graphs in ``order`` join the current batch
    while it has fewer than ``batch_size`` graphs and still fits a bucket; a graph that fits no
    bucket goes alone into :func:`_oversize_bucket`."""

    def smallest_fitting(n_node: int, n_edge: int) -> Bucket | None:
        # Buckets need not be nested (one may have more nodes, another more edges), so a batch
        # must fit one real bucket, not the component-wise maximum of all of them.
        return next((b for b in ordered if _fits_bucket(n_node, n_edge, b)), None)

    largest = Bucket(
        max(b.n_node for b in ordered), max(b.n_edge for b in ordered), ordered[-1].n_graph
    )
    current: list[int] = []
    cur_n = cur_e = 0
    for i in order:
        ni, ei = int(nodes[i]), int(edges[i])
        if smallest_fitting(ni, ei) is None:
            if current:
                yield current, smallest_fitting(cur_n, cur_e)
                current, cur_n, cur_e = [], 0, 0
            yield [i], _oversize_bucket(ni, ei, largest)
            continue
        if len(current) < batch_size and smallest_fitting(cur_n + ni, cur_e + ei) is not None:
            current.append(i)
            cur_n, cur_e = cur_n + ni, cur_e + ei
        else:
            yield current, smallest_fitting(cur_n, cur_e)
            current, cur_n, cur_e = [i], ni, ei
    if current:
        yield current, smallest_fitting(cur_n, cur_e)


def batches(
    graphs: Sequence[CrystalGraph],
    targets: Any = None,
    *,
    batch_size: int,
    buckets: Sequence[Bucket],
    shuffle: bool = False,
    seed: int = 0,
    pad_scale: float = 2.0,
) -> Iterator[Batch]:
    """One epoch of padded batches.

    Greedy packing: graphs are taken in order (a permutation from ``seed`` when ``shuffle``);
    a batch grows up to ``batch_size`` graphs while it still fits one of the buckets, then is
    padded to the smallest bucket that fits it. A single graph that fits no bucket
    goes alone into a shape rounded up to powers of two (see ``_oversize_bucket``), so the
    number of distinct shapes per epoch stays at most ``len(buckets)`` plus a few
    logarithmically spaced extras. Deterministic given ``seed``.

    Args:
        graphs: the dataset.
        targets: ``(len(graphs), ...)`` array of per-graph targets, or None.
        batch_size: most real graphs per batch; must be < ``bucket.n_graph``.
        buckets: from :func:`make_buckets`.
    """
    ordered = _sorted_buckets(buckets, batch_size)
    t = None if targets is None else _checked_targets(targets, len(graphs))
    nodes, edges = node_and_edge_counts(graphs)
    n = len(graphs)
    order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
    for idx, bucket in _pack_greedily(order.tolist(), nodes, edges, batch_size, ordered):
        yield pad_batch(
            [graphs[i] for i in idx],
            bucket,
            None if t is None else t[idx],
            indices=idx,
            pad_scale=pad_scale,
        )
