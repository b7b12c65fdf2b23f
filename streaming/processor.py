"""One worker's in-memory stream state between checkpoints; no Kafka here, only data in and out.

The Kafka-facing service (streaming/agents.py) feeds it fetched records per partition, hands the
dead letters of the rejects it returns back (`add_dead_letters`), and asks it to checkpoint.
Everything it applied since the last checkpoint (count increments, per-partition event logs,
dead letters, offsets) is committed in one store transaction or not at all, after the range's
events were written to the Parquet event log; see streaming/store.py for why that gives
exactly-once counts, and streaming/eventlog.py for the log.
"""

from __future__ import annotations

import ctypes
import json
import time
from dataclasses import dataclass, field

import numpy as np

from g2rec.graph import CoCounts
from g2rec.windows import UserWindows, sample_increments
from streaming.config import StreamConfig
from streaming.eventlog import EventLogWriter, LoggedEvents
from streaming.models import DeadLetter, decode_values
from streaming.sink import HistorySink, NoopSink, UserHistoryUpdate
from streaming.store import Checkpoint, StateStore
from streaming.timed_windows import TimedWindows

# 2**1000 is far inside float64 range; beyond it the decay boost would overflow.
_MAX_DECAY_EXPONENT = 1000.0


@dataclass(frozen=True)
class Rejected:
    """A record that failed validation: its position in the fetched list, and why."""

    index: int
    reason: str


@dataclass
class _Pending:
    delta: CoCounts = field(default_factory=CoCounts)
    n_events: int = 0
    max_time: float = 0.0
    logs: dict[int, list[tuple[np.ndarray, np.ndarray]]] = field(default_factory=dict)
    touched: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)  # users, items, times
    lags: list[np.ndarray] = field(default_factory=list)  # produce timestamps (s) of applied records
    events: dict[int, list[tuple[np.ndarray, ...]]] = field(default_factory=dict)  # offsets, users, items, times
    dead_letters: list[DeadLetter] = field(default_factory=list)
    first_fetch: float | None = None
    first_fetch_cpu: float | None = None


@dataclass(frozen=True)
class PreparedCheckpoint:
    """A checkpoint cut from the pending state, with what must go out alongside it."""

    ckpt: Checkpoint
    updates: list[UserHistoryUpdate]
    first_fetch: float | None
    first_fetch_cpu: float | None
    lags: list[np.ndarray]
    prepared_at: float
    events: list[LoggedEvents] = field(default_factory=list)  # for the event log, before the commit
    stamp: float = 0.0  # time.monotonic() at the cut: every window extended before it is in here
    delta: CoCounts | None = None  # the count increments, coalesced into ckpt.keys/weights off the event loop


def _memory_mb() -> dict[str, float]:
    """This process's resident set now and its peak (VmRSS, VmHWM), MB; empty off Linux."""
    try:
        with open("/proc/self/status") as f:
            lines = [line.split() for line in f if line.startswith(("VmRSS:", "VmHWM:"))]
    except OSError:
        return {}
    return {("rss_mb" if k == "VmRSS:" else "peak_rss_mb"): round(int(v) / 1024, 1) for k, v, *_ in lines}


try:
    _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
except (OSError, AttributeError):  # not glibc
    _malloc_trim = None


def _trim_heap() -> None:
    """Hand the free pages inside glibc's heaps back to the OS (malloc_trim).

    Each checkpoint's working set (pending count increments, logs, decoded batches, compaction
    steps) is freed into glibc's heaps, where fragments keep whole pages resident; a large-state
    worker held ~90 MB more at steady state without this (bench/README.md, peak RSS). A few ms,
    once per compaction."""
    if _malloc_trim is not None:
        _malloc_trim(0)


class StreamProcessor:
    """Applies validated events of the partitions this worker owns; checkpoints them to a store."""

    def __init__(self, cfg: StreamConfig, store: StateStore, sink: HistorySink | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.sink = sink or NoopSink()
        self._timed = not isinstance(self.sink, NoopSink)  # the sink writes windows with their times
        self.windows = self._new_windows()
        self.next_offset: dict[int, int] = {}  # owned partition -> next offset to apply
        self._committed: dict[int, int] = {}  # owned partition -> next offset in the store
        self._pending = _Pending()
        self._last_checkpoint = time.monotonic()
        self.n_checkpoints = 0
        # Eviction (user_ttl_s): windows stamped before _compacted_before are folded into the store.
        self._uncompacted: set[int] = set()  # partitions with logs since this worker's last compaction
        self._last_compaction = time.monotonic()
        self._compacted_before = 0.0
        self._evicted_before = 0.0
        self.n_evicted = 0
        self.event_log = EventLogWriter(cfg.event_log_path, cfg.event_log_retention_days,
                                        cfg.event_log_retention_bytes) if cfg.event_log else None
        store.ensure_config(cfg.fingerprint())

    # ownership ------------------------------------------------------------------------------
    @property
    def owned(self) -> set[int]:
        return set(self.next_offset)

    @property
    def committed_offsets(self) -> dict[int, int]:
        """Partition -> next offset of the last prepared checkpoint (committed once it settles)."""
        return dict(self._committed)

    def assign(self, partition: int, start_offset: int) -> int:
        """Take over a partition: fold its window logs in the store (its users' windows are then
        loaded on their first event); returns the offset to consume from."""
        if partition in self.next_offset:
            return self.next_offset[partition]
        nxt = self.store.claim(self.cfg.topics.events, partition, start_offset)
        self.store.compact_windows(self.cfg.topics.events, partition, self.cfg.graph.window)
        self.windows.drop_partitions({partition})
        if self.event_log is not None:  # files of attempts that never committed
            self.event_log.drop_uncommitted(partition, nxt)
        self.next_offset[partition] = self._committed[partition] = nxt
        return nxt

    def revoke(self, partitions: set[int]) -> None:
        """Forget partitions; their applied work must have been checkpointed (or reset) first."""
        partitions = partitions & self.owned
        if not partitions:
            return
        if self.has_pending():
            # One count delta mixes all partitions' events and cannot be split per partition.
            raise RuntimeError(f"revoking {sorted(partitions)} with uncheckpointed work; checkpoint first")
        self.windows.drop_partitions(partitions)
        for p in partitions:
            self.next_offset.pop(p, None)
            self._committed.pop(p, None)

    def reset(self) -> dict[int, int]:
        """Drop all uncommitted work and reload owned partitions; returns partition -> seek offset."""
        owned = sorted(self.owned)
        self.windows = self._new_windows()
        self.next_offset.clear()
        self._committed.clear()
        self._pending = _Pending()
        return {p: self.assign(p, 0) for p in owned}

    def _new_windows(self) -> UserWindows | TimedWindows:
        return TimedWindows(self.cfg.graph.window) if self._timed else UserWindows(self.cfg.graph.window)

    # processing -----------------------------------------------------------------------------
    def process(self, partition: int, offsets: list[int], values: list[bytes | None],
                produced_ms: list[int] | None = None) -> list[Rejected]:
        """Apply one partition's fetched records (offsets ascending); returns the invalid ones.

        Records below the partition's next offset were applied already and are skipped.
        """
        if partition not in self.next_offset:
            raise ValueError(f"partition {partition} is not owned by this worker (owned: {sorted(self.owned)})")
        if len(offsets) != len(values) or (produced_ms is not None and len(produced_ms) != len(values)):
            raise ValueError(f"partition {partition}: {len(offsets)} offsets for {len(values)} values")
        if not offsets:
            return []
        self._evict_idle()
        if self._pending.first_fetch is None:
            self._pending.first_fetch = time.time()
            self._pending.first_fetch_cpu = time.process_time()
        nxt = self.next_offset[partition]
        skip = 0
        while skip < len(offsets) and offsets[skip] < nxt:
            skip += 1
        if skip:
            offsets, values = offsets[skip:], values[skip:]
            produced_ms = produced_ms[skip:] if produced_ms is not None else None
            if not offsets:
                return []
        record_times = np.asarray(produced_ms, dtype=np.float64) / 1000.0 if produced_ms is not None else None
        cols, rejects = decode_values(values, self.cfg.max_event_bytes, record_times)
        rejected = [Rejected(skip + i, reason) for i, reason in rejects]
        boost = None
        if self.cfg.half_life_s is not None and len(cols):
            exponent = (cols.timestamps - self.cfg.time_origin) / self.cfg.half_life_s
            bad = np.abs(exponent) > _MAX_DECAY_EXPONENT
            if bad.any():
                for i, t in zip(cols.index[bad].tolist(), cols.timestamps[bad].tolist()):
                    rejected.append(Rejected(skip + i, f"field 'timestamp': {t:.0f} is too far from "
                                                       f"time_origin={self.cfg.time_origin:.0f} for half_life_s"))
                keep = np.flatnonzero(~bad)
                cols, exponent = cols.take(keep), exponent[keep]
            boost = np.exp2(exponent)
        if len(cols):
            self._apply(partition, cols, boost)
            if self.event_log is not None:
                self._pending.events.setdefault(partition, []).append(
                    (np.asarray(offsets, dtype=np.int64)[cols.index], cols.user_ids, cols.item_ids, cols.timestamps))
            if produced_ms is not None and self.cfg.metrics_path:
                self._pending.lags.append(np.asarray(produced_ms, dtype=np.float64)[cols.index] / 1000.0)
        self.next_offset[partition] = offsets[-1] + 1
        rejected.sort(key=lambda r: r.index)
        return rejected

    def _apply(self, partition: int, cols, boost: np.ndarray | None) -> None:
        rows = self.windows.find(cols.user_ids)
        absent = rows < 0
        if absent.any():  # first event since assignment or eviction: the store has their window
            self.windows.load(self.store.load_users(self.cfg.topics.events, partition, cols.user_ids[absent]),
                              partition)
            rows[absent] = self.windows.rows_for(cols.user_ids[absent], partition)
        if isinstance(self.windows, TimedWindows):
            times = np.floor(cols.timestamps).astype(np.int64)
            ctx = self.windows.extend(cols.user_ids, cols.item_ids, times, partition, time.monotonic(), rows)
        else:
            ctx = self.windows.extend(cols.user_ids, cols.item_ids, partition, time.monotonic(), rows)
        factor = cols.weights if boost is None else cols.weights * boost
        grouped = None if np.all(factor == 1.0) else factor[ctx.order]
        item, partner, weight, _ = sample_increments(ctx, self.cfg.graph, self.cfg.r, grouped)
        pending = self._pending
        pending.delta.add_pairs(item, partner, weight)
        pending.n_events += len(cols)
        pending.max_time = max(pending.max_time, float(cols.timestamps.max()))
        pending.logs.setdefault(partition, []).append((cols.user_ids, cols.item_ids))
        if self._timed:
            pending.touched.append((cols.user_ids, cols.item_ids, cols.timestamps))

    def _evict_idle(self) -> None:
        """Drop users idle for user_ttl_s whose events are all folded into the store."""
        ttl = self.cfg.user_ttl_s
        if ttl is None:
            return
        before = min(time.monotonic() - ttl, self._compacted_before)
        if before > self._evicted_before:
            self.n_evicted += self.windows.evict(before)
            self._evicted_before = before

    def add_dead_letters(self, letters: list[DeadLetter]) -> None:
        """Dead letters of rejected records, committed with the next checkpoint (store outbox)."""
        self._pending.dead_letters.extend(letters)

    # checkpoints ----------------------------------------------------------------------------
    def has_pending(self) -> bool:
        return any(self.next_offset[p] != self._committed[p] for p in self.next_offset)

    def due(self) -> bool:
        if not self.has_pending():
            return False
        return (self._pending.n_events >= self.cfg.checkpoint_events
                or time.monotonic() - self._last_checkpoint >= self.cfg.checkpoint_interval_s)

    def checkpoint(self) -> int:
        """Prepare and commit in one go; returns events committed (see prepare_checkpoint)."""
        prepared = self.prepare_checkpoint()
        return self.commit_prepared(prepared) if prepared is not None else 0

    def prepare_checkpoint(self) -> PreparedCheckpoint | None:
        """Cut everything applied so far into a checkpoint and start a fresh pending state.

        The offsets are treated as committed from here on, so the next checkpoint chains onto
        this one; if `commit_prepared` then fails (store.StaleOffsets when another worker
        advanced a partition, or any other error), the caller must `reset()` and seek to the
        offsets it returns. Commits must be applied in the order they were prepared.
        """
        if not self.has_pending():
            self._last_checkpoint = time.monotonic()
            return None
        pending = self._pending
        empty = np.zeros(0, dtype=np.int64)
        ckpt = Checkpoint(
            topic=self.cfg.topics.events,
            offsets={p: (self._committed[p], self.next_offset[p]) for p in self.next_offset
                     if self.next_offset[p] != self._committed[p]},
            keys=empty, weights=np.zeros(0), n_events=pending.n_events,  # from `delta`, in commit_prepared
            n_increments=pending.delta.n_increments, max_time=pending.max_time,
            logs={p: (np.concatenate([u for u, _ in parts]), np.concatenate([i for _, i in parts]))
                  for p, parts in pending.logs.items()},
            dead_letters=pending.dead_letters,
        )
        events = [LoggedEvents(p, start, end, *(np.concatenate(c) for c in zip(*pending.events[p])))
                  for p, (start, end) in sorted(ckpt.offsets.items()) if p in pending.events]
        updates = self._history_updates(pending.touched) if pending.touched else []
        self._committed.update({p: end for p, (_, end) in ckpt.offsets.items()})
        self._pending = _Pending()
        self._last_checkpoint = time.monotonic()
        return PreparedCheckpoint(ckpt, updates, pending.first_fetch, pending.first_fetch_cpu, pending.lags,
                                  time.time(), events, self._last_checkpoint, pending.delta)

    def commit_prepared(self, prepared: PreparedCheckpoint) -> int:
        """Push the histories to the sink, write the event log, then commit to the store; returns
        events committed.

        Touches only the sink, the store and the metrics file, so it may run in a worker thread
        while the next batches are processed (one call at a time, in preparation order).
        """
        t0 = time.perf_counter()
        if prepared.delta is not None:  # the sort behind the coalescing runs here, beside the ingest loop
            a, b, w = prepared.delta.pairs()
            prepared.ckpt.keys, prepared.ckpt.weights = (a << 32) | b, w
        t1 = time.perf_counter()
        if prepared.updates:
            self.sink.write(prepared.updates)
        t2 = time.perf_counter()
        if self.event_log is not None and prepared.events:
            self.event_log.write(prepared.events)
        t3 = time.perf_counter()
        self.store.commit(prepared.ckpt)
        committed_at = time.time()
        t4 = time.perf_counter()
        self.n_checkpoints += 1
        self._uncompacted.update(prepared.ckpt.offsets)
        t5 = t4
        if time.monotonic() - self._last_compaction >= self.cfg.compact_interval_s:
            self.compact_windows(prepared.stamp)
            t5 = time.perf_counter()
            _trim_heap()
        self._stages = {"coalesce_s": t1 - t0, "sink_s": t2 - t1, "log_s": t3 - t2, "commit_s": t4 - t3,
                        "compact_s": t5 - t4, "trim_s": time.perf_counter() - t5}
        if self.cfg.metrics_path:
            self._write_metrics(prepared, committed_at)
        return prepared.ckpt.n_events

    def compact_windows(self, stamp: float) -> None:
        """Fold the window logs this worker committed into the store's per-user rows, a bounded
        step per partition (a backlog's logs are folded over several commits); once none is left,
        users extended before `stamp` (all committed by now) may be evicted. Runs with commits."""
        for p in sorted(self._uncompacted):
            if self.store.compact_windows(self.cfg.topics.events, p, self.cfg.graph.window,
                                          self.cfg.checkpoint_events):
                self._uncompacted.discard(p)
        if not self._uncompacted:
            self._last_compaction = time.monotonic()
            self._compacted_before = stamp

    def _history_updates(self, touched: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> list[UserHistoryUpdate]:
        users = np.concatenate([u for u, _, _ in touched])
        items = np.concatenate([i for _, i, _ in touched])
        times = np.concatenate([t for _, _, t in touched])
        order = np.argsort(users, kind="stable")  # per user, events stay in arrival order
        users, items, times = users[order], items[order], times[order]
        starts = np.flatnonzero(np.concatenate([[True], users[1:] != users[:-1]]))
        ends = np.append(starts[1:], len(users))
        uniq = users[starts]
        assert isinstance(self.windows, TimedWindows)
        table, times_table = self.windows.export(self.windows.rows_for(uniq, partition=-1))  # all rows exist
        ptr, flat, flat_times = table.ptr.tolist(), table.flat, times_table.flat
        return [UserHistoryUpdate(u, items[s:e], times[s:e], flat[ptr[k]:ptr[k + 1]], p, flat_times[ptr[k]:ptr[k + 1]])
                for k, (u, s, e, p) in enumerate(zip(uniq.tolist(), starts.tolist(), ends.tolist(),
                                                     table.positions.tolist()))]

    def _write_metrics(self, prepared: PreparedCheckpoint, committed_at: float) -> None:
        path = self.cfg.metrics_path
        assert path is not None
        ckpt = prepared.ckpt
        line = {"committed_at": committed_at, "checkpoint_s": committed_at - prepared.prepared_at,
                "first_fetch": prepared.first_fetch, "first_fetch_cpu_s": prepared.first_fetch_cpu,
                "cpu_s": time.process_time(), "n_events": ckpt.n_events, "users_in_memory": len(self.windows),
                **_memory_mb(),
                **self._stages,
                "offsets": {str(p): end for p, (_, end) in ckpt.offsets.items()}}
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")
        if prepared.lags:
            produced = np.concatenate(prepared.lags)
            rows = np.stack([produced, committed_at - produced], axis=1)  # (n, 2) float64
            with open(f"{path}.lags", "ab") as f:
                f.write(rows.astype("<f8").tobytes())
