"""The stream worker builds the Feast sink by name through streaming's sink registry."""

from __future__ import annotations

import numpy as np

from features.config import StoreConfig
from features.lookup import FeatureLookup
from features.store import FeatureRepo
from streaming.sink import UserHistoryUpdate, make_sink


def test_streaming_builds_the_feast_sink_from_its_config_options(tmp_path):
    with FeatureRepo(StoreConfig(root=tmp_path)) as repo:
        repo.apply()
    sink = make_sink("features.sink:open_sink", {"root": str(tmp_path), "online": "sqlite", "max_len": 2})
    sink.write([UserHistoryUpdate(user_id=3, item_ids=np.array([5, 6, 7]), timestamps=np.array([1.0, 2.0, 3.5]),
                                  window=np.array([5, 6, 7]), position=3)])
    sink.close()
    with FeatureLookup.open(StoreConfig(root=tmp_path)) as lookup:
        h = lookup.histories([3])
    assert h.items[0].tolist() == [6, 7] and h.times[0].tolist() == [2, 3]
