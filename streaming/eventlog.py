"""The Parquet event log: every committed, valid event, for training and other services.

Layout (a pyarrow dataset, hive-partitioned by event day (UTC) and Kafka partition):

    <root>/date=YYYY-MM-DD/partition=P/<start:020d>-<end:020d>.parquet

one file per (day, partition) of each checkpoint range [start, end) of Kafka offsets, with columns
    user_id, item_id    int64 raw ids
    event_timestamp     timestamp[us, UTC], the event's time
    kafka_partition     int32
    kafka_offset        int64
sorted by offset. The worker writes a range's files *before* committing its offsets, each by a
temp file and a rename. A restart reprocesses from the committed offsets and rewrites files over
the same offsets; their range ends may differ from the first attempt's (batches are cut anew), so
files can overlap, but a (partition, offset) always holds the same event. Readers therefore keep
one row per (partition, offset) and, given the store's committed offsets, drop rows past them:
the result is every committed event exactly once. A worker taking over a partition deletes the
files that start at or past its committed offset (leftovers of attempts that never committed).

Retention (StreamConfig.event_log_retention_days / _bytes) drops whole days: those more than N
days older than the newest day in the log (the log's own clock, so replays of old data behave),
then the oldest days while the log is over the byte budget; the newest day always stays.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from g2rec.data import from_events
from g2rec.types import Interactions

SCHEMA = pa.schema([
    ("user_id", pa.int64()),
    ("item_id", pa.int64()),
    ("event_timestamp", pa.timestamp("us", tz="UTC")),
    ("kafka_partition", pa.int32()),
    ("kafka_offset", pa.int64()),
])
_PARTITIONING = ds.partitioning(pa.schema([("date", pa.string()), ("partition", pa.int32())]), flavor="hive")
_DAY_S = 86400


@dataclass(frozen=True)
class LoggedEvents:
    """One partition's valid events of one offset range, in offset order.

    start, end: the range [start, end) of Kafka offsets covered (invalid records included).
    offsets: (n,) int64 Kafka offsets; users, items: (n,) int64 raw ids; times: (n,) float64 unix s.
    """

    partition: int
    start: int
    end: int
    offsets: np.ndarray
    users: np.ndarray
    items: np.ndarray
    times: np.ndarray


def _day(t: np.ndarray) -> np.ndarray:
    return np.floor(t / _DAY_S).astype(np.int64)


def _day_name(day: int) -> str:
    return (date(1970, 1, 1) + timedelta(days=int(day))).isoformat()


def file_range(path: Path) -> tuple[int, int]:
    """(start, end) offsets from a log file's name."""
    start, end = path.stem.split("-")
    return int(start), int(end)


class EventLogWriter:
    """Writes checkpoint ranges into the log under `root` and applies the retention policy."""

    def __init__(self, root: str | os.PathLike, retention_days: float | None = None,
                 retention_bytes: int | None = None, retention_every_s: float = 60.0) -> None:
        self.root = Path(root)
        self.retention_days = retention_days
        self.retention_bytes = retention_bytes
        self.retention_every_s = retention_every_s
        self._last_retention = 0.0

    def write(self, batches: list[LoggedEvents]) -> list[Path]:
        """Write each range's files (one per event day), atomically; returns the paths written."""
        written = []
        for b in batches:
            if not len(b.offsets):
                continue
            days = _day(b.times)
            for day in np.unique(days).tolist():
                rows = np.flatnonzero(days == day)
                table = pa.table({
                    "user_id": b.users[rows].astype(np.int64), "item_id": b.items[rows].astype(np.int64),
                    "event_timestamp": pa.array(np.round(b.times[rows] * 1e6).astype(np.int64),
                                                type=pa.int64()).cast(SCHEMA.field("event_timestamp").type),
                    "kafka_partition": np.full(len(rows), b.partition, dtype=np.int32),
                    "kafka_offset": b.offsets[rows].astype(np.int64)}, schema=SCHEMA)
                folder = self.root / f"date={_day_name(day)}" / f"partition={b.partition}"
                folder.mkdir(parents=True, exist_ok=True)
                path = folder / f"{b.start:020d}-{b.end:020d}.parquet"
                tmp = folder / f".{path.name}.{os.getpid()}.tmp"  # dot files are ignored by readers
                pq.write_table(table, tmp)
                os.replace(tmp, path)
                written.append(path)
        if (self.retention_days is not None or self.retention_bytes is not None) and \
                time.monotonic() - self._last_retention >= self.retention_every_s:
            self.apply_retention()
        return written

    def drop_uncommitted(self, partition: int, committed: int) -> int:
        """Delete this partition's files starting at or past `committed`; returns how many."""
        n = 0
        for path in self.root.glob(f"date=*/partition={partition}/*.parquet"):
            if file_range(path)[0] >= committed:
                path.unlink(missing_ok=True)
                n += 1
        return n

    def apply_retention(self) -> list[str]:
        """Drop days past the retention limits; returns the day names dropped."""
        self._last_retention = time.monotonic()
        days = sorted(p for p in self.root.glob("date=*") if p.is_dir())
        if len(days) < 2:
            return []
        dropped = []
        keep = days
        if self.retention_days is not None:
            newest = date.fromisoformat(days[-1].name[len("date="):])
            cutoff = (newest - timedelta(days=self.retention_days)).isoformat()
            keep = [d for d in days if d.name[len("date="):] >= cutoff]
        if self.retention_bytes is not None:
            sizes = [sum(f.stat().st_size for f in d.rglob("*.parquet")) for d in keep]
            while len(keep) > 1 and sum(sizes) > self.retention_bytes:
                keep, sizes = keep[1:], sizes[1:]
        for d in days:
            if d not in keep:
                shutil.rmtree(d, ignore_errors=True)
                dropped.append(d.name[len("date="):])
        return dropped


def read_events(root: str | os.PathLike, start: float | None = None, end: float | None = None,
                committed: dict[int, int] | None = None) -> pa.Table:
    """Every logged event with start <= time < end (unix seconds), once: a table of SCHEMA sorted
    by (kafka_partition, kafka_offset).

    committed: partition -> next committed offset (StateStore.offsets); rows at or past it, and
    partitions missing from it, are dropped. Filters run inside pyarrow (day folders are pruned),
    so only the selected rows are materialised.
    """
    root = Path(root)
    if not root.is_dir():
        return SCHEMA.empty_table()
    dataset = ds.dataset(root, format="parquet", schema=SCHEMA.append(_PARTITIONING.schema.field("date")),
                         partitioning=_PARTITIONING)
    cond = None
    ts = ds.field("event_timestamp")
    if start is not None:
        cond = (ds.field("date") >= _day_name(int(start // _DAY_S))) & (ts >= _timestamp(start))
    if end is not None:
        upper = (ds.field("date") <= _day_name(int(end // _DAY_S))) & (ts < _timestamp(end))
        cond = upper if cond is None else cond & upper
    table = dataset.to_table(columns=list(SCHEMA.names), filter=cond)
    part = table["kafka_partition"].to_numpy().astype(np.int64)
    offset = table["kafka_offset"].to_numpy()
    order = np.lexsort((offset, part))
    part, offset = part[order], offset[order]
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = (part[1:] != part[:-1]) | (offset[1:] != offset[:-1])
    if committed is not None and len(part):
        limit = np.array([committed.get(p, 0) for p in range(int(part.max()) + 1)], dtype=np.int64)
        keep &= offset < limit[part]
    return table.take(pa.array(order[keep]))


def read_histories(root: str | os.PathLike, start: float | None = None, end: float | None = None,
                   committed: dict[int, int] | None = None, name: str = "eventlog") -> Interactions:
    """Time-ordered per-user sequences (CSR) of the logged events in [start, end) (see read_events).

    Ties in time keep Kafka order (a user's events share one partition). Times are whole seconds.
    """
    table = read_events(root, start, end, committed)
    seconds = table["event_timestamp"].cast(pa.int64()).to_numpy() // 1_000_000
    # read_events sorts by (partition, offset); from_events keeps that order among equal times.
    return from_events(table["user_id"].to_numpy(), table["item_id"].to_numpy(), seconds, name=name)


def _timestamp(t: float) -> pa.Scalar:
    return pa.scalar(datetime.fromtimestamp(t, tz=timezone.utc), type=SCHEMA.field("event_timestamp").type)
