"""Sampled co-engagement graph (method spec section 1).

Each interaction (u, i_t) draws r partners uniformly without replacement from u's previous `window`
items and adds a (recency-weighted) increment to the undirected count w(i_t, j); at most r*M
increments, so O(M log M) for r = ceil(c * log2 M). A snapshot then keeps, per item, at most
k = ceil(c' * log2 M) neighbours drawn without replacement proportionally to the count
(Efraimidis-Spirakis keys u^(1/w)) and symmetrises the result.

Every random choice comes from a counter-based hash of its coordinates (seed, user, position, slot)
or (seed, item, item), never from a generator's state, so the offline batch builder and the
streaming worker, which see the same events in a different grouping, make identical choices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from g2rec.errors import ConfigError
from g2rec.types import EdgeSnapshot, Interactions

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
# Domain tags keep the partner hash and the reservoir hash independent for the same seed.
_TAG_PARTNER = 0x5041525400000001
_TAG_RESERVOIR = 0x5245535600000002
_NONE = np.iinfo(np.int64).max
_CHUNK = 1 << 16  # events per vectorised block in partner_slots: bounds memory to CHUNK * window keys


@dataclass(frozen=True)
class GraphConfig:
    """Co-engagement sampling and snapshot settings.

    c:       r = ceil(c * log2 M) partners per interaction (when r is None).
    c_prime: k = ceil(c_prime * log2 M) neighbours kept per item in a snapshot (when k is None).
    window:  partners come from the user's last `window` items.
    r, k:    fixed counts; streaming must fix r because M grows while it runs.
    decay:   the partner in slot s (the s-th most recent item) adds decay**(s-1); 1.0 = plain counts.
    seed:    drives every sampled choice through the hash; same seed, same graph.
    """

    c: float = 1.0
    c_prime: float = 2.0
    window: int = 50
    r: int | None = None
    k: int | None = None
    decay: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.c <= 0 or self.c_prime <= 0:
            raise ConfigError(f"c={self.c} and c_prime={self.c_prime} must be positive")
        if self.window < 1:
            raise ConfigError(f"window={self.window} must be >= 1")
        if self.r is not None and self.r < 1:
            raise ConfigError(f"r={self.r} must be >= 1")
        if self.k is not None and self.k < 1:
            raise ConfigError(f"k={self.k} must be >= 1")
        if not 0.0 < self.decay <= 1.0:
            raise ConfigError(f"decay={self.decay} must lie in (0, 1]")

    def partners(self, n_interactions: int) -> int:
        """r for a graph over M interactions."""
        return self.r if self.r is not None else _log_count(self.c, n_interactions)

    def neighbours(self, n_interactions: int) -> int:
        """k for a snapshot over M interactions."""
        return self.k if self.k is not None else _log_count(self.c_prime, n_interactions)


def _log_count(c: float, m: int) -> int:
    return max(1, math.ceil(c * math.log2(max(m, 2))))


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, elementwise on uint64 (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _as_u64(x: np.ndarray | int) -> np.ndarray:
    return np.asarray(x, dtype=np.int64).astype(np.uint64)


def hash_tuple(*parts: np.ndarray | int) -> np.ndarray:
    """Counter-based hash of a tuple of int arrays (broadcast): h = mix(... mix(mix(p0) ^ p1) ...)."""
    h = splitmix64(_as_u64(parts[0]))
    for p in parts[1:]:
        h = splitmix64(h ^ _as_u64(p))
    return h


def _unit_interval(h: np.ndarray) -> np.ndarray:
    """uint64 hash -> float64 uniform in (0, 1), never 0 (53 random bits)."""
    return ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def partner_slots(
    seed: int, users: np.ndarray, positions: np.ndarray, n_candidates: np.ndarray, r: int
) -> np.ndarray:
    """Choose each event's co-engagement partners as offsets into the user's recent history.

    users:        (B,) integer user ids (raw ids, so batch and streaming hash the same value).
    positions:    (B,) the event's 0-based position in its user's history.
    n_candidates: (B,) number of earlier items to choose from, min(position, window).
    Returns (B, r) int64: slot offsets s in 1..n_candidates ("the s-th most recent previous item"),
    ascending per row, padded with -1 where fewer than r candidates exist. The subset is uniform
    without replacement: it is the r smallest of hash(seed, user, position, s) over s.
    """
    users = np.asarray(users)
    positions = np.asarray(positions)
    n_candidates = np.asarray(n_candidates, dtype=np.int64)
    if not (users.shape == positions.shape == n_candidates.shape) or users.ndim != 1:
        raise ValueError(
            f"users {users.shape}, positions {positions.shape} and n_candidates {n_candidates.shape} "
            "must be 1-d arrays of one length"
        )
    if r < 1:
        raise ValueError(f"r={r} must be >= 1")
    if len(n_candidates) and n_candidates.min() < 0:
        raise ValueError("n_candidates must be >= 0")
    if not np.issubdtype(users.dtype, np.integer):
        raise TypeError(f"users must be integer ids, got dtype {users.dtype}")
    out = np.full((len(users), r), -1, dtype=np.int64)
    for lo in range(0, len(users), _CHUNK):
        hi = min(lo + _CHUNK, len(users))
        n = n_candidates[lo:hi]
        width = int(n.max()) if hi > lo else 0
        if width == 0:
            continue
        slots = np.arange(1, width + 1, dtype=np.int64)  # (W,)
        base = hash_tuple(_TAG_PARTNER ^ seed, users[lo:hi], positions[lo:hi])  # (b,)
        keys = splitmix64(base[:, None] ^ slots[None, :].astype(np.uint64))  # (b, W)
        keys[slots[None, :] > n[:, None]] = np.iinfo(np.uint64).max
        take = min(r, width)
        chosen = np.argpartition(keys, take - 1, axis=1)[:, :take] if take < width else np.argsort(keys, axis=1)
        slot = chosen + 1
        slot[slot > n[:, None]] = _NONE  # rows with fewer than r candidates
        out[lo:hi, :take] = np.sort(slot, axis=1)
    out[out == _NONE] = -1
    return out


class CoCounts:
    """Sparse symmetric co-engagement counts, stored once per unordered pair a < b of dense item ids.

    Updates are buffered and coalesced lazily, so a streaming worker can call `add_pairs` per
    micro-batch at amortised O(batch log) cost. `n_increments` counts the raw pair increments added.
    """

    def __init__(self) -> None:
        self._keys = np.zeros(0, dtype=np.int64)  # (P,) sorted a << 32 | b
        self._weights = np.zeros(0, dtype=np.float64)  # (P,)
        self._pending_keys: list[np.ndarray] = []
        self._pending_weights: list[np.ndarray] = []
        self._n_pending = 0
        self.n_increments = 0

    def add_pairs(self, a: np.ndarray, b: np.ndarray, w: np.ndarray | float | None = None) -> None:
        """Add w to the count of each unordered pair {a[t], b[t]}; pairs with a == b are skipped."""
        a = np.asarray(a, dtype=np.int64).ravel()
        b = np.asarray(b, dtype=np.int64).ravel()
        if a.shape != b.shape:
            raise ValueError(f"a has {a.size} items, b has {b.size}")
        w = np.broadcast_to(np.asarray(1.0 if w is None else w, dtype=np.float64), a.shape)
        if a.size and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= 1 << 31):
            raise ValueError("item ids in a and b must lie in 0..2**31-1")
        keep = a != b
        a, b, w = a[keep], b[keep], w[keep]
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        self._pending_keys.append((lo << 32) | hi)
        self._pending_weights.append(np.array(w, dtype=np.float64))
        self._n_pending += len(lo)
        self.n_increments += len(lo)
        if self._n_pending > max(len(self._keys), 1 << 20):
            self._coalesce()

    def merge(self, other: CoCounts) -> None:
        """Add all of `other`'s counts to this one."""
        a, b, w = other.pairs()
        self.add_pairs(a, b, w)
        self.n_increments += other.n_increments - len(a)

    def scale(self, factor: float) -> None:
        """Multiply every count by factor (exponential decay between streaming windows)."""
        if not factor > 0:
            raise ValueError(f"factor={factor} must be positive")
        self._coalesce()
        self._weights *= factor

    def _coalesce(self) -> None:
        if not self._pending_keys:
            return
        if all(np.all(w == 1.0) for w in self._pending_weights):
            self._coalesce_unit()
            return
        keys = np.concatenate([self._keys, *self._pending_keys])
        weights = np.concatenate([self._weights, *self._pending_weights])
        uniq, inverse = np.unique(keys, return_inverse=True)
        self._keys = uniq
        self._weights = np.bincount(inverse, weights=weights, minlength=len(uniq))
        self._pending_keys, self._pending_weights, self._n_pending = [], [], 0

    def _coalesce_unit(self) -> None:
        """_coalesce when every pending increment is 1.0 (plain counts): a plain sort of the keys
        (several times faster than the argsort behind np.unique's inverse), counted per key and
        merged into the sorted keys. Sums of whole numbers, so exactly what _coalesce gives."""
        keys = np.sort(np.concatenate(self._pending_keys))
        self._pending_keys, self._pending_weights, self._n_pending = [], [], 0
        if not len(keys):
            return
        starts = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
        new_keys = keys[starts]
        new_counts = np.diff(np.append(starts, len(keys))).astype(np.float64)
        at = np.searchsorted(self._keys, new_keys)
        known = at < len(self._keys)
        known[known] = self._keys[at[known]] == new_keys[known]
        self._weights[at[known]] += new_counts[known]
        fresh = ~known
        self._keys = np.insert(self._keys, at[fresh], new_keys[fresh])
        self._weights = np.insert(self._weights, at[fresh], new_counts[fresh])

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, w): unordered pairs with a < b, sorted by (a, b), and their float64 counts."""
        self._coalesce()
        return self._keys >> 32, self._keys & 0xFFFFFFFF, self._weights.copy()


def sampled_increments(
    context: np.ndarray, flat: np.ndarray, users: np.ndarray, positions: np.ndarray, cfg: GraphConfig, r: int,
    event_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The co-engagement increments of a set of events: the one implementation that the batch
    builder (`event_partners`) and the stream worker (g2rec.windows) both call.

    context:       (C,) item ids; each user's earlier items lie right before its events.
    flat:          (B,) index of each event's item in `context` (the s-th most recent previous
                   item of event e is context[flat[e] - s]).
    users:         (B,) integer user ids to hash (raw ids, so batch and stream agree).
    positions:     (B,) 0-based position of each event in its user's history.
    event_weights: (B,) optional per-event factor (event weight, decay boost).
    Returns (item, partner, weight, event), event indexing the input rows; self pairs dropped.
    The partner in slot s weighs cfg.decay ** (s - 1).
    """
    n_cand = np.minimum(positions, cfg.window)
    slots = partner_slots(cfg.seed, users, positions, n_cand, r)  # (B, r)
    event, col = np.nonzero(slots > 0)
    s = slots[event, col]
    item = context[flat[event]]
    partner = context[flat[event] - s]
    weight = cfg.decay ** (s - 1).astype(np.float64)
    if event_weights is not None:
        weight = weight * event_weights[event]
    keep = item != partner
    return item[keep], partner[keep], weight[keep], event[keep]


def event_partners(
    interactions: Interactions, cfg: GraphConfig, r: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All sampled (item, partner, weight) increments of a batch of histories, self pairs removed."""
    lengths = interactions.lengths()
    m = interactions.n_interactions
    user_index = np.repeat(np.arange(interactions.n_users), lengths)
    positions = np.arange(m, dtype=np.int64) - interactions.user_ptr[user_index]
    uids = interactions.user_ids
    hash_users = uids[user_index].astype(np.int64) if np.issubdtype(uids.dtype, np.integer) else user_index
    item, partner, weight, _ = sampled_increments(interactions.items, np.arange(m), hash_users, positions, cfg, r)
    return item, partner, weight


def coengagement_counts(interactions: Interactions, cfg: GraphConfig) -> CoCounts:
    """Batch co-engagement counts over all events of `interactions` (dense item ids 1..N).

    User ids are hashed as their raw integer ids when they are integers, else as the dense index,
    so this equals a streaming worker replaying the same events with the same seed and r.
    """
    r = cfg.partners(interactions.n_interactions)
    counts = CoCounts()
    a, b, w = event_partners(interactions, cfg, r)
    counts.add_pairs(a, b, w)
    return counts


def reservoir_keep(src: np.ndarray, dst: np.ndarray, weight: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Indices of the directed entries each source keeps: at most k per source, without replacement,
    proportional to weight. Efraimidis-Spirakis: keep the k largest u^(1/w), i.e. log(u)/w, with
    u = hash(seed, src, dst), so the choice is reproducible and independent of the input order."""
    u = _unit_interval(hash_tuple(_TAG_RESERVOIR ^ seed, src, dst))
    key = np.log(u) / weight
    order = np.lexsort((-key, src))
    src_sorted = src[order]
    group_start = np.searchsorted(src_sorted, src_sorted, side="left")
    rank = np.arange(len(order)) - group_start
    return order[rank < k]


def resample_snapshot(
    counts: CoCounts,
    n_items_or_item_ids: int | np.ndarray,
    cfg: GraphConfig,
    n_interactions: int,
    snapshot_id: int = 0,
) -> EdgeSnapshot:
    """Weighted reservoir re-sample of the counts into a symmetric snapshot.

    Each item keeps at most k = cfg.neighbours(n_interactions) neighbours, drawn without
    replacement with probability proportional to the count: the k largest Efraimidis-Spirakis keys
    u^(1/w), i.e. log(u)/w, with u = hash(seed, item, neighbour). An edge survives when either end
    kept it; its weight is the count. Output edges are sorted by (src, dst), both directions present.
    """
    if isinstance(n_items_or_item_ids, (int, np.integer)):
        item_ids = np.arange(int(n_items_or_item_ids) + 1, dtype=np.int64)
    else:
        item_ids = np.asarray(n_items_or_item_ids)
    n_items = len(item_ids) - 1
    a, b, w = counts.pairs()
    if len(a) and b.max() > n_items:
        raise ValueError(f"counts mention item {b.max()} but n_items_or_item_ids covers 1..{n_items}")
    k = cfg.neighbours(n_interactions)
    src = np.concatenate([a, b])
    dst = np.concatenate([b, a])
    weight = np.concatenate([w, w])
    positive = weight > 0
    src, dst, weight = src[positive], dst[positive], weight[positive]
    kept = reservoir_keep(src, dst, weight, k, cfg.seed)
    lo = np.minimum(src[kept], dst[kept])
    hi = np.maximum(src[kept], dst[kept])
    pair_keys, first = np.unique((lo << 32) | hi, return_index=True)
    pw = weight[kept][first]
    pa, pb = pair_keys >> 32, pair_keys & 0xFFFFFFFF
    s = np.concatenate([pa, pb])
    d = np.concatenate([pb, pa])
    wt = np.concatenate([pw, pw]).astype(np.float32)
    order = np.lexsort((d, s))
    return EdgeSnapshot(src=s[order], dst=d[order], weight=wt[order], item_ids=item_ids, snapshot_id=snapshot_id)


def build_graph(interactions: Interactions, cfg: GraphConfig, snapshot_id: int = 0) -> EdgeSnapshot:
    """Counts then re-sample: the batch snapshot of a set of histories."""
    counts = coengagement_counts(interactions, cfg)
    return resample_snapshot(counts, interactions.item_ids, cfg, interactions.n_interactions, snapshot_id)
