"""End to end on a real broker: replay -> `g2rec stream` worker(s) -> committed counts == batch,
the event log == the valid events, the dead-letter topic == the invalid ones, each exactly once.
The exactly-once tests run against SQLite and a real Postgres state store."""

from __future__ import annotations

import hashlib
import itertools
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
from streaming.eventlog import read_events
from streaming.models import DeadLetter, SnapshotAnnouncement, encode_event
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
DEAD_LETTER_MAX_BYTES = 64 * 1024  # StreamConfig's default
_topics = itertools.count()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def store_url(request, tmp_path):
    """name -> URL of that state store: SQLite in tmp_path/name, or a fresh database on a real Postgres."""
    if request.param == "sqlite":
        return lambda name: f"sqlite:///{tmp_path / name / 'stream.sqlite'}"
    make = request.getfixturevalue("postgres_database")
    urls: dict[str, str] = {}

    def url(name: str) -> str:
        if name not in urls:
            urls[name] = make(name)
        return urls[name]
    return url


def _worker(broker, topic, tmp_path, name, group=None, data=None, store_url=None, partitions=PARTITIONS) -> Worker:
    """A worker process; `data` names the data directory (shared by workers of one group)."""
    args = ["--bootstrap", broker.bootstrap, "--topic", topic, "--partitions", str(partitions),
            "--group-id", group or f"{topic}-{name}", "--data-dir", str(tmp_path / (data or name)),
            "--r", str(GRAPH.r), "--window", str(GRAPH.window), "--seed", str(GRAPH.seed),
            "--checkpoint-interval", "0.3", "--session-timeout", "3", "--snapshot-interval", "1",
            "--metrics-path", str(tmp_path / f"{name}.metrics")]
    if store_url is not None:
        args += ["--store-url", store_url]
    return Worker(args, tmp_path / f"{name}.log")


def _store(tmp_path, name) -> StateStore:
    return StateStore(f"sqlite:///{tmp_path / name / 'stream.sqlite'}")


def _committed(store: StateStore, topic: str) -> int:
    return store.committed(topic).n_events


def _log(n_users: int, seed: int) -> EventLog:
    inter, _ = synth_interactions(SynthConfig(n_users=n_users, n_items=400, n_interests=20, seed=seed))
    return event_log(inter)


def _assigned(worker: Worker) -> list[int]:
    lines = re.findall(r"assigned partitions \[([0-9, ]*)\]", worker.log_path.read_text(errors="replace"))
    return [int(p) for p in lines[-1].split(",") if p.strip()] if lines else []


def test_sigkill_three_times_during_a_replay_counts_logs_and_dead_letters_each_event_once(
        kafka_broker, tmp_path, store_url):
    topic = f"kill{next(_topics)}"
    log = _log(n_users=1200, seed=1)
    create_topics(kafka_broker.bootstrap, {topic: PARTITIONS})
    url = store_url("w")
    store = StateStore(url)
    worker = _worker(kafka_broker, topic, tmp_path, "w", store_url=url)
    done = threading.Event()
    errors: list[BaseException] = []
    sent: list[tuple[dict, dict]] = []
    n_bad = len(log) // 9  # 10% of all messages

    def produce():
        try:
            sent.append(_produce_mixed(kafka_broker.bootstrap, topic, log, n_bad, seed=1, rate=700))
        except BaseException as e:  # reported by the main thread
            errors.append(e)
        finally:
            done.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    rng = random.Random(7)
    kills = []
    try:
        level = 0
        for _ in range(3):
            # Kill once the restarted worker has committed new events, at a random moment after.
            wait_for(lambda: _committed(store, topic) > level, 60, "progress after restart", workers=[worker])
            time.sleep(rng.uniform(0.0, 1.5))
            worker.kill()
            level = _committed(store, topic)
            kills.append((level, done.is_set()))
            worker = _worker(kafka_broker, topic, tmp_path, "w", store_url=url)
        producer.join(120)
        assert not errors, errors
        assert not any(finished for _, finished in kills), f"kills {kills} did not all land during the replay"
        good, bad = sent[0]
        wait_for(lambda: sum(store.offsets(topic).values()) == len(log) + n_bad, 90,
                 f"all {len(log) + n_bad} offsets", workers=[worker])
        state = store.committed(topic)
        assert state.n_events == len(log)
        assert_counts_equal(state.counts, batch_counts(log.users, log.items, log.times, GRAPH))
        # The event log holds exactly the valid events, each once.
        table = read_events(tmp_path / "w" / "eventlog", committed=state.offsets)
        keys = sorted(good)
        assert list(zip(table["kafka_partition"].to_pylist(), table["kafka_offset"].to_pylist())) == keys
        assert table["user_id"].to_pylist() == [good[k][0] for k in keys]
        assert table["item_id"].to_pylist() == [good[k][1] for k in keys]
        assert np.array_equal(table["event_timestamp"].cast("int64").to_numpy(),
                              np.round(np.array([good[k][2] for k in keys]) * 1e6).astype(np.int64))
        # The dead-letter topic holds exactly the malformed ones, each once.
        wait_for(lambda: not store.outbox(topic, set(range(PARTITIONS))), 60, "the outbox forwarded",
                 workers=[worker])
        _assert_dead_lettered_once(kafka_broker.bootstrap, topic, bad)
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
        assert final.n_events == len(log) and final.partition_offsets() == state.offsets
        assert final.store_id == store.store_id and final.group_id == f"{topic}-w"
        assert read_snapshot(final.uri.removeprefix("file://")).n_edges == snap.n_edges
    finally:
        worker.stop()
    assert len(kills) == 3


def test_two_workers_sharing_the_partitions_count_like_one(kafka_broker, tmp_path, store_url):
    topic = f"scale{next(_topics)}"
    log = _log(n_users=800, seed=2)
    create_topics(kafka_broker.bootstrap, {topic: PARTITIONS})
    one, two = StateStore(store_url("one")), StateStore(store_url("two"))
    single = _worker(kafka_broker, topic, tmp_path, "one", store_url=one.url)
    pair = [_worker(kafka_broker, topic, tmp_path, "two-a", group=f"{topic}-two", data="two", store_url=two.url)]
    try:
        wait_for(lambda: len(_assigned(single)) == PARTITIONS, 60, "the single worker's assignment",
                 workers=[single, *pair])
        pair.append(_worker(kafka_broker, topic, tmp_path, "two-b", group=f"{topic}-two", data="two",
                            store_url=two.url))
        wait_for(lambda: all(len(_assigned(w)) == PARTITIONS // 2 for w in pair), 60,
                 "two workers with two partitions each", workers=[single, *pair])
        replay(log, ReplayConfig(kafka_broker.bootstrap, topic), PARTITIONS, progress=False)
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


def test_four_workers_on_eight_partitions_count_exactly_through_a_kill_and_a_join_mid_replay(
        kafka_broker, tmp_path):
    topic = f"churn{next(_topics)}"
    n_partitions = 8
    log = _log(n_users=1500, seed=6)  # ~30k events, replayed over ~20 s
    create_topics(kafka_broker.bootstrap, {topic: n_partitions})
    url = f"sqlite:///{tmp_path / 'churn' / 'stream.sqlite'}"
    store = StateStore(url)

    def start(name: str) -> Worker:
        return _worker(kafka_broker, topic, tmp_path, name, group=f"{topic}-g", data="churn", store_url=url,
                       partitions=n_partitions)

    workers = [start(f"c{k}") for k in range(4)]
    try:
        wait_for(lambda: sorted(p for w in workers for p in _assigned(w)) == list(range(n_partitions)), 90,
                 "eight partitions over four workers", workers=workers)
        done = threading.Event()
        errors: list[BaseException] = []

        def produce():
            try:
                replay(log, ReplayConfig(kafka_broker.bootstrap, topic, rate=len(log) / 20), n_partitions,
                       progress=False)
            except BaseException as e:  # reported by the main thread
                errors.append(e)
            finally:
                done.set()

        threading.Thread(target=produce, daemon=True).start()
        wait_for(lambda: _committed(store, topic) > len(log) // 5, 60, "a fifth of the events", workers=workers)
        victim = workers.pop(1)
        victim.kill()  # its partitions wait for its session to expire, then move
        killed_mid_replay = not done.is_set()
        wait_for(lambda: _committed(store, topic) > len(log) // 2, 60, "half of the events", workers=workers)
        workers.append(start("c4"))
        joined_mid_replay = not done.is_set()
        wait_for(done.is_set, 90, "the replay")
        assert not errors, errors
        assert killed_mid_replay and joined_mid_replay
        wait_for(lambda: sum(store.offsets(topic).values()) == len(log), 90, f"all {len(log)} offsets",
                 workers=workers)
        assert _assigned(workers[-1]), "the fifth worker never got a partition"
        state = store.committed(topic)
        assert state.n_events == len(log)
        assert_counts_equal(state.counts, batch_counts(log.users, log.items, log.times, GRAPH))
        table = read_events(tmp_path / "churn" / "eventlog", committed=state.offsets)
        assert table.num_rows == len(log)
        assert sorted(zip(table["user_id"].to_pylist(), table["item_id"].to_pylist())) == sorted(
            zip(log.users.tolist(), log.items.tolist()))
    finally:
        for w in workers:
            w.stop()


def _malformed(k: int, rng: np.random.Generator) -> tuple[bytes | None, str]:
    kind = k % 10
    good = json.loads(encode_event(f"bad{k}", int(rng.integers(0, 50)), int(rng.integers(0, 50)), 1.6e9))
    if kind == 0:
        return b'{"event_id": "x", "user_id": ' + str(k).encode(), "invalid JSON"
    if kind == 1:
        good.pop(["event_id", "user_id", "item_id"][k % 3])  # a missing timestamp defaults to the record's
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
    if kind == 6:  # one over Kafka's default 1 MB message limit, the others just over max_event_bytes
        good["event_id"] = "x" * (1_100_000 if k == 6 else 6000)
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


def _produce_mixed(bootstrap: str, topic: str, log: EventLog, n_bad: int, seed: int,
                   rate: float | None = None) -> tuple[dict, dict]:
    """Send log's events in order with n_bad malformed messages at random places, `rate` messages/s.

    Returns ({(partition, offset): (user, item, time)} of the valid events,
             {(partition, offset): (value, reason)} of the malformed ones).
    """
    from kafka import KafkaProducer

    rng = np.random.default_rng(seed)
    is_bad = np.zeros(len(log) + n_bad, dtype=bool)
    is_bad[rng.choice(len(is_bad), n_bad, replace=False)] = True
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20, max_request_size=20_000_000)
    futures = []
    k_good = k_bad = 0
    start = time.monotonic()
    for n, bad in enumerate(is_bad.tolist()):
        if bad:
            value, reason = _malformed(k_bad, rng)
            key = str(k_bad % 97).encode() if k_bad % 3 or value is None else None
            futures.append((producer.send(topic, key=key, value=value), False, (value, reason)))
            k_bad += 1
        else:
            u, i, t = int(log.users[k_good]), int(log.items[k_good]), float(log.times[k_good])
            futures.append((producer.send(topic, key=str(u).encode(), partition=u % PARTITIONS,
                                          value=encode_event(f"ok{k_good}", u, i, t)), True, (u, i, t)))
            k_good += 1
        if rate is not None and n % 50 == 49 and (ahead := (n + 1) / rate - (time.monotonic() - start)) > 0:
            time.sleep(ahead)
    producer.flush()
    good: dict = {}
    bad_sent: dict = {}
    for fut, ok, payload in futures:
        md = fut.get(30)
        (good if ok else bad_sent)[(md.partition, md.offset)] = payload
    producer.close()
    return good, bad_sent


def _assert_dead_lettered_once(bootstrap: str, topic: str, sent_bad: dict) -> None:
    """The DLQ topic holds one dead letter per malformed message, with its bytes (or head, size and
    sha256) and reason."""
    dead = _consume(bootstrap, f"{topic}-dlq", lambda ms: len(ms) >= len(sent_bad))
    letters = [DeadLetter.from_message(m.value, m.headers) for m in dead]
    keys = [m.key for m in dead]
    assert len(set(keys)) == len(keys), f"{len(keys) - len(set(keys))} dead letters sent twice"
    assert len(dead) == len(sent_bad)
    for m, d in zip(dead, letters):
        assert m.key == d.dlq_key and d.topic == topic
        value, reason = sent_bad[(d.partition, d.offset)]
        value = value if value is not None else b""
        assert d.size == len(value) and d.sha256 == hashlib.sha256(value).hexdigest()
        assert d.value == value[:DEAD_LETTER_MAX_BYTES], f"dead letter {d.dlq_key} altered"
        assert reason in d.reason, (reason, d.reason)
    assert {(d.partition, d.offset) for d in letters} == set(sent_bad)
    oversized = any(len(v or b"") > DEAD_LETTER_MAX_BYTES for v, _ in sent_bad.values())  # the 1.1 MB one
    assert any(d.truncated for d in letters) == oversized


def test_ten_thousand_malformed_messages_are_dead_lettered_and_valid_ones_counted(kafka_broker, tmp_path):
    topic = "dirty"
    log = _log(n_users=500, seed=3)
    create_topics(kafka_broker.bootstrap, {topic: PARTITIONS})
    _, sent_bad = _produce_mixed(kafka_broker.bootstrap, topic, log, 10_000, seed=3)
    store = _store(tmp_path, "w")
    worker = _worker(kafka_broker, topic, tmp_path, "w")
    try:
        wait_for(lambda: sum(store.offsets(topic).values()) == len(log) + len(sent_bad), 90,
                 "all offsets committed", workers=[worker])
        state = store.committed(topic)
        assert state.n_events == len(log)
        assert_counts_equal(state.counts, batch_counts(log.users, log.items, log.times, GRAPH))
        wait_for(lambda: not store.outbox(topic, set(range(PARTITIONS))), 60, "the outbox forwarded",
                 workers=[worker])
        _assert_dead_lettered_once(kafka_broker.bootstrap, topic, sent_bad)
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
                     "--checkpoint-interval", "3600", "--no-eager-checkpoints", "--session-timeout", "3",
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


def test_a_dead_letter_forward_cut_short_is_finished_without_sending_twice(kafka_broker, tmp_path):
    from kafka import KafkaProducer

    from streaming.store import Checkpoint

    topic = "cut"
    create_topics(kafka_broker.bootstrap, {topic: PARTITIONS})
    create_topics(kafka_broker.bootstrap, {f"{topic}-dlq": 1, f"{topic}-snapshots": 1}, exact=False)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    values = [b"bad %d" % k for k in range(3)]
    for v in values:
        producer.send(topic, value=v, partition=0).get(10)
    # A worker committed three dead letters, marked a forward, sent the first one and died.
    letters = [DeadLetter.of(topic, 0, k, "invalid JSON", None, v, DEAD_LETTER_MAX_BYTES)
               for k, v in enumerate(values)]
    store = _store(tmp_path, "w")
    store.claim(topic, 0, 0)
    empty = np.zeros(0, dtype=np.int64)
    store.commit(Checkpoint(topic, {0: (0, 3)}, empty, np.zeros(0), 0, 0, 0.0, {}, letters))
    store.mark_outbox(letters, forwarding_from=0)
    producer.send(f"{topic}-dlq", key=letters[0].dlq_key, value=letters[0].value, partition=0,
                  headers=letters[0].headers()).get(10)
    producer.close()
    worker = _worker(kafka_broker, topic, tmp_path, "w")
    try:
        wait_for(lambda: not store.outbox(topic, {0}), 60, "the outbox forwarded", workers=[worker])
        _assert_dead_lettered_once(kafka_broker.bootstrap, topic, {(0, k): (v, "invalid JSON")
                                                                   for k, v in enumerate(values)})
    finally:
        worker.stop()
