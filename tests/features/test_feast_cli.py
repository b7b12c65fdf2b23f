"""The repo works with the plain `feast` CLI: `feast apply` scans only the definition modules,
and `feast serve` (bound to 127.0.0.1) answers other services over HTTP."""

from __future__ import annotations

import json
import subprocess
import urllib.request
from datetime import datetime, timezone

import numpy as np
import pytest

from features import serve
from features.config import PACKAGE_DIR, StoreConfig
from features.lookup import FeatureLookup
from features.publish import PROFILES, publish_profiles, stand_in_profiles
from features.store import FeatureRepo
from infra.process import free_port

VIEWS = {"item_interest_profile", "cluster_prototype", "version_pointer", "user_recent_history", "user_engagement"}
SERVICES = {"scoring", "interest_profiles", "interest_prototypes", "version_pointers"}


def test_plain_feast_apply_registers_exactly_the_definitions(tmp_path):
    config = StoreConfig(root=tmp_path)
    yaml_path = serve.write_yaml(config)
    run = subprocess.run([serve.feast_executable(), "-c", str(PACKAGE_DIR), "-f", str(yaml_path), "apply"],
                         capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    with FeatureRepo(config) as repo:
        assert {v.name for v in repo.store.list_feature_views()} == VIEWS
        assert {s.name for s in repo.store.list_feature_services()} == SERVICES
        # The CLI-applied store takes g2rec writes as is.
        publish_profiles(repo, stand_in_profiles(20, 2, 4, version=1))
        assert FeatureLookup(repo).profiles([1, 21]).found.tolist() == [True, False]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
        body = r.read()
        return json.loads(body) if body else {}


def _by_name(response: dict) -> dict[str, list]:
    names = response["metadata"]["feature_names"]
    return {n: res["values"] for n, res in zip(names, response["results"])}


@pytest.mark.integration
def test_feast_serve_answers_on_loopback_over_http(tmp_path):
    config = StoreConfig(root=tmp_path)
    profiles = stand_in_profiles(100, 3, 16, version=4)
    with FeatureRepo(config) as repo:
        repo.apply()
        publish_profiles(repo, profiles)
    server = serve.start(config, free_port(), tmp_path / "feast-serve.log")
    try:
        # 1. which slot holds the current profile version
        pointer = _by_name(_post(f"{server.url}/get-online-features", {
            "features": ["version_pointer:current_version", "version_pointer:current_slot"],
            "entities": {"feature_set": [PROFILES]},
        }))
        assert pointer["current_version"] == [4]
        slot = pointer["current_slot"][0]
        # 2. the profiles, from that slot, through a feature service
        got = _by_name(_post(f"{server.url}/get-online-features", {
            "feature_service": "interest_profiles",
            "entities": {"item_id": [1, 100, 101], "buffer_slot": [slot] * 3},
        }))
        assert got["clusters"][:2] == [profiles.clusters[1].tolist(), profiles.clusters[100].tolist()]
        np.testing.assert_allclose(got["weights"][0], profiles.weights[1], rtol=1e-6)
        assert got["profile_version"] == [4, 4, None]
        # 3. a push over HTTP lands where g2rec's lookup reads histories
        _post(f"{server.url}/push", {
            "push_source_name": "user_history_push", "to": "online",
            "df": {"user_id": [9], "item_ids": [[3, 4]], "timestamps": [[30, 40]], "position": [2],
                   "event_timestamp": [datetime.now(timezone.utc).isoformat()]},
        })
    finally:
        serve.stop(server)
    with FeatureLookup.open(config) as lookup:
        assert lookup.histories([9]).items[0].tolist() == [3, 4]


def test_the_server_refuses_to_bind_beyond_loopback(tmp_path):
    with pytest.raises(ValueError, match="loopback"):
        serve.serve_command(StoreConfig(root=tmp_path), 6566, host="0.0.0.0")
