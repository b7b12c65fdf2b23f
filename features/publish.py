"""Publishing versioned feature sets: item-interest profiles and cluster prototypes.

Readers never see a mix of two versions. A new version is written in full into the slot the
current version does not use, then one write of the version_pointer row switches readers over:

    1. read the pointer (current version c in slot s); the new version v must be newer than c
    2. take the publish lock and record v as "writing" in the version log (metadata DB)
    3. if a previous version still occupies slot 1-s, first rewrite the pointer without it
    4. bulk-write every row of v into slot 1-s (each row carries v)
    5. rewrite the pointer: current = v in slot 1-s, previous = c in slot s   <- the switch
    6. record v as current in the version log

A reader that read the pointer before step 5 keeps reading c from slot s, which step 4 never
touches. Rows carry their version, so a reader can always tell a row of another version (see
lookup.py for how it treats them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from g2rec.errors import DataError
from g2rec.profiles import check_profiles
from g2rec.types import InterestProfiles

from .backends import Column
from .encoding import checked_entity_keys, float_list_values, int64_list_values, int64_values
from .pointer import NONE, read_pointer, write_pointer
from .store import FeatureRepo
from .versions import VersionLog

PROFILES = "item_interest_profile"
PROTOTYPES = "cluster_prototype"


class PublishError(DataError):
    """The version cannot be published (not newer than the current one, bad input)."""


@dataclass(frozen=True)
class PublishResult:
    feature_set: str
    version: int
    slot: int
    rows: int
    seconds: float  # until readers saw the new version (the pointer switch)
    total_seconds: float  # until the call returned (after the backend's deferred housekeeping)
    replaced_version: int  # the version that was current before, -1 if none

    @property
    def rows_per_s(self) -> float:
        """Rows put online per second (rows / seconds)."""
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def _original_ids(ids: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(ids)
    if a.dtype.kind not in "iu":
        try:
            as_int = a.astype(np.int64)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be integer ids (the feature store keys items by int64), "
                            f"got dtype {a.dtype}") from e
        if not np.array_equal(as_int.astype(a.dtype), a):
            raise TypeError(f"{name} must be integer ids, got non-integral {a.dtype} values")
        a = as_int
    a = a.astype(np.int64, copy=False)
    if len(np.unique(a)) != len(a):
        raise ValueError(f"{name} has duplicate ids")
    return a


def publish_profiles(repo: FeatureRepo, profiles: InterestProfiles, log: VersionLog | None = None,
                     offline: bool = False) -> PublishResult:
    """Publish profiles.version of every item (rows 1..N; row 0 is padding) atomically.

    Items are keyed by their original ids, profiles.item_ids[1:], which must be unique integers.
    offline=True also appends the rows to the offline store's parquet file.
    """
    t0 = time.perf_counter()
    if not isinstance(profiles, InterestProfiles):
        raise TypeError(f"profiles must be InterestProfiles, got {type(profiles).__name__}")
    check_profiles(profiles, f"profiles version {profiles.version}")
    clusters, weights = np.asarray(profiles.clusters)[1:], np.asarray(profiles.weights)[1:].astype(np.float32)
    ids = _original_ids(profiles.item_ids[1:], "profiles.item_ids[1:]")
    primary = clusters[:, 0]
    version = int(profiles.version)

    columns = {
        "clusters": Column(int64_list_values(clusters)),
        "weights": Column(float_list_values(weights)),
        "primary_cluster": Column(int64_values(primary), [str(c) for c in primary.tolist()]),
        "profile_version": Column(int64_values(np.array([version]))[0], str(version)),
    }

    def offline_frame(slot: int, ts: datetime) -> pd.DataFrame:
        n = len(ids)
        return pd.DataFrame({
            "item_id": ids, "buffer_slot": np.full(n, slot, np.int64),
            "clusters": list(clusters), "weights": list(weights), "primary_cluster": primary,
            "profile_version": np.full(n, version, np.int64), "event_timestamp": ts,
        })

    return _publish(t0, repo, log, PROFILES, version, "item_id", ids, columns, profiles.rho,
                    offline_frame if offline else None, n_clusters=int(profiles.n_clusters))


def publish_prototypes(repo: FeatureRepo, vectors: np.ndarray, version: int, profile_version: int,
                       log: VersionLog | None = None) -> PublishResult:
    """Publish prototype vectors (K, d) of clusters 0..K-1 as `version`, atomically.

    profile_version: the profile version whose cluster ids these prototypes describe.
    """
    t0 = time.perf_counter()
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise ValueError(f"vectors must be (K, d) with K >= 1, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors must be finite")
    ids = np.arange(len(vectors), dtype=np.int64)
    version, profile_version = int(version), int(profile_version)

    columns = {
        "vector": Column(float_list_values(vectors.astype(np.float32))),
        "prototype_version": Column(int64_values(np.array([version]))[0], str(version)),
        "profile_version": Column(int64_values(np.array([profile_version]))[0], str(profile_version)),
    }

    return _publish(t0, repo, log, PROTOTYPES, version, "cluster_id", ids, columns, vectors.shape[1], None,
                    profile_version=profile_version)


def _publish(t0: float, repo: FeatureRepo, log: VersionLog | None, feature_set: str, version: int,
             id_key: str, ids: np.ndarray, columns: dict[str, Column], width: int, offline_frame,
             **meta) -> PublishResult:
    """Steps 1-6 of the module docstring; times count from t0, when the caller started."""
    if version < 0:
        raise PublishError(f"{feature_set} version must be >= 0, got {version}")
    log = log or repo.versions
    pointer = read_pointer(repo, feature_set)
    if version <= pointer.current_version:
        raise PublishError(f"{feature_set} version {version} is not newer than the current version "
                           f"{pointer.current_version}; versions only move forward")
    slot = pointer.next_slot()
    log.begin(feature_set, version, slot, len(ids), width, repo.config.online, **meta)
    try:
        with repo.backend.bulk():
            if pointer.previous_version != NONE:
                # Slot `slot` still holds the previous version: stop advertising it before rewriting it.
                pointer = pointer.retire_previous()
                write_pointer(repo, pointer)
                log.retire_previous(feature_set)
            now = datetime.now(timezone.utc)
            keys = checked_entity_keys({id_key: ids, "buffer_slot": np.full(len(ids), slot, np.int64)})
            repo.backend.write(repo.view(feature_set), keys, columns, now)
            if offline_frame is not None:
                repo.ensure_offline_file(repo.view(feature_set))  # `feast apply` alone does not create it
                repo.store.write_to_offline_store(feature_set, offline_frame(slot, now))
            write_pointer(repo, pointer.switch(version, slot, width, now), now)
            online_s = time.perf_counter() - t0
    except BaseException as e:
        log.fail(feature_set, version, f"{type(e).__name__}: {e}")
        raise
    total_s = time.perf_counter() - t0
    log.complete(feature_set, version, total_s)
    return PublishResult(feature_set, version, slot, len(ids), online_s, total_s, pointer.current_version)


def stand_in_profiles(n_items: int, rho: int, n_clusters: int, version: int, seed: int = 0,
                      first_id: int = 1) -> InterestProfiles:
    """A random stand-in assignment for demos, tests and benchmarks (until clustering runs):
    items first_id..first_id+n_items-1, each with rho distinct clusters and Dirichlet weights
    sorted descending."""
    if n_items < 1 or rho < 1 or n_clusters < rho:
        raise ValueError(f"need n_items >= 1 and n_clusters >= rho >= 1, got {n_items}, {rho}, {n_clusters}")
    rng = np.random.default_rng(seed)
    n = n_items + 1
    # Strictly increasing offsets below n_clusters keep each row's clusters distinct (mod K).
    steps = rng.integers(1, max(2, n_clusters // rho), (n, rho))
    steps[:, 0] = 0
    clusters = (rng.integers(0, n_clusters, (n, 1)) + np.cumsum(steps, axis=1)) % n_clusters
    weights = -np.sort(-rng.dirichlet(np.ones(rho), n), axis=1)
    clusters[0], weights[0] = 0, 0.0
    item_ids = np.concatenate([[0], np.arange(first_id, first_id + n_items)])
    return InterestProfiles(clusters=clusters.astype(np.int64), weights=weights.astype(np.float32),
                            item_ids=item_ids, n_clusters=n_clusters, version=version)
