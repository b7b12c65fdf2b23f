"""The stream worker's history sink: keeps users' recent histories (the user_recent_history view)
in the online store, one online read and one bulk write per batch.

It implements streaming.sink.HistorySink: `write(updates)` with one streaming.sink.UserHistoryUpdate
per user whose window changed in a checkpoint (the new events' item ids and unix-second
timestamps, and the worker's window of the user's last items after them). The stored history is
the stored one plus the new events, newest `max_len` kept, in the worker's order; the worker's
window is the authority it is checked against:

- appended tail equals the window: write it (the normal case);
- stored tail already equals the window: this checkpoint was applied before a crash and is
  being replayed, so nothing is written (replays are exact, not doubled);
- neither (the store lost the row, or was written by someone else): start over from the
  window; window items older than this checkpoint's events get timestamp -1, meaning unknown.

Updates without a window (any object with user_id, item_ids, timestamps) are appended as is.
The sink must be the only writer of a user's row (the stream partitions events by user).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np

from .backends import Column
from .config import StoreConfig
from .encoding import checked_entity_keys, int64_ragged_values
from .store import FeatureRepo

VIEW = "user_recent_history"
UNKNOWN_TIME = -1


class FeastHistorySink:
    """Batched writes of recent histories into the Feast online store."""

    def __init__(self, repo: FeatureRepo, max_len: int | None = None):
        self.repo = repo
        self.max_len = max_len or repo.config.history_len
        if self.max_len < 1:
            raise ValueError(f"max_len={self.max_len} must be >= 1")
        self.replays_skipped = 0
        self.restarts = 0
        self._owns_repo = False

    def write(self, updates: Sequence[Any]) -> None:
        """Apply a batch of updates (several for one user are applied in order)."""
        batch: dict[int, list[tuple[list[int], list[int], list[int] | None]]] = {}
        for n, u in enumerate(updates):
            items = np.asarray(u.item_ids).tolist()
            times = np.floor(np.asarray(u.timestamps, dtype=np.float64)).astype(np.int64).tolist()
            if len(items) != len(times):
                raise ValueError(f"updates[{n}] (user {u.user_id}): {len(items)} item_ids but {len(times)} timestamps")
            if int(u.user_id) != u.user_id:
                raise TypeError(f"updates[{n}].user_id must be an integer, got {u.user_id!r}")
            window = getattr(u, "window", None)
            window = None if window is None else np.asarray(window).tolist()
            batch.setdefault(int(u.user_id), []).append((items, times, window))
        if not batch:
            return
        users = list(batch)
        keys = checked_entity_keys({"user_id": np.array(users, np.int64)})
        stored = self.repo.read(VIEW, keys, ["item_ids", "timestamps"])
        out_keys, out_items, out_times = [], [], []
        for key, user, row in zip(keys, users, stored):
            items = list(row["item_ids"].int64_list_val.val) if row else []
            times = list(row["timestamps"].int64_list_val.val) if row else []
            before = (items, times)
            for new_items, new_times, window in batch[user]:
                items, times = self._apply(items, times, new_items, new_times, window)
            if (items, times) != before:
                out_keys.append(key)
                out_items.append(items)
                out_times.append(times)
        if out_keys:
            columns = {"item_ids": Column(int64_ragged_values(out_items)),
                       "timestamps": Column(int64_ragged_values(out_times))}
            self.repo.backend.write(self.repo.view(VIEW), out_keys, columns, datetime.now(timezone.utc))

    def _apply(self, items: list[int], times: list[int], new_items: list[int], new_times: list[int],
               window: list[int] | None) -> tuple[list[int], list[int]]:
        cat_items, cat_times = items + new_items, times + new_times
        if window is None or not window:
            return cat_items[-self.max_len:], cat_times[-self.max_len:]
        k = len(window)
        if cat_items[-k:] == window:
            return cat_items[-self.max_len:], cat_times[-self.max_len:]
        if new_items and items[-k:] == window:
            self.replays_skipped += 1
            return items, times
        self.restarts += 1
        kept = window[-self.max_len:]
        m = min(len(kept), len(new_items))
        known = new_times[-m:] if m and kept[-m:] == new_items[-m:] else []
        return kept, [UNKNOWN_TIME] * (len(kept) - len(known)) + known

    def close(self) -> None:
        """Nothing is buffered between calls; close the repo if the sink opened it."""
        if self._owns_repo:
            self.repo.close()


def open_sink(root: str | None = None, online: str | None = None, redis: str | None = None,
              project: str | None = None, max_len: int | None = None) -> FeastHistorySink:
    """Factory for streaming's sink registry ("features.sink:open_sink", options as keywords):
    a sink on the store named by the G2REC_* environment, with these overrides."""
    config = StoreConfig.from_env(root=root, online=online, redis=redis, project=project)
    sink = FeastHistorySink(FeatureRepo(config), max_len)
    sink._owns_repo = True
    return sink
