"""The training service's own record of snapshots and cycles, one SQL row per snapshot keyed by
(store_id, snapshot_id), so a restart neither misses a snapshot nor handles one twice.

A row moves through the stages in order; `stage` is the last stage whose effect is durable:

    pending -> clustered -> published -> trained -> exported -> registered -> done

and ends `done` with `outcome` promoted | kept (the champion stayed; `reason` says why) |
skipped (bad input; `reason`) | superseded (a newer snapshot of the same store came first) |
failed (an unexpected error; `reason` holds it). A restart resumes each unfinished row after its
last durable stage. SQLite by default; any SQLAlchemy URL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (BigInteger, Column, Float, Integer, MetaData, String, Table, Text, create_engine, insert,
                        select, update)
from sqlalchemy.exc import IntegrityError

STAGES = ("pending", "clustered", "published", "trained", "exported", "registered", "done")
OUTCOMES = ("promoted", "kept", "skipped", "superseded", "failed")

metadata = MetaData()
cycles_table = Table(
    "g2rec_training_cycles", metadata,
    Column("store_id", String(64), primary_key=True),
    Column("snapshot_id", BigInteger, primary_key=True),
    Column("path", Text, nullable=False),
    Column("offsets", Text, nullable=False),  # JSON: events partition -> next offset covered
    Column("seen_at", Float, nullable=False),  # when the service learned of it (latency starts here)
    Column("stage", String(16), nullable=False),
    Column("outcome", String(16), nullable=True),
    Column("reason", Text, nullable=True),
    Column("profile_version", BigInteger, nullable=True),  # planned, then published
    Column("model_version", Integer, nullable=True),
    Column("full_retrain", Integer, nullable=True),
    Column("resolution", Float, nullable=True),  # modularity resolution the clustering used
    Column("attempts", Integer, nullable=False, default=0),
    Column("updated_at", Float, nullable=False),
)


@dataclass(frozen=True)
class Cycle:
    """One row of the journal (see the module docstring)."""

    store_id: str
    snapshot_id: int
    path: str
    offsets: str
    seen_at: float
    stage: str
    outcome: str | None
    reason: str | None
    profile_version: int | None
    model_version: int | None
    full_retrain: int | None
    resolution: float | None
    attempts: int
    updated_at: float

    @property
    def key(self) -> str:
        return f"{self.store_id}/{self.snapshot_id}"

    @property
    def finished(self) -> bool:
        return self.stage == "done"


class Journal:
    def __init__(self, url: str):
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url)
        metadata.create_all(self.engine)

    def add(self, store_id: str, snapshot_id: int, path: str, offsets: str) -> bool:
        """Record a snapshot as pending; False when it is known already (announced twice)."""
        now = time.time()
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(cycles_table).values(
                    store_id=store_id, snapshot_id=snapshot_id, path=path, offsets=offsets, seen_at=now,
                    stage="pending", attempts=0, updated_at=now))
        except IntegrityError:
            return False
        return True

    def get(self, store_id: str, snapshot_id: int) -> Cycle | None:
        t = cycles_table
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.store_id == store_id, t.c.snapshot_id == snapshot_id)).first()
        return Cycle(**row._mapping) if row else None

    def unfinished(self) -> list[Cycle]:
        """Rows not done, oldest snapshot first per store."""
        t = cycles_table
        with self.engine.connect() as conn:
            rows = conn.execute(select(t).where(t.c.stage != "done").order_by(t.c.store_id, t.c.snapshot_id)).all()
        return [Cycle(**r._mapping) for r in rows]

    def all(self) -> list[Cycle]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(cycles_table).order_by(cycles_table.c.seen_at)).all()
        return [Cycle(**r._mapping) for r in rows]

    def last_done(self, outcome: str = "promoted") -> Cycle | None:
        t = cycles_table
        with self.engine.connect() as conn:
            row = conn.execute(select(t).where(t.c.outcome == outcome).order_by(t.c.updated_at.desc()).limit(1)).first()
        return Cycle(**row._mapping) if row else None

    def count(self, outcome: str) -> int:
        with self.engine.connect() as conn:
            return len(conn.execute(select(cycles_table.c.snapshot_id).where(cycles_table.c.outcome == outcome)).all())

    def advance(self, cycle: Cycle, stage: str, **values) -> Cycle:
        """Mark `stage` durable (and set any other columns); returns the updated row."""
        if stage not in STAGES:
            raise ValueError(f"stage {stage!r}: expected one of {STAGES}")
        if values.get("outcome") not in (None, *OUTCOMES):
            raise ValueError(f"outcome {values['outcome']!r}: expected one of {OUTCOMES}")
        t = cycles_table
        with self.engine.begin() as conn:
            conn.execute(update(t).where(t.c.store_id == cycle.store_id, t.c.snapshot_id == cycle.snapshot_id)
                         .values(stage=stage, updated_at=time.time(), **values))
        return self.get(cycle.store_id, cycle.snapshot_id)

    def finish(self, cycle: Cycle, outcome: str, reason: str | None = None, **values) -> Cycle:
        return self.advance(cycle, "done", outcome=outcome, reason=reason, **values)

    def close(self) -> None:
        self.engine.dispose()
