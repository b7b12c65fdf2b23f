"""Kafka message types and the engagement event's wire contract.

Wire format of the events topic (one message per event, key = the user id as decimal ASCII so a
user's events share a partition and stay ordered): a UTF-8 JSON object of at most
`max_event_bytes` bytes with these fields (the contract as JSON Schema: streaming/event.schema.json)

    schema_version  JSON integer, the contract's major version    optional, default 1
    event_id    string, 1..128 characters          (producer-side identity, for tracing)
    user_id     JSON integer in 0..2**31-1          (raw user id)
    item_id     JSON integer in 0..2**31-1          (raw item id)
    timestamp   JSON number, unix seconds, finite, in 0..2**34   optional, default the Kafka record's
                                                                 timestamp
    event_type  string, 1..32 characters            optional, default "view"
    weight      JSON number, finite, in (0, 1e6]    optional, default 1.0

plus optionally faust's "__faust" metadata key. Booleans are not integers and 3.0 is not an
integer; NaN/Infinity, unknown keys, or anything else is rejected with a reason. A major version
this worker does not read (anything but 1) is rejected too, so it reaches the dead-letter topic
instead of being misread; adding a field means a new major version.

The hot path (`decode_values`) validates with plain Python and returns numpy columns, because
building one faust.Record per event costs more than the whole rest of the pipeline; it applies
exactly the rules of `EngagementEvent.from_wire`, which tests check against each other.

Dead letters (`DeadLetter`) are recorded in the state store with the offsets that skip them and
forwarded to `<topic>-dlq` from there: Kafka key "topic/partition/offset" (the dead letter's
identity), value = the original bytes, or their first `dead_letter_max_bytes` when larger, and the
reason, source coordinates, original key, size and sha256 in Kafka headers (the Kafka Connect
convention for the first four).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Sequence, cast

import faust
import numpy as np

from g2rec.errors import DataError

MAX_ID = 2**31 - 1
MAX_TIMESTAMP = float(2**34)
MAX_WEIGHT = 1e6
SCHEMA_VERSION = 1  # the major version of the event contract this code reads and writes
FIELDS = ("schema_version", "event_id", "user_id", "item_id", "timestamp", "event_type", "weight")
_REQUIRED = ("event_id", "user_id", "item_id")
_ALLOWED = frozenset(FIELDS) | {"__faust"}

# Header names on dead-letter messages.
H_REASON = "g2rec.dlq.reason"
H_TOPIC = "g2rec.dlq.topic"
H_PARTITION = "g2rec.dlq.partition"
H_OFFSET = "g2rec.dlq.offset"
H_KEY = "g2rec.dlq.key"  # the original message key (absent when it had none)
H_SIZE = "g2rec.dlq.size"  # the original value's length in bytes
H_SHA256 = "g2rec.dlq.sha256"  # hex sha256 of the original value


class InvalidEvent(DataError):
    """A message that is not a valid engagement event; str(e) is the dead-letter reason."""


class EngagementEvent(faust.Record, serializer="json", include_metadata=False):
    """One engagement: user `user_id` engaged with item `item_id` at `timestamp` (unix seconds)."""

    event_id: str
    user_id: int
    item_id: int
    timestamp: float
    event_type: str = "view"
    weight: float = 1.0

    @classmethod
    def from_wire(cls, value: bytes | None, max_bytes: int = 4096,
                  record_time: float | None = None) -> EngagementEvent:
        """Decode and validate one message value; raises InvalidEvent naming the problem.

        record_time: the Kafka record's timestamp (unix seconds), used when the event has none.
        """
        event_id, user_id, item_id, timestamp, event_type, weight = _decode(value, max_bytes, record_time)
        return cls(event_id=event_id, user_id=user_id, item_id=item_id, timestamp=timestamp,
                   event_type=event_type, weight=weight)

    def to_wire(self) -> bytes:
        _check_fields(self.asdict())
        return encode_event(self.event_id, self.user_id, self.item_id, self.timestamp,
                            self.event_type, self.weight)

    @property
    def key(self) -> bytes:
        return str(self.user_id).encode()


class SnapshotAnnouncement(faust.Record, serializer="json", include_metadata=False):
    """One edge snapshot: recorded in the store, returned by take_snapshot, and published on the
    snapshots topic once its files and metadata row are committed.

    group_id, store_id: the worker group and the state store (a UUID kept in it) that made it;
        snapshot ids count per store, so (store_id, snapshot_id) identifies a snapshot.
    path: directory holding edges.parquet (src, dst dense ids, weight) and items.parquet;
    uri: the same directory as an absolute file:// URI, for services on other hosts of a shared volume.
    offsets: events-topic partition (as a string, JSON keys are strings) -> next offset covered.
    """

    snapshot_id: int
    created_at: float
    group_id: str
    store_id: str
    path: str
    uri: str
    n_items: int
    n_edges: int
    n_events: int
    offsets: dict[str, int]

    def partition_offsets(self) -> dict[int, int]:
        """offsets keyed by int partition."""
        return {int(p): int(o) for p, o in self.offsets.items()}


@dataclass(frozen=True)
class DeadLetter:
    """An invalid message of the events topic, as kept in the store's outbox and forwarded.

    (topic, partition, offset) is where it was read and its identity (the DLQ message key).
    key: the original key bytes, None if it had none. value: the original bytes, or their first
    `max_bytes` when longer (then `truncated`); size: the original length in bytes; sha256: hex
    digest of the original value. reason: why it was rejected.
    """

    topic: str
    partition: int
    offset: int
    reason: str
    key: bytes | None
    value: bytes
    size: int
    sha256: str

    @classmethod
    def of(cls, topic: str, partition: int, offset: int, reason: str, key: bytes | None,
           value: bytes | None, max_bytes: int) -> DeadLetter:
        """The dead letter of one message; values over `max_bytes` keep only their head."""
        value = value if value is not None else b""
        return cls(topic, partition, offset, reason, key, value[:max_bytes], len(value),
                   hashlib.sha256(value).hexdigest())

    @property
    def truncated(self) -> bool:
        return self.size > len(self.value)

    @property
    def dlq_key(self) -> bytes:
        return f"{self.topic}/{self.partition}/{self.offset}".encode()

    def headers(self) -> list[tuple[str, bytes]]:
        out = [(H_REASON, self.reason.encode()), (H_TOPIC, self.topic.encode()),
               (H_PARTITION, str(self.partition).encode()), (H_OFFSET, str(self.offset).encode()),
               (H_SIZE, str(self.size).encode()), (H_SHA256, self.sha256.encode())]
        if self.key is not None:
            out.append((H_KEY, self.key))
        return out

    @classmethod
    def from_message(cls, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> DeadLetter:
        """Read a dead letter back from a DLQ message's value and headers."""
        h = dict(headers)
        return cls(h[H_TOPIC].decode(), int(h[H_PARTITION]), int(h[H_OFFSET]), h[H_REASON].decode(),
                   h.get(H_KEY), value or b"", int(h[H_SIZE]), h[H_SHA256].decode())


def encode_event(event_id: str, user_id: int, item_id: int, timestamp: float,
                 event_type: str = "view", weight: float = 1.0) -> bytes:
    """The canonical wire bytes of an event (compact JSON, fixed field order)."""
    return (
        f'{{"schema_version":{SCHEMA_VERSION},"event_id":{json.dumps(event_id)},'
        f'"user_id":{int(user_id)},"item_id":{int(item_id)},'
        f'"timestamp":{float(timestamp)!r},"event_type":{json.dumps(event_type)},"weight":{float(weight)!r}}}'
    ).encode()


def _reject_constant(name: str) -> None:
    raise InvalidEvent(f"invalid JSON: {name} is not allowed")


def _is_int(x: object) -> bool:
    return type(x) is int


def _is_number(x: object) -> bool:
    return type(x) is int or type(x) is float


def _check_fields(obj: dict[str, Any], record_time: float | None = None) -> tuple[str, int, int, float, str, float]:
    version = obj.get("schema_version", SCHEMA_VERSION)
    if not _is_int(version):
        raise InvalidEvent(f"field 'schema_version': expected an integer major version, got {_show(version)}")
    if version != SCHEMA_VERSION:
        raise InvalidEvent(f"unsupported schema_version {version}: this worker reads major version "
                           f"{SCHEMA_VERSION}; upgrade the worker or produce version {SCHEMA_VERSION} events")
    for name in _REQUIRED:
        if name not in obj:
            raise InvalidEvent(f"missing field {name!r}")
    if not _ALLOWED.issuperset(obj):
        unknown = sorted(str(k) for k in obj if k not in _ALLOWED)
        raise InvalidEvent(f"unknown field {unknown[0]!r}")
    event_id = obj["event_id"]
    if type(event_id) is not str or not 1 <= len(event_id) <= 128:
        raise InvalidEvent(f"field 'event_id': expected a string of 1..128 characters, got {_show(event_id)}")
    user_id, item_id = obj["user_id"], obj["item_id"]
    for name, v in (("user_id", user_id), ("item_id", item_id)):
        if not _is_int(v):
            raise InvalidEvent(f"field {name!r}: expected an integer, got {_show(v)}")
        if not 0 <= v <= MAX_ID:
            raise InvalidEvent(f"field {name!r}: {v} is outside 0..{MAX_ID}")
    if "timestamp" in obj:
        timestamp = obj["timestamp"]
    elif record_time is not None and record_time >= 0:
        timestamp = record_time
    else:
        raise InvalidEvent("missing field 'timestamp' and the Kafka record has no timestamp")
    if not _is_number(timestamp) or not (0 <= timestamp <= MAX_TIMESTAMP):
        raise InvalidEvent(f"field 'timestamp': expected unix seconds in 0..2**34, got {_show(timestamp)}")
    event_type = obj.get("event_type", "view")
    if type(event_type) is not str or not 1 <= len(event_type) <= 32:
        raise InvalidEvent(f"field 'event_type': expected a string of 1..32 characters, got {_show(event_type)}")
    weight = obj.get("weight", 1.0)
    if not _is_number(weight) or not (0 < weight <= MAX_WEIGHT):
        raise InvalidEvent(f"field 'weight': expected a number in (0, {MAX_WEIGHT:g}], got {_show(weight)}")
    return event_id, user_id, item_id, float(timestamp), event_type, float(weight)


def _show(v: object) -> str:
    text = repr(v)
    return f"{type(v).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _decode(value: bytes | None, max_bytes: int,
            record_time: float | None = None) -> tuple[str, int, int, float, str, float]:
    if value is None or len(value) == 0:
        raise InvalidEvent("empty payload")
    if len(value) > max_bytes:
        raise InvalidEvent(f"oversized payload: {len(value)} bytes > {max_bytes}")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidEvent(f"not UTF-8: {e.reason} at byte {e.start}") from None
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise InvalidEvent(f"invalid JSON: {e.msg} at char {e.pos}") from None
    except RecursionError:
        raise InvalidEvent("invalid JSON: nested too deeply") from None
    if type(obj) is not dict:
        raise InvalidEvent(f"not a JSON object: {type(obj).__name__}")
    return _check_fields(obj, record_time)


@dataclass
class EventColumns:
    """Valid events of one fetched batch, in arrival order, as columns.

    index:     (B,) int64 position of each event in the input list.
    user_ids, item_ids: (B,) int64 raw ids.
    timestamps, weights: (B,) float64.
    """

    index: np.ndarray
    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def take(self, rows: np.ndarray) -> EventColumns:
        return EventColumns(self.index[rows], self.user_ids[rows], self.item_ids[rows],
                            self.timestamps[rows], self.weights[rows])


# Fast path: the canonical encoding written by `encode_event`, restricted to printable ASCII
# strings and plain non-negative numbers, so a match is valid UTF-8 and valid JSON by
# construction. Anything else (escapes, exponents, other key orders, spacing) takes the JSON path.
_STR = rb'"([^"\\\x00-\x1f\x7f-\xff]{1,%d})"'
_INT = rb"(0|[1-9][0-9]{0,9})"
_NUM = rb"((?:0|[1-9][0-9]*)(?:\.[0-9]+)?)"
_CANONICAL_TEXT = (
    rb'\{(?:"schema_version":%d,)?"event_id":' % SCHEMA_VERSION + _STR % 128
    + rb',"user_id":' + _INT + rb',"item_id":' + _INT
    + rb',"timestamp":' + _NUM + rb',"event_type":' + _STR % 32 + rb',"weight":' + _NUM + rb"\}"
)
_CANONICAL = re.compile(_CANONICAL_TEXT)
# The same, one message per line of a newline-joined batch, capturing the four numbers only: a
# batch of canonical messages is then validated and split by one findall (no message of the
# canonical form contains a newline, so lines and messages correspond one to one).
_CANONICAL_LINES = re.compile(rb"^" + _CANONICAL_TEXT.replace(rb'"(', rb'"(?:') + rb"$", re.MULTILINE)


def _canonical_batch(values: list[bytes | None], max_bytes: int) -> EventColumns | None:
    """Columns of the batch if every value is canonical and within max_bytes, else None."""
    if not values or None in values or max(map(len, cast(list[bytes], values))) > max_bytes:
        return None
    joined = b"\n".join(cast(list[bytes], values))
    if joined.count(b"\n") != len(values) - 1:
        return None
    rows = _CANONICAL_LINES.findall(joined)
    if len(rows) != len(values):
        return None
    text = np.array(rows, dtype=bytes)  # (B, 4): user, item, timestamp, weight as ASCII digits
    return EventColumns(index=np.arange(len(values), dtype=np.int64), user_ids=text[:, 0].astype(np.int64),
                        item_ids=text[:, 1].astype(np.int64), timestamps=text[:, 2].astype(np.float64),
                        weights=text[:, 3].astype(np.float64))


def decode_values(values: list[bytes | None], max_bytes: int = 4096, record_times: Sequence[float] | None = None,
                  ) -> tuple[EventColumns, list[tuple[int, str]]]:
    """Validate a batch of message values: (valid events as columns, [(input index, reason)]).

    record_times: (len(values),) the Kafka records' timestamps in unix seconds (negative: none),
    the timestamp of events that carry none.

    Same verdicts as `EngagementEvent.from_wire` on every input; canonical messages are matched by
    a regular expression and range-checked as whole columns, the rest go through `json`.
    """
    batch = _canonical_batch(values, max_bytes)
    match = _CANONICAL.fullmatch
    found: list[re.Match[bytes] | None]
    if batch is not None:
        found = []
    elif None not in values and max(map(len, cast(list[bytes], values)), default=0) <= max_bytes:
        found = list(map(match, cast(list[bytes], values)))
    else:
        found = [match(v) if v is not None and len(v) <= max_bytes else None for v in values]
    fast_index = [i for i, m in enumerate(found) if m is not None]
    slow = [i for i, m in enumerate(found) if m is None]
    matches = [m for m in found if m is not None]
    users: list[int] = []
    items: list[int] = []
    times: list[float] = []
    weights: list[float] = []
    add_u, add_i, add_t, add_w = users.append, items.append, times.append, weights.append
    for m in matches:
        _, u, i, t, _, w = m.groups()
        add_u(int(u))
        add_i(int(i))
        add_t(float(t))
        add_w(float(w))
    cols = batch if batch is not None else EventColumns(
        index=np.array(fast_index, dtype=np.int64),
        user_ids=np.array(users, dtype=np.int64),
        item_ids=np.array(items, dtype=np.int64),
        timestamps=np.array(times, dtype=np.float64),
        weights=np.array(weights, dtype=np.float64),
    )
    in_range = (
        (cols.user_ids <= MAX_ID) & (cols.item_ids <= MAX_ID)
        & (cols.timestamps <= MAX_TIMESTAMP) & (cols.weights > 0) & (cols.weights <= MAX_WEIGHT)
    )
    if not in_range.all():
        slow.extend(cols.index[~in_range].tolist())
        cols = cols.take(np.flatnonzero(in_range))
    if not slow:
        return cols, []
    rejects: list[tuple[int, str]] = []
    extra: list[tuple[int, int, int, float, float]] = []
    for i in sorted(slow):
        try:
            record_time = record_times[i] if record_times is not None else None
            _, user_id, item_id, timestamp, _, weight = _decode(values[i], max_bytes, record_time)
        except InvalidEvent as e:
            rejects.append((i, str(e)))
            continue
        extra.append((i, user_id, item_id, timestamp, weight))
    if extra:
        idx, u, it, t, w = (np.array(c) for c in zip(*extra))
        cols = EventColumns(
            index=np.concatenate([cols.index, idx.astype(np.int64)]),
            user_ids=np.concatenate([cols.user_ids, u.astype(np.int64)]),
            item_ids=np.concatenate([cols.item_ids, it.astype(np.int64)]),
            timestamps=np.concatenate([cols.timestamps, t.astype(np.float64)]),
            weights=np.concatenate([cols.weights, w.astype(np.float64)]),
        )
        cols = cols.take(np.argsort(cols.index, kind="stable"))
    return cols, rejects
