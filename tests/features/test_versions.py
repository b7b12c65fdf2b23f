"""The version log in the metadata DB: one publisher per feature set, failures recorded."""

from __future__ import annotations

import pytest

from features.versions import PublishInProgressError, VersionLog


def test_lock_excludes_a_second_publisher_until_released(tmp_path):
    log = VersionLog(f"sqlite:///{tmp_path / 'meta.db'}")
    log.begin("profiles", 1, slot=0, rows=10, width=4, online_store="sqlite")
    with pytest.raises(PublishInProgressError, match="version 1 is being published"):
        VersionLog(f"sqlite:///{tmp_path / 'meta.db'}").begin("profiles", 2, 1, 10, 4, "sqlite")
    log.begin("prototypes", 1, 0, 5, 8, "sqlite")  # another feature set is independent
    log.complete("profiles", 1, seconds=0.5)
    log.begin("profiles", 2, 1, 10, 4, "sqlite")
    log.complete("profiles", 2, seconds=0.4)
    states = [(r["version"], r["state"]) for r in log.history("profiles")]
    assert states == [(1, "previous"), (2, "current")]


def test_failed_and_abandoned_publishes_are_recorded(tmp_path):
    log = VersionLog(f"sqlite:///{tmp_path / 'meta.db'}")
    log.begin("profiles", 3, 0, 10, 4, "redis")
    log.fail("profiles", 3, "ConnectionError: gone")
    assert log.lock_holder("profiles") is None
    (rec,) = log.history("profiles")
    assert rec["state"] == "failed" and rec["error"] == "ConnectionError: gone"
    log.begin("profiles", 4, 0, 10, 4, "redis")  # a publisher that then dies
    assert log.unlock("profiles") == 4
    assert log.unlock("profiles") is None
    assert [r["state"] for r in log.history("profiles")] == ["failed", "failed"]
    log.begin("profiles", 3, 0, 10, 4, "redis")  # retrying a failed version starts over
    log.complete("profiles", 3, 1.0)
    assert {r["version"]: r["state"] for r in log.history("profiles")} == {3: "current", 4: "failed"}
