"""Original item ids in, ranked original item ids out: the one serving rule, shared by the HTTP
service and `g2rec score`.

The rule (the ranking part is g2rec.ranking's, documented there):
- unknown items (ids not in the run's catalogue) are ignored and counted (`unknown_items`);
- a history is cut to its most recent `max_len` known items for scoring (`used_items` says how
  many were scored); every known item of the full history is excluded from the ranking, as are the
  `exclude` items;
- a user with no known item gets the popularity fallback (`fallback: true`): items ranked by their
  training counts, scores log((count + 1) / (total + N));
- at most k items come back, fewer when fewer remain after the exclusions; never a seen one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from g2rec.errors import DataError
from g2rec.ranking import exclude_seen, top_k
from serving.scorer import OnnxScorer

ItemId = int | str


@dataclass(frozen=True)
class Ranked:
    """One user's answer: items (original ids) best first, their scores (log-probabilities)."""

    items: list[ItemId]
    scores: list[float]
    used_items: int
    unknown_items: int
    fallback: bool


def load_item_counts(path: Path, n_items: int) -> np.ndarray:
    """item_counts.npy: (N+1,) training interaction counts per dense item id (0 = padding)."""
    counts = np.load(path, allow_pickle=False)
    if counts.shape != (n_items + 1,) or counts.dtype.kind not in "iu" or (counts < 0).any():
        raise DataError(f"{path}: expected ({n_items + 1},) non-negative integer counts, "
                        f"got {counts.shape} {counts.dtype}", fix="delete it to have it recomputed")
    return counts


def popularity_scores(counts: np.ndarray) -> np.ndarray:
    """(N+1,) counts -> (N+1,) float32 smoothed log-shares; padding at -inf."""
    counts = counts.astype(np.float64)
    logp = np.log((counts + 1) / (counts[1:].sum() + len(counts) - 1))
    logp[0] = -np.inf
    return logp.astype(np.float32)


class Recommender:
    """One model version's answers. `recommend` is the fast path (the top-k graph, a popularity
    order walked per fallback user); `recommend_reference` the dense one; a test holds them equal."""

    def __init__(self, scorer: OnnxScorer, item_ids: np.ndarray, item_counts: np.ndarray,
                 profile_version: str | None = None):
        if len(item_counts) != len(item_ids):
            raise DataError(f"{len(item_counts) - 1} item counts for a catalogue of {len(item_ids) - 1} items")
        self.scorer = scorer
        self.item_ids = item_ids
        self.item_type: type = int if item_ids.dtype.kind in "iu" else str
        self.index = {v: i for i, v in enumerate(item_ids.tolist()) if i > 0}
        self.popularity = popularity_scores(item_counts)
        self.by_popularity = np.argsort(-self.popularity[1:], kind="stable") + 1  # dense ids, most popular first
        self.version = scorer.version
        self.profile_version = profile_version
        self.max_len = scorer.cfg.max_len

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    def dense(self, ids: Sequence[ItemId]) -> np.ndarray:
        """Original ids -> the dense ids of the known ones, in order. The type must match the
        catalogue's exactly: True and 1.0 are not item 1, "10" is not item 10."""
        get, kind = self.index.get, self.item_type
        return np.array([d for i in ids if type(i) is kind and (d := get(i)) is not None], dtype=np.int64)

    def recommend(self, histories: Sequence[Sequence[ItemId]], k: int,
                  excludes: Sequence[Sequence[ItemId]] | None = None) -> list[Ranked]:
        """Per user a history of original ids (oldest first; may be empty) -> Ranked, by the
        module's rule."""
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        known = [self.dense(h) for h in histories]
        drop = [np.concatenate([kn, self.dense(ex)]) for kn, ex in zip(known, excludes)] if excludes else known
        scored = [b for b, kn in enumerate(known) if len(kn)]
        model = dict(zip(scored, self.scorer.recommend([known[b] for b in scored], k, [drop[b] for b in scored]))) \
            if scored else {}
        out = []
        for b, (kn, h) in enumerate(zip(known, histories)):
            if b in model:
                items, vals = model[b].items, model[b].scores
            else:
                items = self.popular(k, drop[b])
                vals = self.popularity[items]
            out.append(Ranked(self.item_ids[items].tolist(), vals.astype(float).tolist(), min(len(kn), self.max_len),
                              len(h) - len(kn), not len(kn)))
        return out

    def popular(self, k: int, drop: np.ndarray) -> np.ndarray:
        """The k most popular dense ids not in `drop`, in O(k + len(drop))."""
        head = self.by_popularity[:k + len(drop)]
        return head[~np.isin(head, drop)][:k]

    def recommend_reference(self, histories: Sequence[Sequence[ItemId]], k: int,
                            excludes: Sequence[Sequence[ItemId]] | None = None) -> list[Ranked]:
        """recommend, by dense (B, N+1) scores and g2rec.ranking in numpy."""
        known = [self.dense(h) for h in histories]
        drop = [np.concatenate([kn, self.dense(ex)]) for kn, ex in zip(known, excludes)] if excludes else known
        scored = [b for b, kn in enumerate(known) if len(kn)]
        scores = np.broadcast_to(self.popularity, (len(known), len(self.popularity))).copy()  # (B, N+1)
        if scored:
            scores[scored] = self.scorer.scores([known[b] for b in scored])
        exclude_seen(scores, drop)
        items, vals = top_k(scores, k)
        return [
            Ranked(self.item_ids[it].tolist(), v.astype(float).tolist(), min(len(kn), self.max_len),
                   len(h) - len(kn), not len(kn))
            for it, v, kn, h in zip(items, vals, known, histories)
        ]
