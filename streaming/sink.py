"""Where the stream worker pushes users' updated recent histories (e.g. a Feast online store).

A sink is anything with `write(updates)`. The worker calls it once per checkpoint, with every user
whose window changed since the previous checkpoint, *before* committing that checkpoint: a crash
in between replays the same events and re-sends identical histories, so a sink that overwrites
per user (an online store keyed by user) ends up exact. Sinks must not mutate the arrays.

Sinks are picked by name from config: a name in SINKS, or "package.module:factory". The factory
is called with the config's `sink_options` as keyword arguments.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from g2rec.errors import ConfigError


@dataclass(frozen=True)
class UserHistoryUpdate:
    """One user's new events in a checkpoint, and the recent window they lead to.

    item_ids:   (n,) int64 raw item ids of the user's events applied in this checkpoint, oldest first.
    timestamps: (n,) float64 their unix seconds.
    window:     (L,) int64 the user's last L = min(position, window size) items after them, oldest first.
    position:   events seen for this user so far (all time).
    window_times: (L,) int64 unix seconds (floored) of the window's items, -1 where unknown (items
                of a window the worker reloaded from its store), or None.
    A sink can append item_ids/timestamps to a stored history, or overwrite it with `window` and
    `window_times` where those are known.
    """

    user_id: int
    item_ids: np.ndarray
    timestamps: np.ndarray
    window: np.ndarray
    position: int
    window_times: np.ndarray | None = None


@runtime_checkable
class HistorySink(Protocol):
    def write(self, updates: list[UserHistoryUpdate]) -> None: ...


class NoopSink:
    """Discards updates (the default)."""

    def write(self, updates: list[UserHistoryUpdate]) -> None:
        pass


class MemorySink:
    """Keeps the latest history per user in a dict; for tests and demos."""

    def __init__(self) -> None:
        self.latest: dict[int, UserHistoryUpdate] = {}
        self.n_writes = 0

    def write(self, updates: list[UserHistoryUpdate]) -> None:
        self.n_writes += 1
        for u in updates:
            self.latest[u.user_id] = u


class JsonLinesSink:
    """Appends one JSON line per update to a file; a simple, inspectable sink."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, updates: list[UserHistoryUpdate]) -> None:
        import json

        with open(self.path, "a") as f:
            for u in updates:
                f.write(json.dumps({"user_id": u.user_id, "item_ids": u.item_ids.tolist(),
                                    "timestamps": u.timestamps.tolist(), "window": u.window.tolist(),
                                    "position": u.position}) + "\n")


# name -> "module:factory". The Feast sink lives with the feature store code (features/).
SINKS: dict[str, str] = {
    "none": "streaming.sink:NoopSink",
    "memory": "streaming.sink:MemorySink",
    "jsonl": "streaming.sink:JsonLinesSink",
    "feast": "features.sink:open_sink",
}


def make_sink(name: str, options: dict[str, Any] | None = None) -> HistorySink:
    """Build the sink called `name` (a SINKS key or "module:factory") with these options."""
    target = SINKS.get(name, name)
    if ":" not in target:
        raise ConfigError(f"unknown sink {name!r}; known: {sorted(SINKS)} or 'package.module:factory'")
    module, attr = target.split(":", 1)
    try:
        factory: Callable[..., Any] = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"sink {name!r}: cannot load {target!r}: {e}") from e
    try:
        sink = factory(**(options or {}))
    except TypeError as e:
        raise ConfigError(f"sink {name!r}: bad sink_options {sorted(options or {})}: {e}") from e
    if not isinstance(sink, HistorySink):
        raise TypeError(f"sink {name!r}: {target} built a {type(sink).__name__} without write(updates)")
    return sink
