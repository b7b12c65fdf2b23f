"""`g2rec score --all`: every user of an event log scored, in memory flat in the number of users.

The log is Parquet or CSV (a file or a directory of them) with columns user, item, timestamp;
events with since <= timestamp < until are kept. Two passes:
1. spill: the log is read with pyarrow in record batches and each event appended to one of P
   hash partitions by user (Arrow IPC files in a scratch directory); P is chosen so a partition
   holds about `rows_per_partition` events, so no pass holds more than one partition;
2. score: each partition is grouped per user (events in time order; the most recent max_len known
   items are scored, every item of the user's events in the range is excluded, as the serving rule
   says) and written to OUT/part-PPPPP.parquet (the columns of `g2rec score`).
With --workers N, N processes score partitions side by side, each with its own onnxruntime
session and its own part files (no shared writer); the part files together are the result
(`pandas.read_parquet(OUT)` reads them as one table).
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from g2rec.errors import DataError
from serving.batch import BatchConfig, RowWriter, Summary
from serving.run_dir import RunConfig, open_run

COLUMNS = ("user", "item", "timestamp")
CSV_BYTES_PER_ROW = 16  # a guess for sizing partitions of a CSV log (its rows are not counted first)


@dataclass(frozen=True)
class EventLogConfig:
    path: Path
    fmt: str = "parquet"  # or "csv"
    since: int | None = None  # timestamps as in the log, inclusive
    until: int | None = None  # exclusive
    rows_per_partition: int = 1_000_000
    workers: int = 1

    def __post_init__(self):
        if self.fmt not in ("parquet", "csv"):
            raise ValueError(f"event log format {self.fmt!r} is not parquet or csv")
        if self.rows_per_partition < 1 or self.workers < 1:
            raise ValueError(f"rows_per_partition={self.rows_per_partition} and workers={self.workers} must be >= 1")


def _dataset(cfg: EventLogConfig) -> ds.Dataset:
    data = ds.dataset(str(cfg.path), format=cfg.fmt)
    missing = set(COLUMNS) - set(data.schema.names)
    if missing:
        raise DataError(f"{cfg.path}: no column {', '.join(sorted(missing))} (an event log has {', '.join(COLUMNS)})")
    return data


def spill(cfg: EventLogConfig, scratch: Path, progress: Callable[[int], None] = lambda n: None) -> list[Path]:
    """The log's events in the time range -> P Arrow IPC files, each user's events in one file."""
    data = _dataset(cfg)
    if cfg.fmt == "parquet":
        rows = data.count_rows()  # from the Parquet footers
    else:
        rows = sum(Path(f).stat().st_size for f in data.files) // CSV_BYTES_PER_ROW
    n_parts = max(cfg.workers, math.ceil(rows / cfg.rows_per_partition))
    t = ds.field("timestamp")
    keep = None
    if cfg.since is not None:
        keep = t >= cfg.since
    if cfg.until is not None:
        keep = (t < cfg.until) if keep is None else keep & (t < cfg.until)
    paths = [scratch / f"part-{p:05d}.arrow" for p in range(n_parts)]
    writers: list = [None] * n_parts
    try:
        for batch in data.to_batches(columns=list(COLUMNS), filter=keep, batch_size=1 << 17):
            if not batch.num_rows:
                continue
            part = pd.util.hash_array(batch.column("user").to_numpy(zero_copy_only=False)) % n_parts
            order = np.argsort(part, kind="stable")
            bounds = np.searchsorted(part[order], np.arange(n_parts + 1))
            for p in np.flatnonzero(np.diff(bounds)):
                rows_p = batch.take(pa.array(order[bounds[p]:bounds[p + 1]]))
                if writers[p] is None:
                    writers[p] = pa.ipc.new_file(paths[p], rows_p.schema)
                writers[p].write_batch(rows_p)
            progress(batch.num_rows)
    finally:
        for w in writers:
            if w is not None:
                w.close()
    return [p for p, w in zip(paths, writers) if w is not None]


def score_partition(rec, part: Path, out: Path, cfg: BatchConfig) -> Summary:
    """One partition's users (events grouped per user, oldest first) -> ranked rows in `out`."""
    table = pa.ipc.open_file(part).read_all().to_pandas()
    table = table.sort_values(["user", "timestamp"], kind="stable")
    users = table["user"].to_numpy()
    items = table["item"].to_numpy()
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], len(users)]
    writer = RowWriter(rec, out, cfg)
    try:
        for a, b in zip(starts, ends):
            writer.add(users[a], items[a:b].tolist())
    finally:
        summary = writer.close()
    return summary


_worker: dict = {}


def _init_worker(run: RunConfig, cfg: BatchConfig) -> None:
    _worker["rec"], _worker["cfg"] = open_run(run), cfg


def _score_part(job: tuple[Path, Path]) -> Summary:
    return score_partition(_worker["rec"], job[0], job[1], _worker["cfg"])


def score_event_log(run: RunConfig, log: EventLogConfig, out: Path, cfg: BatchConfig,
                    progress: Callable[[str, int], None] = lambda phase, n: None) -> Summary:
    """Every user of the event log -> OUT/part-*.parquet; progress(phase, n) after each step
    ("events" spilled, "users" scored)."""
    if cfg.fmt != "parquet":
        raise ValueError("--all writes Parquet part files")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("part-*.parquet"):  # a rerun replaces the previous result
        old.unlink()
    scratch = Path(tempfile.mkdtemp(prefix="g2rec-score-", dir=out))
    try:
        parts = spill(log, scratch, lambda n: progress("events", n))
        jobs = [(p, out / p.with_suffix(".parquet").name) for p in parts]
        totals = dict(users=0, rows=0, fallbacks=0, unknown_items=0, bad_lines=0)
        if log.workers == 1:
            _init_worker(run, cfg)
        # Spawned, not forked: a fork of a process holding onnxruntime and torch threads can hang.
        with mp.get_context("spawn").Pool(log.workers, _init_worker, (run, cfg)) if log.workers > 1 \
                else contextlib.nullcontext() as pool:
            for s in pool.imap_unordered(_score_part, jobs) if pool else map(_score_part, jobs):
                for key in totals:
                    totals[key] += getattr(s, key)
                progress("users", s.users)
    finally:
        shutil.rmtree(scratch)
    return Summary(**totals)
