"""Edge snapshots of the committed counts: re-sample, write Parquet, record the metadata row.

A snapshot directory holds
    edges.parquet  src, dst (dense item ids, int64), weight (float32); both directions, sorted
    items.parquet  dense (int64 1..N), item_id (int64 raw id)
so `read_snapshot` gives back the `g2rec.types.EdgeSnapshot` that `g2rec.graph.resample_snapshot`
made. Dense ids are the ranks of the raw item ids present in the counts (item_ids[0] = -1 pads).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from g2rec.graph import CoCounts, resample_snapshot
from g2rec.types import EdgeSnapshot
from streaming.config import StreamConfig
from streaming.models import SnapshotAnnouncement
from streaming.store import CommittedState, StateStore

PAD_ITEM = -1


def dense_counts(state: CommittedState, cfg: StreamConfig) -> tuple[CoCounts, np.ndarray]:
    """Counts re-keyed to dense ids 1..N (rank of the raw id), decayed to the latest event time.

    Returns (counts over dense ids, (N+1,) raw item ids with item_ids[0] = -1).
    """
    a, b, w = state.counts.pairs()
    raw = np.unique(np.concatenate([a, b]))
    item_ids = np.concatenate([[PAD_ITEM], raw]).astype(np.int64)
    if cfg.half_life_s is not None:
        w = w * np.exp2(-(state.max_time - cfg.time_origin) / cfg.half_life_s)
    counts = CoCounts()
    # The rank map is increasing, so a < b stays a < b.
    counts.add_pairs(np.searchsorted(raw, a) + 1, np.searchsorted(raw, b) + 1, w)
    return counts, item_ids


def write_snapshot(snapshot: EdgeSnapshot, directory: str | os.PathLike) -> Path:
    """Write edges.parquet and items.parquet into `directory` atomically (tmp dir, then rename)."""
    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    pq.write_table(pa.table({"src": snapshot.src.astype(np.int64), "dst": snapshot.dst.astype(np.int64),
                             "weight": snapshot.weight.astype(np.float32)}), tmp / "edges.parquet")
    pq.write_table(pa.table({"dense": np.arange(len(snapshot.item_ids), dtype=np.int64),
                             "item_id": snapshot.item_ids.astype(np.int64)}), tmp / "items.parquet")
    if directory.exists():
        shutil.rmtree(directory)
    tmp.rename(directory)
    return directory


def read_snapshot(directory: str | os.PathLike, snapshot_id: int = 0) -> EdgeSnapshot:
    directory = Path(directory)
    for name in ("edges.parquet", "items.parquet"):
        if not (directory / name).is_file():
            raise FileNotFoundError(f"{directory}: no {name}; not a snapshot directory")
    edges = pq.read_table(directory / "edges.parquet")
    items = pq.read_table(directory / "items.parquet").sort_by("dense")
    return EdgeSnapshot(
        src=edges["src"].to_numpy(), dst=edges["dst"].to_numpy(),
        weight=edges["weight"].to_numpy(), item_ids=items["item_id"].to_numpy(), snapshot_id=snapshot_id,
    )


def take_snapshot(store: StateStore, cfg: StreamConfig, compact: bool = True,
                  force: bool = False) -> SnapshotAnnouncement | None:
    """Compact the store, re-sample the committed counts, write the files and the metadata row.

    Returns None when nothing has been committed yet, or (unless `force`) when nothing was
    committed since the previous snapshot.
    """
    offsets = store.offsets(cfg.topics.events)
    last = store.last_snapshot()
    if not force and last is not None and last["offsets"] == offsets:
        return None
    if compact:
        store.compact(cfg.topics.events, cfg.graph.window)
    state = store.committed(cfg.topics.events)
    if state.n_events == 0:
        return None
    snapshot_id = store.next_snapshot_id()
    counts, item_ids = dense_counts(state, cfg)
    snap = resample_snapshot(counts, item_ids, cfg.graph, state.n_events, snapshot_id)
    path = write_snapshot(snap, cfg.snapshots / f"{snapshot_id:08d}")
    created_at = time.time()
    store.record_snapshot(snapshot_id, created_at, snap.n_items, snap.n_edges, state.n_events,
                          state.offsets, str(path))
    return SnapshotAnnouncement(
        snapshot_id=snapshot_id, created_at=created_at, group_id=cfg.group_id, store_id=store.store_id,
        path=str(path), uri=path.resolve().as_uri(), n_items=snap.n_items, n_edges=snap.n_edges,
        n_events=state.n_events, offsets={str(p): o for p, o in sorted(state.offsets.items())})
