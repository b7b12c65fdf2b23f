"""Synthetic data with planted interests: interaction histories and graphs with known communities.

`synth_interactions` makes users whose histories dwell in one interest for a few steps and then move
to the next interest of their own cycle, with power-law item popularity inside an interest, so the
next interest, and the next item given it, are predictable from the history. `planted_graph` makes
a co-engagement-like graph with power-law community sizes and a fixed fraction of edges leaving
each item's community (an LFR-style benchmark for the clustering).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from g2rec.types import EdgeSnapshot, Interactions


@dataclass(frozen=True)
class SynthConfig:
    """Planted-interest interaction generator.

    n_interests:        planted interests; their sizes (items) follow rank^-size_exponent.
    mean_history:       mean events per user (geometric tail above min_history).
    interests_per_user: each user cycles through this many interests, in a fixed per-user order.
    mean_stay:          mean consecutive events spent in one interest before moving on.
    zipf:               item popularity inside an interest ~ rank^-zipf.
    secondary_prob:     probability that an item also belongs to a second interest (soft membership).
    """

    n_users: int = 2000
    n_items: int = 1000
    n_interests: int = 20
    mean_history: float = 20.0
    min_history: int = 5
    interests_per_user: int = 3
    mean_stay: float = 4.0
    zipf: float = 1.0
    size_exponent: float = 0.5
    secondary_prob: float = 0.1
    start_time: int = 1_600_000_000
    mean_gap_s: float = 3600.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_interests < 1 or self.n_items < self.n_interests:
            raise ValueError(f"need 1 <= n_interests={self.n_interests} <= n_items={self.n_items}")
        if self.n_users < 1:
            raise ValueError(f"n_users={self.n_users} must be >= 1")
        if not 1 <= self.interests_per_user <= self.n_interests:
            raise ValueError(f"interests_per_user={self.interests_per_user} must lie in 1..n_interests")
        if self.min_history < 1 or self.mean_history < self.min_history:
            raise ValueError(f"need 1 <= min_history={self.min_history} <= mean_history={self.mean_history}")
        if self.mean_stay < 1:
            raise ValueError(f"mean_stay={self.mean_stay} must be >= 1")


def power_law_sizes(total: int, n_groups: int, exponent: float, minimum: int = 1) -> np.ndarray:
    """(n_groups,) int sizes summing to total, size of rank k proportional to (k+1)^-exponent."""
    if total < n_groups * minimum:
        raise ValueError(f"total={total} cannot hold {n_groups} groups of at least {minimum}")
    raw = (np.arange(1, n_groups + 1, dtype=np.float64)) ** -exponent
    sizes = np.maximum(minimum, np.floor(raw / raw.sum() * total)).astype(np.int64)
    # Hand out (or take back) the rounding remainder from the largest groups.
    diff = total - sizes.sum()
    i = 0
    while diff != 0:
        step = 1 if diff > 0 else -1
        if sizes[i % n_groups] + step >= minimum:
            sizes[i % n_groups] += step
            diff -= step
        i += 1
    return sizes


def synth_interactions(cfg: SynthConfig) -> tuple[Interactions, np.ndarray]:
    """Histories with planted interests.

    Returns the interactions (dense items 1..N, user ids 0..U-1, increasing timestamps) and
    (N+1,) int64 planted primary interest per item (-1 for the padding row 0).
    """
    rng = np.random.default_rng(cfg.seed)
    sizes = power_law_sizes(cfg.n_items, cfg.n_interests, cfg.size_exponent)
    primary = np.concatenate([[-1], rng.permutation(np.repeat(np.arange(cfg.n_interests), sizes))])
    # Members of each interest: its primary items (by popularity rank) plus a few secondary ones.
    members: list[list[int]] = [[] for _ in range(cfg.n_interests)]
    for item in range(1, cfg.n_items + 1):
        members[primary[item]].append(item)
    for item in np.nonzero(rng.random(cfg.n_items + 1) < cfg.secondary_prob)[0]:
        if item == 0 or cfg.n_interests == 1:
            continue
        other = int(rng.integers(cfg.n_interests - 1))
        members[other + (other >= primary[item])].append(int(item))
    pools = [np.array(rng.permutation(m), dtype=np.int64) for m in members]
    pool_p = []
    for pool in pools:
        p = np.arange(1, len(pool) + 1, dtype=np.float64) ** -cfg.zipf
        pool_p.append(p / p.sum())
    interest_p = sizes / sizes.sum()

    lengths = cfg.min_history + rng.geometric(1.0 / (cfg.mean_history - cfg.min_history + 1), cfg.n_users) - 1
    items = np.empty(lengths.sum(), dtype=np.int64)
    pos = 0
    for u in range(cfg.n_users):
        cycle = rng.choice(cfg.n_interests, size=cfg.interests_per_user, replace=False, p=interest_p)
        t, c, left = 0, int(rng.integers(len(cycle))), 0
        while t < lengths[u]:
            if left == 0:
                c = (c + 1) % len(cycle)
                left = int(rng.geometric(1.0 / cfg.mean_stay))
            k = cycle[c]
            items[pos + t] = pools[k][rng.choice(len(pools[k]), p=pool_p[k])]
            t += 1
            left -= 1
        pos += lengths[u]
    user_ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    gaps = rng.exponential(cfg.mean_gap_s, len(items)).astype(np.int64) + 1
    times = cfg.start_time + np.cumsum(gaps)
    times = times - (times[user_ptr[:-1]] - cfg.start_time).repeat(lengths)  # each user starts near t0
    inter = Interactions(
        user_ptr=user_ptr,
        items=items,
        times=times.astype(np.int64),
        user_ids=np.arange(cfg.n_users, dtype=np.int64),
        item_ids=np.arange(cfg.n_items + 1, dtype=np.int64),
        name=f"synth-{cfg.seed}",
    )
    return inter, primary.astype(np.int64)


def planted_graph(
    n_items: int = 100_000,
    n_interests: int = 256,
    avg_degree: float = 20.0,
    mixing: float = 0.3,
    seed: int = 0,
    size_exponent: float = 0.7,
) -> tuple[EdgeSnapshot, np.ndarray]:
    """A symmetric graph over items 1..n_items with planted communities of power-law sizes.

    Each item draws avg_degree/2 edge ends; each lands inside its own community with probability
    1 - mixing, elsewhere uniformly otherwise; duplicates merge (weight = multiplicity). About
    n_items * avg_degree / 2 undirected edges, both directions listed. Returns the snapshot and
    (n_items+1,) int64 planted labels (-1 for the padding row 0).
    """
    if not 0.0 <= mixing <= 1.0:
        raise ValueError(f"mixing={mixing} must lie in [0, 1]")
    if avg_degree <= 0:
        raise ValueError(f"avg_degree={avg_degree} must be positive")
    rng = np.random.default_rng(seed)
    minimum = max(2, min(int(avg_degree), n_items // n_interests))
    sizes = power_law_sizes(n_items, n_interests, size_exponent, minimum)
    labels = rng.permutation(np.repeat(np.arange(n_interests), sizes))  # label of item i+1
    by_label = np.argsort(labels, kind="stable") + 1  # items grouped by community
    start = np.concatenate([[0], np.cumsum(sizes)])

    half = avg_degree / 2.0
    per_item = rng.poisson(half, n_items)
    src = np.repeat(np.arange(1, n_items + 1, dtype=np.int64), per_item)
    inside = rng.random(len(src)) >= mixing
    lab = labels[src - 1]
    offset = (rng.random(len(src)) * sizes[lab]).astype(np.int64)
    dst = np.where(inside, by_label[start[lab] + offset], rng.integers(1, n_items + 1, len(src)))
    keep = dst != src
    lo = np.minimum(src[keep], dst[keep])
    hi = np.maximum(src[keep], dst[keep])
    keys, counts = np.unique((lo << 32) | hi, return_counts=True)
    a, b = keys >> 32, keys & 0xFFFFFFFF
    s = np.concatenate([a, b])
    d = np.concatenate([b, a])
    w = np.concatenate([counts, counts]).astype(np.float32)
    order = np.lexsort((d, s))
    snapshot = EdgeSnapshot(
        src=s[order], dst=d[order], weight=w[order], item_ids=np.arange(n_items + 1, dtype=np.int64)
    )
    return snapshot, np.concatenate([[-1], labels]).astype(np.int64)
