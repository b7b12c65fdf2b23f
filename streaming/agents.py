"""The ingest service: a batch consumer of the events topic running inside the faust app.

Loop: fetch up to `max_batch` records, hand each partition's records to the processor, send the
invalid ones to the dead-letter topic, and checkpoint when due. Offsets live in the state store,
not in Kafka: on assignment the consumer seeks to the store's committed offset of each partition,
so a restarted or rebalanced worker resumes exactly where the committed state ends. The group
offsets are also committed to Kafka after each checkpoint, for lag monitoring only.

Dead letters go out exactly once, through an outbox: the invalid records of a range are written to
the store in the checkpoint's transaction (streaming/store.py), and after the commit the owner of
their partitions forwards them to the DLQ topic (partition 0, key "topic/partition/offset") and
marks them forwarded. Before producing, it records the DLQ topic's end offset on the rows; a
worker that finds rows with that mark (its predecessor died mid-forward) first reads the DLQ topic
from there and only sends the ones not on it yet. A failed forward leaves the rows for the next
checkpoint and never holds back the offsets, and no record, of any size, can stop ingestion:
values over `dead_letter_max_bytes` are cut, their size and sha256 kept in headers.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from mode import Service

from streaming.models import DeadLetter
from streaming.processor import StreamProcessor
from streaming.sink import make_sink
from streaming.store import StaleOffsets, StateStore

log = logging.getLogger(__name__)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, ingest: IngestService) -> None:
        self.ingest = ingest

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.ingest.on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self.ingest.on_assigned({tp.partition for tp in assigned})


class IngestService(Service):
    """Consumes the events topic in batches; see the module docstring. Bound to an app by bind_ingest."""

    app: Any  # streaming.app.StreamApp, set by bind_ingest

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        cfg = self.app.cfg
        self.cfg = cfg
        self.store = StateStore(cfg.store)
        self.processor = StreamProcessor(cfg, self.store, make_sink(cfg.sink, cfg.sink_options))
        self.consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._outbox_due = False  # a committed checkpoint (or a failed forward) left dead letters
        self._outbox_retry_at = 0.0
        self._dlq_reader: AIOKafkaConsumer | None = None
        self.n_dead_letters = 0
        # Store commits run here, one at a time, overlapping the processing of the next batches.
        self._store_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="g2rec-store")
        self._inflight: asyncio.Future | None = None
        self.app.ingest = self

    async def on_start(self) -> None:
        cfg = self.cfg
        session_ms = int(cfg.session_timeout_s * 1000)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap,
            group_id=f"{cfg.group_id}.events",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 6),
            max_poll_records=cfg.max_batch,
            # A few batches of prefetch: enough to keep the processor busy, and the memory it
            # takes does not grow with the backlog (bench/README.md, peak RSS).
            fetch_max_bytes=8 * 1024 * 1024,
            max_partition_fetch_bytes=2 * 1024 * 1024,
            # Tansu answers a fetch only when this wait runs out, even when data arrived sooner:
            # the default 500 ms was up to half a second of every caught-up event's freshness.
            fetch_max_wait_ms=50,
        )
        await self.consumer.start()
        self.consumer.subscribe([cfg.topics.events], listener=_Rebalance(self))
        # The modules loaded by now (Feast, SQLAlchemy, faust, aiokafka) hold ~300k objects for the
        # life of the process; without this, each full collection walks them all (0.3 s pauses
        # inside checkpoints, measured in the history sink).
        gc.freeze()

    async def on_stop(self) -> None:
        if self.consumer is None:
            return
        async with self._lock:
            await self._checkpoint(wait=True)
        await self.consumer.stop()
        if self._dlq_reader is not None:
            await self._dlq_reader.stop()
        self._store_thread.shutdown()
        self.store.close()

    @Service.task
    async def _ingest(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        while not self.should_stop:
            batch = await consumer.getmany(timeout_ms=100, max_records=self.cfg.max_batch)
            async with self._lock:
                if self.should_stop:  # on_stop took the final checkpoint while we waited
                    break
                for tp, records in batch.items():
                    if tp.partition in self.processor.owned:  # else: revoked while we waited
                        await self._process(tp, records)
                # A short fetch means the worker has caught up with the producers: commit now
                # (once the previous commit is done) instead of waiting out the interval, so
                # freshness is a fetch plus a commit; a backlog still commits in large ranges.
                caught_up = self.cfg.eager_checkpoints and sum(map(len, batch.values())) < self.cfg.max_batch
                idle_store = self._inflight is None or self._inflight.done()
                if self.processor.due() or (caught_up and idle_store and self.processor.has_pending()):
                    await self._checkpoint()
                elif (self._inflight is not None and self._inflight.done()) or self._outbox_due:
                    await self._settle()  # idle: finish the last commit (and forward its dead letters)

    async def _process(self, tp: TopicPartition, records: list[Any]) -> None:
        rejected = self.processor.process(
            tp.partition, [r.offset for r in records], [r.value for r in records],
            [r.timestamp for r in records])
        if rejected:
            limit = self.cfg.dead_letter_max_bytes
            self.processor.add_dead_letters([
                DeadLetter.of(tp.topic, tp.partition, records[r.index].offset, r.reason, records[r.index].key,
                              records[r.index].value, limit) for r in rejected])

    async def _checkpoint(self, wait: bool = False) -> None:
        """Cut a checkpoint and commit it in the store thread (call with the lock held).

        The previous commit is settled first, so commits apply in order; `wait` also settles
        this one (used before a revoke and at shutdown).
        """
        if not await self._settle():
            return
        prepared = self.processor.prepare_checkpoint()
        if prepared is not None:
            self._outbox_due |= bool(prepared.ckpt.dead_letters)
            self._inflight = asyncio.get_running_loop().run_in_executor(
                self._store_thread, self.processor.commit_prepared, prepared)
        if wait:
            await self._settle()

    async def _settle(self) -> bool:
        """Wait for the in-flight commit, then forward due dead letters. If the commit was fenced
        off, reload committed state and re-seek."""
        if self._inflight is not None:
            inflight, self._inflight = self._inflight, None
            try:
                await inflight
            except StaleOffsets as e:
                log.warning("checkpoint fenced off (%s); reloading committed state", e)
                for p, offset in self.processor.reset().items():
                    self._seek(p, offset)
                return False
            await self._commit_group_offsets()
        if self._outbox_due and time.monotonic() >= self._outbox_retry_at:
            self._outbox_due = False
            await self._forward_dead_letters(self.processor.owned)
        return True

    async def _in_store_thread(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._store_thread, partial(fn, *args, **kwargs))

    async def _forward_dead_letters(self, partitions: set[int]) -> None:
        """Forward these partitions' committed, unforwarded dead letters (see the module docstring)."""
        rows = await self._in_store_thread(self.store.outbox, self.cfg.topics.events, partitions) if partitions else []
        if not rows:
            return
        try:
            marked = [r.forwarding_from for r in rows if r.forwarding_from is not None]
            if marked:  # a forward was cut short: skip what reached the topic
                present = await self._dead_letter_keys(min(marked))
                done = [r.letter for r in rows if r.letter.dlq_key in present]
                await self._in_store_thread(self.store.mark_outbox, done, forwarded=True)
                rows = [r for r in rows if r.letter.dlq_key not in present]
            letters = [r.letter for r in rows]
            if not letters:
                return
            await self._in_store_thread(self.store.mark_outbox, letters, forwarding_from=await self._dlq_end())
            futures = [await self.app.dead_letters.send(key=d.dlq_key, value=d.value, headers=dict(d.headers()),
                                                        partition=0) for d in letters]
            await self.app.producer.flush()
            await asyncio.gather(*futures)
            await self._in_store_thread(self.store.mark_outbox, letters, forwarded=True)
            self.n_dead_letters += len(letters)
        except (KafkaError, asyncio.TimeoutError) as e:
            # The rows stay in the outbox; the offsets they came from are committed regardless.
            log.warning("forwarding %d dead letters failed, retrying in a second: %r", len(rows), e)
            self._outbox_due = True
            self._outbox_retry_at = time.monotonic() + 1.0

    async def _reader(self) -> tuple[AIOKafkaConsumer, TopicPartition]:
        tp = TopicPartition(self.cfg.topics.dead_letters, 0)
        if self._dlq_reader is None:
            reader = AIOKafkaConsumer(bootstrap_servers=self.cfg.bootstrap, enable_auto_commit=False,
                                      group_id=None, auto_offset_reset="earliest")
            await reader.start()
            reader.assign([tp])
            self._dlq_reader = reader
        return self._dlq_reader, tp

    async def _dlq_end(self) -> int:
        reader, tp = await self._reader()
        return (await reader.end_offsets([tp]))[tp]

    async def _dead_letter_keys(self, start: int) -> set[bytes]:
        """Keys of the DLQ topic's messages from offset `start` to its current end."""
        reader, tp = await self._reader()
        end = (await reader.end_offsets([tp]))[tp]
        reader.seek(tp, start)
        keys: set[bytes] = set()
        while await reader.position(tp) < end:
            batch = await reader.getmany(tp, timeout_ms=1000)
            keys.update(m.key for m in batch.get(tp, []) if m.key is not None)
        return keys

    async def _commit_group_offsets(self) -> None:
        offsets = {TopicPartition(self.cfg.topics.events, p): o
                   for p, o in self.processor.committed_offsets.items() if o > 0}
        if not offsets or self.consumer is None:
            return
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as e:
            # Informational only (the store holds the real offsets); a rebalance can refuse it.
            log.info("group offset commit skipped: %r", e)

    def _seek(self, partition: int, offset: int) -> None:
        assert self.consumer is not None
        self.consumer.seek(TopicPartition(self.cfg.topics.events, partition), offset)

    async def on_revoked(self, partitions: set[int]) -> None:
        async with self._lock:
            await self._checkpoint(wait=True)
            self.processor.revoke(partitions)
        log.info("revoked partitions %s", sorted(partitions))

    async def on_assigned(self, partitions: set[int]) -> None:
        async with self._lock:
            consumer = self.consumer
            assert consumer is not None
            tps = [TopicPartition(self.cfg.topics.events, p) for p in sorted(partitions)]
            beginnings = await consumer.beginning_offsets(tps) if tps else {}
            for tp in tps:
                self._seek(tp.partition, self.processor.assign(tp.partition, beginnings[tp]))
            # Dead letters a previous owner committed but did not get to forward.
            await self._forward_dead_letters(partitions)
        log.info("assigned partitions %s at offsets %s", sorted(partitions),
                 {p: self.processor.next_offset[p] for p in sorted(partitions)})


def bind_ingest(app: Any) -> type[IngestService]:
    """An IngestService subclass bound to `app` (faust instantiates services with loop/beacon only)."""
    return type("Ingest", (IngestService,), {"app": app})
