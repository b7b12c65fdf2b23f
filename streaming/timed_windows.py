"""Users' windows with the event time of each window item, for the history sink.

The history sink (streaming/sink.py) overwrites a user's stored history with the worker's window,
which needs each item's time. The store keeps windows without times, so items of windows loaded
from it (after a restart or an eviction) have time -1, unknown; the sink merges those users with
their stored history instead.
"""

from __future__ import annotations

import numpy as np

from g2rec.errors import StateError
from g2rec.windows import BatchContext, UserWindows, WindowTable

UNKNOWN_TIME = -1


class TimedWindows:
    """A UserWindows of items (`items`, what sampling reads) and one of their int64 unix-second
    times (`times`), driven by the same calls in the same order, so their rows coincide."""

    def __init__(self, window: int) -> None:
        self.items = UserWindows(window)
        self.times = UserWindows(window)

    def __len__(self) -> int:
        return len(self.items)

    def find(self, users: np.ndarray) -> np.ndarray:
        return self.items.find(users)

    def rows_for(self, users: np.ndarray, partition: int, rows: np.ndarray | None = None) -> np.ndarray:
        mirror = self.times.rows_for(users, partition, None if rows is None else rows.copy())
        rows = self.items.rows_for(users, partition, rows)
        if not np.array_equal(rows, mirror):
            raise StateError("item and time windows went out of step")
        return rows

    def load(self, table: WindowTable, partition: int, stamp: float = 0.0) -> None:
        """Load stored windows; their times are unknown."""
        self.items.load(table, partition, stamp)
        unknown = np.full(len(table.flat), UNKNOWN_TIME, dtype=np.int64)
        self.times.load(WindowTable(table.users, table.positions, table.ptr, unknown), partition, stamp)

    def extend(self, users: np.ndarray, items: np.ndarray, times: np.ndarray, partition: int, stamp: float,
               rows: np.ndarray) -> BatchContext:
        """UserWindows.extend of the items, with their times (B,) int64 unix seconds."""
        self.times.extend(users, times, partition, stamp, rows)
        return self.items.extend(users, items, partition, stamp, rows)

    def evict(self, before: float) -> int:
        self.times.evict(before)
        return self.items.evict(before)

    def drop_partitions(self, partitions: set[int]) -> None:
        self.times.drop_partitions(partitions)
        self.items.drop_partitions(partitions)

    def export(self, rows: np.ndarray | None = None) -> tuple[WindowTable, WindowTable]:
        """(items, times) tables of these rows, with the same users and ptr."""
        return self.items.export(rows), self.times.export(rows)
