"""Configuration of the streaming worker and the replay producer: one frozen dataclass each.

Only entry points (streaming/cli.py, bench/stream.py) read files and the environment; everything
below them takes these objects. Unknown keys in a config file are errors that name the file.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from g2rec.config import from_mapping
from g2rec.errors import ConfigError
from g2rec.graph import GraphConfig


@dataclass(frozen=True)
class TopicConfig:
    """Kafka topics. `partitions` is final: the broker cannot add partitions later.

    dead_letters and snapshots default ("") to "<events>-dlq" and "<events>-snapshots".
    """

    events: str = "g2rec-events"
    dead_letters: str = ""
    snapshots: str = ""
    partitions: int = 4

    def __post_init__(self) -> None:
        if not self.dead_letters:
            object.__setattr__(self, "dead_letters", f"{self.events}-dlq")
        if not self.snapshots:
            object.__setattr__(self, "snapshots", f"{self.events}-snapshots")
        if self.partitions < 1:
            raise ConfigError(f"partitions={self.partitions} must be >= 1")
        if len({self.events, self.dead_letters, self.snapshots}) != 3:
            raise ConfigError("events, dead_letters and snapshots must be three different topics")


@dataclass(frozen=True)
class StreamConfig:
    """The stream worker.

    graph:                 partner sampling; r must be fixed (M grows while the worker runs).
    half_life_s:           optional exponential decay of counts in event time; None = plain counts.
                           Increments are stored scaled by 2**((t - time_origin) / half_life_s) and
                           a snapshot at time T divides by 2**((T - time_origin) / half_life_s).
    max_batch:             records fetched and processed together (vectorised).
    checkpoint_interval_s: the longest time processed events wait before their state is committed.
    checkpoint_events:     commit sooner once this many events are pending.
    eager_checkpoints:     also commit as soon as a fetch comes back short (the worker has caught up)
                           and the previous commit is done, for freshness; a backlog still commits
                           by checkpoint_events / checkpoint_interval_s.
    snapshot_interval_s:   how often the owner of partition 0 re-samples and publishes a snapshot.
    compact_interval_s:    how often a worker folds the window logs it committed into per-user rows.
    user_ttl_s:            users idle this long (and folded) leave memory and are reloaded from the
                           store on their next event; None keeps every user of owned partitions.
    data_dir:              local state; store_url defaults to SQLite in it, snapshot_dir to data_dir/snapshots.
    max_event_bytes:       larger payloads are dead-lettered as oversized.
    dead_letter_max_bytes: a dead letter keeps at most this many bytes of the original value (its
                           size and sha256 travel in headers), so any message can be dead-lettered.
    event_log:             write every committed valid event to the Parquet event log
                           (streaming/eventlog.py) under event_log_dir (default data_dir/eventlog).
    event_log_retention_days, event_log_retention_bytes: drop the log's oldest days beyond these
                           (days before its newest day; total size); None = keep everything.
    sink, sink_options:    where users' updated recent histories are pushed (streaming/sink.py).
    metrics_path:          if set, per-checkpoint timings are appended there as JSON lines, and
                           METRICS_PATH.lags gets (produced_at, commit lag) float64 seconds per event.
    """

    bootstrap: str = "127.0.0.1:9092"
    topics: TopicConfig = field(default_factory=TopicConfig)
    group_id: str = "g2rec-stream"
    data_dir: str = "g2rec-state"
    store_url: str | None = None
    snapshot_dir: str | None = None
    graph: GraphConfig = field(default_factory=lambda: GraphConfig(r=20))
    half_life_s: float | None = None
    time_origin: float = 1.6e9
    max_batch: int = 20_000
    checkpoint_interval_s: float = 1.0
    checkpoint_events: int = 100_000
    eager_checkpoints: bool = True
    snapshot_interval_s: float = 60.0
    compact_interval_s: float = 10.0
    user_ttl_s: float | None = None
    session_timeout_s: float = 6.0
    max_event_bytes: int = 4096
    dead_letter_max_bytes: int = 64 * 1024
    event_log: bool = True
    event_log_dir: str | None = None
    event_log_retention_days: float | None = None
    event_log_retention_bytes: int | None = None
    sink: str = "none"
    sink_options: dict[str, Any] = field(default_factory=dict)
    metrics_path: str | None = None

    def __post_init__(self) -> None:
        if self.graph.r is None:
            raise ConfigError("graph.r must be fixed for streaming: r = ceil(c log2 M) would change as M grows")
        if self.half_life_s is not None and not (math.isfinite(self.half_life_s) and self.half_life_s > 0):
            raise ConfigError(f"half_life_s={self.half_life_s} must be a positive number or None")
        for name in ("max_batch", "checkpoint_events", "max_event_bytes", "dead_letter_max_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.user_ttl_s is not None and not self.user_ttl_s >= 0:
            raise ConfigError(f"user_ttl_s={self.user_ttl_s} must be >= 0, or None to keep every user")
        for name in ("checkpoint_interval_s", "snapshot_interval_s", "session_timeout_s", "compact_interval_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be > 0")
        for name in ("event_log_retention_days", "event_log_retention_bytes"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name}={value} must be positive, or None to keep everything")

    @property
    def r(self) -> int:
        r = self.graph.r
        assert r is not None  # checked in __post_init__
        return r

    @property
    def store(self) -> str:
        return self.store_url or f"sqlite:///{Path(self.data_dir) / 'stream.sqlite'}"

    @property
    def snapshots(self) -> Path:
        return Path(self.snapshot_dir) if self.snapshot_dir else Path(self.data_dir) / "snapshots"

    @property
    def event_log_path(self) -> Path:
        return Path(self.event_log_dir) if self.event_log_dir else Path(self.data_dir) / "eventlog"

    def fingerprint(self) -> dict[str, Any]:
        """Settings that change the counts: a store refuses a worker whose fingerprint differs."""
        g = self.graph
        return {"topic": self.topics.events, "window": g.window, "r": g.r, "seed": g.seed,
                "decay": g.decay, "half_life_s": self.half_life_s, "time_origin": self.time_origin}


def stream_config_from_mapping(data: dict[str, Any], where: str = "config") -> StreamConfig:
    """A StreamConfig from plain data (JSON), nested `topics` and `graph` mappings included."""
    return from_mapping(StreamConfig, data, where)


def load_stream_config(path: str | Path, **overrides: Any) -> StreamConfig:
    """Read a JSON config file; keyword overrides (already typed) win over the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(str(path), f"invalid JSON: {e}") from e
    return replace(stream_config_from_mapping(data, str(path)), **overrides)
