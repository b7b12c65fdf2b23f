"""Freshness of the serving stack: the time from producing an event on Kafka until POST /recommend
{"user_id": u} reflects it (`g2rec bench serve`, its freshness_* keys).

One run wires the production path: a Tansu broker, `g2rec stream --sink feast` writing users'
recent histories into a Feast repo (SQLite online store), and `g2rec serve RUN_DIR --features`
reading that repo. Events are produced at a steady rate: each watched user (new, no history) gets
one every `watched_every_s`, spread evenly, and background users take the rest of the rate. A
poller process (its own GIL, like a separate client) asks /recommend for every watched user about
every `poll_interval_s` and records when each answer arrived and its `history_items` (the length of
the history the server read). The j-th event of a user is reflected once an answer says
history_items >= j (the stream keeps a user's events in order); its freshness is that answer's
arrival time - the event's Kafka CreateTime (set by the producer, same clock). The polling period
is part of the figure (on average half of it).
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from g2rec.errors import UnavailableError

REPO = Path(__file__).resolve().parent.parent
WARM_BASE, WATCHED_BASE, BACKGROUND_BASE = 40_000_000, 50_000_000, 60_000_000


@dataclass(frozen=True)
class FreshnessConfig:
    users: int = 20  # watched users
    rate: float = 500.0  # events per second produced in all (watched + background)
    seconds: float = 20.0  # of steady production
    watched_every_s: float = 1.0  # each watched user gets an event this often
    poll_interval_s: float = 0.05  # each watched user is asked for about this often
    pollers: int = 4  # poller threads, each on its own keep-alive connection
    partitions: int = 4
    background_users: int = 5_000
    timeout_s: float = 120.0  # for the worker to join, and for the last events to show
    seed: int = 0

    def __post_init__(self) -> None:
        if self.users < 1 or self.rate * self.watched_every_s < self.users:
            raise ValueError(f"rate={self.rate}/s cannot carry {self.users} users every {self.watched_every_s} s")
        if self.seconds / self.watched_every_s > 45:  # a watched user's events must fit the stored history (50)
            raise ValueError(f"seconds={self.seconds}: at most 45 events per watched user")


def _post(conn: http.client.HTTPConnection, body: dict) -> dict:
    """POST /recommend on a keep-alive connection -> the answer (UnavailableError when not 200)."""
    conn.request("POST", "/recommend", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    data = r.read()
    if r.status != 200:
        raise UnavailableError(f"/recommend answered {r.status}: {data[:200]!r}")
    return json.loads(data)


def _poll(port: int, users: list[int], interval_s: float, threads: int, warm_s: float, ready, stop,
          out_path: str) -> None:
    """Poller process: `threads` threads share `users`, each asking /recommend for its users about
    every interval_s until `stop`; `ready` is set after warm_s of polling. Writes rows (arrival
    time, user, history_items, request seconds) to out_path."""
    rows: list[tuple[float, int, int, float]] = []
    lock = threading.Lock()
    t_ready = time.time() + warm_s

    def client(mine: list[int]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        out = []
        while not stop.is_set():
            start = time.perf_counter()
            for u in mine:
                t0 = time.perf_counter()
                n = _post(conn, {"user_id": u, "k": 10})["history_items"]
                out.append((time.time(), u, n, time.perf_counter() - t0))
            if time.time() > t_ready:
                ready.set()
            time.sleep(max(0.0, interval_s - (time.perf_counter() - start)))
        conn.close()
        with lock:
            rows.extend(out)

    workers = [threading.Thread(target=client, args=(users[i::threads],)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    np.save(out_path, np.array(rows, dtype=np.float64).reshape(-1, 4))


def _schedule(cfg: FreshnessConfig, items: np.ndarray) -> list[tuple[float, int, int]]:
    """(seconds from start, user, item) of every event, in time order: watched users spread
    evenly over each watched_every_s, each with distinct items; background events uniform."""
    rng = np.random.default_rng(cfg.seed)
    rounds = int(cfg.seconds / cfg.watched_every_s)
    events = []
    for i in range(cfg.users):
        own = rng.choice(items, rounds, replace=False)
        events += [((r + i / cfg.users) * cfg.watched_every_s, WATCHED_BASE + i, int(own[r])) for r in range(rounds)]
    n_bg = int((cfg.rate - cfg.users / cfg.watched_every_s) * cfg.seconds)
    events += zip(rng.uniform(0, cfg.seconds, n_bg).tolist(),
                  (BACKGROUND_BASE + rng.integers(0, cfg.background_users, n_bg)).tolist(),
                  rng.choice(items, n_bg).tolist())
    return sorted(events)


def _history_items(port: int, user: int) -> int:
    """history_items of /recommend for `user`, on a new connection (the server drops idle ones)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        return _post(conn, {"user_id": user})["history_items"]
    finally:
        conn.close()


def measure_freshness(run_dir: Path, work: Path, cfg: FreshnessConfig = FreshnessConfig()) -> dict:
    """Broker, stream worker with the Feast sink, server with --features, poller: the freshness_*
    figures of the module docstring."""
    import multiprocessing

    from kafka import KafkaProducer

    from bench.serve import ServeProcess
    from features.config import StoreConfig
    from features.store import FeatureRepo
    from infra import kafka
    from infra.process import stop as stop_pid
    from streaming.models import encode_event
    from streaming.replay import partitions_for_users

    work.mkdir(parents=True)  # new: a stream store from an earlier broker would skip this one's offsets
    items = np.load(Path(run_dir) / "item_ids.npy", allow_pickle=True)[1:]
    if items.dtype.kind not in "iu":
        raise ValueError(f"{run_dir}: freshness needs integer item ids (events carry int ids)")
    topic, root = "bench-serve-fresh", work / "features"
    with FeatureRepo(StoreConfig(root=root, online="sqlite")) as repo:
        repo.apply()
    broker = kafka.start(log_dir=work)
    procs: list[subprocess.Popen] = []
    server = producer = poller = None
    spawn = multiprocessing.get_context("spawn")
    ready, stop = spawn.Event(), spawn.Event()
    try:
        kafka.create_topics(broker.bootstrap, {topic: cfg.partitions})
        with open(work / "stream.log", "wb") as log:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "cli.main", "stream", "--bootstrap", broker.bootstrap, "--topic", topic,
                 "--partitions", str(cfg.partitions), "--data-dir", str(work / "stream"), "--sink", "feast",
                 "--sink-option", f"root={root}", "--snapshot-interval", "3600", "--log-level", "warn"],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        server = ServeProcess(run_dir, "--features", "--poll-seconds", "0",
                              env={"G2REC_FEATURES_ROOT": str(root), "G2REC_FEAST_ONLINE": "sqlite"})
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", linger_ms=0)

        def send(user: int, item: int) -> float:
            ms = int(time.time() * 1000)
            producer.send(topic, key=str(user).encode(), value=encode_event(f"f-{user}-{ms}-{item}", user, item,
                                                                            ms / 1000), timestamp_ms=ms)
            return ms / 1000

        # Warm up: the worker's group join takes seconds and may hand it partitions one rebalance
        # at a time; wait until an event of every partition shows.
        candidates = WARM_BASE + np.arange(64 * cfg.partitions)
        parts = partitions_for_users(candidates, cfg.partitions)
        warm_users = [int(candidates[np.flatnonzero(parts == p)[0]]) for p in range(cfg.partitions)]
        deadline = time.monotonic() + cfg.timeout_s
        while any(_history_items(server.port, u) == 0 for u in warm_users):
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise UnavailableError(f"events did not reach /recommend from every partition within {cfg.timeout_s}s",
                                       fix=f"see {work / 'stream.log'}")
            for u in warm_users:
                send(u, int(items[0]))
            producer.flush()
            time.sleep(0.5)

        watched = [WATCHED_BASE + i for i in range(cfg.users)]
        seen_path = str(work / "fresh_seen.npy")
        poller = spawn.Process(target=_poll, args=(server.port, watched, cfg.poll_interval_s, cfg.pollers, 2.0,
                                                   ready, stop, seen_path))
        poller.start()
        deadline = time.monotonic() + cfg.timeout_s
        while not ready.wait(0.5):
            if not poller.is_alive() or time.monotonic() > deadline:
                raise UnavailableError("the freshness poller did not start", fix="see its traceback above")
        created: dict[int, list[float]] = {u: [] for u in watched}
        schedule = _schedule(cfg, items)
        t0 = time.perf_counter()
        for at, user, item in schedule:
            ahead = at - (time.perf_counter() - t0)
            if ahead > 0.002:
                time.sleep(ahead)
            ts = send(user, item)
            if WATCHED_BASE <= user < BACKGROUND_BASE:
                created[user].append(ts)
        producer.flush()
        produced_per_s = len(schedule) / (time.perf_counter() - t0)
        # Until every watched user's last event shows (or the timeout), then one more poll round.
        deadline = time.monotonic() + cfg.timeout_s
        while any(_history_items(server.port, u) < len(created[u]) for u in watched):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        time.sleep(2 * cfg.poll_interval_s)
        stop.set()
        poller.join(60)
        rows = np.load(seen_path)
    finally:
        if poller is not None and poller.is_alive():
            stop.set()
            poller.join(10)
            if poller.is_alive():
                poller.terminate()
        if producer is not None:
            producer.close()
        if server is not None:
            server.stop()
        for p in procs:
            stop_pid(p.pid)
        kafka.stop(broker.pid)
    return freshness_figures(created, rows, cfg, produced_per_s)


def freshness_figures(created: dict[int, list[float]], rows: np.ndarray, cfg: FreshnessConfig,
                      produced_per_s: float) -> dict:
    """created: user -> CreateTimes (s) of its events in order; rows: (arrival time, user,
    history_items, request seconds) of every poll -> the freshness_* figures."""
    lags, missing = [], 0
    for u, times in created.items():
        mine = rows[rows[:, 1] == u]
        mine = mine[np.argsort(mine[:, 0], kind="stable")]
        for j, ts in enumerate(times, start=1):
            hit = np.flatnonzero(mine[:, 2] >= j)
            if len(hit):
                lags.append(mine[hit[0], 0] - ts)
            else:
                missing += 1
    if not lags:
        raise UnavailableError("no watched event was reflected by /recommend", fix="see the stream and serve logs")
    lags = np.array(lags)
    periods = [np.diff(np.sort(rows[rows[:, 1] == u, 0])).mean() for u in created if (rows[:, 1] == u).sum() > 1]
    return {
        "freshness_p50_s": float(np.percentile(lags, 50)), "freshness_p99_s": float(np.percentile(lags, 99)),
        "freshness_max_s": float(lags.max()), "freshness_events": len(lags), "freshness_not_seen": missing,
        "freshness_users": len(created), "freshness_rate_per_s": cfg.rate,
        "freshness_produced_per_s": float(produced_per_s),
        "freshness_poll_period_s": float(np.mean(periods)),
        "freshness_poll_p50_ms": float(1000 * np.median(rows[:, 3])),
        "freshness_poll_p99_ms": float(1000 * np.percentile(rows[:, 3], 99)),
    }
