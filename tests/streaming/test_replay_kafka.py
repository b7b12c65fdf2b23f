"""The broker helper and `g2rec replay` against a real Tansu broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import pytest

from infra import kafka
from streaming.models import EngagementEvent
from streaming.replay import partitions_for_users
from tests.streaming.conftest import REPO

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore:(read_text|open_text) is deprecated:DeprecationWarning"),
]


def test_broker_starts_on_loopback_and_stops_by_pid(tmp_path):
    broker = kafka.start(log_dir=tmp_path)
    try:
        assert broker.bootstrap.startswith("127.0.0.1:")
        assert kafka.create_topics(broker.bootstrap, {"a": 3}) == {"a": 3}
        with pytest.raises(kafka.BrokerError, match="has 3 partitions, wanted 2"):
            kafka.create_topics(broker.bootstrap, {"a": 2})
        assert kafka.create_topics(broker.bootstrap, {"a": 2}, exact=False) == {"a": 3}
        with pytest.raises(kafka.BrokerError, match="already in use"):
            kafka.start(port=broker.port, log_dir=tmp_path)
    finally:
        kafka.stop(broker.pid)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and kafka.listening(broker.port):
        time.sleep(0.05)
    assert not kafka.listening(broker.port)


def test_a_binary_with_another_hash_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "tansu"
    fake.write_bytes(b"#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("G2REC_TANSU_BIN", str(fake))
    with pytest.raises(kafka.BrokerError, match="does not match the pinned"):
        kafka.tansu_binary()


@pytest.mark.parametrize("source", ["synthetic", "ml-100k"])
def test_replay_keys_events_by_user_and_keeps_each_users_order(kafka_broker, source):
    from kafka import KafkaConsumer

    if source != "synthetic":
        from g2rec.data import DatasetError, load_dataset

        try:
            load_dataset(source)
        except DatasetError as e:
            pytest.skip(f"public dataset not present: {e}")
    topic, n = f"replay-{source}", 3000
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", "from cli.main import cli; cli()", "replay", "--bootstrap", kafka_broker.bootstrap,
         "--topic", topic, "--partitions", "3", "--source", source, "--events", str(2 * n), "--limit", str(n),
         "--no-progress"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"replayed {n} events" in out.stdout
    consumer = KafkaConsumer(topic, bootstrap_servers=kafka_broker.bootstrap, auto_offset_reset="earliest",
                             group_id=None, consumer_timeout_ms=2000)
    records = list(consumer)
    consumer.close()
    assert len(records) == n
    last_time: dict[int, float] = defaultdict(float)
    ids = set()
    for rec in sorted(records, key=lambda m: (m.partition, m.offset)):
        event = EngagementEvent.from_wire(rec.value)
        assert rec.key == event.key
        assert rec.partition == partitions_for_users(np.array([event.user_id]), 3)[0]
        assert event.timestamp >= last_time[event.user_id]
        last_time[event.user_id] = event.timestamp
        ids.add(event.event_id)
    assert len(ids) == n
