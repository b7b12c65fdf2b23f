"""Dataset loaders: every format becomes one `Interactions` (per-user CSR, items 1..N, 0 = pad).

Formats
- s3rec:     `user i1 i2 ...` per line, already in time order (Beauty.txt, LastFM.txt).
- movielens: u.data (tab), ratings.dat (`::`) or ratings.csv (header userId,movieId,rating,timestamp).
- csv:       any CSV or Parquet file with user, item, timestamp columns (names configurable).
- s3rec-ts:  an S3-Rec item file plus an aligned time file (line k of each: `user v1 v2 ...`).

Datasets are found by name under the data root the caller gives, else ../shared/data beside the
project, else ./data (the `g2rec` command passes --data-root / $G2REC_DATA in).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from g2rec.errors import DataError
from g2rec.types import Interactions

FORMATS = ("s3rec", "movielens", "csv", "s3rec-ts")


@dataclass(frozen=True)
class DatasetSpec:
    folder: str
    files: tuple[str, ...]
    fmt: str


DATASETS: dict[str, DatasetSpec] = {
    "beauty": DatasetSpec("amazon-beauty", ("Beauty.txt",), "s3rec"),
    "beauty-ts": DatasetSpec(
        "amazon-beauty", ("Beauty_item_org_rank.txt", "Beauty_time_org_rank.txt"), "s3rec-ts"
    ),
    "ml-100k": DatasetSpec("ml-100k", ("u.data",), "movielens"),
    "lastfm": DatasetSpec("lastfm", ("LastFM.txt",), "s3rec"),
    "ml-latest-small": DatasetSpec("ml-latest-small", ("ratings.csv",), "movielens"),
}


class DatasetError(DataError):
    """A dataset is missing or malformed; the message names the file (and line)."""


def data_roots() -> list[Path]:
    """Where named datasets are looked for when no root is given, in order."""
    project = Path(__file__).resolve().parent.parent
    return [project.parent / "shared" / "data", Path.cwd() / "data"]


def load_dataset(name: str, root: str | os.PathLike | None = None) -> Interactions:
    """Load a dataset by name (see DATASETS) from `root` or the default data root."""
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    spec = DATASETS[name]
    roots = [Path(root)] if root is not None else data_roots()
    for r in roots:
        paths = [r / spec.folder / f for f in spec.files]
        if all(p.is_file() for p in paths):
            return load_path(paths[0], spec.fmt, time_path=paths[1] if len(paths) > 1 else None, name=name)
    looked = ", ".join(str(r / spec.folder) for r in roots)
    raise DatasetError(
        f"dataset {name!r} not found: looked for {', '.join(spec.files)} in {looked} "
        "(name the data root, or give the dataset's file and format)"
    )


def load_path(
    path: str | os.PathLike,
    fmt: str,
    *,
    time_path: str | os.PathLike | None = None,
    columns: tuple[str, str, str] = ("user", "item", "timestamp"),
    name: str = "",
) -> Interactions:
    """Load one file in a given format (see module docstring)."""
    path = Path(path)
    if fmt not in FORMATS:
        raise DatasetError(f"{path}: unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    name = name or path.stem
    if fmt == "s3rec":
        users, items, times = _read_s3rec(path)
    elif fmt == "s3rec-ts":
        if time_path is None:
            raise DatasetError(f"{path}: format s3rec-ts needs the aligned time file (time_path)")
        users, items, times = _read_s3rec_ts(path, Path(time_path))
    elif fmt == "movielens":
        users, items, times = _read_movielens(path)
    else:
        users, items, times = _read_table(path, columns)
    return from_events(users, items, times, name=name)


def from_events(users: np.ndarray, items: np.ndarray, times: np.ndarray, name: str = "") -> Interactions:
    """Build Interactions from parallel event arrays (any order; ties keep input order).

    users, items: (M,) original ids; times: (M,) int64. Items are remapped to 1..N in sorted order of
    their original ids, users to 0..U-1 likewise.
    """
    users, items, times = np.asarray(users), np.asarray(items), np.asarray(times, dtype=np.int64)
    if not (len(users) == len(items) == len(times)):
        raise DatasetError(f"{name}: users, items, times differ in length")
    if len(users) == 0:
        raise DatasetError(f"{name}: no interactions")
    user_ids, user_idx = np.unique(users, return_inverse=True)
    item_ids, item_idx = np.unique(items, return_inverse=True)
    # Stable sort by (user, time): equal timestamps keep file order.
    order = np.lexsort((np.arange(len(times)), times, user_idx))
    counts = np.bincount(user_idx, minlength=len(user_ids))
    user_ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if item_ids.dtype.kind in "iu":
        item_ids = np.concatenate([np.zeros(1, item_ids.dtype), item_ids])
    else:
        item_ids = np.concatenate([np.array([""], dtype=object), item_ids.astype(object)])
    return Interactions(
        user_ptr=user_ptr,
        items=(item_idx[order] + 1).astype(np.int64),
        times=times[order],
        user_ids=user_ids,
        item_ids=item_ids,
        name=name,
    )


def _int(tok: str, path: Path, lineno: int) -> int:
    try:
        return int(tok)
    except ValueError:
        raise DatasetError(f"{path}:{lineno}: expected an integer, got {tok!r}") from None


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text ({e})") from None


def _read_s3rec(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    users: list[int] = []
    items: list[int] = []
    times: list[int] = []
    for lineno, line in enumerate(_read_lines(path), 1):
        toks = line.split()
        if not toks:
            continue
        if len(toks) < 2:
            raise DatasetError(f"{path}:{lineno}: expected `user item ...`, got {line!r}")
        u = _int(toks[0], path, lineno)
        seq = [_int(t, path, lineno) for t in toks[1:]]
        users.extend([u] * len(seq))
        items.extend(seq)
        times.extend(range(len(seq)))  # position stands in for time
    return np.array(users), np.array(items), np.array(times, dtype=np.int64)


def _read_s3rec_ts(path: Path, time_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not time_path.is_file():
        raise DatasetError(f"{time_path}: no such file (time file for {path})")
    users, items, _ = _read_s3rec(path)
    t_users, t_vals, _ = _read_s3rec(time_path)
    if len(t_vals) != len(items) or not np.array_equal(users, t_users):
        raise DatasetError(f"{time_path}: not aligned with {path} (users or sequence lengths differ)")
    return users, items, t_vals.astype(np.int64)


def _read_movielens(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lines = _read_lines(path)
    if path.suffix == ".csv":
        sep, start = ",", 1
        header = [h.strip() for h in lines[0].split(",")] if lines else []
        if header[:4] != ["userId", "movieId", "rating", "timestamp"]:
            raise DatasetError(f"{path}:1: expected header userId,movieId,rating,timestamp, got {lines[:1]}")
    else:
        sep, start = ("::" if "::" in (lines[0] if lines else "") else None), 0
    users, items, times = [], [], []
    for lineno, line in enumerate(lines[start:], start + 1):
        if not line.strip():
            continue
        toks = line.split(sep)
        if len(toks) < 4:
            raise DatasetError(f"{path}:{lineno}: expected user, item, rating, timestamp; got {line!r}")
        users.append(_int(toks[0].strip(), path, lineno))
        items.append(_int(toks[1].strip(), path, lineno))
        times.append(_int(toks[3].strip(), path, lineno))
    return np.array(users), np.array(items), np.array(times, dtype=np.int64)


def _read_table(path: Path, columns: tuple[str, str, str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    import pandas as pd

    try:
        df = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except (ValueError, OSError, pd.errors.ParserError) as e:
        raise DatasetError(f"{path}: cannot read as {'Parquet' if path.suffix == '.parquet' else 'CSV'}: {e}") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; has {list(df.columns)}")
    u, i, t = columns
    ts = df[t]
    if not np.issubdtype(ts.dtype, np.number):
        parsed = pd.to_datetime(ts, errors="coerce", utc=True)
        bad = parsed.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise DatasetError(f"{path}: row {row + 2}: bad timestamp {ts.iloc[row]!r}")
        ts = parsed.astype("int64") // 10**9
    if df[[u, i]].isna().any().any():
        row = int(np.flatnonzero(df[[u, i]].isna().any(axis=1).to_numpy())[0])
        raise DatasetError(f"{path}: row {row + 2}: empty user or item")
    return df[u].to_numpy(), df[i].to_numpy(), np.asarray(ts, dtype=np.int64)
