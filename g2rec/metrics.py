"""Leave-one-out split and full-ranking metrics: the one implementation used everywhere.

Protocol (see docs): per user with >= 3 interactions, the last item is the test target, the second
last the validation target, the rest training. Every item is ranked (no sampled negatives).
Primary metrics exclude the items of the user's input history from the ranking (S3-Rec, HSTU);
the "unmasked" variant keeps them (RecBole's default for sequential models).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from g2rec.ranking import exclude_seen
from g2rec.types import Interactions

KS = (5, 10, 20)
METRIC_NAMES = tuple(f"{m}@{k}" for m in ("recall", "ndcg") for k in KS)


@dataclass(frozen=True)
class LooSplit:
    """Leave-one-out split of one dataset.

    train:  Interactions with each evaluated user's last two items removed (graph, clusters and
            the model see only this).
    users:  (U_eval,) dense ids of evaluated users (those with >= 3 interactions).
    valid:  (U_eval,) validation targets; input = train history.
    test:   (U_eval,) test targets; input = train history + validation item.
    """

    full: Interactions
    train: Interactions
    users: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    def inputs(self, stage: str) -> list[np.ndarray]:
        """Per evaluated user, the input history for `stage` ("valid" or "test")."""
        drop = {"valid": 2, "test": 1}.get(stage)
        if drop is None:
            raise ValueError(f"stage must be 'valid' or 'test', got {stage!r}")
        ptr, items = self.full.user_ptr, self.full.items
        return [items[ptr[u] : ptr[u + 1] - drop] for u in self.users]

    def targets(self, stage: str) -> np.ndarray:
        return {"valid": self.valid, "test": self.test}[stage]


def loo_split(data: Interactions) -> LooSplit:
    lengths = data.lengths()
    users = np.flatnonzero(lengths >= 3)
    ends = data.user_ptr[1:]
    keep = np.ones(data.n_interactions, dtype=bool)
    keep[ends[users] - 1] = False
    keep[ends[users] - 2] = False
    new_len = lengths - np.where(lengths >= 3, 2, 0)
    train = Interactions(
        user_ptr=np.concatenate([[0], np.cumsum(new_len)]).astype(np.int64),
        items=data.items[keep],
        times=data.times[keep],
        user_ids=data.user_ids,
        item_ids=data.item_ids,
        name=f"{data.name}:train",
    )
    return LooSplit(
        full=data,
        train=train,
        users=users,
        valid=data.items[ends[users] - 2],
        test=data.items[ends[users] - 1],
    )


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: list[np.ndarray] | None) -> torch.Tensor:
    """0-based rank of each target among all items; pessimistic on ties.

    scores:  (B, N+1) item scores; column 0 is padding and never ranked.
    targets: (B,) item ids in 1..N.
    exclude: per row, item ids removed from the ranking (the input history), or None.
    A target that is itself excluded can never be hit: its rank is N.
    """
    scores = scores.float().clone()
    exclude_seen(scores, exclude)
    t = scores.gather(1, targets.view(-1, 1))  # (B, 1)
    ahead = (scores >= t).sum(1) - 1  # ties count against the target
    n_items = scores.shape[1] - 1
    return torch.where(torch.isinf(t.squeeze(1)), torch.full_like(ahead, n_items), ahead)


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Recall@k (hit rate with one target) and NDCG@k, averaged over users."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
    return {name: out[name] for name in sorted(out, key=lambda s: (s.split("@")[0] != "recall", int(s.split("@")[1])))}
