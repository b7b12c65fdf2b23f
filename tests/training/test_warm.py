"""Carrying a champion to a grown catalogue (training/warm.py)."""

import numpy as np
import torch

from g2rec.model import G2RecModel, ModelConfig
from g2rec.types import InterestProfiles
from training.warm import catalogue, dense_ids, grow, profile_table


def _profiles(ids, k=4, rho=2, seed=0) -> InterestProfiles:
    rng = np.random.default_rng(seed)
    n = len(ids)
    clusters = np.stack([rng.permutation(k)[:rho] for _ in range(n)])
    weights = np.tile(np.array([0.7, 0.3], np.float32), (n, 1))
    clusters[0], weights[0] = 0, 0
    return InterestProfiles(clusters, weights, np.asarray(ids), k)


def test_grown_model_keeps_known_rows_and_starts_new_items_at_their_interest_embedding():
    old_ids = np.array([0, 10, 20, 30])
    torch.manual_seed(0)
    champion = G2RecModel(ModelConfig(n_items=3, d_model=8, n_heads=2, n_layers=1, mode="g2rec", n_clusters=4, rho=2))
    champion.set_profiles(*(lambda p: (p.clusters, p.weights))(_profiles(old_ids)))
    new = _profiles(np.array([-1, 20, 25, 30]), seed=1)  # a snapshot: 10 vanished, 25 is new
    cat = catalogue(old_ids, new.item_ids)
    assert cat.tolist() == [0, 10, 20, 25, 30]
    model = grow(champion, old_ids, profile_table(cat, new, []))
    w, old = model.item_emb.weight, champion.item_emb.weight
    for raw in (10, 20, 30):
        assert torch.equal(w[dense_ids(cat, np.array([raw]))[0]], old[dense_ids(old_ids, np.array([raw]))[0]])
    row = dense_ids(cat, np.array([25]))[0]
    c, p = model.prof_clusters[row], model.prof_weights[row]
    assert torch.allclose(w[row], (model.cluster_emb.weight[c] * p[:, None]).sum(0))
    assert torch.equal(model.cluster_emb.weight, champion.cluster_emb.weight)
    scores = model.eval().score(torch.tensor([[1, 2]]))
    assert torch.isfinite(scores[0, row])  # the new item is scorable at once


def test_profile_table_prefers_the_new_profiles_then_older_ones_then_a_stand_in():
    new = _profiles(np.array([-1, 20, 25]), seed=1)
    old = _profiles(np.array([0, 10, 20]), seed=2)
    cat = catalogue(new.item_ids, old.item_ids, np.array([0, 99]))
    table = profile_table(cat, new, [old])
    assert table.clusters[2].tolist() == new.clusters[1].tolist()  # 20: the new version wins
    assert table.clusters[1].tolist() == old.clusters[1].tolist()  # 10: only the old one has it
    assert table.clusters[4, 0] == 99 % 4 and table.weights[4].tolist() == [1.0, 0.0]
