"""Hard-partition building blocks for the soft clustering: the working graph, vectorised group
operations, and the cold-start partitions (label propagation and multilevel modularity moves).

Every routine is a few passes of sort / unique / scatter over the edge list (no Python loop over
items or edges), so it runs the same on CPU and CUDA.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from g2rec.types import EdgeSnapshot

# Directed edges per block in the O(|E|) passes: small blocks keep temporaries in cache and off mmap.
EDGE_CHUNK = 1 << 17
# Ties break by a hash: a jitter of (hash % _JITTER_LEVELS) * unit, far below any real difference
# (label propagation scores are edge weights; modularity gains are in units of edge weight too).
_JITTER_LEVELS = 1024
_LPA_JITTER = 1e-9
_GAIN_JITTER = 1e-12
_MOVE_SALT = 1  # seed offset of the hash that picks which nodes may move in a round


def hash_ints(seed: int, *parts: torch.Tensor | int) -> torch.Tensor:
    """Counter-based 62-bit hash (int64, non-negative) for deterministic tie breaks and fills."""
    h = torch.as_tensor(seed * 0x9E3779B1 + 0x7F4A7C15, dtype=torch.int64)
    for p in parts:
        h = (h ^ torch.as_tensor(p, dtype=torch.int64)) * 0x5BD1E995 + 0x1B873593
        h = h ^ (h >> 29)
        h = h * 0x2545F491 + 0x3C6EF372
        h = h ^ (h >> 32)
    return h & ((1 << 62) - 1)


def group_top(owner: torch.Tensor, score: torch.Tensor, n_rows: int, width: int, values: torch.Tensor) -> torch.Tensor:
    """(n_rows, width) of `values` per owner in descending score, -1 where fewer exist."""
    if width == 1:
        # Argmax per owner with two scatter reductions instead of sorting; ties take the first entry.
        best = torch.full((n_rows,), -math.inf, dtype=score.dtype, device=score.device)
        best = best.scatter_reduce(0, owner, score, reduce="amax")
        pos = torch.arange(len(score), device=score.device)
        first = torch.full((n_rows,), len(score), dtype=torch.int64, device=score.device)
        hit = score == best[owner]
        first = first.scatter_reduce(0, owner[hit], pos[hit], reduce="amin")
        found = first < len(score)
        out = torch.full((n_rows,), -1, dtype=torch.int64, device=score.device)
        out[found] = values[first[found]]
        return out[:, None]
    order = torch.argsort(score, descending=True, stable=True)
    order = order[torch.argsort(owner[order], stable=True)]
    own = owner[order]
    first = torch.searchsorted(own, own, right=False)
    rank = torch.arange(len(own), device=own.device) - first
    keep = rank < width
    out = torch.full((n_rows, width), -1, dtype=torch.int64, device=owner.device)
    out[own[keep], rank[keep]] = values[order][keep]
    return out


def row_dedupe(ids: torch.Tensor, width: int) -> torch.Tensor:
    """Keep the first `width` distinct non-negative ids of each row, in priority (column) order."""
    n, w = ids.shape
    sorted_ids, perm = ids.sort(dim=1, stable=True)
    dup_sorted = torch.zeros_like(sorted_ids, dtype=torch.bool)
    dup_sorted[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    dup = torch.zeros_like(dup_sorted).scatter_(1, perm, dup_sorted)
    bad = dup | (ids < 0)
    col = torch.arange(w, device=ids.device).expand(n, w)
    prio = torch.argsort(col + w * bad.long(), dim=1, stable=True)[:, :width]
    out = ids.gather(1, prio)
    return torch.where(bad.gather(1, prio), -1, out)


def slot_lookup(rows: torch.Tensor, owner: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """For each owner row (R, C) of cluster ids, the column holding query (same shape as owner
    x Q), or -1. rows[owner] is searched with a batched binary search."""
    sorted_ids, perm = rows.sort(dim=1)
    out = []
    for lo in range(0, len(owner), EDGE_CHUNK // rows.shape[1]):
        a = owner[lo : lo + EDGE_CHUNK // rows.shape[1]]
        q = query[lo : lo + len(a)]
        seq = sorted_ids[a]
        pos = torch.searchsorted(seq, q).clamp_max(seq.shape[1] - 1)
        hit = (seq.gather(1, pos) == q) & (q >= 0)
        out.append(torch.where(hit, perm[a].gather(1, pos), -1))
    return torch.cat(out) if out else torch.zeros((0, query.shape[1]), dtype=torch.int64, device=rows.device)


class WorkGraph:
    """Directed edge list (sorted by source, then destination) and degrees on the working device."""

    def __init__(self, snapshot: EdgeSnapshot, device: torch.device):
        src = torch.as_tensor(np.asarray(snapshot.src), dtype=torch.int64)
        dst = torch.as_tensor(np.asarray(snapshot.dst), dtype=torch.int64)
        w = torch.as_tensor(np.asarray(snapshot.weight), dtype=torch.float64)
        n_rows = snapshot.n_items + 1
        if not (src.shape == dst.shape == w.shape):
            raise ValueError("snapshot src, dst and weight must have one length")
        if len(src) and (min(src.min(), dst.min()) < 1 or max(src.max(), dst.max()) >= n_rows):
            raise ValueError(f"snapshot edges must join items 1..{n_rows - 1}")
        if (src == dst).any():
            raise ValueError("snapshot has self loops")
        if (w <= 0).any():
            raise ValueError("snapshot weights must be positive")
        self._set(src.to(device), dst.to(device), w.to(device), n_rows)

    def _set(self, src: torch.Tensor, dst: torch.Tensor, w: torch.Tensor, n_rows: int) -> None:
        order = torch.argsort(src * n_rows + dst)
        self.src, self.dst, self.w = src[order], dst[order], w[order]
        self.n_rows = n_rows
        self.deg = torch.zeros(n_rows, dtype=torch.float64, device=src.device).index_add_(0, self.src, self.w)
        self.two_m = float(self.w.sum())
        self.active = self.deg > 0
        # Chunk bounds fall between sources, so per-chunk aggregation by source is complete.
        bounds, n_edges = [0], len(self.src)
        while bounds[-1] < n_edges:
            nxt = bounds[-1] + EDGE_CHUNK
            if nxt >= n_edges:
                bounds.append(n_edges)
                break
            cut = int(torch.searchsorted(self.src, self.src[nxt : nxt + 1], right=True)[0])
            bounds.append(cut)
        self.bounds = bounds
        # Inside each block, order edges by destination: the per-edge gathers of the destination's
        # memberships then sweep memory monotonically (prefetch friendly) while the scatter into
        # the sources' rows stays within the block's small source range.
        block = torch.zeros(n_edges, dtype=torch.int64, device=src.device)
        if len(bounds) > 2:
            block[torch.as_tensor(bounds[1:-1], device=src.device)] = 1
        order = torch.argsort(block.cumsum(0) * n_rows + self.dst)
        self.src, self.dst, self.w = self.src[order], self.dst[order], self.w[order]

    def relabelled(self, order: torch.Tensor) -> WorkGraph:
        """The same graph with row order[r] renamed r. Numbering rows by initial cluster puts most
        edges' two ends close in memory, which keeps the per-iteration gathers cache friendly."""
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order), device=order.device)
        out = WorkGraph.__new__(WorkGraph)
        out._set(inverse[self.src], inverse[self.dst], self.w, self.n_rows)
        return out

    def chunks(self):
        """(lo, src, dst, w) blocks of about EDGE_CHUNK edges; a source never spans two blocks."""
        for lo, hi in zip(self.bounds[:-1], self.bounds[1:]):
            yield lo, self.src[lo:hi], self.dst[lo:hi], self.w[lo:hi]


def label_propagation(g: WorkGraph, max_rounds: int, seed: int, resolution: float, tol: float = 1e-3) -> torch.Tensor:
    """Weighted label propagation from singleton labels, semi-synchronous (each round a random 3/4
    of the items adopt the label of largest edge weight among their neighbours; fully synchronous
    updates oscillate). Plain propagation keeps merging on real co-engagement graphs until one giant
    label holds most items, so it stops at the round where resolution-gamma modularity peaks."""
    n = g.n_rows
    labels = torch.arange(n, device=g.src.device)
    items = torch.arange(n, device=g.src.device)
    n_active = max(int(g.active.sum()), 1)
    best_q = hard_q(g, labels, resolution)
    for t in range(max_rounds):
        key = g.src * n + labels[g.dst]
        uniq, inv = torch.unique(key, return_inverse=True)
        score = torch.zeros(len(uniq), dtype=torch.float64, device=key.device).index_add_(0, inv, g.w)
        owner, lab = uniq // n, uniq % n
        # Ties break by a hash, not by label order, so no label is favoured.
        score = score + _LPA_JITTER * (hash_ints(seed, t, owner, lab) % _JITTER_LEVELS).double()
        best = group_top(owner, score, n, 1, lab)[:, 0]
        move = (best >= 0) & (best != labels) & (hash_ints(seed + _MOVE_SALT, t, items) % 4 != 0)  # 3/4 may move
        proposal = torch.where(move, best, labels)
        q = hard_q(g, proposal, resolution)
        if q <= best_q:
            break
        labels, best_q = proposal, q
        if int(move.sum()) < tol * n_active:
            break
    return labels


def local_moves(
    src: torch.Tensor, dst: torch.Tensor, w: torch.Tensor, deg: torch.Tensor, two_m: float,
    resolution: float, max_rounds: int, seed: int, tol: float, start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Semi-synchronous modularity local moves on one level (no self loops in the edge list; deg
    includes internal weight), from `start` (labels in [0, n)) or else from singletons. Each round
    a random half of the nodes move to the neighbouring label of best gain k_i,l - gamma d_i D_l / 2m
    when it beats staying; labels only ever take values already present."""
    n = len(deg)
    labels = torch.arange(n, device=src.device) if start is None else start.clone()
    nodes = torch.arange(n, device=src.device)
    for t in range(max_rounds):
        d_l = torch.zeros(n, dtype=torch.float64, device=src.device).index_add_(0, labels, deg)
        key = src * n + labels[dst]
        uniq, inv = torch.unique(key, return_inverse=True)
        k_il = torch.zeros(len(uniq), dtype=torch.float64, device=src.device).index_add_(0, inv, w)
        owner, lab = uniq // n, uniq % n
        own = labels[owner] == lab
        null = resolution * deg[owner] * (d_l[lab] - torch.where(own, deg[owner], 0.0)) / two_m
        gain = k_il - null
        stay = torch.zeros(n, dtype=torch.float64, device=src.device)
        stay.index_add_(0, owner[own], gain[own])
        stay = torch.where(
            torch.zeros(n, dtype=torch.bool, device=src.device).index_fill_(0, owner[own], True),
            stay,
            -resolution * deg * (d_l[labels] - deg) / two_m,
        )
        gain = torch.where(own, -math.inf, gain + _GAIN_JITTER * (hash_ints(seed, t, owner, lab) % _JITTER_LEVELS).double())
        pick = group_top(owner, gain, n, 1, torch.arange(len(gain), device=src.device))[:, 0]
        best_gain = torch.where(pick >= 0, gain[pick.clamp_min(0)], -math.inf)
        move = (best_gain > stay + _GAIN_JITTER) & (hash_ints(seed + _MOVE_SALT, t, nodes) % 2 == 0)  # half may move
        labels = torch.where(move, lab[pick.clamp_min(0)], labels)
        if int(move.sum()) <= tol * n:
            break
    return labels


def modularity_propagation(
    g: WorkGraph, resolution: float, max_rounds: int, seed: int, start: torch.Tensor | None = None, tol: float = 1e-3
) -> torch.Tensor:
    """Multilevel modularity label propagation (a synchronous Louvain): local moves, then the same on
    the graph of the found groups, until a level merges nothing. The first level starts from the
    groups of `start` when given (else singletons). Returns a group label per row."""
    assign = torch.arange(g.n_rows, device=g.src.device)
    src, dst, w, deg = g.src, g.dst, g.w, g.deg
    for level in range(16):
        if level == 0 and start is not None:
            labels = start
        else:
            labels = local_moves(src, dst, w, deg, g.two_m, resolution, max_rounds, seed + 7919 * level, tol)
        uniq, new_id = torch.unique(labels, return_inverse=True)
        if len(uniq) == len(deg) and not (level == 0 and start is not None):
            break
        assign = new_id[assign]
        s2, d2 = new_id[src], new_id[dst]
        between = s2 != d2
        key = s2[between] * len(uniq) + d2[between]
        pair, inv = torch.unique(key, return_inverse=True)
        w = torch.zeros(len(pair), dtype=torch.float64, device=key.device).index_add_(0, inv, w[between])
        src, dst = pair // len(uniq), pair % len(uniq)
        deg = torch.zeros(len(uniq), dtype=torch.float64, device=key.device).index_add_(0, new_id, deg)
    return assign


def neighbour_gains(g: WorkGraph, clusters: torch.Tensor, weights: torch.Tensor, d_c: torch.Tensor, resolution: float, width: int, n_clusters: int) -> torch.Tensor:
    """(R, width) neighbour clusters of each item by modularity gain (A S)_ic - gamma d_i D_c / 2m,
    best first, -1 padded. Entries (item, cluster) are coalesced per chunk of source items."""
    owners, cs, gains = [], [], []
    for _, a, b, w in g.chunks():
        cb = clusters[b]
        valid = (cb >= 0).flatten()
        key = (a[:, None] * n_clusters + cb).flatten()[valid]
        val = (w[:, None] * weights[b]).flatten()[valid]
        uniq, inv = torch.unique(key, return_inverse=True)
        as_ = torch.zeros(len(uniq), dtype=torch.float64, device=key.device).index_add_(0, inv, val)
        owner, c = uniq // n_clusters, uniq % n_clusters
        owners.append(owner)
        cs.append(c)
        gains.append(as_ - resolution * g.deg[owner] * d_c[c] / g.two_m)
    if not owners:
        return torch.full((g.n_rows, width), -1, dtype=torch.int64, device=g.src.device)
    return group_top(torch.cat(owners), torch.cat(gains), g.n_rows, width, torch.cat(cs))


def hard_assign(g: WorkGraph, labels: torch.Tensor, n_clusters: int, rounds: int, resolution: float) -> torch.Tensor:
    """Fill labels == -1 with the neighbour cluster of best gain, a few rounds (new or dissolved items)."""
    for _ in range(rounds):
        missing = (labels < 0) & g.active
        if not missing.any():
            break
        one = torch.ones(len(labels), 1, dtype=torch.float64, device=labels.device)
        d_c = torch.zeros(n_clusters, dtype=torch.float64, device=labels.device).index_add_(
            0, labels.clamp_min(0), g.deg * (labels >= 0)
        )
        best = neighbour_gains(g, labels[:, None], one, d_c, resolution, 1, n_clusters)[:, 0]
        labels = torch.where(missing, best, labels)
    return labels


def labels_to_clusters(labels: torch.Tensor, g: WorkGraph, n_clusters: int, resolution: float) -> torch.Tensor:
    """Map arbitrary labels onto 0..K-1: the K largest label groups (by item count) get ids in size
    order; items of the other groups join the neighbouring cluster of best gain."""
    active_labels = labels[g.active]
    uniq, counts = torch.unique(active_labels, return_counts=True)
    order = torch.argsort(counts, descending=True, stable=True)[:n_clusters]
    mapping = torch.full((g.n_rows,), -1, dtype=torch.int64, device=labels.device)
    mapping[uniq[order]] = torch.arange(len(order), device=labels.device)
    out = torch.where(g.active, mapping[labels], -1)
    return hard_assign(g, out, n_clusters, rounds=5, resolution=resolution)


def hard_q(g: WorkGraph, labels: torch.Tensor, resolution: float = 1.0) -> float:
    """Modularity (at a resolution) of a hard labelling on the working graph."""
    inside = float(g.w[labels[g.src] == labels[g.dst]].sum())
    d_c = torch.zeros(int(labels.max()) + 1, dtype=torch.float64, device=labels.device).index_add_(0, labels, g.deg)
    return inside / g.two_m - resolution * float(((d_c / g.two_m) ** 2).sum())
