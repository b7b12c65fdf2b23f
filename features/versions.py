"""The version log: every publish of a versioned feature set, recorded through SQLAlchemy in the
metadata DB (SQLite by default, any SQLAlchemy URL otherwise).

Readers do not need it (the online version_pointer row is what they follow); it answers "what was
published when, how big, how long did it take, what failed", and its lock row keeps two
publishers of the same feature set from interleaving.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import BigInteger, DateTime, Float, Integer, String, Text, UniqueConstraint, create_engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from g2rec.errors import StateError

STATES = ("writing", "current", "previous", "retired", "failed")


class PublishInProgressError(StateError):
    """Another publish of the same feature set holds the lock."""


class Base(DeclarativeBase):
    pass


class VersionRecord(Base):
    __tablename__ = "g2rec_feature_versions"
    __table_args__ = (UniqueConstraint("feature_set", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    feature_set: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(BigInteger)
    slot: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    rows: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    n_clusters: Mapped[int | None] = mapped_column(Integer, nullable=True)
    profile_version: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    online_store: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    def as_dict(self) -> dict:
        return {c.name: getattr(self, c.name) for c in self.__table__.columns if c.name != "id"}


class PublishLock(Base):
    """One row per feature set while a publish runs; the primary key makes taking it atomic."""

    __tablename__ = "g2rec_publish_lock"

    feature_set: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def _now() -> datetime:
    return datetime.now(timezone.utc)


class VersionLog:
    def __init__(self, url: str):
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        self.engine = create_engine(url)
        Base.metadata.create_all(self.engine)

    def begin(self, feature_set: str, version: int, slot: int, rows: int, width: int, online_store: str,
              n_clusters: int | None = None, profile_version: int | None = None) -> None:
        """Take the feature set's lock and record `version` as being written."""
        try:
            with Session(self.engine) as s, s.begin():
                s.add(PublishLock(feature_set=feature_set, version=version, started_at=_now()))
        except IntegrityError as e:
            held = self.lock_holder(feature_set)
            raise PublishInProgressError(
                f"{feature_set}: version {held} is being published (lock in {self.engine.url}); "
                "if that publisher died, run `g2rec features unlock`"
            ) from e
        with Session(self.engine) as s, s.begin():
            rec = s.scalar(select(VersionRecord).where(VersionRecord.feature_set == feature_set,
                                                       VersionRecord.version == version))
            if rec is None:
                rec = VersionRecord(feature_set=feature_set, version=version)
                s.add(rec)
            # A re-publish (after a failure, or of a version a wiped online store lost) starts over.
            rec.slot, rec.state, rec.rows, rec.width = slot, "writing", rows, width
            rec.n_clusters, rec.profile_version, rec.online_store = n_clusters, profile_version, online_store
            rec.started_at, rec.finished_at, rec.seconds, rec.error = _now(), None, None, None

    def complete(self, feature_set: str, version: int, seconds: float) -> None:
        """`version` is now current: the old current becomes previous, the old previous retired."""
        with Session(self.engine) as s, s.begin():
            for rec in s.scalars(select(VersionRecord).where(VersionRecord.feature_set == feature_set,
                                                            VersionRecord.state.in_(("current", "previous")))):
                rec.state = "previous" if rec.state == "current" else "retired"
            rec = self._get(s, feature_set, version)
            rec.state, rec.finished_at, rec.seconds = "current", _now(), seconds
            s.delete(s.get(PublishLock, feature_set))

    def fail(self, feature_set: str, version: int, error: str) -> None:
        with Session(self.engine) as s, s.begin():
            rec = self._get(s, feature_set, version)
            rec.state, rec.finished_at, rec.error = "failed", _now(), error[:2000]
            lock = s.get(PublishLock, feature_set)
            if lock is not None:
                s.delete(lock)

    def retire_previous(self, feature_set: str) -> None:
        """The previous version's slot is about to be rewritten."""
        with Session(self.engine) as s, s.begin():
            for rec in s.scalars(select(VersionRecord).where(VersionRecord.feature_set == feature_set,
                                                            VersionRecord.state == "previous")):
                rec.state = "retired"

    def unlock(self, feature_set: str) -> int | None:
        """Drop a dead publisher's lock and mark its version failed; returns that version."""
        with Session(self.engine) as s, s.begin():
            lock = s.get(PublishLock, feature_set)
            if lock is None:
                return None
            version = lock.version
            s.delete(lock)
            rec = s.scalar(select(VersionRecord).where(VersionRecord.feature_set == feature_set,
                                                       VersionRecord.version == version))
            if rec is not None and rec.state == "writing":
                rec.state, rec.finished_at, rec.error = "failed", _now(), "lock released by hand"
            return version

    def lock_holder(self, feature_set: str) -> int | None:
        with Session(self.engine) as s:
            lock = s.get(PublishLock, feature_set)
            return None if lock is None else lock.version

    def history(self, feature_set: str | None = None) -> list[dict]:
        """All records, oldest first."""
        with Session(self.engine) as s:
            q = select(VersionRecord).order_by(VersionRecord.feature_set, VersionRecord.version)
            if feature_set is not None:
                q = q.where(VersionRecord.feature_set == feature_set)
            return [r.as_dict() for r in s.scalars(q)]

    def _get(self, s: Session, feature_set: str, version: int) -> VersionRecord:
        rec = s.scalar(select(VersionRecord).where(VersionRecord.feature_set == feature_set,
                                                   VersionRecord.version == version))
        if rec is None:
            raise LookupError(f"{feature_set} version {version} has no record in {self.engine.url}")
        return rec

    def close(self) -> None:
        self.engine.dispose()
