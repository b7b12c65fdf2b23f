import numpy as np
import pandas as pd
import pytest

from g2rec.data import DatasetError, from_events, load_dataset, load_path


def write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def test_s3rec_keeps_order_and_remaps_items_densely(tmp_path):
    p = write(tmp_path, "seq.txt", "1 10 30 20\n2 30 10\n")
    d = load_path(p, "s3rec")
    assert d.n_users == 2 and d.n_items == 3 and d.n_interactions == 5
    assert list(d.item_ids[d.history(0)]) == [10, 30, 20]
    assert list(d.item_ids[d.history(1)]) == [30, 10]
    assert d.items.min() == 1  # 0 is padding


def test_movielens_tab_colons_and_csv_sort_by_time(tmp_path):
    rows = [(1, 5, 4, 300), (1, 7, 3, 100), (2, 5, 5, 200)]
    tab = write(tmp_path, "u.data", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    dat = write(tmp_path, "ratings.dat", "".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    csv = write(tmp_path, "ratings.csv", "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r},{t}\n" for u, i, r, t in rows))
    for p in (tab, dat, csv):
        d = load_path(p, "movielens")
        assert list(d.item_ids[d.history(0)]) == [7, 5]
        assert list(d.times[: d.user_ptr[1]]) == [100, 300]


def test_generic_csv_and_parquet_with_named_columns(tmp_path):
    df = pd.DataFrame({"uid": ["a", "a", "b"], "sku": ["x", "y", "x"], "ts": [2, 1, 5]})
    df.to_csv(tmp_path / "e.csv", index=False)
    df.to_parquet(tmp_path / "e.parquet")
    for name in ("e.csv", "e.parquet"):
        d = load_path(tmp_path / name, "csv", columns=("uid", "sku", "ts"))
        assert list(d.item_ids[d.history(0)]) == ["y", "x"]
        assert d.item_ids[0] == ""


def test_timestamped_pair_is_aligned(tmp_path):
    items = write(tmp_path, "items.txt", "1 3 4\n2 4\n")
    times = write(tmp_path, "times.txt", "1 100 200\n2 50\n")
    d = load_path(items, "s3rec-ts", time_path=times)
    assert list(d.times) == [100, 200, 50]
    bad = write(tmp_path, "bad_times.txt", "1 100\n2 50\n")
    with pytest.raises(DatasetError, match="not aligned"):
        load_path(items, "s3rec-ts", time_path=bad)


@pytest.mark.parametrize(
    "fmt,text,match",
    [
        ("s3rec", "1 2 3\n2 x 4\n", r"seq\.txt:2: expected an integer, got 'x'"),
        ("s3rec", "1 2 3\n7\n", r"seq\.txt:2: expected `user item"),
        ("movielens", "1\t2\t3\n", r"seq\.txt:1: expected user, item, rating, timestamp"),
        ("s3rec", b"1 2 \xff\n", r"not UTF-8"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, fmt, text, match):
    p = write(tmp_path, "seq.txt", text)
    with pytest.raises(DatasetError, match=match):
        load_path(p, fmt)


def test_missing_file_unknown_format_and_unknown_dataset(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        load_path(tmp_path / "nope.txt", "s3rec")
    p = write(tmp_path, "x.txt", "1 2\n")
    with pytest.raises(DatasetError, match="unknown format 'xml'"):
        load_path(p, "xml")
    with pytest.raises(DatasetError, match="unknown dataset 'nope'"):
        load_dataset("nope")
    with pytest.raises(DatasetError, match=f"looked for Beauty.txt in {tmp_path}"):
        load_dataset("beauty", root=tmp_path)


def test_csv_missing_column_and_bad_timestamp(tmp_path):
    write(tmp_path, "a.csv", "user,item\n1,2\n")
    with pytest.raises(DatasetError, match=r"a\.csv: missing column\(s\) \['timestamp'\]"):
        load_path(tmp_path / "a.csv", "csv")
    write(tmp_path, "b.csv", "user,item,timestamp\n1,2,2020-01-01\n1,3,notatime\n")
    with pytest.raises(DatasetError, match=r"b\.csv: row 3: bad timestamp 'notatime'"):
        load_path(tmp_path / "b.csv", "csv")


def test_from_events_breaks_time_ties_by_input_order():
    d = from_events(np.array([0, 0, 0]), np.array([9, 8, 7]), np.array([5, 5, 1]))
    assert list(d.item_ids[d.history(0)]) == [7, 9, 8]


def test_real_beauty_matches_published_counts():
    try:
        d = load_dataset("beauty")
    except DatasetError:
        pytest.skip("shared Beauty dataset not present")
    assert (d.n_users, d.n_items, d.n_interactions) == (22363, 12101, 198502)
