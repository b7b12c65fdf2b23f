"""Feast's online row format, encoded a whole column at a time with numpy.

Feast's online stores keep, per (entity key, feature), the serialized `feast.types.Value`
protobuf, and key rows by `serialize_entity_key` (version 3). Building one protobuf object per
value costs a few microseconds, which is most of a 100,000-row publish, so the fixed-width
columns used here (int64 keys, int64 scalars, int64 and float32 lists of one width) are encoded
straight into protobuf wire format, ragged ones (user histories) from a padded matrix and a mask;
small batches of ragged lists go through the protobuf classes. Every encoder is tested
byte-for-byte against Feast and protobuf
(tests/features/test_encoding.py), and `check_entity_keys` re-checks the key layout against
Feast's own function at run time, so a Feast upgrade that changes the format fails loudly.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from datetime import datetime, timezone

import numpy as np
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import FloatList, Int64List
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.protos.feast.types.Value_pb2 import ValueType
from google.protobuf.timestamp_pb2 import Timestamp

# Wire-format tags of the `feast.types.Value` oneof members used here: (field << 3) | wire type.
_TAG_INT64 = np.uint8(4 << 3 | 0)  # int64_val = 4, varint
_TAG_INT64_LIST = bytes([14 << 3 | 2])  # int64_list_val = 14, length-delimited
_TAG_FLOAT_LIST = bytes([(16 << 3 | 2) | 0x80, 0x01])  # float_list_val = 16 (two-byte tag)
_TAG_PACKED = bytes([1 << 3 | 2])  # Int64List.val / FloatList.val = 1, packed

ENTITY_KEY_VERSION = 3


def _varint_groups(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Varint bytes of each int64 in x (any shape S): (S + (10,)) uint8 and a keep mask.

    Negative numbers are encoded as their two's-complement uint64 (10 bytes), as protobuf does
    for int64 fields.
    """
    u = np.ascontiguousarray(x, dtype=np.int64).view(np.uint64)
    shifts = np.arange(10, dtype=np.uint64) * np.uint64(7)
    groups = ((u[..., None] >> shifts) & np.uint64(0x7F)).astype(np.uint8)
    n_groups = np.ones(u.shape, dtype=np.int64)
    for k in range(1, 10):
        n_groups += u >= (np.uint64(1) << np.uint64(7 * k))
    pos = np.arange(10)
    keep = pos < n_groups[..., None]
    groups |= np.where(pos < n_groups[..., None] - 1, np.uint8(0x80), np.uint8(0))
    return groups, keep


def _assemble(parts: list[tuple[np.ndarray, np.ndarray]], n: int) -> list[bytes]:
    """Concatenate per-row byte pieces: each part is ((n, k) uint8 values, (n, k) keep mask)."""
    vals = np.concatenate([p[0].reshape(n, -1) for p in parts], axis=1)
    keep = np.concatenate([p[1].reshape(n, -1) for p in parts], axis=1)
    flat = vals[keep].tobytes()
    ends = np.cumsum(keep.sum(axis=1)).tolist()
    starts = [0] + ends[:-1]
    return [flat[s:e] for s, e in zip(starts, ends)]


def _const(b: bytes, n: int) -> tuple[np.ndarray, np.ndarray]:
    arr = np.frombuffer(b, dtype=np.uint8)
    return np.broadcast_to(arr, (n, len(b))), np.ones((n, len(b)), dtype=bool)


def _fixed_rows(prefix: bytes, body: np.ndarray) -> list[bytes]:
    """Rows of equal length: prefix + body[i] (body (n, k) uint8)."""
    n, k = body.shape
    flat = np.concatenate([np.broadcast_to(np.frombuffer(prefix, np.uint8), (n, len(prefix))), body], 1)
    buf = flat.tobytes()
    step = len(prefix) + k
    return [buf[i : i + step] for i in range(0, n * step, step)]


def int64_values(x: np.ndarray) -> list[bytes]:
    """Serialized `Value(int64_val=v)` for each v in the 1-d array x."""
    x = _as_int64(x, "x", ndim=1)
    if len(x) == 0:
        return []
    groups, keep = _varint_groups(x)
    tag = (np.full((len(x), 1), _TAG_INT64, np.uint8), np.ones((len(x), 1), bool))
    return _assemble([tag, (groups, keep)], len(x))


def int64_list_values(x: np.ndarray, keep: np.ndarray | None = None) -> list[bytes]:
    """Serialized `Value(int64_list_val=Int64List(val=row))` for each row of the 2-d array x.

    keep: (n, width) bool, the entries of each row that belong to it (default all): ragged rows
    (user histories) are encoded from a padded matrix without one protobuf object per row.
    """
    x = _as_int64(x, "x", ndim=2)
    n, width = x.shape
    if n == 0:
        return []
    if width == 0:
        return [ValueProto(int64_list_val=Int64List()).SerializeToString()] * n
    groups, kept = _varint_groups(x)  # (n, width, 10)
    if keep is not None:
        if keep.shape != x.shape:
            raise ValueError(f"keep has shape {keep.shape}, x has {x.shape}")
        kept &= keep[..., None]
    payload_len = kept.reshape(n, -1).sum(axis=1)
    plen_g, plen_k = _varint_groups(payload_len)  # (n, 10)
    packed = payload_len > 0  # protobuf leaves an empty packed field out
    plen_k &= packed[:, None]
    inner_len = np.where(packed, 1 + plen_k.sum(axis=1) + payload_len, 0)
    ilen_g, ilen_k = _varint_groups(inner_len)
    tag_packed = _const(_TAG_PACKED, n)
    return _assemble(
        [_const(_TAG_INT64_LIST, n), (ilen_g, ilen_k), (tag_packed[0], tag_packed[1] & packed[:, None]),
         (plen_g, plen_k), (groups, kept)],
        n,
    )


def float_list_values(x: np.ndarray) -> list[bytes]:
    """Serialized `Value(float_list_val=FloatList(val=row))` for each row of the 2-d array x."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"x must be 2-d (rows, width), got shape {x.shape}")
    n, width = x.shape
    if n == 0:
        return []
    if width == 0:
        return [ValueProto(float_list_val=FloatList()).SerializeToString()] * n
    body = np.ascontiguousarray(x, dtype="<f4").view(np.uint8).reshape(n, 4 * width)
    payload = _varint_bytes(4 * width)
    inner = _TAG_PACKED + payload
    prefix = _TAG_FLOAT_LIST + _varint_bytes(len(inner) + 4 * width) + inner
    return _fixed_rows(prefix, body)


def int64_ragged_values(rows: Sequence[Sequence[int]]) -> list[bytes]:
    """Serialized `Value(int64_list_val=...)` for lists of varying length (small batches)."""
    return [ValueProto(int64_list_val=Int64List(val=list(r))).SerializeToString() for r in rows]


def _varint_bytes(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def entity_keys(columns: dict[str, np.ndarray]) -> list[bytes]:
    """`serialize_entity_key` (version 3) of int64 join keys, one key per row.

    columns: join key name -> (n,) int64 values. Layout: u32 number of keys; per key name in
    sorted order u32 STRING type, u32 length, utf-8 name; per value in the same order u32 INT64
    type, u32 length 8, little-endian int64.
    """
    if not columns:
        raise ValueError("columns must name at least one join key")
    names = sorted(columns)
    values = [_as_int64(columns[k], f"columns[{k!r}]", ndim=1) for k in names]
    n = len(values[0])
    if any(len(v) != n for v in values):
        raise ValueError(f"join key columns differ in length: {[len(v) for v in values]}")
    if n == 0:
        return []
    prefix = struct.pack("<I", len(names))
    for k in names:
        kb = k.encode("utf8")
        prefix += struct.pack("<II", ValueType.STRING, len(kb)) + kb
    value_head = np.frombuffer(struct.pack("<II", ValueType.INT64, 8), np.uint8)
    body = np.concatenate(
        [np.concatenate([np.broadcast_to(value_head, (n, 8)),
                         np.ascontiguousarray(v, "<i8").view(np.uint8).reshape(n, 8)], 1)
         for v in values],
        axis=1,
    )
    return _fixed_rows(prefix, body)


def entity_key_proto(values: dict[str, int | str]) -> EntityKeyProto:
    """An EntityKey proto for one entity (int join keys as int64, str as string)."""
    protos = []
    for k, v in values.items():
        if isinstance(v, str):
            protos.append(ValueProto(string_val=v))
        else:
            protos.append(ValueProto(int64_val=int(v)))
    return EntityKeyProto(join_keys=list(values), entity_values=protos)


def check_entity_keys(columns: dict[str, np.ndarray], encoded: list[bytes]) -> None:
    """Compare the first encoded key with Feast's own serializer; raise if the layout differs."""
    if not encoded:
        return
    first = entity_key_proto({k: int(v[0]) for k, v in columns.items()})
    expected = serialize_entity_key(first, entity_key_serialization_version=ENTITY_KEY_VERSION)
    if encoded[0] != expected:
        raise RuntimeError(
            "Feast's entity key serialization no longer matches features/encoding.py "
            f"(got {encoded[0]!r}, Feast {expected!r}); the installed Feast changed its format"
        )


def checked_entity_keys(columns: dict[str, np.ndarray]) -> list[bytes]:
    """entity_keys, with the first key compared against Feast's serializer."""
    keys = entity_keys(columns)
    check_entity_keys(columns, keys)
    return keys


def timestamp_bytes(ts: datetime) -> bytes:
    """Serialized google.protobuf.Timestamp, as the Redis store keeps it under `_ts:<view>`."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    t = Timestamp()
    t.FromDatetime(ts)
    return t.SerializeToString()


def _as_int64(x: np.ndarray, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-d, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "f" and a.size and not np.array_equal(a, np.round(a)):
            raise TypeError(f"{name} must hold integers, got non-integral {a.dtype} values")
        if a.dtype.kind not in "fb" and a.size:
            raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.size and a.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} has values beyond int64")
    return a.astype(np.int64, copy=False)
