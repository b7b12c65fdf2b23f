"""Replay interactions into the events topic with kafka-python, keyed by user.

Events go out in time order (ties keep each user's history order), one message per event, key =
the user id, so each user's events land on one partition in order. The producer is idempotent
(acks=all, enable_idempotence), so broker-side retries never duplicate or reorder a partition.
Partitions are those of Kafka's default partitioner (murmur2 of the key), computed once per user.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass

import numpy as np

from g2rec.errors import ConfigError, DataError, UnavailableError
from g2rec.types import Interactions
from streaming.models import encode_event


@dataclass(frozen=True)
class EventLog:
    """Events in replay order. users/items: (M,) raw ids; times: (M,) unix seconds."""

    users: np.ndarray
    items: np.ndarray
    times: np.ndarray
    source: str = ""

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class ReplayConfig:
    """rate: target events per second over all processes (None = as fast as possible)."""

    bootstrap: str
    topic: str
    rate: float | None = None
    processes: int = 1
    event_type: str = "view"
    linger_ms: int = 20

    def __post_init__(self) -> None:
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"rate={self.rate} must be positive (or None for as fast as possible)")
        if self.processes < 1:
            raise ConfigError(f"processes={self.processes} must be >= 1")


def synthetic_interactions(events: int, seed: int) -> Interactions:
    """About `events` synthetic interactions with planted interests (g2rec.synth): ~20 events per
    user, the catalogue growing with the stream so counts stay sparse."""
    from g2rec.synth import SynthConfig, synth_interactions

    n_users = max(10, events // 20)
    n_items = max(100, min(200_000, events // 20))
    inter, _ = synth_interactions(SynthConfig(n_users=n_users, n_items=n_items, n_interests=max(20, n_items // 200),
                                              seed=seed))
    return inter


def event_log(inter: Interactions) -> EventLog:
    """Flatten Interactions into replay order; raw ids must be integers (the wire carries ints)."""
    if not (np.issubdtype(inter.user_ids.dtype, np.integer) and np.issubdtype(inter.item_ids.dtype, np.integer)):
        raise DataError(f"{inter.name}: user and item ids must be integers to replay, got "
                         f"{inter.user_ids.dtype} and {inter.item_ids.dtype}")
    users = np.repeat(inter.user_ids.astype(np.int64), inter.lengths())
    items = inter.item_ids.astype(np.int64)[inter.items]
    order = np.argsort(inter.times, kind="stable")  # per-user order survives ties
    return EventLog(users[order], items[order], inter.times[order], inter.name)


def partitions_for_users(users: np.ndarray, n_partitions: int) -> np.ndarray:
    """(M,) partition of each event under Kafka's default partitioner for key str(user)."""
    from kafka.partitioner.default import murmur2

    uniq, inverse = np.unique(users, return_inverse=True)
    part = np.array([(murmur2(str(u).encode()) & 0x7FFFFFFF) % n_partitions for u in uniq.tolist()],
                    dtype=np.int64)
    return part[inverse]


def _send(cfg: ReplayConfig, log: EventLog, parts: np.ndarray, rows: np.ndarray, rate: float | None,
          progress: bool, offset: int) -> int:
    """Send log rows `rows` (in order) with explicit partitions; returns how many were acked."""
    from kafka import KafkaProducer
    from tqdm import tqdm

    producer = KafkaProducer(bootstrap_servers=cfg.bootstrap, acks="all", enable_idempotence=True,
                             linger_ms=cfg.linger_ms, batch_size=512 * 1024,
                             max_in_flight_requests_per_connection=5, max_request_size=8 * 1024 * 1024)
    failures: list[BaseException] = []
    start = time.monotonic()
    bar = tqdm(total=len(rows), unit="ev", disable=not progress, mininterval=0.5)
    users, items, times = log.users.tolist(), log.items.tolist(), log.times.tolist()
    source = log.source or "events"
    try:
        chunk = 2000 if rate is None else max(1, min(2000, int(rate / 50)))  # pace in ~20 ms steps
        for lo in range(0, len(rows), chunk):
            for k in rows[lo:lo + chunk].tolist():
                u = users[k]
                value = encode_event(f"{source}-{offset + k}", u, items[k], times[k], cfg.event_type, 1.0)
                producer.send(cfg.topic, key=str(u).encode(), value=value,
                              partition=int(parts[k])).add_errback(failures.append)
            sent = min(lo + chunk, len(rows))
            bar.update(sent - lo)
            if rate is not None:
                ahead = sent / rate - (time.monotonic() - start)
                if ahead > 0:
                    time.sleep(ahead)
            if failures:
                break
        producer.flush()
    finally:
        bar.close()
        producer.close()
    if failures:
        raise UnavailableError(f"replay to {cfg.topic}: {len(failures)} sends failed, first: {failures[0]!r}")
    return len(rows)


def _worker(args: tuple) -> int:
    return _send(*args)


def replay(log: EventLog, cfg: ReplayConfig, n_partitions: int, progress: bool = True,
           id_offset: int = 0) -> int:
    """Send every event of `log`; returns the number acknowledged by the broker.

    With processes > 1 each process owns a disjoint set of partitions, so per-partition (hence
    per-user) order is kept. event_id = f"{source}-{index + id_offset}".
    """
    parts = partitions_for_users(log.users, n_partitions)
    if cfg.processes == 1:
        return _send(cfg, log, parts, np.arange(len(log)), cfg.rate, progress, id_offset)
    rate = cfg.rate / cfg.processes if cfg.rate else None
    jobs = [(cfg, log, parts, np.flatnonzero(parts % cfg.processes == k), rate, progress and k == 0, id_offset)
            for k in range(cfg.processes)]
    with mp.get_context("fork").Pool(cfg.processes) as pool:
        return sum(pool.map(_worker, jobs))
