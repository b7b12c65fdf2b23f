import math

import numpy as np
import pytest
import torch

from g2rec.data import from_events
from g2rec.metrics import loo_split, metrics_from_ranks, target_ranks


def test_ranks_and_metrics_by_hand():
    # 5 items (+ padding column 0). Scores rank items 3 > 1 > 4 > 2 > 5.
    scores = torch.tensor([[9.0, 0.8, 0.2, 0.9, 0.5, 0.1]] * 3)
    targets = torch.tensor([1, 4, 2])
    ranks = target_ranks(scores, targets, None)
    assert ranks.tolist() == [1, 2, 3]
    # Excluding history item 3 moves everything below it up by one; an excluded target is a miss.
    ranks = target_ranks(scores, targets, [np.array([3]), np.array([3]), np.array([2])])
    assert ranks.tolist() == [0, 1, 5]
    m = metrics_from_ranks(np.array([0, 1, 5]), ks=(1, 2))
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@2"] == pytest.approx(2 / 3)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 3)


def test_ties_count_against_the_target():
    scores = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    assert target_ranks(scores, torch.tensor([2]), None).tolist() == [2]


def test_leave_one_out_split():
    users = np.array([0] * 5 + [1] * 2)
    items = np.array([1, 2, 3, 4, 5, 6, 7])
    d = from_events(users, items, np.arange(7))
    s = loo_split(d)
    assert list(s.users) == [0]  # user 1 has fewer than 3 interactions: training only
    assert list(s.train.history(0)) == [1, 2, 3]
    assert list(s.train.history(1)) == [6, 7]
    assert s.valid.tolist() == [4] and s.test.tolist() == [5]
    assert [list(h) for h in s.inputs("valid")] == [[1, 2, 3]]
    assert [list(h) for h in s.inputs("test")] == [[1, 2, 3, 4]]
