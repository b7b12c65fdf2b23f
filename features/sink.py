"""The stream worker's history sink: keeps users' recent histories (the user_recent_history view)
in the online store, one bulk write per batch.

It implements streaming.sink.HistorySink: `write(updates)` with one streaming.sink.UserHistoryUpdate
per user whose window changed in a checkpoint (the new events' item ids and unix-second
timestamps, the worker's window of the user's last items after them, and those items' times).
The stored history is the user's last `max_len` events, oldest first, with `position`, the number
of events the worker had seen for the user when it wrote the row. The worker's window is the
authority for it:

- the window holds the last max_len events (or all of them) and their times are known: the
  window is written as the history, without reading the store (the normal case while a user's
  events fit in the window). Writing the same window again (a replay) changes nothing;
- otherwise (the history is longer than the window, or the window's times are unknown because the
  worker reloaded it from its store) the stored row is read, and the update's position decides:
  - stored position = the position before the update's events: append them;
  - stored position >= the update's: this checkpoint was applied before a crash and is being
    replayed, so nothing is written (replays are exact, not doubled);
  - an older position (the store lost a write, or the row is missing): start over from the
    window; items whose time is not known get timestamp -1, meaning unknown.
  Rows with a null position (pushed by another service) are matched by comparing their tail with the window.

Updates without a window (any object with user_id, item_ids, timestamps) are appended as is.
The sink must be the only writer of a user's row (the stream partitions events by user).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np

from .backends import Column
from .config import StoreConfig
from .encoding import checked_entity_keys, int64_list_values, int64_ragged_values, int64_values
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
        self.overwritten = 0  # users written from the window alone
        self.merged = 0  # users whose stored history was read
        self.replays_skipped = 0
        self.restarts = 0
        self._owns_repo = False

    def write(self, updates: Sequence[Any]) -> None:
        """Apply a batch of updates (several for one user are applied in order)."""
        batch: dict[int, list[Any]] = {}
        for n, u in enumerate(updates):
            if len(u.item_ids) != len(u.timestamps):
                raise ValueError(f"updates[{n}] (user {u.user_id}): {len(u.item_ids)} item_ids but "
                                 f"{len(u.timestamps)} timestamps")
            if int(u.user_id) != u.user_id:
                raise TypeError(f"updates[{n}].user_id must be an integer, got {u.user_id!r}")
            batch.setdefault(int(u.user_id), []).append(u)
        whole = {user: ups[-1] for user, ups in batch.items() if self._covers_history(ups[-1])}
        if whole:
            self._overwrite(whole)
        rest = {user: ups for user, ups in batch.items() if user not in whole}
        if rest:
            self._merge(rest)

    def _covers_history(self, u: Any) -> bool:
        """The update's window holds the user's last max_len events, all with known times."""
        window, times = getattr(u, "window", None), getattr(u, "window_times", None)
        if window is None or times is None or len(window) == 0 or len(times) != len(window):
            return False
        return len(window) >= min(u.position, self.max_len) and bool((np.asarray(times)[-self.max_len:] >= 0).all())

    def _overwrite(self, latest: dict[int, Any]) -> None:
        ups = list(latest.values())
        lengths = np.fromiter((min(len(u.window), self.max_len) for u in ups), dtype=np.int64, count=len(ups))
        keep = np.arange(int(lengths.max()))[None, :] < lengths[:, None]  # (n, width) left-aligned rows
        items = np.zeros(keep.shape, dtype=np.int64)
        times = np.zeros(keep.shape, dtype=np.int64)
        items[keep] = np.concatenate([np.asarray(u.window)[len(u.window) - m:] for u, m in zip(ups, lengths.tolist())])
        times[keep] = np.concatenate([np.asarray(u.window_times)[len(u.window) - m:]
                                      for u, m in zip(ups, lengths.tolist())])
        self._write(list(latest), {"item_ids": Column(int64_list_values(items, keep)),
                                   "timestamps": Column(int64_list_values(times, keep)),
                                   "position": self._positions([u.position for u in ups])})
        self.overwritten += len(ups)

    def _merge(self, batch: dict[int, list[Any]]) -> None:
        users = list(batch)
        keys = checked_entity_keys({"user_id": np.array(users, np.int64)})
        stored = self.repo.read(VIEW, keys, ["item_ids", "timestamps", "position"])
        out_users, out_items, out_times, out_positions = [], [], [], []
        for user, row in zip(users, stored):
            items = list(row["item_ids"].int64_list_val.val) if row and "item_ids" in row else []
            times = list(row["timestamps"].int64_list_val.val) if row and "timestamps" in row else []
            # None: a row written without one (pushed with a null position); 0: no row, nothing applied yet.
            has_position = row and "position" in row and row["position"].WhichOneof("val") == "int64_val"
            position = row["position"].int64_val if has_position else (None if row else 0)
            before = (items, times, position)
            for u in batch[user]:
                items, times = self._apply(items, times, position, u)
                if getattr(u, "position", None) is not None:
                    position = max(position or 0, int(u.position))
            if (items, times, position) != before:
                out_users.append(user)
                out_items.append(items)
                out_times.append(times)
                out_positions.append(position)
        self.merged += len(users)
        if out_users:
            self._write(out_users, {"item_ids": Column(int64_ragged_values(out_items)),
                                    "timestamps": Column(int64_ragged_values(out_times)),
                                    "position": self._positions(out_positions)})

    @staticmethod
    def _positions(positions: list[int | None]) -> Column:
        """Position values; None (a row pushed without one, and updates that carry none) stays null."""
        known = iter(int64_values(np.array([p for p in positions if p is not None], np.int64)))
        values = [b"" if p is None else next(known) for p in positions]  # b"": an empty Value, read as null
        return Column(values, [None if p is None else str(p) for p in positions])

    def _write(self, users: list[int], columns: dict[str, Column]) -> None:
        keys = checked_entity_keys({"user_id": np.array(users, np.int64)})
        self.repo.backend.write(self.repo.view(VIEW), keys, columns, datetime.now(timezone.utc))

    def _apply(self, items: list[int], times: list[int], position: int | None, u: Any) -> tuple[list[int], list[int]]:
        """The history after update u, given the stored one and its position (None: unknown)."""
        new_items = np.asarray(u.item_ids).tolist()
        new_times = np.floor(np.asarray(u.timestamps, dtype=np.float64)).astype(np.int64).tolist()
        window = getattr(u, "window", None)
        window = None if window is None else np.asarray(window).tolist()
        cat_items, cat_times = items + new_items, times + new_times
        if not window:
            return cat_items[-self.max_len:], cat_times[-self.max_len:]
        k = len(window)
        if position is not None:
            if position >= u.position:
                self.replays_skipped += 1
                return items, times
            if position == u.position - len(new_items):
                return cat_items[-self.max_len:], cat_times[-self.max_len:]
        elif cat_items[-k:] == window:
            return cat_items[-self.max_len:], cat_times[-self.max_len:]
        elif new_items and items[-k:] == window:
            self.replays_skipped += 1
            return items, times
        self.restarts += 1
        kept = window[-self.max_len:]
        window_times = getattr(u, "window_times", None)
        if window_times is not None:
            return kept, np.asarray(window_times).tolist()[-len(kept):]
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
