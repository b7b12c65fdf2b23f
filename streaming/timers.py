"""Periodic work of the stream worker: the edge snapshot.

Every `snapshot_interval_s`, the worker that owns partition 0 of the events topic (exactly one
worker once the group is stable) compacts the store, re-samples the committed counts into an edge
snapshot, writes it as Parquet plus a metadata row, and announces it on the snapshots topic.
Snapshots read committed state only, so their `offsets` say exactly which events they include.
The heavy part runs in a thread so ingestion keeps going meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy.exc import IntegrityError

from streaming.models import SnapshotAnnouncement
from streaming.snapshots import take_snapshot

log = logging.getLogger(__name__)


async def publish_snapshot(app: Any) -> SnapshotAnnouncement | None:
    """Take one snapshot from the committed state and announce it; None if nothing committed yet."""
    ingest = app.ingest
    try:
        info = await asyncio.get_running_loop().run_in_executor(None, take_snapshot, ingest.store, app.cfg)
    except IntegrityError:
        # Two owners of partition 0 during a rebalance raced for the same snapshot id.
        log.warning("another worker recorded this snapshot id first; skipping this round")
        return None
    if info is None:
        return None
    # Keyed by store and id: two deployments on one topic each count snapshots from 1.
    await app.snapshot_announcements.send(key=f"{info.store_id}/{info.snapshot_id}".encode(), value=info)
    log.info("snapshot %d: %d items, %d edges, %d events", info.snapshot_id, info.n_items, info.n_edges,
             info.n_events)
    return info


def register(app: Any) -> None:
    @app.timer(interval=app.cfg.snapshot_interval_s)
    async def snapshot_timer() -> None:
        ingest = getattr(app, "ingest", None)
        if ingest is None or 0 not in ingest.processor.owned:
            return
        await publish_snapshot(app)
