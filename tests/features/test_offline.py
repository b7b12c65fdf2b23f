"""Published versions can also go to the file offline store, for point-in-time training reads."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd

from features.config import StoreConfig
from features.publish import publish_profiles, stand_in_profiles
from features.store import FeatureRepo


def test_offline_copies_answer_point_in_time_queries(tmp_path):
    with FeatureRepo(StoreConfig(root=tmp_path)) as repo:
        repo.apply()
        v1, v2 = stand_in_profiles(40, 3, 8, version=1, seed=1), stand_in_profiles(40, 3, 8, version=2, seed=2)
        publish_profiles(repo, v1, offline=True)
        between = datetime.now(timezone.utc)
        publish_profiles(repo, v2, offline=True)
        later = datetime.now(timezone.utc) + timedelta(seconds=1)
        entity_df = pd.DataFrame({"item_id": [5, 5], "buffer_slot": [0, 1], "event_timestamp": [between, later]})
        got = repo.store.get_historical_features(
            entity_df=entity_df,
            features=["item_interest_profile:clusters", "item_interest_profile:profile_version"],
        ).to_df().sort_values("buffer_slot")
    assert got["profile_version"].tolist() == [1, 2]
    assert [list(c) for c in got["clusters"]] == [v1.clusters[5].tolist(), v2.clusters[5].tolist()]


def test_the_stream_event_log_answers_point_in_time_queries(tmp_path):
    import numpy as np

    from streaming.eventlog import EventLogWriter, LoggedEvents

    t0 = 1_700_000_000.0
    writer = EventLogWriter(tmp_path / "data" / "eventlog")
    # user 7 on partition 1 (two checkpoint ranges, one rewritten after a "crash"), user 8 on partition 2
    first = LoggedEvents(1, 0, 3, np.array([0, 2]), np.array([7, 7]), np.array([100, 101]), np.array([t0, t0 + 10]))
    writer.write([first, LoggedEvents(2, 0, 1, np.array([0]), np.array([8]), np.array([200]), np.array([t0 + 5]))])
    writer.write([first])
    writer.write([LoggedEvents(1, 3, 4, np.array([3]), np.array([7]), np.array([102]), np.array([t0 + 86400]))])
    at = lambda s: datetime.fromtimestamp(t0 + s, tz=timezone.utc)  # noqa: E731
    with FeatureRepo(StoreConfig(root=tmp_path)) as repo:
        repo.apply()
        entity_df = pd.DataFrame({"user_id": [7, 7, 7, 8, 8], "query": range(5),
                                  "event_timestamp": [at(5), at(10), at(2 * 86400), at(1), at(6)]})
        got = repo.store.get_historical_features(
            entity_df=entity_df, features=["user_engagement:item_id", "user_engagement:kafka_offset"],
        ).to_df().sort_values("query")
    item = dict(zip(got["query"], got["item_id"]))
    assert [item[q] for q in (0, 1, 2, 4)] == [100, 101, 102, 200]  # latest at or before each query time
    assert pd.isna(item.get(3))  # user 8 had not engaged yet (Feast drops or nulls the row)
    assert dict(zip(got["query"], got["kafka_offset"]))[2] == 3
