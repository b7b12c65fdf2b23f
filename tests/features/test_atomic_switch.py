"""Readers never see a mix of two profile versions: neither while publishes run concurrently
(threads hammering lookups during a series of publishes), nor when a publisher dies halfway."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from features import lookup as lookup_module
from features.lookup import FeatureLookup
from features.pointer import VersionNotOnlineError, read_pointer
from features.publish import PROFILES, publish_profiles
from features.store import FeatureRepo
from features.backends import Column
from g2rec.types import InterestProfiles

from .conftest import make_config

N_ITEMS, RHO, K = 3000, 4, 64


def version_profiles(version: int) -> InterestProfiles:
    """Every item of version v has the same clusters, a pattern unique to v, so any row read
    with another version's pattern exposes a mixed read."""
    pattern = (version * 7 + np.arange(RHO)) % K
    clusters = np.tile(pattern, (N_ITEMS + 1, 1))
    weights = np.tile(np.float32([0.4, 0.3, 0.2, 0.1]), (N_ITEMS + 1, 1))
    return InterestProfiles(clusters=clusters, weights=weights, item_ids=np.arange(N_ITEMS + 1),
                            n_clusters=K, version=version)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
def test_concurrent_readers_only_ever_see_whole_versions(backend, tmp_path, request):
    config = make_config(backend, tmp_path, request)
    publisher = FeatureRepo(config)
    publisher.apply()
    if backend == "redis":
        publisher.backend.chunk = 100  # many round trips per version: many chances to interleave
    publish_profiles(publisher, version_profiles(1))

    stop = threading.Event()
    seen: list[int] = []
    errors: list[str] = []

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            with FeatureLookup.open(config) as lookup:
                while not stop.is_set():
                    ids = rng.integers(1, N_ITEMS + 1, 400)
                    p = lookup.profiles(ids)
                    expected = (p.version * 7 + np.arange(RHO)) % K
                    if not p.found.all():
                        errors.append(f"version {p.version}: {int((~p.found).sum())} items missing")
                    elif not (p.clusters == expected).all():
                        bad = sorted({tuple(r) for r in p.clusters.tolist()} - {tuple(expected.tolist())})
                        errors.append(f"version {p.version} mixed with rows {bad[:3]}")
                    seen.append(p.version)
        except Exception as e:  # a reader that dies must fail the test, not vanish
            errors.append(f"reader {seed}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    try:
        for v in range(2, 9):
            publish_profiles(publisher, version_profiles(v))
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        publisher.close()
    assert not errors, errors[:5]
    # Not vacuous: readers ran throughout and saw several versions come and go.
    assert len(seen) >= 10 and len(set(seen)) >= 3, (len(seen), sorted(set(seen)))


class _CrashHalfway:
    """Wraps a backend: profile rows are written only in part, then the 'process dies'."""

    def __init__(self, inner):
        self.inner = inner
        self.read, self.bulk = inner.read, inner.bulk

    def write(self, view, keys, columns, event_ts):
        if view.name != PROFILES:
            return self.inner.write(view, keys, columns, event_ts)
        half = len(keys) // 2
        cut = {n: Column(c.values if isinstance(c.values, bytes) else c.values[:half],
                         c.texts if c.texts is None or isinstance(c.texts, str) else c.texts[:half])
               for n, c in columns.items()}
        self.inner.write(view, keys[:half], cut, event_ts)
        raise RuntimeError("simulated crash halfway through the rows")

    def close(self):
        self.inner.close()


def test_a_publisher_dying_halfway_leaves_readers_on_whole_versions(repo, monkeypatch):
    publish_profiles(repo, version_profiles(1))
    publish_profiles(repo, version_profiles(2))
    stale = read_pointer(repo, PROFILES)  # what a slow reader read before the crash: v1 in slot 0
    assert (stale.previous_version, stale.previous_slot) == (1, 0)

    real_backend = repo.backend
    repo._backend = _CrashHalfway(real_backend)
    with pytest.raises(RuntimeError, match="simulated crash"):
        publish_profiles(repo, version_profiles(3))  # half of v3 now sits in slot 0, over v1
    repo._backend = real_backend

    lookup = FeatureLookup(repo)
    p = lookup.profiles(np.arange(1, N_ITEMS + 1))
    assert p.version == 2 and p.found.all() and (p.clusters == version_profiles(2).clusters[1:]).all()

    # The slow reader asks for v1 with its stale pointer: it finds v3 rows in the slot, re-reads
    # the pointer, learns v1 is gone, and says so instead of returning a v1/v3 mix.
    pointers = iter([stale])
    real_read_pointer = lookup_module.read_pointer
    monkeypatch.setattr(lookup_module, "read_pointer",
                        lambda r, fs: next(pointers, None) or real_read_pointer(r, fs))
    with pytest.raises(VersionNotOnlineError, match="version 1 is not online"):
        lookup.profiles(np.arange(1, N_ITEMS + 1), version=1)
    monkeypatch.undo()

    log = {r["version"]: r for r in repo.versions.history(PROFILES)}
    assert log[3]["state"] == "failed" and "simulated crash" in log[3]["error"]
    assert repo.versions.lock_holder(PROFILES) is None
    publish_profiles(repo, version_profiles(3))  # the retry goes through
    assert lookup.profiles([1]).version == 3
