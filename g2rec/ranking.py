"""Batching histories and ranking items: the one implementation used by training, evaluation,
the demo and serving.

The serving rule, documented once here: a history longer than `max_len` is cut to its most recent
`max_len` items (as in training); every item of the full history is excluded from the ranking, as
is the padding id 0; when fewer than `k` items remain, all of them are returned (so a response may
hold fewer than k items, never an already-seen one).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def pad_left(seqs: Sequence[np.ndarray], length: int | None = None) -> np.ndarray:
    """Variable-length id arrays -> (B, T) int64, left-padded with 0 and left-truncated to T
    (T = `length`, else the longest sequence).

    >>> pad_left([np.array([1, 2, 3]), np.array([4])], 2)
    array([[2, 3],
           [0, 4]])
    """
    T = length if length is not None else max((len(s) for s in seqs), default=0)
    out = np.zeros((len(seqs), T), dtype=np.int64)
    for b, s in enumerate(seqs):
        s = np.asarray(s, dtype=np.int64)[-T:] if T else s[:0]
        if len(s):
            out[b, T - len(s):] = s
    return out


def exclude_seen(scores: np.ndarray | torch.Tensor, histories: Sequence[np.ndarray] | None) -> None:
    """In place: score -inf for column 0 (padding) and, per row b, every item of histories[b].

    scores: (B, N+1) numpy array or torch tensor.

    >>> s = np.zeros((2, 4))
    >>> exclude_seen(s, [np.array([1]), np.array([2, 3])])
    >>> s
    array([[-inf, -inf,   0.,   0.],
           [-inf,   0., -inf, -inf]])
    """
    rows = np.repeat(np.arange(len(histories)), [len(h) for h in histories]) if histories is not None else None
    cols = np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]) if histories else np.zeros(0, np.int64)
    if isinstance(scores, torch.Tensor):
        scores[:, 0] = -torch.inf
        if rows is not None:
            scores[torch.as_tensor(rows), torch.as_tensor(cols)] = -torch.inf
    else:
        scores[:, 0] = -np.inf
        if rows is not None:
            scores[rows, cols] = -np.inf


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row the k best finite scores, best first: (items, scores), each a list of B arrays of
    length min(k, finite entries in the row). Excluded (-inf) entries are never returned.

    >>> items, vals = top_k(np.array([[-np.inf, 0.5, 0.9, -np.inf]]), 10)
    >>> items[0].tolist(), vals[0].tolist()
    ([2, 1], [0.9, 0.5])
    """
    if k < 1:
        raise ValueError(f"k={k} must be >= 1")
    k = min(k, scores.shape[1])
    if k < scores.shape[1]:
        cand = np.argpartition(-scores, k - 1, axis=1)[:, :k]  # (B, k) unordered
    else:
        cand = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    vals = np.take_along_axis(scores, cand, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    cand, vals = np.take_along_axis(cand, order, 1), np.take_along_axis(vals, order, 1)
    keep = np.isfinite(vals)
    return [c[m] for c, m in zip(cand, keep)], [v[m] for v, m in zip(vals, keep)]
