"""serving/batch.py: batch scoring in bounded batches, bad lines listed with their reason."""

import io
import json

import pandas as pd
import pytest

from serving.batch import BatchConfig, score_lines


def test_batches_give_the_same_rows_as_one_pass(recommender, tmp_path):
    lines = [json.dumps({"user": u, "history": [10 * (1 + u % 50)], "exclude": [600]}) for u in range(25)]
    outs = []
    for size in (1, 7, 100):
        out = tmp_path / f"r{size}.parquet"
        s = score_lines(recommender, lines, out, io.StringIO(), BatchConfig(k=4, batch_size=size))
        assert (s.users, s.rows, s.bad_lines) == (25, 100, 0)
        outs.append(pd.read_parquet(out))
    pd.testing.assert_frame_equal(outs[0], outs[1])
    pd.testing.assert_frame_equal(outs[0], outs[2])
    assert 600 not in outs[0]["item"].tolist()


def test_bad_lines_are_listed_with_the_field_and_skipped(recommender, tmp_path):
    lines = ['{"user": 1, "history": [10]}', "not json", '{"user": 2, "history": [true]}',
             '{"user": 3, "history": [10], "extra": 1}', '{"history": [10]}', "", '{"user": 4, "history": [20]}']
    errors = io.StringIO()
    s = score_lines(recommender, lines, tmp_path / "r.jsonl", errors, BatchConfig(k=2, fmt="jsonl"))
    assert (s.users, s.bad_lines) == (2, 4)
    listed = [json.loads(x) for x in errors.getvalue().splitlines()]
    assert [x["line"] for x in listed] == [2, 3, 4, 5]
    assert [x["reason"].split(":")[0] for x in listed[1:]] == ["history.0", "extra", "user"]


def test_no_good_line_still_writes_an_empty_file(recommender, tmp_path):
    out = tmp_path / "r.parquet"
    s = score_lines(recommender, ["oops"], out, io.StringIO(), BatchConfig())
    assert s.users == 0 and len(pd.read_parquet(out)) == 0 and "rank" in pd.read_parquet(out).columns


def test_config_rejects_k_below_1_and_unknown_formats():
    with pytest.raises(ValueError, match="k=0"):
        BatchConfig(k=0)
    with pytest.raises(ValueError, match="csv"):
        BatchConfig(fmt="csv")
