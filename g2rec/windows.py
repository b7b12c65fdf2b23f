"""Users' recent windows and the streaming partner sampler, vectorised over a micro-batch.

Pure numpy (no Kafka, no SQL). For a batch of events in arrival order, each user's events are
laid out after the user's stored window in one flat "context" array; the s-th most recent item
before an event is then `context[flat_index - s]`, whatever mix of stored and in-batch items that
is. Increments come from `g2rec.graph.sampled_increments`, the function the batch builder calls,
keyed by (seed, raw user id, position, slot), so any grouping of the same events into batches (or
into workers) yields identical increments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from g2rec.graph import GraphConfig, sampled_increments

_PAD = -1


@dataclass(frozen=True)
class WindowTable:
    """Windows of several users, ragged: user k's items are flat[ptr[k]:ptr[k+1]], oldest first.

    users, positions: (U,) int64 raw user ids and their event counts so far.
    ptr: (U+1,) int64.  flat: (sum of lengths,) int64 raw item ids.
    """

    users: np.ndarray
    positions: np.ndarray
    ptr: np.ndarray
    flat: np.ndarray

    @staticmethod
    def empty() -> WindowTable:
        z = np.zeros(0, dtype=np.int64)
        return WindowTable(z, z, np.zeros(1, dtype=np.int64), z)

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class BatchContext:
    """One batch laid out per user. All per-event arrays are in user-grouped order.

    order:     (B,) permutation from arrival order to grouped order (stable within a user).
    users:     (B,) raw user id per event.  items: (B,) raw item id per event.
    positions: (B,) 0-based position of the event in its user's whole history.
    flat:      (B,) index of the event in `context`.
    context:   (C,) stored windows followed by in-batch items, per user, oldest first.
    rows:      (G,) window rows of the distinct users in the batch.
    """

    order: np.ndarray
    users: np.ndarray
    items: np.ndarray
    positions: np.ndarray
    flat: np.ndarray
    context: np.ndarray
    rows: np.ndarray


class UserWindows:
    """Each user's event count and last `window` items, for the users of some partitions.

    Row r: users[r] (raw id), positions[r] events seen, items[r, W-L:] the last L = min(positions, W)
    items oldest first (left-padded with -1), partition[r] the input partition the user arrives on,
    stamp[r] the caller's clock when the row was last loaded or extended (`evict` drops by it).

    Memory, per row: items are int32 while every id stored fits (int64 from the first one that
    does not), 4 * window bytes, plus 28 bytes of per-row columns and 16 of the sorted user index
    that `find` searches (a dict of Python ints took ~145 bytes a user). Tables grow by a quarter,
    in place (`ndarray.resize`, i.e. realloc: glibc moves large blocks by remapping pages), so a
    grown table does not sit beside a full copy of the old one.
    """

    _COLUMNS = ("users", "positions", "partition", "stamp", "items")

    def __init__(self, window: int, capacity: int = 1024) -> None:
        if window < 1:
            raise ValueError(f"window={window} must be >= 1")
        if capacity < 1:
            raise ValueError(f"capacity={capacity} must be >= 1")
        self.window = window
        self.users = np.zeros(capacity, dtype=np.int64)
        self.positions = np.zeros(capacity, dtype=np.int64)
        self.partition = np.zeros(capacity, dtype=np.int32)
        self.stamp = np.zeros(capacity, dtype=np.float64)
        self.items = np.full((capacity, window), _PAD, dtype=np.int32)
        self._keys = np.zeros(0, dtype=np.int64)  # (n,) user ids of rows 0..n-1, ascending
        self._key_rows = np.zeros(0, dtype=np.int64)  # (n,) the row of each
        self.n = 0
        self.in_place_resizes = 0  # column resizes done without a copy (tests read it)

    def __len__(self) -> int:
        return self.n

    def _fit_items(self, ids: np.ndarray) -> None:
        """Widen the item table to int64 once an id outside int32 arrives."""
        if self.items.dtype == np.int64 or not len(ids):
            return
        info = np.iinfo(np.int32)
        if ids.min() < info.min or ids.max() > info.max:
            self.items = self.items.astype(np.int64)

    def _grow(self, need: int) -> None:
        cap = len(self.users)
        if need <= cap:
            return
        new = max(need, cap + cap // 4 + 1024)
        self._resize(new)

    def _resize(self, rows: int) -> None:
        """Every column to `rows` rows (new ones zero): in place, unless something else holds a
        column (numpy's refcheck refuses then), when it is copied."""
        for name in self._COLUMNS:
            arr = self.__dict__.pop(name)  # this frame's reference must be the only one
            try:
                arr.resize((rows, *arr.shape[1:]))
                self.in_place_resizes += 1
            except ValueError:
                old, arr = arr, np.zeros((rows, *arr.shape[1:]), dtype=arr.dtype)
                arr[: min(rows, len(old))] = old[:rows]
            finally:
                setattr(self, name, arr)

    def find(self, users: np.ndarray) -> np.ndarray:
        """(B,) rows of these raw user ids, -1 where a user has no row."""
        users = np.asarray(users, dtype=np.int64)
        if not self.n:
            return np.full(len(users), -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(self._keys, users), self.n - 1)
        return np.where(self._keys[at] == users, self._key_rows[at], -1)

    def rows_for(self, users: np.ndarray, partition: int, rows: np.ndarray | None = None) -> np.ndarray:
        """(B,) rows of these raw user ids, creating empty rows for new users (`rows`: find's answer)."""
        users = np.asarray(users, dtype=np.int64)
        rows = self.find(users) if rows is None else rows
        missing = rows < 0
        if missing.any():
            new_users = np.unique(users[missing])
            start = self.n
            self._grow(start + len(new_users))
            sl = slice(start, start + len(new_users))
            self.users[sl] = new_users
            self.positions[sl] = 0
            self.partition[sl] = partition
            self.stamp[sl] = 0.0
            self.items[sl] = _PAD
            self.n += len(new_users)
            new_rows = np.arange(start, self.n, dtype=np.int64)
            at = np.searchsorted(self._keys, new_users)
            self._keys = np.insert(self._keys, at, new_users)
            self._key_rows = np.insert(self._key_rows, at, new_rows)
            rows[missing] = start + np.searchsorted(new_users, users[missing])
        return rows

    def drop_partitions(self, partitions: set[int]) -> None:
        """Forget every user of these partitions (they were revoked from this worker)."""
        self._keep(~np.isin(self.partition[: self.n], list(partitions)))

    def evict(self, before: float) -> int:
        """Forget the users whose stamp is older than `before`; returns how many were dropped."""
        keep = self.stamp[: self.n] >= before
        dropped = self.n - int(keep.sum())
        if dropped:
            self._keep(keep)
        return dropped

    def _keep(self, keep: np.ndarray) -> None:
        n = int(keep.sum())
        for name in self._COLUMNS:
            arr = getattr(self, name)
            arr[:n] = arr[: self.n][keep]
        renumber = np.cumsum(keep) - 1  # old row -> new row, for the rows kept
        kept = keep[self._key_rows]
        self._keys, self._key_rows = self._keys[kept], renumber[self._key_rows[kept]]
        self.n = n
        if 4 * n < len(self.users) and len(self.users) > 1024:  # give memory back after a large eviction
            self._resize(max(1024, 2 * n))

    def export(self, rows: np.ndarray | None = None) -> WindowTable:
        """The windows of these rows (all rows when None) as a ragged table."""
        rows = np.arange(self.n) if rows is None else np.asarray(rows, dtype=np.int64)
        lengths = np.minimum(self.positions[rows], self.window)
        ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        block = self.items[rows]
        mask = np.arange(self.window)[None, :] >= (self.window - lengths)[:, None]
        return WindowTable(self.users[rows], self.positions[rows], ptr, block[mask].astype(np.int64))

    def load(self, table: WindowTable, partition: int, stamp: float = 0.0) -> None:
        """Set these users' windows (replacing any rows they already have)."""
        if len(table) == 0:
            return
        rows = self.rows_for(table.users, partition)
        self.stamp[rows] = stamp
        lengths = np.diff(table.ptr)
        if (lengths > self.window).any() or (lengths > table.positions).any():
            raise ValueError(f"window table has rows longer than window={self.window} or than their positions")
        self.positions[rows] = table.positions
        self.partition[rows] = partition
        self._fit_items(table.flat)
        block = np.full((len(rows), self.window), _PAD, dtype=self.items.dtype)
        mask = np.arange(self.window)[None, :] >= (self.window - lengths)[:, None]
        block[mask] = table.flat
        self.items[rows] = block

    def extend(self, users: np.ndarray, items: np.ndarray, partition: int, stamp: float = 0.0,
               rows: np.ndarray | None = None) -> BatchContext:
        """Append a batch of events (arrival order) to the users' windows; return its layout.

        rows: the users' rows when the caller already has them (find, then load or rows_for).
        """
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError(f"users {users.shape} and items {items.shape} must be 1-d of one length")
        W = self.window
        rows = self.rows_for(users, partition) if rows is None else rows
        self._fit_items(items)
        order = np.argsort(rows, kind="stable")
        r_sorted = rows[order]
        B = len(order)
        if B == 0:
            z = np.zeros(0, dtype=np.int64)
            return BatchContext(order, z, z, z, z, z, z)
        first = np.concatenate([[True], r_sorted[1:] != r_sorted[:-1]])
        starts = np.flatnonzero(first)
        uniq = r_sorted[starts]  # (G,)
        n_g = np.diff(np.append(starts, B))  # (G,)
        g = np.cumsum(first) - 1  # (B,) group of each event
        t = np.arange(B) - starts[g]  # (B,) index within the user's batch events
        old_pos = self.positions[uniq]
        old_len = np.minimum(old_pos, W)
        seg_len = old_len + n_g
        ptr = np.concatenate([[0], np.cumsum(seg_len)[:-1]])
        context = np.empty(int(seg_len.sum()), dtype=np.int64)
        cols = np.arange(W)[None, :]
        stored = cols >= (W - old_len)[:, None]  # (G, W)
        dest = ptr[:, None] + cols - (W - old_len)[:, None]
        context[dest[stored]] = self.items[uniq][stored]
        flat = ptr[g] + old_len[g] + t
        items_sorted = items[order]
        context[flat] = items_sorted
        # The new window is the last W entries of each user's segment.
        src = ptr[:, None] + seg_len[:, None] - W + cols
        valid = src >= ptr[:, None]
        self.items[uniq] = np.where(valid, context[np.maximum(src, 0)], _PAD)
        self.positions[uniq] = old_pos + n_g
        self.stamp[uniq] = stamp
        return BatchContext(order=order, users=users[order], items=items_sorted,
                            positions=old_pos[g] + t, flat=flat, context=context, rows=uniq)


def sample_increments(
    ctx: BatchContext, cfg: GraphConfig, r: int, event_weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The batch's co-engagement increments, by `g2rec.graph.sampled_increments` over its layout.

    event_weights: (B,) per-event factor in grouped order, or None. Returns (item, partner,
    weight, event) with event the grouped index of the event each increment came from.
    """
    return sampled_increments(ctx.context, ctx.flat, ctx.users, ctx.positions, cfg, r, event_weights)


def fold_histories(base: WindowTable, users: np.ndarray, items: np.ndarray, window: int) -> WindowTable:
    """Windows after appending events (users[k], items[k]) in order to `base` (no sampling)."""
    state = UserWindows(window, capacity=max(len(base), 16))
    state.load(base, partition=0)
    if len(users):
        state.extend(users, items, partition=0)
    return state.export()
