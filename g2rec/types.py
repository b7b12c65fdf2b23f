"""Typed records that cross component boundaries.

Ids: items inside g2rec are dense ints 1..N with 0 reserved for padding; users are dense 0..U-1.
The original (external) ids are kept beside each record so every boundary can map back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interactions:
    """All users' histories in CSR form, each user's slice in time order.

    user_ptr: (U+1,) int64 offsets into items/times; user u owns [user_ptr[u], user_ptr[u+1]).
    items:    (M,) int64 dense item ids in 1..n_items.
    times:    (M,) int64 unix seconds, or the position in the sequence when the source has none.
    user_ids: (U,) original user ids (any dtype).
    item_ids: (n_items+1,) original item ids; item_ids[0] is a padding placeholder.
    """

    user_ptr: np.ndarray
    items: np.ndarray
    times: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    name: str = ""

    def __post_init__(self) -> None:
        if self.user_ptr.ndim != 1 or self.user_ptr[0] != 0 or self.user_ptr[-1] != len(self.items):
            raise ValueError(f"{self.name}: user_ptr must run from 0 to len(items)={len(self.items)}")
        if len(self.times) != len(self.items):
            raise ValueError(f"{self.name}: times has {len(self.times)} rows, items {len(self.items)}")
        if len(self.user_ids) != self.n_users:
            raise ValueError(f"{self.name}: {len(self.user_ids)} user ids for {self.n_users} users")
        if len(self.items) and (self.items.min() < 1 or self.items.max() > self.n_items):
            raise ValueError(f"{self.name}: item ids must lie in 1..{self.n_items}")

    @property
    def n_users(self) -> int:
        return len(self.user_ptr) - 1

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def n_interactions(self) -> int:
        return len(self.items)

    def lengths(self) -> np.ndarray:
        """(U,) number of interactions per user."""
        return np.diff(self.user_ptr)

    def history(self, u: int) -> np.ndarray:
        """Dense item ids of user u in time order."""
        return self.items[self.user_ptr[u] : self.user_ptr[u + 1]]


@dataclass(frozen=True)
class EdgeSnapshot:
    """A re-sampled, symmetric co-engagement graph over dense item ids.

    src, dst: (E,) int64 dense item ids (both directions present, no self loops).
    weight:   (E,) float32 edge weights.
    item_ids: (n_items+1,) original item ids for the dense ids; item_ids[0] is padding.
    """

    src: np.ndarray
    dst: np.ndarray
    weight: np.ndarray
    item_ids: np.ndarray
    snapshot_id: int = 0

    @property
    def n_items(self) -> int:
        return len(self.item_ids) - 1

    @property
    def n_edges(self) -> int:
        return len(self.src)


@dataclass(frozen=True)
class InterestProfiles:
    """Each item's top-rho interest clusters (the item-interest profile), one version.

    clusters: (n_items+1, rho) int64 cluster ids in 0..n_clusters-1, sorted by weight, descending.
    weights:  (n_items+1, rho) float32, each row sums to 1 (row 0, padding, is all zero weight).
    item_ids: (n_items+1,) original item ids.
    The primary interest of item i is clusters[i, 0].
    """

    clusters: np.ndarray
    weights: np.ndarray
    item_ids: np.ndarray
    n_clusters: int
    version: int = 0

    @property
    def rho(self) -> int:
        return self.clusters.shape[1]

    @property
    def primary(self) -> np.ndarray:
        """(n_items+1,) primary cluster per item."""
        return self.clusters[:, 0]
