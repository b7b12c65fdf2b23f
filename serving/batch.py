"""Batch scoring: a JSON-lines file of users in, ranked rows out (Parquet or JSON lines), in
batches with bounded memory, by the serving rule of serving.recommender.

An input line is {"user": int | str, "history": [item ids], "exclude": [item ids]?}. A line that
is not one (bad JSON, a missing or mistyped field, an id of the wrong type) is written to the
errors file as {"line": n, "reason": ...} and skipped; unknown items of the right type are
ignored and counted, as in the HTTP service. Output rows: user (as text), rank (1 = best), item, score,
used_items, unknown_items, fallback, model_version; a user with nothing left to recommend has no
rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError

from serving.recommender import Recommender
from serving.schemas import item_id_type

FORMATS = ("parquet", "jsonl")


@dataclass(frozen=True)
class BatchConfig:
    k: int = 10
    batch_size: int = 256  # users scored (and rows held) at a time
    fmt: str = "parquet"

    def __post_init__(self):
        if self.k < 1 or self.batch_size < 1:
            raise ValueError(f"k={self.k} and batch_size={self.batch_size} must be >= 1")
        if self.fmt not in FORMATS:
            raise ValueError(f"format {self.fmt!r} is not one of {', '.join(FORMATS)}")


@dataclass(frozen=True)
class Summary:
    users: int
    rows: int
    fallbacks: int
    unknown_items: int
    bad_lines: int


def line_model(kind: type):
    Item = item_id_type(kind)

    class ScoreLine(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user: StrictInt | StrictStr
        history: list[Item]
        exclude: list[Item] = []

    return ScoreLine


def reason(e: ValidationError) -> str:
    """The first problems of a line, each naming its field, never the (possibly huge) input."""
    return "; ".join(f"{'.'.join(map(str, x['loc']))[:64] or 'line'}: {x['msg']}" for x in e.errors()[:3])


class Sink:
    """Rows out, one batch at a time: a Parquet writer (one row group per batch) or JSON lines."""

    def __init__(self, out: Path, fmt: str):
        self.out, self.fmt, self.writer = out, fmt, None

    def write(self, table: pa.Table) -> None:
        if self.fmt == "jsonl":
            if self.writer is None:
                self.writer = open(self.out, "w")
            for row in table.to_pylist():
                self.writer.write(json.dumps(row) + "\n")
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.out, table.schema)
        self.writer.write_table(table)

    def close(self, schema: pa.Schema) -> None:
        if self.writer is None:  # no rows at all: still an (empty) output file
            self.write(schema.empty_table())
        self.writer.close()


SCHEMA_FIELDS = [("user", pa.string()), ("rank", pa.int32()), ("score", pa.float32()), ("used_items", pa.int32()),
                 ("unknown_items", pa.int32()), ("fallback", pa.bool_()), ("model_version", pa.string())]


def row_schema(rec: Recommender) -> pa.Schema:
    fields = list(SCHEMA_FIELDS)
    fields.insert(2, ("item", pa.int64() if rec.item_type is int else pa.string()))
    return pa.schema(fields)


class RowWriter:
    """Users in, ranked rows out to a Sink in batches of cfg.batch_size users; keeps the totals."""

    def __init__(self, rec: Recommender, out: Path, cfg: BatchConfig):
        self.rec, self.cfg, self.schema = rec, cfg, row_schema(rec)
        self.sink = Sink(out, cfg.fmt)
        self.totals = dict(users=0, rows=0, fallbacks=0, unknown_items=0, bad_lines=0)
        self.batch: list = []  # (user, history, exclude)

    def add(self, user, history, exclude=()) -> None:
        self.batch.append((user, history, exclude))
        if len(self.batch) == self.cfg.batch_size:
            self.flush()

    def flush(self) -> None:
        if not self.batch:
            return
        batch, self.batch, rec, totals = self.batch, [], self.rec, self.totals
        ranked = rec.recommend([b[1] for b in batch], self.cfg.k, [b[2] for b in batch])
        cols = {name: [] for name in self.schema.names}
        for (user, _, _), r in zip(batch, ranked):
            n = len(r.items)
            cols["user"] += [str(user)] * n
            cols["rank"] += range(1, n + 1)
            cols["item"] += r.items
            cols["score"] += r.scores
            cols["used_items"] += [r.used_items] * n
            cols["unknown_items"] += [r.unknown_items] * n
            cols["fallback"] += [r.fallback] * n
            totals["fallbacks"] += r.fallback
            totals["unknown_items"] += r.unknown_items
        cols["model_version"] = [rec.version] * len(cols["user"])
        totals["users"] += len(batch)
        totals["rows"] += len(cols["user"])
        self.sink.write(pa.table(cols, schema=self.schema))

    def close(self) -> Summary:
        try:
            self.flush()
        finally:
            self.sink.close(self.schema)
        return Summary(**self.totals)


def score_lines(rec: Recommender, lines: Iterable[str], out: Path, errors: IO[str], cfg: BatchConfig) -> Summary:
    """Scores every good line of `lines` into `out`; bad lines go to `errors`."""
    Line = line_model(rec.item_type)
    writer = RowWriter(rec, out, cfg)
    try:
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                b = Line.model_validate_json(line)
            except ValidationError as e:
                writer.totals["bad_lines"] += 1
                errors.write(json.dumps({"line": lineno, "reason": reason(e)}) + "\n")
                continue
            writer.add(b.user, b.history, b.exclude)
    finally:
        summary = writer.close()
    return summary
