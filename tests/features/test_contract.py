"""One contract, every online backend: SQLite here, and a real Redis and Postgres (integration).

What g2rec writes, Feast reads (get_online_features), and what Feast's push writes, g2rec reads.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from features.lookup import FeatureLookup
from features.pointer import VersionNotOnlineError, read_pointer
from features.publish import PROFILES, PublishError, publish_profiles, publish_prototypes, stand_in_profiles
from features.sink import FeastHistorySink
from streaming.sink import HistorySink, UserHistoryUpdate


def test_published_profiles_read_back_exactly_and_missing_items_are_explicit(repo):
    profiles = stand_in_profiles(300, rho=4, n_clusters=32, version=1, first_id=1000)
    result = publish_profiles(repo, profiles)
    assert (result.version, result.slot, result.rows, result.replaced_version) == (1, 0, 300, -1)

    ids = np.array([1000, 1299, 5, 1150, 1300])
    p = FeatureLookup(repo).profiles(ids)
    assert p.version == 1
    assert p.found.tolist() == [True, True, False, True, False]
    rows = ids[p.found] - 1000 + 1  # row r of the profiles holds item 1000 + r - 1
    np.testing.assert_array_equal(p.clusters[p.found], profiles.clusters[rows])
    np.testing.assert_array_equal(p.weights[p.found], profiles.weights[rows])
    np.testing.assert_array_equal(p.primary[p.found], profiles.clusters[rows, 0])
    assert (p.clusters[~p.found] == -1).all() and np.isnan(p.weights[~p.found]).all()
    assert (p.primary[~p.found] == -1).all()
    assert p.missing.tolist() == [5, 1300]


def test_lookup_before_any_publish_says_so(repo):
    lookup = FeatureLookup(repo)
    assert lookup.current_version() is None
    with pytest.raises(VersionNotOnlineError, match="no item_interest_profile version"):
        lookup.profiles([1, 2])


def test_feast_get_online_features_reads_what_g2rec_publishes(repo):
    profiles = stand_in_profiles(50, rho=3, n_clusters=16, version=7)
    publish_profiles(repo, profiles)
    store = repo.store
    pointer = store.get_online_features(
        features=["version_pointer:current_version", "version_pointer:current_slot"],
        entity_rows=[{"feature_set": PROFILES}],
    ).to_dict()
    assert pointer["current_version"] == [7]
    slot = pointer["current_slot"][0]
    got = store.get_online_features(
        features=store.get_feature_service("interest_profiles"),
        entity_rows=[{"item_id": i, "buffer_slot": slot} for i in (1, 2, 50, 51)],
    ).to_dict()
    assert got["profile_version"][:3] == [7, 7, 7] and got["profile_version"][3] is None
    for k, item in enumerate((1, 2, 50)):
        assert got["clusters"][k] == profiles.clusters[item].tolist()
        np.testing.assert_allclose(got["weights"][k], profiles.weights[item])
        assert got["primary_cluster"][k] == profiles.clusters[item, 0]
    assert got["clusters"][3] is None


def test_each_version_switches_whole_and_the_previous_stays_readable(repo):
    lookup = FeatureLookup(repo)
    v1 = stand_in_profiles(200, 4, 32, version=1, seed=1)
    v2 = stand_in_profiles(150, 4, 32, version=2, seed=2)  # items 151..200 dropped
    v3 = stand_in_profiles(100, 4, 32, version=3, seed=3)  # back in v1's slot; 101..200 dropped
    ids = np.array([1, 120, 180])
    publish_profiles(repo, v1)
    publish_profiles(repo, v2)
    p = lookup.profiles(ids)
    assert p.version == 2 and p.found.tolist() == [True, True, False]
    np.testing.assert_array_equal(p.clusters[:2], v2.clusters[[1, 120]])
    assert lookup.profiles(ids, version=1).found.all()

    r3 = publish_profiles(repo, v3)
    assert (r3.slot, r3.replaced_version) == (0, 2)
    p = lookup.profiles(ids)
    # Slot 0 still holds v1's rows for items 120 and 180; they belong to no current version.
    assert p.version == 3 and p.found.tolist() == [True, False, False]
    np.testing.assert_array_equal(p.clusters[0], v3.clusters[1])
    assert lookup.profiles(ids, version=2).found.tolist() == [True, True, False]
    with pytest.raises(VersionNotOnlineError, match="version 1 is not online"):
        lookup.profiles(ids, version=1)
    with pytest.raises(PublishError, match="not newer"):
        publish_profiles(repo, dataclasses.replace(v3, version=3))

    states = {r["version"]: r["state"] for r in repo.versions.history(PROFILES)}
    assert states == {1: "retired", 2: "previous", 3: "current"}
    pointer = read_pointer(repo, PROFILES)
    assert (pointer.current_version, pointer.previous_version, pointer.current_width) == (3, 2, 4)


def test_prototypes_round_trip_with_their_profile_version(repo):
    vectors = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
    publish_prototypes(repo, vectors, version=1, profile_version=4)
    q = FeatureLookup(repo).prototypes([0, 11, 12])
    assert (q.version, q.profile_version) == (1, 4)
    assert q.found.tolist() == [True, True, False]
    np.testing.assert_array_equal(q.vectors[:2], vectors[[0, 11]])
    assert np.isnan(q.vectors[2]).all()


class Worker:
    """Stands in for the stream worker: keeps each user's window and emits UserHistoryUpdates."""

    def __init__(self, window: int, timed: bool = False):
        self.window, self.timed, self.seen, self.times = window, timed, {}, {}

    def update(self, user: int, items: list[int], times: list[float]) -> UserHistoryUpdate:
        hist, hist_times = self.seen.setdefault(user, []), self.times.setdefault(user, [])
        hist.extend(items)
        hist_times.extend(np.floor(times).astype(int).tolist())
        return UserHistoryUpdate(user_id=user, item_ids=np.array(items, np.int64),
                                 timestamps=np.array(times, np.float64),
                                 window=np.array(hist[-self.window:], np.int64), position=len(hist),
                                 window_times=np.array(hist_times[-self.window:], np.int64) if self.timed else None)


def test_history_sink_keeps_the_newest_events_and_replays_are_exact(repo):
    sink = FeastHistorySink(repo, max_len=4)
    assert isinstance(sink, HistorySink)
    w = Worker(window=4)
    sink.write([w.update(1, [10, 11], [100, 101]), w.update(2, [20], [200.7]), w.update(1, [12], [102])])
    h = FeatureLookup(repo).histories([1, 2, 3])
    assert h.found.tolist() == [True, True, False]
    assert h.items[0].tolist() == [10, 11, 12] and h.times[0].tolist() == [100, 101, 102]
    assert h.items[1].tolist() == [20] and h.times[1].tolist() == [200]
    assert h.items[2].size == 0 and h.missing.tolist() == [3]

    batch = [w.update(1, [13, 11, 14], [103, 104, 105])]  # a repeat of item 11 is a real event
    sink.write(batch)
    sink.write(batch)  # redelivered after a crash before the checkpoint commit
    h = FeatureLookup(repo).histories([1])
    assert h.items[0].tolist() == [12, 13, 11, 14] and h.times[0].tolist() == [102, 103, 104, 105]
    assert sink.replays_skipped == 1


def test_history_sink_writes_a_window_with_known_times_without_reading_and_replays_are_exact(repo):
    sink = FeastHistorySink(repo, max_len=3)
    w = Worker(window=4, timed=True)
    sink.write([w.update(1, [10, 11], [100, 101.5]), w.update(2, [20], [200]), w.update(1, [12, 13], [102, 103])])
    batch = [w.update(1, [14], [104]), w.update(2, [21], [201])]
    sink.write(batch)
    sink.write(batch)  # redelivered after a crash before the checkpoint commit
    assert (sink.overwritten, sink.merged) == (6, 0)
    h = FeatureLookup(repo).histories([1, 2])
    assert h.items[0].tolist() == [12, 13, 14] and h.times[0].tolist() == [102, 103, 104]
    assert h.items[1].tolist() == [20, 21] and h.times[1].tolist() == [200, 201]


def test_history_sink_merges_with_the_stored_history_where_window_times_are_unknown(repo):
    sink = FeastHistorySink(repo, max_len=4)
    w = Worker(window=4, timed=True)
    sink.write([w.update(1, [10, 11, 12], [100, 101, 102])])
    reloaded = w.update(1, [13], [103])  # the worker reloaded this window from its store: old times unknown
    reloaded = dataclasses.replace(reloaded, window_times=np.array([-1, -1, -1, 103]))
    sink.write([reloaded])
    sink.write([reloaded])
    assert (sink.overwritten, sink.merged, sink.replays_skipped) == (1, 2, 1)
    h = FeatureLookup(repo).histories([1])
    assert h.items[0].tolist() == [10, 11, 12, 13] and h.times[0].tolist() == [100, 101, 102, 103]


def test_history_sink_keeps_more_than_the_workers_window_and_replays_are_exact(repo):
    sink = FeastHistorySink(repo, max_len=5)
    w = Worker(window=2, timed=True)
    for n in range(6):
        sink.write([w.update(1, [n], [100 + n])])
    batch = [w.update(1, [6, 7], [106, 107])]
    sink.write(batch)
    sink.write(batch)  # redelivered after a crash before the checkpoint commit
    assert sink.replays_skipped == 1
    repeat = [w.update(2, [9], [200 + n]) for n in range(3)]  # the same item again and again
    for u in repeat:
        sink.write([u])
    sink.write(repeat[-1:])  # a replay that looks like a new event by its items alone
    assert sink.replays_skipped == 2
    h = FeatureLookup(repo).histories([1, 2])
    assert h.items[0].tolist() == [3, 4, 5, 6, 7] and h.times[0].tolist() == [103, 104, 105, 106, 107]
    assert h.items[1].tolist() == [9, 9, 9]


def test_history_sink_restarts_from_the_window_when_the_store_lost_the_row(repo):
    w = Worker(window=3)
    w.update(7, [1, 2, 3], [1, 2, 3])  # seen by the worker, never reached this store
    sink = FeastHistorySink(repo, max_len=5)
    sink.write([w.update(7, [4], [40])])
    h = FeatureLookup(repo).histories([7])
    assert h.items[0].tolist() == [2, 3, 4] and h.times[0].tolist() == [-1, -1, 40]
    assert sink.restarts == 1


def test_feast_push_and_the_sink_write_the_same_rows(repo):
    now = datetime.now(timezone.utc)
    repo.store.push("user_history_push", pd.DataFrame({
        "user_id": [5], "item_ids": [[1, 2, 3]], "timestamps": [[10, 20, 30]], "position": [3],
        "event_timestamp": [now],
    }))
    lookup = FeatureLookup(repo)
    h = lookup.histories([5])
    assert h.found.tolist() == [True] and h.items[0].tolist() == [1, 2, 3]

    w = Worker(window=50)
    w.update(5, [1, 2, 3], [10, 20, 30])
    FeastHistorySink(repo).write([w.update(5, [4], [40]), w.update(6, [7], [70])])
    got = repo.store.get_online_features(
        features=["user_recent_history:item_ids", "user_recent_history:timestamps"],
        entity_rows=[{"user_id": 5}, {"user_id": 6}],
    ).to_dict()
    assert got["item_ids"] == [[1, 2, 3, 4], [7]]
    assert got["timestamps"] == [[10, 20, 30, 40], [70]]


def test_a_pushed_row_without_a_position_is_merged_by_its_tail(repo):
    # Feast pushes every feature of the view: a pusher that does not know the position leaves it null.
    repo.store.push("user_history_push", pd.DataFrame({
        "user_id": [5, 6], "item_ids": [[1, 2, 3, 4, 5], [9]], "timestamps": [[1, 2, 3, 4, 5], [9]],
        "position": pd.array([None, None], dtype="Int64"), "event_timestamp": [datetime.now(timezone.utc)] * 2,
    }))
    w = Worker(window=2)
    w.update(5, [4, 5], [4, 5])
    sink = FeastHistorySink(repo, max_len=10)
    sink.write([w.update(5, [6], [6])])
    assert FeatureLookup(repo).histories([5]).items[0].tolist() == [1, 2, 3, 4, 5, 6] and sink.restarts == 0
    plain = [SimpleNamespace(user_id=u, item_ids=np.array([7]), timestamps=np.array([7.0])) for u in (5, 6, 8)]
    sink.write(plain)  # updates without a window or a position are appended as they are
    h = FeatureLookup(repo).histories([5, 6, 8])
    assert [x.tolist() for x in h.items] == [[1, 2, 3, 4, 5, 6, 7], [9, 7], [7]]
    got = repo.store.get_online_features(features=["user_recent_history:position"],
                                         entity_rows=[{"user_id": u} for u in (5, 6, 8)]).to_dict()
    assert got["position"] == [3, None, 0]  # the worker's count; still unknown for user 6; 0 for a new row


def test_bad_input_is_rejected_naming_it(repo):
    p = stand_in_profiles(10, 2, 4, version=1)
    dup = dataclasses.replace(p, item_ids=np.array([0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9]))
    with pytest.raises(ValueError, match="duplicate"):
        publish_profiles(repo, dup)
    with pytest.raises(TypeError, match="item_ids"):
        publish_profiles(repo, dataclasses.replace(p, item_ids=np.array(["a"] * 11)))
    with pytest.raises(ValueError, match=r"0\.\.3"):
        publish_profiles(repo, dataclasses.replace(p, clusters=p.clusters + 4))
    with pytest.raises(TypeError, match="item_ids"):
        FeatureLookup(repo).profiles(["x"])
    bad = UserHistoryUpdate(user_id=1, item_ids=np.array([1, 2]), timestamps=np.array([1.0]),
                            window=np.array([1, 2]), position=2)
    with pytest.raises(ValueError, match=r"updates\[0\]"):
        FeastHistorySink(repo).write([bad])


def _stored(repo, view, key: bytes):
    """Everything the backend holds for one entity of a view, compared as raw bytes."""
    backend, table = repo.backend, f"{repo.config.project}_{view}"
    if repo.config.online == "redis":
        return backend.client.hgetall(key + repo.config.project.encode())
    if repo.config.online == "sqlite":
        sql = f'SELECT feature_name, value, value_text, event_ts, created_ts FROM "{table}" WHERE entity_key = ?'
        return sorted(backend.conn.execute(sql, (key,)).fetchall())
    with backend.conn.cursor() as cur:
        cur.execute(f'SELECT feature_name, value, value_text, event_ts, created_ts FROM "{table}" '
                    "WHERE entity_key = %s", (key,))
        return sorted((n, bytes(v), t, e, c) for n, v, t, e, c in cur.fetchall())


def test_rows_are_byte_identical_to_feasts_own_writes(repo):
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.Value_pb2 import FloatList, Int64List, Value

    from features.backends import Column
    from features.encoding import entity_key_proto, entity_keys, float_list_values, int64_list_values, int64_values

    profiles = stand_in_profiles(5, rho=3, n_clusters=300, version=2)  # cluster ids up to 2-byte varints
    cl, w, ids = profiles.clusters[1:], profiles.weights[1:], profiles.item_ids[1:]
    ts = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    view = repo.view(PROFILES)
    feast_rows = [(entity_key_proto({"item_id": int(i), "buffer_slot": 5}),
                   {"clusters": Value(int64_list_val=Int64List(val=c.tolist())),
                    "weights": Value(float_list_val=FloatList(val=x.tolist())),
                    "primary_cluster": Value(int64_val=int(c[0])), "profile_version": Value(int64_val=2)}, ts, None)
                  for i, c, x in zip(ids, cl, w)]
    repo.store.provider.online_write_batch(repo.repo_config, view, feast_rows, None)
    ours = entity_keys({"item_id": ids, "buffer_slot": np.full(len(ids), 6)})
    repo.backend.write(view, ours, {
        "clusters": Column(int64_list_values(cl)), "weights": Column(float_list_values(w)),
        "primary_cluster": Column(int64_values(cl[:, 0]), [str(c) for c in cl[:, 0]]),
        "profile_version": Column(int64_values(np.array([2]))[0], "2"),
    }, ts)
    for (feast_key, _, _, _), our_key in zip(feast_rows, ours):
        theirs = _stored(repo, PROFILES, serialize_entity_key(feast_key, 3))
        assert theirs and _stored(repo, PROFILES, our_key) == theirs
