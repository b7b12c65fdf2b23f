"""The stream worker's processing in this process, for the training-service benchmark and tests:
events -> the worker's StreamProcessor (state store, Parquet event log) -> take_snapshot (files,
store row) -> the announcement on `<topic>-snapshots` of a real broker. Only Kafka consumption
of the events topic is left out (the processor is fed directly, one partition per user % P), so a
time slice becomes a snapshot in seconds, deterministically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from g2rec.graph import GraphConfig
from streaming.config import StreamConfig, TopicConfig
from streaming.models import SnapshotAnnouncement, encode_event


class StreamDriver:
    def __init__(self, data_dir: Path, topic: str = "g2rec-events", partitions: int = 2, r: int = 5,
                 window: int = 20, bootstrap: str = "") -> None:
        from streaming.processor import StreamProcessor
        from streaming.store import StateStore

        self.cfg = StreamConfig(bootstrap=bootstrap or "127.0.0.1:9", data_dir=str(data_dir),
                                topics=TopicConfig(events=topic, partitions=partitions),
                                graph=GraphConfig(r=r, window=window, seed=0),
                                checkpoint_events=10**9, checkpoint_interval_s=1e9)
        self.bootstrap = bootstrap
        self.partitions = partitions
        self.store = StateStore(self.cfg.store)
        self.proc = StreamProcessor(self.cfg, self.store)
        for p in range(partitions):
            self.proc.assign(p, 0)
        self._sent = 0
        self._producer = None

    @property
    def event_log(self) -> Path:
        return self.cfg.event_log_path

    def feed(self, users: np.ndarray, items: np.ndarray, times: np.ndarray) -> None:
        """Process and commit these events (time order), partitioned by user."""
        part = np.asarray(users) % self.partitions
        for p in range(self.partitions):
            rows = np.flatnonzero(part == p)
            if not len(rows):
                continue
            start = self.proc.next_offset[p]
            values = [encode_event(f"e{self._sent + i}", int(users[i]), int(items[i]), float(times[i])) for i in rows]
            self.proc.process(p, list(range(start, start + len(rows))), values)
        self._sent += len(users)
        self.proc.checkpoint()

    def snapshot(self, announce: bool = True) -> SnapshotAnnouncement:
        """Take a snapshot of everything committed; announce it on the broker when there is one."""
        from streaming.snapshots import take_snapshot

        info = take_snapshot(self.store, self.cfg, force=True)
        if announce and self.bootstrap:
            self.announce(info)
        return info

    def announce(self, info: SnapshotAnnouncement) -> None:
        from kafka import KafkaProducer

        from infra.kafka import create_topics

        if self._producer is None:
            create_topics(self.bootstrap, {self.cfg.topics.snapshots: 1}, exact=False)
            self._producer = KafkaProducer(bootstrap_servers=self.bootstrap)
        self._producer.send(self.cfg.topics.snapshots, key=f"{info.store_id}/{info.snapshot_id}".encode(),
                            value=info.dumps())
        self._producer.flush()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
