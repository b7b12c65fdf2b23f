"""The worker's durable state: counts, user windows and input offsets, in one SQL database.

Exactly-once mechanism. Each checkpoint is ONE transaction that
  1. advances every touched partition's offset by compare-and-set (`next_offset` must still equal
     the value this worker started the range from, else another worker owns it now: rollback);
  2. appends the count increments of those events as a delta row (counts are additive, so workers
     only ever add deltas and never need the global counts in memory);
  3. appends each partition's (user, item) event log, from which windows are rebuilt;
  4. records the range's dead letters in an outbox table, forwarded to the DLQ topic after the
     commit and marked there (streaming/agents.py), so none is lost or sent twice.
After a crash the worker reloads the windows of its partitions, seeks the consumer to the committed
offsets and reprocesses from there; the deltas of uncommitted events were never written, so every
event is counted once. Kafka transactions were measured unusable here (Tansu answers
InitProducerId with a transactional id with UNKNOWN_SERVER_ERROR).

Compaction (on a schedule, StreamConfig.compact_interval_s, in steps of about checkpoint_events
events per partition, and fully before a worker takes over a
partition) folds each partition's logs into one row per user, `stream_user_windows`, in one
transaction that holds the partition's offset row, so compactions and commits of a partition are
serialised and every log is folded exactly once, in offset order. Once a user's events are
folded, the worker may drop the user from memory and reload that row on their next event
(`load_users`), so memory holds only recently active users. Delta rows of the counts are folded
into one base row when a snapshot is taken. SQLite (WAL, write transactions BEGIN IMMEDIATE) is
the default; any SQLAlchemy URL works (Postgres: postgresql+psycopg://...).
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from sqlalchemy import (BigInteger, Boolean, Column, Float, Integer, LargeBinary, MetaData, String, Table,
                        Text, create_engine, delete, event, func, insert, select, tuple_, update)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from g2rec.errors import ConfigError, StateError
from g2rec.graph import CoCounts
from g2rec.windows import WindowTable, fold_histories
from streaming.models import DeadLetter

metadata = MetaData()

meta_table = Table(
    "stream_meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
offsets_table = Table(
    "stream_offsets", metadata,
    Column("topic", String(249), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False),
    Column("updated_at", Float, nullable=False),
)
counts_table = Table(
    "stream_counts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(8), nullable=False),  # "delta" | "base"
    Column("created_at", Float, nullable=False),
    Column("n_events", BigInteger, nullable=False),
    Column("n_increments", BigInteger, nullable=False),
    Column("max_time", Float, nullable=False),  # latest event timestamp behind these counts
    Column("pair_keys", LargeBinary, nullable=False),  # int64 a << 32 | b, a < b, raw item ids
    Column("weights", LargeBinary, nullable=False),  # float64
    sqlite_autoincrement=True,
)
windows_table = Table(  # each committed range's (user, item) events, until compaction folds them
    "stream_window_logs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("topic", String(249), nullable=False),
    Column("partition", Integer, nullable=False),
    Column("from_offset", BigInteger, nullable=False),
    Column("to_offset", BigInteger, nullable=False),
    Column("users", LargeBinary, nullable=False),  # int64
    Column("items", LargeBinary, nullable=False),  # int64
    sqlite_autoincrement=True,
)
user_windows_table = Table(  # each user's window as of the folded logs
    "stream_user_windows", metadata,
    Column("topic", String(249), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("user_id", BigInteger, primary_key=True),
    Column("position", BigInteger, nullable=False),  # events seen
    Column("items", LargeBinary, nullable=False),  # int64, the last min(position, window), oldest first
)
_IN_CHUNK = 4096  # ids per IN (...) list: under SQLite's and Postgres's bound-parameter limits


def _padded(ids: list[int]) -> list[int]:
    """`ids` (non-empty) padded to a power of two by repeating the last one.

    Each length of an IN list is another SQL text, and the sqlite3 driver keeps the last 128
    statements it prepared on each connection; with lookups of 1 to 5,000 ids those held ~50 MB
    per connection (two in a worker), the rise of a large-state worker's RSS over its run
    (bench/README.md, peak RSS). Padded, a connection prepares at most 13 of them.
    """
    size = 1 << (len(ids) - 1).bit_length()
    return ids + ids[-1:] * (size - len(ids))
snapshots_table = Table(
    "stream_snapshots", metadata,
    Column("snapshot_id", Integer, primary_key=True, autoincrement=False),
    Column("created_at", Float, nullable=False),
    Column("n_items", BigInteger, nullable=False),
    Column("n_edges", BigInteger, nullable=False),
    Column("n_events", BigInteger, nullable=False),
    Column("offsets", Text, nullable=False),  # JSON {partition: next_offset}
    Column("path", Text, nullable=False),
)
dead_letters_table = Table(
    "stream_dead_letters", metadata,  # the outbox of dead letters (streaming.models.DeadLetter)
    Column("topic", String(249), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("offset", BigInteger, primary_key=True),
    Column("reason", Text, nullable=False),
    Column("key", LargeBinary, nullable=True),
    Column("value", LargeBinary, nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    # The DLQ topic's end offset when a forward of this row began; the row may be on the topic
    # from there on (a worker killed mid-forward), so a retry first looks there.
    Column("forwarding_from", BigInteger, nullable=True),
    Column("forwarded", Boolean, nullable=False),
)


@dataclass(frozen=True)
class OutboxRow:
    """A dead letter not yet known to be on the DLQ topic; forwarding_from as in the table."""

    letter: DeadLetter
    forwarding_from: int | None


class StaleOffsets(StateError):
    """A checkpoint lost its compare-and-set: another worker advanced these partitions."""

    def __init__(self, topic: str, partitions: list[int]) -> None:
        super().__init__(f"{topic}: partitions {partitions} were advanced by another worker")
        self.partitions = partitions


class ConfigMismatch(ConfigError):
    """The store was written with different sampling settings than this worker's."""


def _i64(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<i8").tobytes()


def _f64(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype="<f8").tobytes()


def _from_i64(b: bytes | None) -> np.ndarray:
    return np.frombuffer(b or b"", dtype="<i8").astype(np.int64)


def _from_f64(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype="<f8").astype(np.float64)


@dataclass
class Checkpoint:
    """Everything one worker applied since its last checkpoint.

    offsets: partition -> (next offset the range started from, next offset after it).
    keys, weights: coalesced count increments (keys a << 32 | b with a < b, raw item ids).
    logs: partition -> (users, items) of the applied events in arrival order.
    dead_letters: the invalid records of these ranges.
    """

    topic: str
    offsets: dict[int, tuple[int, int]]
    keys: np.ndarray
    weights: np.ndarray
    n_events: int
    n_increments: int
    max_time: float
    logs: dict[int, tuple[np.ndarray, np.ndarray]]
    dead_letters: list[DeadLetter] = field(default_factory=list)


@dataclass
class CommittedState:
    counts: CoCounts
    n_events: int
    offsets: dict[int, int]
    max_time: float


def _sqlite_setup(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives process crashes (SIGKILL); FULL also survives power loss.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        # Write transactions take the lock up front, so read-then-write never deadlocks.
        immediate = conn.get_execution_options().get("g2rec_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class StateStore:
    """Durable stream state behind a SQLAlchemy URL (see module docstring)."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///"):])
            if str(path) not in ("", ":memory:"):
                path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url, future=True)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        if self.is_sqlite:
            _sqlite_setup(self.engine)
        with self._write() as conn:
            metadata.create_all(conn)
        mark = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        # SQLite (3.24+) and Postgres share this upsert.
        self._upsert_window = (
            "INSERT INTO stream_user_windows (topic, partition, user_id, position, items) "
            f"VALUES ({', '.join([mark] * 5)}) ON CONFLICT (topic, partition, user_id) "
            "DO UPDATE SET position = excluded.position, items = excluded.items")

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn = conn.execution_options(g2rec_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        """A consistent read: SQLite WAL gives snapshot reads; elsewhere ask for REPEATABLE READ."""
        with self.engine.connect() as conn:
            if not self.is_sqlite:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    def ensure_config(self, fingerprint: dict[str, Any]) -> None:
        """Record the sampling settings on first use; refuse to mix counts made with others."""
        text = json.dumps(fingerprint, sort_keys=True)
        with self._write() as conn:
            row = conn.execute(select(meta_table.c.value).where(meta_table.c.key == "config")).first()
            if row is None:
                conn.execute(insert(meta_table).values(key="config", value=text))
            elif row.value != text:
                raise ConfigMismatch(f"{self.url} holds state made with {row.value}, this worker uses {text}")

    def claim(self, topic: str, partition: int, start_offset: int) -> int:
        """The committed next offset of a partition, registering `start_offset` if it has none."""
        with self._write() as conn:
            row = conn.execute(select(offsets_table.c.next_offset).where(
                offsets_table.c.topic == topic, offsets_table.c.partition == partition)).first()
            if row is not None:
                return int(row.next_offset)
            conn.execute(insert(offsets_table).values(topic=topic, partition=partition,
                                                      next_offset=start_offset, updated_at=time.time()))
            return start_offset

    def offsets(self, topic: str) -> dict[int, int]:
        with self._read() as conn:
            rows = conn.execute(select(offsets_table.c.partition, offsets_table.c.next_offset)
                                .where(offsets_table.c.topic == topic)).all()
        return {int(r.partition): int(r.next_offset) for r in rows}

    def commit(self, ckpt: Checkpoint) -> None:
        """Apply a checkpoint atomically; raises StaleOffsets (nothing written) if fenced off."""
        now = time.time()
        with self._write() as conn:
            lost = []
            for p, (start, end) in sorted(ckpt.offsets.items()):
                res = conn.execute(
                    update(offsets_table)
                    .where(offsets_table.c.topic == ckpt.topic, offsets_table.c.partition == p,
                           offsets_table.c.next_offset == start)
                    .values(next_offset=end, updated_at=now))
                if res.rowcount != 1:
                    lost.append(p)
            if lost:
                raise StaleOffsets(ckpt.topic, lost)  # leaving the block rolls back
            if ckpt.n_events or len(ckpt.keys):
                conn.execute(insert(counts_table).values(
                    kind="delta", created_at=now, n_events=ckpt.n_events, n_increments=ckpt.n_increments,
                    max_time=ckpt.max_time, pair_keys=_i64(ckpt.keys), weights=_f64(ckpt.weights)))
            rows = [dict(topic=ckpt.topic, partition=p, from_offset=ckpt.offsets[p][0],
                         to_offset=ckpt.offsets[p][1], users=_i64(u), items=_i64(i))
                    for p, (u, i) in sorted(ckpt.logs.items()) if len(u)]
            if rows:
                conn.execute(insert(windows_table), rows)
            if ckpt.dead_letters:
                conn.execute(insert(dead_letters_table), [
                    dict(topic=d.topic, partition=d.partition, offset=d.offset, reason=d.reason, key=d.key,
                         value=d.value, size=d.size, sha256=d.sha256, forwarding_from=None, forwarded=False)
                    for d in ckpt.dead_letters])

    def outbox(self, topic: str, partitions: set[int]) -> list[OutboxRow]:
        """Committed dead letters of these partitions not yet marked forwarded, by (partition, offset)."""
        t = dead_letters_table
        with self._read() as conn:
            rows = conn.execute(select(t).where(t.c.topic == topic, t.c.partition.in_(sorted(partitions)),
                                                t.c.forwarded.is_(False))
                                .order_by(t.c.partition, t.c.offset)).all()
        return [OutboxRow(DeadLetter(r.topic, r.partition, r.offset, r.reason, r.key, r.value, r.size, r.sha256),
                          r.forwarding_from) for r in rows]

    def mark_outbox(self, letters: Sequence[DeadLetter], *, forwarding_from: int | None = None,
                    forwarded: bool = False) -> None:
        """Record that a forward of `letters` begins at DLQ offset `forwarding_from`, or is done."""
        if not letters:
            return
        t = dead_letters_table
        values: dict[str, Any] = {"forwarded": True} if forwarded else {"forwarding_from": forwarding_from}
        with self._write() as conn:
            for lo in range(0, len(letters), 500):
                keys = [(d.topic, d.partition, d.offset) for d in letters[lo:lo + 500]]
                conn.execute(update(t).where(tuple_(t.c.topic, t.c.partition, t.c.offset).in_(keys)).values(**values))

    @property
    def store_id(self) -> str:
        """This store's identity, a UUID made on first use (snapshots carry it)."""
        query = select(meta_table.c.value).where(meta_table.c.key == "store_id")
        try:
            with self._write() as conn:
                found = conn.execute(query).scalar()
                if found is None:
                    found = str(uuid.uuid4())
                    conn.execute(insert(meta_table).values(key="store_id", value=found))
                return found
        except IntegrityError:  # another worker made it at the same moment: theirs counts
            with self._read() as conn:
                return conn.execute(query).scalar_one()

    def load_windows(self, topic: str, partition: int, window: int) -> WindowTable:
        """The committed windows of all of one partition's users (folded rows, then their logs)."""
        with self._read() as conn:
            base = self._user_rows(conn, topic, partition, None)
            logs = self._logs(conn, topic, partition)
        return self._fold(base, logs, window)

    def load_users(self, topic: str, partition: int, users: np.ndarray) -> WindowTable:
        """The folded windows of these users (those without a row are left out).

        Exact only once the partition's logs of these users' events are compacted; the worker
        compacts a partition before taking it over and evicts only users whose events are folded.
        """
        with self._read() as conn:
            return self._user_rows(conn, topic, partition, users)

    @staticmethod
    def _user_rows(conn: Connection, topic: str, partition: int, users: np.ndarray | None) -> WindowTable:
        t = user_windows_table
        query = select(t.c.user_id, t.c.position, t.c["items"]).where(t.c.topic == topic, t.c.partition == partition)
        if users is None:
            rows = conn.execute(query).all()
        else:
            ids = np.unique(np.asarray(users, dtype=np.int64)).tolist()
            rows = [r for lo in range(0, len(ids), _IN_CHUNK)
                    for r in conn.execute(query.where(t.c.user_id.in_(_padded(ids[lo:lo + _IN_CHUNK])))).all()]
        if not rows:
            return WindowTable.empty()
        blobs = [r.items for r in rows]
        lengths = np.fromiter((len(b) // 8 for b in blobs), dtype=np.int64, count=len(blobs))
        return WindowTable(np.fromiter((r.user_id for r in rows), dtype=np.int64, count=len(rows)),
                           np.fromiter((r.position for r in rows), dtype=np.int64, count=len(rows)),
                           np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                           _from_i64(b"".join(blobs)))

    @staticmethod
    def _logs(conn: Connection, topic: str, partition: int) -> list[Any]:
        return conn.execute(select(windows_table).where(
            windows_table.c.topic == topic, windows_table.c.partition == partition)
            .order_by(windows_table.c.from_offset, windows_table.c.id)).all()

    @staticmethod
    def _fold(base: WindowTable, logs: Sequence[Any], window: int) -> WindowTable:
        if not logs:
            return base
        return fold_histories(base, np.concatenate([_from_i64(r.users) for r in logs]),
                              np.concatenate([_from_i64(r.items) for r in logs]), window)

    def compact_windows(self, topic: str, partition: int, window: int, max_events: int | None = None) -> bool:
        """Fold the partition's logs, oldest first, into its users' rows (one transaction), at
        least one log and about `max_events` events at most (None: all); True when none is left."""
        with self._write() as conn:
            # Taking the offset row serialises this with commits and other compactions of the partition.
            conn.execute(select(offsets_table.c.next_offset).where(
                offsets_table.c.topic == topic, offsets_table.c.partition == partition).with_for_update())
            w = windows_table
            heads = conn.execute(select(w.c.id, func.length(w.c.users))
                                 .where(w.c.topic == topic, w.c.partition == partition)
                                 .order_by(w.c.from_offset, w.c.id)).all()
            if not heads:
                return True
            n = len(heads)
            if max_events is not None:  # a bounded step, so commits queued behind it wait little
                sizes = np.cumsum([size // 8 for _, size in heads])
                n = max(1, int(np.searchsorted(sizes, max_events, side="right")))
            ids = [i for i, _ in heads[:n]]
            logs = conn.execute(select(w.c.users, w.c["items"]).where(w.c.id.in_(ids))
                                .order_by(w.c.from_offset, w.c.id)).all()
            users = np.concatenate([_from_i64(r.users) for r in logs])
            items = np.concatenate([_from_i64(r.items) for r in logs])
            del logs
            folded_ids = np.unique(users)
            # A fixed number of users at a time, so what a step holds besides its logs (stored rows,
            # folded windows, rows to insert) does not grow with the users it touches.
            for lo in range(0, len(folded_ids), _IN_CHUNK):
                chunk_ids = folded_ids[lo:lo + _IN_CHUNK]
                mine = (users >= chunk_ids[0]) & (users <= chunk_ids[-1])  # each user's events stay in order
                folded = fold_histories(self._user_rows(conn, topic, partition, chunk_ids), users[mine], items[mine],
                                        window)
                ptr, flat = folded.ptr.tolist(), folded.flat
                # Straight to the driver: SQLAlchemy's per-row parameter handling was half the step.
                conn.exec_driver_sql(self._upsert_window, [
                    (topic, partition, u, p, _i64(flat[ptr[k]:ptr[k + 1]]))
                    for k, (u, p) in enumerate(zip(folded.users.tolist(), folded.positions.tolist()))])
            conn.execute(delete(w).where(w.c.id.in_(ids)))
            return n == len(heads)

    def committed(self, topic: str) -> CommittedState:
        """All committed counts, the number of events behind them and the offsets they cover."""
        counts = CoCounts()
        n_events = 0
        max_time = 0.0
        with self._read() as conn:
            offsets = {int(r.partition): int(r.next_offset) for r in conn.execute(
                select(offsets_table.c.partition, offsets_table.c.next_offset)
                .where(offsets_table.c.topic == topic))}
            for r in conn.execute(select(counts_table.c.n_events, counts_table.c.max_time,
                                         counts_table.c.pair_keys, counts_table.c.weights)):
                keys = _from_i64(r.pair_keys)
                counts.add_pairs(keys >> 32, keys & 0xFFFFFFFF, _from_f64(r.weights))
                n_events += int(r.n_events)
                max_time = max(max_time, float(r.max_time))
        return CommittedState(counts, n_events, offsets, max_time)

    def compact(self, topic: str, window: int) -> None:
        """Fold count deltas into one base row, and every partition's window logs (compact_windows)."""
        with self._write() as conn:
            conn.execute(delete(dead_letters_table).where(dead_letters_table.c.forwarded.is_(True)))
            rows = conn.execute(select(counts_table)).all()
            if len(rows) > 1:
                counts = CoCounts()
                n_events = n_inc = 0
                max_time = 0.0
                for r in rows:
                    max_time = max(max_time, float(r.max_time))
                    keys = _from_i64(r.pair_keys)
                    counts.add_pairs(keys >> 32, keys & 0xFFFFFFFF, _from_f64(r.weights))
                    n_events += int(r.n_events)
                    n_inc += int(r.n_increments)
                a, b, w = counts.pairs()
                conn.execute(delete(counts_table).where(counts_table.c.id.in_([r.id for r in rows])))
                conn.execute(insert(counts_table).values(
                    kind="base", created_at=time.time(), n_events=n_events, n_increments=n_inc,
                    max_time=max_time, pair_keys=_i64((a << 32) | b), weights=_f64(w)))
        with self._read() as conn:
            parts = conn.execute(select(windows_table.c.partition).where(windows_table.c.topic == topic)
                                 .group_by(windows_table.c.partition)).scalars().all()
        for p in parts:
            self.compact_windows(topic, p, window)

    def last_snapshot(self) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(select(snapshots_table).order_by(snapshots_table.c.snapshot_id.desc()).limit(1)).first()
        if row is None:
            return None
        return dict(row._mapping, offsets={int(k): v for k, v in json.loads(row.offsets).items()})

    def next_snapshot_id(self) -> int:
        with self._read() as conn:
            rows = conn.execute(select(snapshots_table.c.snapshot_id).order_by(
                snapshots_table.c.snapshot_id.desc()).limit(1)).scalars().all()
        return (rows[0] + 1) if rows else 1

    def record_snapshot(self, snapshot_id: int, created_at: float, n_items: int, n_edges: int,
                        n_events: int, offsets: dict[int, int], path: str) -> None:
        with self._write() as conn:
            conn.execute(insert(snapshots_table).values(
                snapshot_id=snapshot_id, created_at=created_at, n_items=n_items, n_edges=n_edges,
                n_events=n_events, offsets=json.dumps({str(k): v for k, v in sorted(offsets.items())}),
                path=path))

    def snapshots(self) -> list[dict[str, Any]]:
        with self._read() as conn:
            rows = conn.execute(select(snapshots_table).order_by(snapshots_table.c.snapshot_id)).all()
        return [dict(r._mapping, offsets={int(k): v for k, v in json.loads(r.offsets).items()}) for r in rows]
