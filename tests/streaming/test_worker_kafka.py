"""End to end on a real broker: replay -> `g2rec stream` worker(s) -> committed counts == batch."""

from __future__ import annotations

import json
import random
import re
import threading
import time

import numpy as np
import pytest

from g2rec.graph import GraphConfig
from g2rec.synth import SynthConfig, synth_interactions
from infra.kafka import create_topics
from streaming.models import H_OFFSET, H_PARTITION, H_REASON, SnapshotAnnouncement, encode_event
from streaming.replay import EventLog, ReplayConfig, event_log, replay
from streaming.snapshots import read_snapshot
from streaming.store import StateStore
from tests.streaming.conftest import Worker, assert_counts_equal, batch_counts, wait_for

pytestmark = [
    pytest.mark.integration,
    # kafka-python 3.0 loads its protocol schemas with deprecated importlib.resources calls.
    pytest.mark.filterwarnings("ignore:(read_text|open_text) is deprecated:DeprecationWarning"),
]

PARTITIONS = 4
GRAPH = GraphConfig(r=10, window=20, seed=5)


def _worker(broker, topic, tmp_path, name, group=None, data=None) -> Worker:
    """A worker process; `data` names the store directory (shared by workers of one group)."""
    args = ["--bootstrap", broker.bootstrap, "--topic", topic, "--partitions", str(PARTITIONS),
            "--group-id", group or f"{topic}-{name}", "--data-dir", str(tmp_path / (data or name)),
            "--r", str(GRAPH.r), "--window", str(GRAPH.window), "--seed", str(GRAPH.seed),
            "--checkpoint-interval", "0.3", "--session-timeout", "3", "--snapshot-interval", "1",
            "--metrics-path", str(tmp_path / f"{name}.metrics")]
    return Worker(args, tmp_path / f"{name}.log")


def _store(tmp_path, name) -> StateStore:
    return StateStore(f"sqlite:///{tmp_path / name / 'stream.sqlite'}")


def _committed(store: StateStore, topic: str) -> int:
    try:
        return store.committed(topic).n_events
    except Exception:  # the worker has not created its tables yet
        return 0


def _log(n_users: int, seed: int) -> EventLog:
    inter, _ = synth_interactions(SynthConfig(n_users=n_users, n_items=400, n_interests=20, seed=seed))
    return event_log(inter)


def _assigned(worker: Worker) -> list[int]:
    lines = re.findall(r"assigned partitions \[([0-9, ]*)\]", worker.log_path.read_text(errors="replace"))
    return [int(p) for p in lines[-1].split(",") if p.strip()] if lines else []


def test_sigkill_three_times_during_a_replay_counts_each_event_once(kafka_broker, tmp_path):
    topic = "kill"
    log = _log(n_users=1200, seed=1)
    create_topics(kafka_broker.bootstrap, {topic: PARTITIONS})
    store = None
    worker = _worker(kafka_broker, topic, tmp_path, "w")
    done = threading.Event()
    errors: list[BaseException] = []

    def produce():
        try:
            replay(log, ReplayConfig(kafka_broker.bootstrap, topic, rate=700), PARTITIONS, progress=False)
        except BaseException as e:  # reported by the main thread
            errors.append(e)
        finally:
            done.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    rng = random.Random(7)
    kills = []
    try:
        store = wait_for(lambda: (tmp_path / "w" / "stream.sqlite").exists() and _store(tmp_path, "w"),
                         60, "the worker's store", workers=[worker])
        level = 0
        for _ in range(3):
            # Kill once the restarted worker has committed new events, at a random moment after.
            wait_for(lambda: _committed(store, topic) > level, 60, "progress after restart", workers=[worker])
            time.sleep(rng.uniform(0.0, 1.5))
            worker.kill()
            level = _committed(store, topic)
            kills.append((level, done.is_set()))
            worker = _worker(kafka_broker, topic, tmp_path, "w")
        producer.join(120)
        assert not errors, errors
        assert not any(finished for _, finished in kills), f"kills {kills} did not all land during the replay"
        wait_for(lambda: _committed(store, topic) == len(log), 90, f"all {len(log)} events", workers=[worker])
        state = store.committed(topic)
        assert sum(state.offsets.values()) == len(log)
        assert_counts_equal(state.counts, batch_counts(log.users, log.items, log.times, GRAPH))
        # The snapshot timer publishes the complete state and announces it.
        wait_for(lambda: (s := store.last_snapshot()) and s["n_events"] == len(log), 30, "a final snapshot",
                 workers=[worker])
        last = store.last_snapshot()
        snap = read_snapshot(last["path"], last["snapshot_id"])
        assert snap.n_edges == last["n_edges"] > 0
        announced = _consume(kafka_broker.bootstrap, f"{topic}-snapshots", lambda ms: any(
            json.loads(m.value)["snapshot_id"] == last["snapshot_id"] for m in ms))
        final = [SnapshotAnnouncement.loads(m.value) for m in announced
                 if json.loads(m.value)["snapshot_id"] == last["snapshot_id"]][0]
        assert final.n_events == len(log) and {int(k): v for k, v in final.offsets.items()} == state.offsets
    finally:
        worker.stop()
    assert len(kills) == 3


def test_two_workers_sharing_the_partitions_count_like_one(kafka_broker, tmp_path):
    topic = "scale"
    log = _log(n_users=800, seed=2)
    create_topics(kafka_broker.bootstrap, {topic: PARTITIONS})
    single = _worker(kafka_broker, topic, tmp_path, "one")
    pair = [_worker(kafka_broker, topic, tmp_path, "two-a", group=f"{topic}-two", data="two")]
    try:
        wait_for(lambda: len(_assigned(single)) == PARTITIONS, 60, "the single worker's assignment",
                 workers=[single, *pair])
        pair.append(_worker(kafka_broker, topic, tmp_path, "two-b", group=f"{topic}-two", data="two"))
        wait_for(lambda: all(len(_assigned(w)) == PARTITIONS // 2 for w in pair), 60,
                 "two workers with two partitions each", workers=[single, *pair])
        replay(log, ReplayConfig(kafka_broker.bootstrap, topic), PARTITIONS, progress=False)
        one, two = _store(tmp_path, "one"), _store(tmp_path, "two")
        wait_for(lambda: _committed(one, topic) == len(log) and _committed(two, topic) == len(log), 60,
                 "both stores complete", workers=[single, *pair])
        shares = []
        for name in ("two-a", "two-b"):  # each of the pair committed its own partitions' events
            metrics = [json.loads(line) for line in (tmp_path / f"{name}.metrics").read_text().splitlines()]
            shares.append(({int(p) for m in metrics for p in m["offsets"]}, sum(m["n_events"] for m in metrics)))
        assert shares[0][0].isdisjoint(shares[1][0]) and shares[0][0] | shares[1][0] == set(range(PARTITIONS))
        assert shares[0][1] > 0 and shares[1][1] > 0 and shares[0][1] + shares[1][1] == len(log)
        a, b = one.committed(topic), two.committed(topic)
        assert_counts_equal(b.counts, a.counts)
        assert_counts_equal(a.counts, batch_counts(log.users, log.items, log.times, GRAPH))
        assert a.offsets == b.offsets
    finally:
        for w in [single, *pair]:
            w.stop()


def _malformed(k: int, rng: np.random.Generator) -> tuple[bytes | None, str]:
    kind = k % 10
    good = json.loads(encode_event(f"bad{k}", int(rng.integers(0, 50)), int(rng.integers(0, 50)), 1.6e9))
    if kind == 0:
        return b'{"event_id": "x", "user_id": ' + str(k).encode(), "invalid JSON"
    if kind == 1:
        good.pop(["event_id", "user_id", "item_id", "timestamp"][k % 4])
        return json.dumps(good).encode(), "missing field"
    if kind == 2:
        good["user_id"] = str(good["user_id"])
        return json.dumps(good).encode(), "expected an integer"
    if kind == 3:
        good["item_id"] = -1 - k
        return json.dumps(good).encode(), "is outside"
    if kind == 4:
        good["user_id"] = 2**40 + k
        return json.dumps(good).encode(), "is outside"
    if kind == 5:
        return b"\xff\xfe\x00garbage" + bytes([k % 256]), "not UTF-8"
    if kind == 6:
        good["event_id"] = "x" * 6000
        return json.dumps(good).encode(), "oversized payload"
    if kind == 7:
        good["timestamp"] = "yesterday"
        return json.dumps(good).encode(), "field 'timestamp'"
    if kind == 8:
        return json.dumps([good]).encode(), "not a JSON object"
    return None, "empty payload"


def _consume(bootstrap: str, topic: str, until, timeout: float = 30.0) -> list:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=1000)
    out: list = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(out):
            out.extend(consumer)  # returns after 1 s without messages
    finally:
        consumer.close()
    return out


def test_ten_thousand_malformed_messages_are_dead_lettered_and_valid_ones_counted(kafka_broker, tmp_path):
    from kafka import KafkaProducer

    topic = "dirty"
    rng = np.random.default_rng(3)
    log = _log(n_users=500, seed=3)
    n_bad = 10_000
    # Interleave: the valid events keep their order, malformed ones land at random places.
    is_bad = np.zeros(len(log) + n_bad, dtype=bool)
    is_bad[rng.choice(len(is_bad), n_bad, replace=False)] = True
    create_topics(kafka_broker.bootstrap, {topic: PARTITIONS})
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all", linger_ms=20,
                             max_request_size=8 * 1024 * 1024)
    sent_bad: dict[tuple[int, int], tuple[bytes | None, str]] = {}
    futures = []
    k_good = k_bad = 0
    for bad in is_bad.tolist():
        if bad:
            value, reason = _malformed(k_bad, rng)
            key = str(k_bad % 97).encode() if k_bad % 3 or value is None else None
            futures.append((producer.send(topic, key=key, value=value), (value, reason)))
            k_bad += 1
        else:
            u = int(log.users[k_good])
            producer.send(topic, key=str(u).encode(), partition=u % PARTITIONS,
                          value=encode_event(f"ok{k_good}", u, int(log.items[k_good]), float(log.times[k_good])))
            k_good += 1
    producer.flush()
    producer.close()
    for fut, sent in futures:
        md = fut.get(10)
        sent_bad[(md.partition, md.offset)] = sent
    worker = _worker(kafka_broker, topic, tmp_path, "w")
    try:
        store = wait_for(lambda: (tmp_path / "w" / "stream.sqlite").exists() and _store(tmp_path, "w"),
                         60, "the worker's store", workers=[worker])
        wait_for(lambda: sum(store.offsets(topic).values()) == len(is_bad), 90, "all offsets committed",
                 workers=[worker])
        state = store.committed(topic)
        assert state.n_events == len(log)
        assert_counts_equal(state.counts, batch_counts(log.users, log.items, log.times, GRAPH))
        dead = _consume(kafka_broker.bootstrap, f"{topic}-dlq", lambda ms: len(ms) >= n_bad)
        assert len(dead) == n_bad
        seen = set()
        for m in dead:
            h = {k: v.decode() for k, v in m.headers}
            source = (int(h[H_PARTITION]), int(h[H_OFFSET]))
            value, reason = sent_bad[source]
            assert m.value == (value if value is not None else b""), f"dead letter {source} altered"
            assert reason in h[H_REASON], (reason, h[H_REASON])
            seen.add(source)
        assert seen == set(sent_bad)
        assert worker.alive()
    finally:
        worker.stop()


def test_sigterm_commits_the_pending_work_before_exiting(kafka_broker, tmp_path):
    topic = "term"
    log = _log(n_users=100, seed=4)
    create_topics(kafka_broker.bootstrap, {topic: PARTITIONS})
    replay(log, ReplayConfig(kafka_broker.bootstrap, topic), PARTITIONS, progress=False)
    data = tmp_path / "w"
    worker = Worker(["--bootstrap", kafka_broker.bootstrap, "--topic", topic, "--data-dir", str(data),
                     "--r", str(GRAPH.r), "--window", str(GRAPH.window), "--seed", str(GRAPH.seed),
                     "--checkpoint-interval", "3600", "--session-timeout", "3",
                     "--metrics-path", str(tmp_path / "w.metrics")], tmp_path / "w.log")
    try:
        # Fetched and applied, but with an hour-long checkpoint interval nothing is committed yet.
        wait_for(lambda: "assigned partitions [0, 1, 2, 3]" in worker.log_path.read_text(errors="replace"),
                 60, "the assignment", workers=[worker])
        time.sleep(2)
        store = _store(tmp_path, "w")
        assert _committed(store, topic) == 0
    finally:
        assert worker.stop() == 0, worker.tail()
    state = store.committed(topic)
    assert state.n_events == len(log)
    assert_counts_equal(state.counts, batch_counts(log.users, log.items, log.times, GRAPH))
