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
