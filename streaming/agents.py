"""The ingest service: a batch consumer of the events topic running inside the faust app.

Loop: fetch up to `max_batch` records, hand each partition's records to the processor, send the
invalid ones to the dead-letter topic, and checkpoint when due. Offsets live in the state store,
not in Kafka: on assignment the consumer seeks to the store's committed offset of each partition,
so a restarted or rebalanced worker resumes exactly where the committed state ends. The group
offsets are also committed to Kafka after each checkpoint, for lag monitoring only.

A checkpoint first waits until every dead letter of its range is acknowledged by the broker, so an
invalid message is never lost; a crash before the commit may dead-letter it twice (each carries
its source topic, partition and offset in headers, which makes duplicates easy to drop).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from mode import Service

from streaming.models import H_OFFSET, H_PARTITION, H_REASON, H_TOPIC
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
        self._dead_letter_futures: list[asyncio.Future] = []
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
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )
        await self.consumer.start()
        self.consumer.subscribe([cfg.topics.events], listener=_Rebalance(self))

    async def on_stop(self) -> None:
        if self.consumer is None:
            return
        async with self._lock:
            await self._checkpoint(wait=True)
        await self.consumer.stop()
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
                if self.processor.due():
                    await self._checkpoint()

    async def _process(self, tp: TopicPartition, records: list[Any]) -> None:
        rejected = self.processor.process(
            tp.partition, [r.offset for r in records], [r.value for r in records],
            [r.timestamp for r in records])
        for rej in rejected:
            rec = records[rej.index]
            headers = {H_REASON: rej.reason.encode(), H_TOPIC: tp.topic.encode(),
                       H_PARTITION: str(tp.partition).encode(), H_OFFSET: str(rec.offset).encode()}
            fut = await self.app.dead_letters.send(key=rec.key, value=rec.value if rec.value is not None else b"",
                                                   headers=headers)
            self._dead_letter_futures.append(fut)

    async def _checkpoint(self, wait: bool = False) -> None:
        """Cut a checkpoint and commit it in the store thread (call with the lock held).

        The previous commit is settled first, so commits apply in order; `wait` also settles
        this one (used before a revoke and at shutdown).
        """
        if not await self._settle():
            return
        if self._dead_letter_futures:
            await self.app.producer.flush()
            await asyncio.gather(*self._dead_letter_futures)
            self.n_dead_letters += len(self._dead_letter_futures)
            self._dead_letter_futures = []
        prepared = self.processor.prepare_checkpoint()
        if prepared is not None:
            self._inflight = asyncio.get_running_loop().run_in_executor(
                self._store_thread, self.processor.commit_prepared, prepared)
        if wait:
            await self._settle()

    async def _settle(self) -> bool:
        """Wait for the in-flight commit. If it was fenced off, reload committed state and re-seek."""
        if self._inflight is None:
            return True
        inflight, self._inflight = self._inflight, None
        try:
            await inflight
        except StaleOffsets as e:
            log.warning("checkpoint fenced off (%s); reloading committed state", e)
            for p, offset in self.processor.reset().items():
                self._seek(p, offset)
            return False
        await self._commit_group_offsets()
        return True

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
        log.info("assigned partitions %s at offsets %s", sorted(partitions),
                 {p: self.processor.next_offset[p] for p in sorted(partitions)})


def bind_ingest(app: Any) -> type[IngestService]:
    """An IngestService subclass bound to `app` (faust instantiates services with loop/beacon only)."""
    return type("Ingest", (IngestService,), {"app": app})
