"""The one read API over the feature store, used by serving and training.

    lookup = FeatureLookup.open(StoreConfig.from_env())
    p = lookup.profiles([101, 102, 999])   # p.version, p.found, p.clusters (B, rho), p.weights
    h = lookup.histories([7, 8])           # h.found, h.items[i], h.times[i] (oldest first)

Missing entities are explicit: `found` is False and their rows hold -1 ids and NaN weights, never
zeros that look like real data. Every batch of profiles (or prototypes) comes from one version:
the pointer is read once, and rows of any other version are not returned (see publish.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from feast.protos.feast.types.Value_pb2 import Value as ValueProto

from .config import StoreConfig
from .encoding import checked_entity_keys
from .pointer import read_pointer
from .publish import PROFILES, PROTOTYPES
from .store import FeatureRepo

from g2rec.errors import StateError

HISTORY = "user_recent_history"


class ConcurrentPublishError(StateError):
    """Publishes kept overwriting the slot being read; retried and gave up."""


@dataclass(frozen=True)
class Profiles:
    """Profiles of the asked-for items, all of one version, in request order.

    item_ids (B,) int64 as asked; found (B,) bool; clusters (B, rho) int64 and primary (B,) int64
    are -1 where not found; weights (B, rho) float32 is NaN where not found.
    """

    version: int
    item_ids: np.ndarray
    found: np.ndarray
    clusters: np.ndarray
    weights: np.ndarray
    primary: np.ndarray

    @property
    def missing(self) -> np.ndarray:
        return self.item_ids[~self.found]


@dataclass(frozen=True)
class Prototypes:
    """Prototype vectors (B, d) float32 of the asked-for clusters (NaN rows where not found).
    profile_version: the profile version whose cluster ids they describe (-1 if none was found)."""

    version: int
    profile_version: int
    cluster_ids: np.ndarray
    found: np.ndarray
    vectors: np.ndarray

    @property
    def missing(self) -> np.ndarray:
        return self.cluster_ids[~self.found]


@dataclass(frozen=True)
class Histories:
    """Recent histories in request order: items[i] and times[i] (unix seconds) oldest first;
    found[i] is False (and both arrays empty) for users with no stored history."""

    user_ids: np.ndarray
    found: np.ndarray
    items: list[np.ndarray]
    times: list[np.ndarray]

    @property
    def missing(self) -> np.ndarray:
        return self.user_ids[~self.found]


def _ids(ids: Sequence[int] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(ids)
    if a.ndim == 0:
        a = a.reshape(1)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-d sequence of ids, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer ids, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _version_of(row: dict[str, ValueProto], field: str) -> int | None:
    v = row.get(field)
    return v.int64_val if v is not None and v.WhichOneof("val") == "int64_val" else None


class FeatureLookup:
    """Reads Feast's online store through the repo's bulk backend (features/backends.py);
    like the repo, one per thread."""

    def __init__(self, repo: FeatureRepo, retries: int = 3):
        self.repo = repo
        self.retries = retries
        self._owns_repo = False

    @classmethod
    def open(cls, config: StoreConfig) -> "FeatureLookup":
        lookup = cls(FeatureRepo(config))
        lookup._owns_repo = True
        return lookup

    def current_version(self, feature_set: str = PROFILES) -> int | None:
        """The current version of a versioned feature set, None if never published."""
        pointer = read_pointer(self.repo, feature_set)
        return pointer.current_version if pointer.has_current else None

    def profiles(self, item_ids: Sequence[int] | np.ndarray, version: int | None = None) -> Profiles:
        """Profiles of item_ids (original ids) at `version` (None: the current version).

        Raises VersionNotOnlineError when nothing is published or `version` is not online.
        """
        ids = _ids(item_ids, "item_ids")
        version, width, rows = self._versioned_rows(PROFILES, "item_id", ids, version, "profile_version",
                                                    ["clusters", "weights", "primary_cluster"])
        found = np.array([r is not None for r in rows], dtype=bool)
        hits = [r for r in rows if r is not None]
        clusters = np.full((len(ids), width), -1, np.int64)
        weights = np.full((len(ids), width), np.nan, np.float32)
        primary = np.full(len(ids), -1, np.int64)
        if hits:  # one array conversion per column: far cheaper than filling row by row
            clusters[found] = np.array([list(r["clusters"].int64_list_val.val) for r in hits], np.int64)
            weights[found] = np.array([list(r["weights"].float_list_val.val) for r in hits], np.float32)
            primary[found] = [r["primary_cluster"].int64_val for r in hits]
        return Profiles(version, ids, found, clusters, weights, primary)

    def prototypes(self, cluster_ids: Sequence[int] | np.ndarray, version: int | None = None) -> Prototypes:
        ids = _ids(cluster_ids, "cluster_ids")
        version, width, rows = self._versioned_rows(PROTOTYPES, "cluster_id", ids, version, "prototype_version",
                                                    ["vector", "profile_version"])
        found = np.array([r is not None for r in rows], dtype=bool)
        hits = [r for r in rows if r is not None]
        vectors = np.full((len(ids), width), np.nan, np.float32)
        profile_version = -1
        if hits:
            vectors[found] = np.array([list(r["vector"].float_list_val.val) for r in hits], np.float32)
            profile_version = hits[0]["profile_version"].int64_val
        return Prototypes(version, profile_version, ids, found, vectors)

    def histories(self, user_ids: Sequence[int] | np.ndarray) -> Histories:
        ids = _ids(user_ids, "user_ids")
        rows = self.repo.read(HISTORY, checked_entity_keys({"user_id": ids}), ["item_ids", "timestamps"])
        found = np.array([r is not None for r in rows], dtype=bool)
        empty = np.zeros(0, np.int64)
        items = [np.array(r["item_ids"].int64_list_val.val, np.int64) if r else empty for r in rows]
        times = [np.array(r["timestamps"].int64_list_val.val, np.int64) if r else empty for r in rows]
        return Histories(ids, found, items, times)

    def _versioned_rows(self, feature_set: str, id_key: str, ids: np.ndarray, version: int | None,
                        version_field: str, features: list[str]):
        """Rows of one version: (version, width, per id the row dict or None).

        A row of an older version in the slot means the item is absent from this version (its
        row is left from two publishes ago); a row of a newer version means a publish is
        rewriting the slot right now, so the pointer has moved on and the read starts over.
        """
        for _ in range(self.retries):
            pointer = read_pointer(self.repo, feature_set)
            v, slot, width = pointer.slot_of(version)
            keys = checked_entity_keys({id_key: ids, "buffer_slot": np.full(len(ids), slot, np.int64)})
            rows = self.repo.read(feature_set, keys, features + [version_field])
            out: list[dict | None] = []
            for row in rows:
                row_version = None if row is None else _version_of(row, version_field)
                if row_version is not None and row_version > v:
                    break
                out.append(row if row_version == v else None)
            else:
                return v, width, out
        raise ConcurrentPublishError(
            f"{feature_set}: slot kept changing under {self.retries} reads; publishes are too frequent"
        )

    def close(self) -> None:
        if self._owns_repo:
            self.repo.close()

    def __enter__(self) -> "FeatureLookup":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
