"""`g2rec bench stream`: throughput, exactness and freshness of the stream worker on a real broker.

Phases, all against one Tansu broker started here on a free loopback port:
1. produce   synthetic events (g2rec.synth) into a fresh topic (aiokafka record batches, the same
             keys, values and partitions as `g2rec replay`);
2. ceiling   a raw aiokafka consumer reads the whole topic (no processing): the broker/client limit;
3. drain     one `g2rec stream` worker consumes the backlog; events_per_s = events / (first fetch
             -> last committed checkpoint), i.e. produce-to-committed-counts throughput;
4. exact     committed counts == g2rec.graph.coengagement_counts over the same events (same r, seed);
5. postgres  the same drain and check with the state store on a Postgres started by infra/postgres.py;
6. fresh     a worker with the Feast history sink, caught up, gets events at a steady rate; count
             freshness is commit time - produce time (Kafka CreateTime) of each event, Feast
             freshness the time until features.lookup returns the event in the user's history;
7. rss       peak RSS (VmHWM) of a worker with user_ttl_s draining a large-state and a small-state
             stream (5x the events over 20x the users), both checked exact;
8. dlq       a replay with malformed messages: each on the dead-letter topic exactly once.
`--rss-only` runs phase 7 alone and updates the rss keys of the existing JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _consume_ceiling(bootstrap: str, topic: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    async def run() -> float:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                    max_poll_records=20_000, fetch_max_bytes=64 << 20,
                                    max_partition_fetch_bytes=16 << 20)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            got, start = 0, 0.0
            while got < n:
                batch = await consumer.getmany(timeout_ms=1000, max_records=20_000)
                if got == 0 and batch:
                    start = time.perf_counter()  # from the first fetched batch
                got += sum(len(v) for v in batch.values())
            return got / (time.perf_counter() - start)
        finally:
            await consumer.stop()

    return asyncio.run(run())


def _produce_backlog(bootstrap: str, topic: str, log, n_partitions: int) -> int:
    """Send a backlog as fast as the broker takes it: aiokafka record batches built per partition
    (~200k events/s here, against ~24k/s for `g2rec replay`'s per-message kafka-python producer).
    Same keys, values and partitions as `streaming.replay.replay`; one batch in flight per
    partition, so each partition keeps the log's order. Returns the events sent."""
    from aiokafka import AIOKafkaProducer

    from streaming.models import encode_event
    from streaming.replay import partitions_for_users

    parts = partitions_for_users(log.users, n_partitions)
    users, items, times = log.users.tolist(), log.items.tolist(), log.times.tolist()
    source = log.source or "events"

    async def run() -> int:
        # No idempotence: Tansu refuses aiokafka's InitProducerId. A duplicate would show in exact_match.
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=8 << 20)
        await producer.start()
        try:
            acks = []
            for part in range(n_partitions):
                batch = producer.create_batch()
                for k in np.flatnonzero(parts == part).tolist():
                    key, value = str(users[k]).encode(), encode_event(f"{source}-{k}", users[k], items[k], times[k])
                    if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, start another
                        acks.append(await producer.send_batch(batch, topic, partition=part))
                        batch = producer.create_batch()
                        batch.append(key=key, value=value, timestamp=None)
                acks.append(await producer.send_batch(batch, topic, partition=part))
            await asyncio.gather(*acks)
            return len(log)
        finally:
            await producer.stop()

    return asyncio.run(run())


def _metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise click.ClickException(f"worker exited while waiting for {what}; see {log}")
        time.sleep(0.2)
    raise click.ClickException(f"timed out waiting for {what}; see {log}")


class _Worker:
    """One `g2rec stream` process of the benchmark, with its metrics file and log."""

    def __init__(self, work: Path, name: str, bootstrap: str, topic: str, partitions: int, r: int, window: int,
                 seed: int, checkpoint_interval: float, extra: list[str]) -> None:
        self.data, self.metrics, self.log = work / name, work / f"{name}.metrics", work / f"{name}.log"
        args = ["stream", "--bootstrap", bootstrap, "--topic", topic, "--partitions", str(partitions),
                "--group-id", f"bench-{name}", "--data-dir", str(self.data), "--r", str(r), "--window", str(window),
                "--seed", str(seed), "--checkpoint-interval", str(checkpoint_interval), "--snapshot-interval",
                "3600", "--metrics-path", str(self.metrics), "--log-level", "warn", *extra]
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen([sys.executable, "-c", "from cli.main import cli; cli()", *args], cwd=REPO,
                                         env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=f,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def committed(self) -> int:
        return sum(m["n_events"] for m in _metrics(self.metrics))

    def wait_committed(self, n: int, timeout: float, what: str) -> None:
        _wait(lambda: self.committed() >= n, timeout, what, self.proc, self.log)

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
        raise click.ClickException(f"no VmHWM for worker {self.proc.pid}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def _drain_figures(worker: _Worker, n: int, ceiling: float) -> dict:
    """Throughput of a worker that drained an n-event backlog (see the module docstring)."""
    ms = _metrics(worker.metrics)
    first: dict = min((m for m in ms if m["first_fetch"]), key=lambda m: m["first_fetch"])
    last = max(m["committed_at"] for m in ms)
    rate = n / (last - first["first_fetch"])
    # CPU seconds the worker process spent from its first fetch to its last commit (all threads):
    # what the worker costs, independent of how busy the shared machine was.
    cpu = max(m["cpu_s"] for m in ms) - first["first_fetch_cpu_s"]
    return {"events_per_s": round(rate), "ratio": round(rate / ceiling, 3), "events_per_cpu_s": round(n / cpu),
            "checkpoints": len(ms), "checkpoint_s_p50": round(float(np.median([m["checkpoint_s"] for m in ms])), 3)}


def _lags_since(worker: _Worker, start: float) -> np.ndarray:
    """Commit lags (s) of the events the worker committed that were produced after `start`."""
    rows = np.fromfile(f"{worker.metrics}.lags", dtype="<f8").reshape(-1, 2)
    return rows[rows[:, 0] >= start - 1e-3, 1]


def _exact(url: str, topic: str, inter, r: int, window: int, seed: int) -> bool:
    """Committed counts of the store at `url` == the batch builder's over `inter`."""
    from g2rec.graph import CoCounts, GraphConfig, coengagement_counts
    from streaming.store import StateStore

    store = StateStore(url)
    try:
        state = store.committed(topic)
    finally:
        store.close()
    a, b, w = coengagement_counts(inter, GraphConfig(r=r, window=window, seed=seed)).pairs()
    want = CoCounts()
    want.add_pairs(inter.item_ids[a], inter.item_ids[b], w)
    return bool(state.n_events == inter.n_interactions
                and all(np.array_equal(x, y) for x, y in zip(state.counts.pairs(), want.pairs())))


def _feast_visibility(repo_root: str, users: np.ndarray, ready, stop, out_path: str) -> None:
    """Poll features.lookup for `users` until `stop` is set (`ready` is set once polling runs);
    writes (time, user, history length) rows to out_path. Runs in its own process, so the
    producer's GIL does not delay the polls."""
    from features.config import StoreConfig
    from features.lookup import FeatureLookup

    rows: list[tuple[float, int, int]] = []
    with FeatureLookup.open(StoreConfig(root=Path(repo_root))) as lookup:
        while not stop.is_set():
            h = lookup.histories(users)
            now = time.time()
            rows.extend((now, int(u), len(items)) for u, items in zip(users.tolist(), h.items))
            ready.set()
            time.sleep(0.02)
    np.save(out_path, np.array(rows, dtype=np.float64).reshape(-1, 3))


def _create_times(bootstrap: str, topic: str, start: dict[int, int], users: set[int]) -> dict[int, list[float]]:
    """Kafka CreateTime (s) of each event of `users` from offsets `start` on, per user in order."""
    from kafka import KafkaConsumer, TopicPartition

    from streaming.models import decode_values

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=2000, max_poll_records=20_000)
    tps = [TopicPartition(topic, p) for p in sorted(start)]
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, start[tp.partition])
    times: dict[int, list[float]] = {}
    records = list(consumer)
    consumer.close()
    cols, _ = decode_values([m.value for m in records])
    for k, u in zip(cols.index.tolist(), cols.user_ids.tolist()):
        if u in users:
            times.setdefault(u, []).append(records[k].timestamp / 1000.0)
    return times


def _synthetic_users(events: int, users: int, seed: int):
    """About `events` planted-interest events over `users` users (g2rec.synth)."""
    from g2rec.synth import SynthConfig, synth_interactions

    mean = events / users
    n_items = max(100, min(200_000, events // 20))
    inter, _ = synth_interactions(SynthConfig(n_users=users, n_items=n_items, n_interests=max(20, n_items // 200),
                                              mean_history=mean, min_history=max(1, min(5, int(mean // 2))),
                                              seed=seed))
    return inter


def _produce_dlq_mix(bootstrap: str, topic: str, n_good: int, n_bad: int, seed: int) -> dict[tuple[int, int], bytes]:
    """n_good valid and n_bad malformed messages (six kinds) in random order; returns the
    malformed ones by (partition, offset)."""
    from kafka import KafkaProducer

    from streaming.models import encode_event

    rng = np.random.default_rng(seed)
    bad_kinds = [b'{"event_id": "x", "user_id": 1', b"\xff\xfe garbage", b"[1, 2]", b"",
                 b'{"event_id":"m","user_id":"7","item_id":1,"timestamp":1.6e9}',
                 b'{"event_id":"' + b"o" * 6000 + b'","user_id":1,"item_id":1,"timestamp":1.6e9}']
    is_bad = np.zeros(n_good + n_bad, dtype=bool)
    is_bad[rng.choice(len(is_bad), n_bad, replace=False)] = True
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    sent = []
    for k, bad in enumerate(is_bad.tolist()):
        value = bad_kinds[k % len(bad_kinds)] if bad else encode_event(f"d{k}", k % 97, k % 89, 1.6e9 + k)
        sent.append((producer.send(topic, key=str(k % 97).encode(), value=value), bad, value))
    producer.flush()
    out = {}
    for fut, bad, value in sent:
        md = fut.get(30)
        if bad:
            out[(md.partition, md.offset)] = value
    producer.close()
    return out


def _dead_letter_keys(bootstrap: str, topic: str, n: int, timeout: float = 60.0) -> list[bytes]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=1000)
    keys: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(keys) < n:
        keys.extend(m.key for m in consumer)
    time.sleep(1.0)  # anything sent twice would arrive right behind
    keys.extend(m.key for m in consumer)
    consumer.close()
    return keys


def _rss_phase(bootstrap: str, start, rss_events: int, rss_users: int, user_ttl: float, partitions: int,
               ceiling: float | None, r: int, window: int, seed: int) -> dict:
    """Peak RSS (VmHWM) of a worker with user_ttl_s draining a large-state stream (rss_events over
    rss_users) and a small one (a fifth of the events over a twentieth of the users), each checked
    exact; returns the result keys rss, rss_mb and rss_ratio. `start(name, topic, extra)` starts a
    worker; `ceiling` is the consume ceiling the drain ratios are taken against (None: measure one
    on each run's own topic, recorded as its consume_ceiling_per_s)."""
    from infra import kafka
    from streaming.replay import event_log

    rss: dict = {"user_ttl_s": user_ttl, "compact_interval_s": 1.0}
    for label, n_ev, n_us in (("large", rss_events, rss_users), ("small", rss_events // 5, rss_users // 20)):
        rtopic = f"bench-rss-{label}"
        kafka.create_topics(bootstrap, {rtopic: partitions})
        rinter = _synthetic_users(n_ev, n_us, seed + 2)
        rlog = event_log(rinter)
        _produce_backlog(bootstrap, rtopic, rlog, partitions)
        own_ceiling = _consume_ceiling(bootstrap, rtopic, len(rlog)) if ceiling is None else None
        worker = start(f"rss-{label}", rtopic, ["--user-ttl", str(user_ttl), "--compact-interval", "1"])
        worker.wait_committed(len(rlog), 1800, f"the {label} rss drain")
        ms = _metrics(worker.metrics)
        rss[label] = {"events": len(rlog), "users": int(rinter.n_users), "rss_mb": worker.peak_rss_mb(),
                      "users_in_memory_max": max(m["users_in_memory"] for m in ms),
                      **_drain_figures(worker, len(rlog), ceiling or own_ceiling)}
        if own_ceiling is not None:
            rss[label]["consume_ceiling_per_s"] = round(own_ceiling)
        worker.stop()
        rss[label]["exact_match"] = _exact(f"sqlite:///{worker.data / 'stream.sqlite'}", rtopic, rinter, r,
                                           window, seed)
        click.echo(f"rss {label}: {rss[label]}")
    rss["rss_ratio"] = round(rss["large"]["rss_mb"] / rss["small"]["rss_mb"], 3)
    return {"rss": rss, "rss_mb": {"large": rss["large"]["rss_mb"], "small": rss["small"]["rss_mb"]},
            "rss_ratio": rss["rss_ratio"]}


@click.command()
@click.option("--events", type=int, default=1_000_000, show_default=True, help="Synthetic events to drain.")
@click.option("--fresh-events", type=int, default=100_000, show_default=True)
@click.option("--fresh-rate", type=float, default=10_000, show_default=True, help="events/s in the freshness phase")
@click.option("--partitions", type=int, default=4, show_default=True)
@click.option("--r", "r", type=int, default=20, show_default=True)
@click.option("--window", type=int, default=50, show_default=True)
@click.option("--checkpoint-interval", type=float, default=1.0, show_default=True)
@click.option("--rss-events", type=int, default=5_000_000, show_default=True,
              help="events of the large-state run; the small one has a fifth of them")
@click.option("--rss-users", type=int, default=2_000_000, show_default=True,
              help="users of the large-state run; the small one has a twentieth of them")
@click.option("--user-ttl", type=float, default=2.0, show_default=True, help="user_ttl_s of the rss runs")
@click.option("--dlq-bad", type=int, default=600, show_default=True, help="malformed messages of the dlq phase")
@click.option("--postgres/--no-postgres", default=True, show_default=True, help="also drain into Postgres")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), default=str(REPO / "bench" / "results" / "stream.json"),
              show_default=True)
@click.option("--hardware", default="2-core CPU dev machine, shared (the loadavg keys record the load)",
              show_default=True)
@click.option("--rss-only", is_flag=True, default=False,
              help="Run only the rss phase; update the rss keys of the existing --out JSON and keep the others.")
@click.option("--keep-work/--no-keep-work", default=False, show_default=True,
              help="Keep the temporary directory (broker log, worker store, metrics).")
def command(events: int, fresh_events: int, fresh_rate: float, partitions: int, r: int, window: int,
            checkpoint_interval: float, rss_events: int, rss_users: int, user_ttl: float,
            dlq_bad: int, postgres: bool, seed: int, out: str, hardware: str, rss_only: bool,
            keep_work: bool) -> None:
    """Benchmark the stream worker end to end; writes bench/results/stream.json."""
    import multiprocessing

    from features.config import StoreConfig
    from features.store import FeatureRepo
    from g2rec.data import from_events
    from infra import kafka
    from infra import postgres as infra_postgres
    from streaming.replay import synthetic_interactions
    from streaming.replay import EventLog, ReplayConfig, event_log, replay

    work = Path(tempfile.mkdtemp(prefix="g2rec-bench-stream-"))
    broker = kafka.start(log_dir=work)
    bootstrap = broker.bootstrap
    result: dict = {"hardware": hardware, "cpus": os.cpu_count(), "python": platform.python_version(),
                    "loadavg_1m_at_start": round(os.getloadavg()[0], 2), "events": None,
                    "partitions": partitions, "r": r, "window": window, "checkpoint_interval_s": checkpoint_interval}
    common = dict(bootstrap=bootstrap, partitions=partitions, r=r, window=window, seed=seed,
                  checkpoint_interval=checkpoint_interval)
    workers: list[_Worker] = []
    pg = None

    def start(name: str, topic: str, extra: list[str] | None = None) -> _Worker:
        workers.append(_Worker(work, name, topic=topic, extra=extra or [], **common))
        return workers[-1]

    if rss_only and Path(out).exists():  # keep every other key of the last full run
        result = json.loads(Path(out).read_text())

    try:
        if rss_only:
            load0, started = round(os.getloadavg()[0], 2), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
            t0 = time.perf_counter()
            result.update(_rss_phase(bootstrap, start, rss_events, rss_users, user_ttl, partitions, None, r, window,
                                     seed))
            result["rss"]["rerun"] = {
                "started": started, "how": "g2rec bench stream --rss-only",
                "loadavg_1m_at_start": load0, "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
                "minutes": round((time.perf_counter() - t0) / 60, 1),
                "note": "only the rss phase was rerun; the other keys are from the run before; rss.*.ratio is "
                        "against rss.*.consume_ceiling_per_s, measured on that run's own topic"}
            _write_result(out, result)
            return
        topic = "bench-events"
        kafka.create_topics(bootstrap, {topic: partitions})
        t0 = time.perf_counter()
        inter = synthetic_interactions(events, seed)
        log = event_log(inter)
        result["events"] = len(log)
        result["generate_s"] = round(time.perf_counter() - t0, 2)
        click.echo(f"generated {len(log)} events ({inter.n_users} users, {inter.n_items} items)")

        t0 = time.perf_counter()
        _produce_backlog(bootstrap, topic, log, partitions)
        result["produce_events_per_s"] = round(len(log) / (time.perf_counter() - t0))
        click.echo(f"produced at {result['produce_events_per_s']} events/s (aiokafka record batches)")

        ceiling = _consume_ceiling(bootstrap, topic, len(log))
        result["consume_ceiling_per_s"] = round(ceiling)
        click.echo(f"raw aiokafka consume ceiling {result['consume_ceiling_per_s']} events/s")

        worker = start("sqlite", topic)
        worker.wait_committed(len(log), 1800, "the backlog drain")
        result.update(_drain_figures(worker, len(log), ceiling))
        result["loadavg_1m_after_drain"] = round(os.getloadavg()[0], 2)
        click.echo(f"worker drained the backlog at {result['events_per_s']} events/s (ratio {result['ratio']})")
        t0 = time.perf_counter()  # while the worker idles, before the fresh phase
        result["exact_match"] = _exact(f"sqlite:///{worker.data / 'stream.sqlite'}", topic, inter, r, window, seed)
        result["batch_counts_s"] = round(time.perf_counter() - t0, 2)
        click.echo(f"exact match with the batch builder: {result['exact_match']}")
        # Count freshness of the caught-up worker (no history sink), on new users.
        fresh = synthetic_interactions(fresh_events, seed + 1)
        flog = event_log(fresh)
        flog = EventLog(flog.users + 10_000_000, flog.items, flog.times, "fresh")
        fresh_start = time.time()
        replay(flog, ReplayConfig(bootstrap, topic, rate=fresh_rate), partitions, progress=False, id_offset=len(log))
        worker.wait_committed(len(log) + len(flog), 300, "the fresh events")
        lags = _lags_since(worker, fresh_start)
        result["fresh_events"] = int(len(lags))
        result["fresh_rate_per_s"] = fresh_rate
        result["p50_freshness_s"] = round(float(np.percentile(lags, 50)), 3)
        result["p99_freshness_s"] = round(float(np.percentile(lags, 99)), 3)
        worker.stop()
        click.echo(f"count freshness p50 {result['p50_freshness_s']} s, p99 {result['p99_freshness_s']} s")

        if postgres:
            pg = infra_postgres.start()  # its own temp dir: the server may run as another user
            url = pg.create_database("bench_stream")
            # The topic now also holds the freshness phase's events (new users): drain and check them all.
            both = from_events(np.concatenate([log.users, flog.users]), np.concatenate([log.items, flog.items]),
                               np.concatenate([log.times, flog.times]))
            worker = start("postgres", topic, ["--store-url", url])
            worker.wait_committed(both.n_interactions, 1800, "the Postgres drain")
            figures = _drain_figures(worker, both.n_interactions, ceiling)
            worker.stop()
            result["postgres"] = {**figures, "events": both.n_interactions,
                                  "exact_match": _exact(url, topic, both, r, window, seed)}
            click.echo(f"postgres store: {result['postgres']}")

        # Freshness, with the Feast history sink on (the production path), on a fresh topic.
        fresh_topic = "bench-fresh"
        kafka.create_topics(bootstrap, {fresh_topic: partitions})
        repo_root = work / "features"
        FeatureRepo(StoreConfig(root=repo_root)).apply()
        worker = start("feast", fresh_topic, ["--sink", "feast", "--sink-option", f"root={repo_root}"])
        flog = EventLog(flog.users + 10_000_000, flog.items, flog.times, "fresh")  # 20M+: new users again
        replay(EventLog(flog.users[:200], flog.items[:200], flog.times[:200], "warm"),
               ReplayConfig(bootstrap, fresh_topic), partitions, progress=False)
        worker.wait_committed(200, 120, "the feast worker to start")
        rng = np.random.default_rng(seed)
        candidates = np.unique(flog.users[200:])
        watched = rng.choice(candidates, min(400, len(candidates)), replace=False)
        spawn = multiprocessing.get_context("spawn")
        polling, stop_polling = spawn.Event(), spawn.Event()
        seen_path = str(work / "feast_seen.npy")
        poller = spawn.Process(target=_feast_visibility, args=(str(repo_root), watched, polling, stop_polling,
                                                               seen_path))
        poller.start()
        if not polling.wait(120):
            raise click.ClickException("the Feast poller did not start within 120 s")
        fresh_start = time.time()
        replay(EventLog(flog.users[200:], flog.items[200:], flog.times[200:], "fresh"),
               ReplayConfig(bootstrap, fresh_topic, rate=fresh_rate), partitions, progress=False, id_offset=200)
        worker.wait_committed(len(flog), 300, "the fresh events")
        time.sleep(1.0)
        stop_polling.set()
        poller.join(60)
        seen = [(t, int(u), int(n)) for t, u, n in np.load(seen_path).tolist()]
        lags = _lags_since(worker, fresh_start)
        result["feast_sink_p50_freshness_s"] = round(float(np.percentile(lags, 50)), 3)
        result["feast_sink_p99_freshness_s"] = round(float(np.percentile(lags, 99)), 3)
        # The n-th event of a watched user is readable once lookup returns >= n items (and the
        # history keeps the last history_len, so later events are not told apart).
        warm_counts = {int(u): int(c) for u, c in zip(*np.unique(flog.users[:200], return_counts=True))}
        created = _create_times(bootstrap, fresh_topic, {p: 0 for p in range(partitions)}, set(watched.tolist()))
        history_len = StoreConfig(root=repo_root).history_len
        first_seen: dict[tuple[int, int], float] = {}
        for t, u, n in seen:
            for k in range(1, min(n, history_len) + 1):
                first_seen.setdefault((u, k), t)
        feast_lags = [first_seen[(u, k + 1)] - ts for u, times in created.items() for k, ts in enumerate(times)
                      if k + 1 <= history_len and k >= warm_counts.get(u, 0) and (u, k + 1) in first_seen]
        missing = sum(1 for u, times in created.items() for k in range(min(len(times), history_len))
                      if (u, k + 1) not in first_seen)
        result["feast_fresh_events_watched"] = len(feast_lags)
        result["feast_not_seen"] = missing
        result["feast_freshness_p50_s"] = round(float(np.percentile(feast_lags, 50)), 3)
        result["feast_freshness_p99_s"] = round(float(np.percentile(feast_lags, 99)), 3)
        worker.stop()
        click.echo(f"with the Feast sink: count freshness p99 {result['feast_sink_p99_freshness_s']} s; feast p99 "
                   f"{result['feast_freshness_p99_s']} s over {len(feast_lags)} events ({missing} not seen)")

        result.update(_rss_phase(bootstrap, start, rss_events, rss_users, user_ttl, partitions, ceiling, r, window,
                                 seed))

        # Dead letters: each malformed message on the DLQ topic exactly once.
        dtopic = "bench-dlq"
        kafka.create_topics(bootstrap, {dtopic: partitions})
        bad = _produce_dlq_mix(bootstrap, dtopic, 5000, dlq_bad, seed)
        worker = start("dlq", dtopic)
        worker.wait_committed(5000, 300, "the dlq replay")
        keys = _dead_letter_keys(bootstrap, f"{dtopic}-dlq", len(bad))
        worker.stop()
        want = {f"{dtopic}/{p}/{o}".encode() for p, o in bad}
        result["dlq_exact"] = bool(len(keys) == len(set(keys)) == len(bad) and set(keys) == want)
        result["dlq_messages"] = {"malformed": len(bad), "on_dlq": len(keys), "distinct": len(set(keys))}
        click.echo(f"dlq exact: {result['dlq_exact']} {result['dlq_messages']}")

        result["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
        result["target_ratio"] = 0.40
        result["meets_ratio_target"] = result["ratio"] >= 0.40
        result["notes"] = (
            "Shared 2-core machine (its load: the loadavg keys): absolute rates "
            "swing 2-3x between runs, compare ratios measured side by side in this file. "
            "events_per_s: one worker draining a backlog, first fetch to last committed checkpoint "
            "(counts, windows and offsets durable in the store); consume_ceiling_per_s: raw aiokafka getmany "
            "of the same topic on the same broker; ratio = events_per_s / consume_ceiling_per_s; "
            "events_per_cpu_s: events per CPU second of the worker process; exact_match: committed counts "
            "equal g2rec.graph.coengagement_counts; postgres: the same drain into a Postgres state store "
            "(infra/postgres.py); freshness: the caught-up worker gets new events at fresh_rate_per_s; "
            "p50/p99_freshness_s = commit time - Kafka CreateTime (no history sink); then a worker with the "
            "Feast history sink on a fresh topic: feast_sink_p50/p99_freshness_s the same commit lag there, "
            "feast_freshness_*_s = "
            "first features.lookup poll (every ~20 ms plus the lookup) showing the event in the user's history "
            "- CreateTime, over watched users; rss: peak RSS (VmHWM) of a worker with user_ttl_s draining "
            f"rss.large vs rss.small ({rss_events} events / {rss_users} users vs a fifth of the events over a "
            "twentieth of the users); dlq_exact: a replay with malformed messages puts each on the DLQ exactly once.")
    finally:
        for w in workers:
            w.stop()
        if pg is not None:
            infra_postgres.stop(pg.pid)
            shutil.rmtree(pg.dir, ignore_errors=True)
        kafka.stop(broker.pid)
        if keep_work:
            click.echo(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    _write_result(out, result)


def _write_result(out: str, result: dict) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    click.echo(f"wrote {out}")
