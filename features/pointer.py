"""The current-version pointer of a versioned feature set: one row of the version_pointer view.

A versioned set (profiles, prototypes) lives in two slots. The pointer names the slot holding the
current version and, until that slot is rewritten, the previous one. It is a single entity row,
which every backend writes atomically (one SQLite/Postgres transaction, one Redis HSET), so
switching versions is one write that readers see entirely or not at all.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from feast.infra.key_encoding_utils import serialize_entity_key

from .encoding import ENTITY_KEY_VERSION, entity_key_proto, int64_values
from .backends import Column

from g2rec.errors import StateError

VIEW = "version_pointer"
NONE = -1  # no version


class VersionNotOnlineError(StateError, LookupError):
    """The asked-for version is not (or no longer) readable from the online store."""


@dataclass(frozen=True)
class VersionPointer:
    feature_set: str
    current_version: int = NONE
    current_slot: int = NONE
    current_width: int = 0
    previous_version: int = NONE
    previous_slot: int = NONE
    previous_width: int = 0
    published_at: int = 0

    @property
    def has_current(self) -> bool:
        return self.current_version != NONE

    def slot_of(self, version: int | None) -> tuple[int, int, int]:
        """(version, slot, width) to read for `version` (None: the current one)."""
        if version is None or version == self.current_version:
            if not self.has_current:
                raise VersionNotOnlineError(f"no {self.feature_set} version has been published")
            return self.current_version, self.current_slot, self.current_width
        if version == self.previous_version and version != NONE:
            return self.previous_version, self.previous_slot, self.previous_width
        raise VersionNotOnlineError(
            f"{self.feature_set} version {version} is not online (current {self.current_version}, "
            f"previous {self.previous_version}); only those two are kept"
        )

    def next_slot(self) -> int:
        """The slot a new version is written into: never the current one."""
        return 0 if not self.has_current else 1 - self.current_slot

    def retire_previous(self) -> "VersionPointer":
        return dataclasses.replace(self, previous_version=NONE, previous_slot=NONE, previous_width=0)

    def switch(self, version: int, slot: int, width: int, at: datetime) -> "VersionPointer":
        return VersionPointer(
            feature_set=self.feature_set,
            current_version=version,
            current_slot=slot,
            current_width=width,
            previous_version=self.current_version,
            previous_slot=self.current_slot,
            previous_width=self.current_width,
            published_at=int(at.timestamp()),
        )


_FIELDS = [f.name for f in dataclasses.fields(VersionPointer) if f.name != "feature_set"]


def _key(feature_set: str) -> bytes:
    return serialize_entity_key(entity_key_proto({"feature_set": feature_set}),
                                entity_key_serialization_version=ENTITY_KEY_VERSION)


def read_pointer(repo, feature_set: str) -> VersionPointer:
    """The pointer as stored now; an empty pointer when the set was never published."""
    (row,) = repo.read(VIEW, [_key(feature_set)], _FIELDS)
    if row is None:
        return VersionPointer(feature_set)
    missing = [f for f in _FIELDS if f not in row or row[f].WhichOneof("val") is None]
    if missing:
        raise RuntimeError(f"version_pointer row of {feature_set!r} lacks {missing}: written by something else?")
    return VersionPointer(feature_set, **{f: row[f].int64_val for f in _FIELDS})


def write_pointer(repo, pointer: VersionPointer, at: datetime | None = None) -> None:
    key = _key(pointer.feature_set)
    values = np.array([getattr(pointer, f) for f in _FIELDS], dtype=np.int64)
    encoded = int64_values(values)
    columns = {f: Column(encoded[i], str(int(values[i]))) for i, f in enumerate(_FIELDS)}
    repo.backend.write(repo.view(VIEW), [key], columns, at or datetime.now(timezone.utc))
