"""serving/recommender.py: the serving rule over original ids."""

import numpy as np
import pytest

from g2rec.errors import DataError
from serving.recommender import load_item_counts, popularity_scores
from serving.run_dir import RunConfig, open_run
from tests.serving.conftest import MAX_LEN, N


def test_unknown_items_are_ignored_and_counted(recommender):
    with_unknown, plain = recommender.recommend([[10, 99999, 20, -5], [10, 20]], k=5)
    assert with_unknown.unknown_items == 2 and plain.unknown_items == 0
    assert with_unknown.items == plain.items and with_unknown.used_items == 2 and not with_unknown.fallback


def test_look_alike_ids_of_another_type_are_unknown(recommender):
    (r,) = recommender.recommend([[True, 10.0, "10", 20]], k=3)
    assert r.unknown_items == 3 and r.used_items == 1


def test_long_histories_use_the_most_recent_max_len_items_and_exclude_all(recommender):
    hist = [10 * i for i in range(1, 3 * MAX_LEN + 1)]
    (r,) = recommender.recommend([hist], k=N)
    (recent,) = recommender.recommend([hist[-MAX_LEN:]], k=N)
    assert r.used_items == MAX_LEN
    assert set(r.items) == set(range(10, 10 * N + 1, 10)) - set(hist)
    assert r.items == [i for i in recent.items if i not in hist]


def test_k_beyond_the_items_left_returns_fewer_never_a_seen_one(recommender):
    hist = [10 * i for i in range(1, N - 2)]  # all but 3 items seen
    (r,) = recommender.recommend([hist], k=50)
    assert sorted(r.items) == [10 * (N - 2), 10 * (N - 1), 10 * N] and np.isfinite(r.scores).all()


def test_no_known_item_falls_back_to_popularity_minus_exclusions(recommender):
    empty, unknown = recommender.recommend([[], [12345]], k=3, excludes=[[10 * N], []])
    assert empty.fallback and unknown.fallback and unknown.unknown_items == 1 and unknown.used_items == 0
    assert unknown.items == [10 * N, 10 * (N - 1), 10 * (N - 2)]  # counts rise with the id
    assert empty.items == [10 * (N - 1), 10 * (N - 2), 10 * (N - 3)]


def test_exclude_drops_items_from_model_rankings(recommender):
    (r,) = recommender.recommend([[10, 20]], k=5)
    (x,) = recommender.recommend([[10, 20]], k=4, excludes=[[r.items[0], 77777]])
    assert x.items == r.items[1:]


def test_popularity_scores_are_log_shares_with_padding_excluded():
    p = popularity_scores(np.array([0, 3, 1]))
    assert p[0] == -np.inf and np.isclose(np.exp(p[1:]).sum(), 1) and p[1] > p[2]


def test_item_counts_of_the_wrong_shape_name_the_file(tmp_path):
    np.save(tmp_path / "item_counts.npy", np.zeros(5, np.int64))
    with pytest.raises(DataError, match="item_counts.npy"):
        load_item_counts(tmp_path / "item_counts.npy", 10)


def test_string_catalogues_take_string_ids_only(str_run_dir):
    rec = open_run(RunConfig(str_run_dir))
    (r,) = rec.recommend([["i1", 1, "nope"]], k=3)
    assert rec.item_type is str and r.unknown_items == 2 and all(isinstance(i, str) for i in r.items)
