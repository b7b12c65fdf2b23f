"""Bulk access to Feast's online stores, one class per backend, picked by the store's `type`.

Why not Feast's own `provider.online_write_batch` / `online_read`: the write takes one protobuf
object per value and, on SQLite, runs one INSERT per (entity, feature) in arrival order; measured
here it moves 4-8k profile rows/s on SQLite and Redis (bench/results/features.json), against the
33k rows/s that 100,000 profiles in 3 s need. The read spends most of its time converting every stored
timestamp to a datetime. These classes read and write exactly the layout Feast's own store
classes use (same tables, keys, hash fields and value bytes; the Redis layout is Feast's
documented "online store format" contract, docs/specs/online_store_format.md), so Feast's
`get_online_features`, `push` and `feast serve` work on the same data:
tests/features/test_contract.py checks both directions on every backend.

Rows are written unconditionally: there is no "skip if the stored event timestamp is newer"
check (Feast's Redis `skip_dedup: true` behaviour). Callers own ordering: publish.py writes each
version into its own slot, and the history sink is the single writer of a user's row.
"""

from __future__ import annotations

import sqlite3
from itertools import chain
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

from feast import FeatureView
from feast.infra.online_stores.helpers import _mmh3, compute_table_id, compute_versioned_name
from feast.repo_config import RepoConfig
from feast.utils import to_naive_utc

from .encoding import timestamp_bytes

from g2rec.errors import StateError


@dataclass(frozen=True)
class Column:
    """One feature's values for a batch of rows: serialized feast.types.Value bytes per row, or a
    single bytes shared by every row. `texts` is what SQL stores keep in value_text (str(v) for
    scalars, None for lists), again per row or shared."""

    values: Sequence[bytes] | bytes
    texts: Sequence[str | None] | str | None = None

    def value_list(self, n: int) -> Sequence[bytes]:
        return [self.values] * n if isinstance(self.values, bytes) else self.values

    def text_list(self, n: int) -> Sequence[str | None]:
        return [self.texts] * n if self.texts is None or isinstance(self.texts, str) else self.texts


class OnlineBackend(Protocol):
    def write(self, view: FeatureView, keys: Sequence[bytes], columns: dict[str, Column],
              event_ts: datetime) -> None:
        """Upsert rows: keys[i] (serialized entity key) gets columns[f][i] for each feature f."""

    def read(self, view: FeatureView, keys: Sequence[bytes], features: Sequence[str]) -> list[dict[str, bytes]]:
        """Per key, {feature: serialized Value} of the stored features among `features`
        (an empty dict when the entity has none)."""

    def bulk(self) -> AbstractContextManager[None]:
        """Around a large write (a publish): lets the backend defer housekeeping to the end."""

    def close(self) -> None: ...


class StoreNotAppliedError(StateError):
    """The online store has no table for a feature view: `g2rec features apply` was not run."""


def _check(view: FeatureView, keys: Sequence[bytes], columns: dict[str, Column]) -> None:
    names = {f.name for f in view.features}
    unknown = set(columns) - names
    if unknown:
        raise ValueError(f"columns {sorted(unknown)} are not features of view {view.name!r}")
    for name, col in columns.items():
        if not isinstance(col.values, bytes) and len(col.values) != len(keys):
            raise ValueError(f"column {name!r} has {len(col.values)} values for {len(keys)} keys")
    if len(set(keys)) != len(keys):
        raise ValueError(f"view {view.name!r}: entity keys in one write must be unique")


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _row_sql(name: str, col: Column, ts: int) -> tuple[str, list[Sequence]]:
    """One row's VALUES tuple for a column, and the per-row sequences bound after the key."""
    sources: list[Sequence] = []
    if isinstance(col.values, bytes):
        value = f"X'{col.values.hex()}'"
    else:
        value = "?"
        sources.append(col.values)
    if col.texts is None:
        text = "NULL"
    elif isinstance(col.texts, str):
        text = _sql_text(col.texts)
    else:
        text = "?"
        sources.append(col.texts)
    return f"(?, {_sql_text(name)}, {value}, {text}, {ts}, NULL)", sources


def _table(config: RepoConfig, view: FeatureView) -> str:
    return compute_table_id(config.project, view, config.registry.enable_online_feature_view_versioning)


class SqliteBackend:
    """Feast's SQLite table `<project>_<view>`: one row per (entity_key, feature_name).

    Writes: one transaction, rows in key order (sequential B-tree inserts), many rows per
    statement, and the database in WAL mode so readers (Feast's own connection, feast serve)
    are never blocked by a publish.
    """

    rows_per_statement = 100

    def __init__(self, config: RepoConfig):
        path = Path(config.online_store.path)
        if not path.is_absolute() and config.repo_path is not None:
            path = Path(config.repo_path) / path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")

    def write(self, view: FeatureView, keys: Sequence[bytes], columns: dict[str, Column],
              event_ts: datetime) -> None:
        _check(view, keys, columns)
        ts = int(to_naive_utc(event_ts).timestamp())  # Feast's adapter stores epoch seconds
        n = len(keys)
        order = sorted(range(n), key=keys.__getitem__)
        # Per column, the SQL of one row and its per-row parameters. What every row shares (the
        # feature name, the timestamp, a version) goes into the SQL as a literal: binding fewer
        # parameters per row is a quarter of the CPU of a 100k-profile publish.
        sorted_keys = [keys[i] for i in order]
        templates, streams = [], []
        for name, col in columns.items():
            sql, sources = _row_sql(name, col, ts)
            templates.append(sql)
            streams.append(sorted_keys)
            streams.extend([source[i] for i in order] for source in sources)
        # Row-major in key order: the (entity_key, feature_name) primary key then grows in order.
        flat = list(chain.from_iterable(zip(*streams)))
        per_block = max(1, self.rows_per_statement // len(templates))  # keys per statement
        block_params = len(flat) // n * per_block if n else 0
        full = n // per_block * per_block
        with self._errors(), self.conn:
            self.conn.executemany(self._upsert(view, templates * per_block),
                                  (flat[i:i + block_params] for i in range(0, full // per_block * block_params,
                                                                           block_params)))
            if full < n:
                self.conn.execute(self._upsert(view, templates * (n - full)), flat[full // per_block * block_params:])

    def _upsert(self, view: FeatureView, rows: list[str]) -> str:
        # The statement Feast's SqliteOnlineStore runs, with many value tuples.
        return (
            f'INSERT INTO "{_table(self.config, view)}" '
            "(entity_key, feature_name, value, value_text, event_ts, created_ts) VALUES " + ", ".join(rows) + " "
            "ON CONFLICT(entity_key, feature_name) DO UPDATE SET "
            "value = excluded.value, value_text = excluded.value_text, "
            "event_ts = excluded.event_ts, created_ts = excluded.created_ts"
        )

    def read(self, view: FeatureView, keys: Sequence[bytes], features: Sequence[str]) -> list[dict[str, bytes]]:
        table = _table(self.config, view)
        found: dict[bytes, dict[str, bytes]] = {}
        unique = list(dict.fromkeys(keys))
        step = 30_000  # stay under SQLite's bound-parameter limit
        with self._errors():
            for s in range(0, len(unique), step):
                part = unique[s:s + step]
                rows = self.conn.execute(
                    f'SELECT entity_key, feature_name, value FROM "{table}" '
                    f"WHERE entity_key IN ({','.join('?' * len(part))}) "
                    f"AND feature_name IN ({','.join('?' * len(features))})",
                    [*part, *features],
                ).fetchall()
                for key, name, value in rows:
                    found.setdefault(key, {})[name] = value
        return [found.get(k, {}) for k in keys]

    def _errors(self):
        return _translate_missing_table(sqlite3.OperationalError, "no such table")

    @contextmanager
    def bulk(self) -> Iterator[None]:
        """No WAL checkpoint inside: SQLite would otherwise copy the whole new version from the
        WAL into the database file during the commit (~1 s per 100k profiles here). It runs at
        the end instead, after readers already see the new version."""
        self.conn.execute("PRAGMA wal_autocheckpoint=0")
        try:
            yield
        finally:
            self.conn.execute("PRAGMA wal_autocheckpoint=1000")
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        self.conn.close()


class RedisBackend:
    """Feast's Redis layout: key = serialized entity key + project, hash fields
    mmh3("<view>:<feature>") -> Value bytes and "_ts:<view>" -> Timestamp bytes."""

    chunk = 10_000

    def __init__(self, config: RepoConfig):
        from feast.infra.online_stores.redis import RedisOnlineStore, RedisType

        store_config = config.online_store
        if store_config.redis_type != RedisType.redis:
            raise ValueError(f"redis_type={store_config.redis_type.value!r}: bulk access supports plain redis")
        import redis

        nodes, params = RedisOnlineStore._parse_connection_string(store_config.connection_string)
        self.client = redis.Redis(host=nodes[0]["host"], port=int(nodes[0]["port"]), **params)
        self.config = config
        self.project = config.project.encode("utf8")
        self.ttl = store_config.key_ttl_seconds

    def _name(self, view: FeatureView) -> str:
        return compute_versioned_name(view, self.config.registry.enable_online_feature_view_versioning)

    def write(self, view: FeatureView, keys: Sequence[bytes], columns: dict[str, Column],
              event_ts: datetime) -> None:
        _check(view, keys, columns)
        name, n = self._name(view), len(keys)
        fields = [(_mmh3(f"{name}:{f}"), col.value_list(n)) for f, col in columns.items()]
        ts_field, ts = f"_ts:{name}".encode("utf8"), timestamp_bytes(event_ts)
        for start in range(0, n, self.chunk):
            with self.client.pipeline(transaction=False) as pipe:
                for i in range(start, min(start + self.chunk, n)):
                    args = [ts_field, ts]
                    for field, values in fields:
                        args += (field, values[i])
                    key = keys[i] + self.project
                    pipe.execute_command("HSET", key, *args)
                    if self.ttl:
                        pipe.expire(key, self.ttl)
                pipe.execute()

    def bulk(self) -> AbstractContextManager[None]:
        return nullcontext()

    def read(self, view: FeatureView, keys: Sequence[bytes], features: Sequence[str]) -> list[dict[str, bytes]]:
        name = self._name(view)
        fields = [_mmh3(f"{name}:{f}") for f in features]
        out: list[dict[str, bytes]] = []
        for start in range(0, len(keys), self.chunk):
            with self.client.pipeline(transaction=False) as pipe:
                for key in keys[start:start + self.chunk]:
                    pipe.execute_command("HMGET", key + self.project, *fields)
                replies = pipe.execute()
            out.extend({f: v for f, v in zip(features, reply) if v is not None} for reply in replies)
        return out

    def close(self) -> None:
        self.client.close()


class PostgresBackend:
    """Feast's Postgres table `<project>_<view>` (the table `feast apply` created). Writes COPY
    into a temporary staging table, then one INSERT ... ON CONFLICT, in one transaction."""

    def __init__(self, config: RepoConfig):
        from feast.infra.utils.postgres.connection_utils import _get_conn

        self.config = config
        self.conn = _get_conn(config.online_store)  # same search_path and sslmode as Feast
        self.conn.autocommit = True  # each transaction() block below is then a real transaction

    def write(self, view: FeatureView, keys: Sequence[bytes], columns: dict[str, Column],
              event_ts: datetime) -> None:
        from psycopg import sql

        _check(view, keys, columns)
        n = len(keys)
        ts = event_ts if event_ts.tzinfo else event_ts.replace(tzinfo=timezone.utc)
        per_column = [(name, col.value_list(n), col.text_list(n)) for name, col in columns.items()]
        with self._errors(), self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS g2rec_stage (entity_key BYTEA, feature_name TEXT, "
                        "value BYTEA, value_text TEXT) ON COMMIT DELETE ROWS")
            with cur.copy("COPY g2rec_stage (entity_key, feature_name, value, value_text) FROM STDIN") as cp:
                for i, key in enumerate(keys):
                    for name, values, texts in per_column:
                        cp.write_row((key, name, values[i], texts[i]))
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} (entity_key, feature_name, value, value_text, event_ts, created_ts) "
                    "SELECT entity_key, feature_name, value, value_text, %s, NULL FROM g2rec_stage "
                    "ON CONFLICT (entity_key, feature_name) DO UPDATE SET value = EXCLUDED.value, "
                    "value_text = EXCLUDED.value_text, event_ts = EXCLUDED.event_ts, "
                    "created_ts = EXCLUDED.created_ts"
                ).format(sql.Identifier(_table(self.config, view))),
                (ts,),
            )

    def bulk(self) -> AbstractContextManager[None]:
        return nullcontext()

    def read(self, view: FeatureView, keys: Sequence[bytes], features: Sequence[str]) -> list[dict[str, bytes]]:
        from psycopg import sql

        found: dict[bytes, dict[str, bytes]] = {}
        with self._errors(), self.conn.transaction(), self.conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT entity_key, feature_name, value FROM {} "
                        "WHERE entity_key = ANY(%s) AND feature_name = ANY(%s)").format(
                    sql.Identifier(_table(self.config, view))),
                (list(dict.fromkeys(keys)), list(features)),
            )
            for key, name, value in cur.fetchall():
                found.setdefault(bytes(key), {})[name] = bytes(value)
        return [found.get(k, {}) for k in keys]

    def _errors(self):
        import psycopg

        return _translate_missing_table(psycopg.errors.UndefinedTable, "")

    def close(self) -> None:
        self.conn.close()


class _translate_missing_table:
    """Turn a backend's "no such table" into StoreNotAppliedError naming the fix."""

    def __init__(self, error: type[Exception], needle: str):
        self.error, self.needle = error, needle

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> None:
        if exc is not None and isinstance(exc, self.error) and self.needle in str(exc):
            raise StoreNotAppliedError(str(exc), fix="run `g2rec features apply` first") from exc


BACKENDS: dict[str, Callable[[RepoConfig], OnlineBackend]] = {
    "sqlite": SqliteBackend, "redis": RedisBackend, "postgres": PostgresBackend,
}


def make_backend(config: RepoConfig) -> OnlineBackend:
    kind = config.online_store.type
    if kind not in BACKENDS:
        raise ValueError(f"online_store.type={kind!r}: g2rec's bulk access supports {', '.join(BACKENDS)}")
    return BACKENDS[kind](config)
