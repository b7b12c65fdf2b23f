import numpy as np
import pytest

from g2rec.synth import SynthConfig, planted_graph, power_law_sizes, synth_interactions


def test_power_law_sizes_sum_and_decrease():
    sizes = power_law_sizes(10_000, 50, 0.7, minimum=20)
    assert sizes.sum() == 10_000 and sizes.min() >= 20
    assert (np.diff(sizes) <= 0).all() and sizes[0] > 10 * sizes[-1]


def test_synth_histories_dwell_in_planted_interests():
    cfg = SynthConfig(n_users=400, n_items=600, n_interests=12, secondary_prob=0.0, seed=3)
    inter, primary = synth_interactions(cfg)
    assert inter.n_users == 400 and inter.n_items == 600 and primary[0] == -1
    assert inter.lengths().min() >= cfg.min_history
    assert abs(inter.lengths().mean() - cfg.mean_history) < 2
    assert set(np.unique(primary[1:])) == set(range(12))
    same = []
    for u in range(inter.n_users):
        p = primary[inter.history(u)]
        same.append(p[1:] == p[:-1])
        assert len(np.unique(p)) <= cfg.interests_per_user
        assert (np.diff(inter.times[inter.user_ptr[u] : inter.user_ptr[u + 1]]) > 0).all()
    stay = np.concatenate(same).mean()
    assert stay > 1 - 1 / cfg.mean_stay - 0.05  # geometric stays of mean 4 -> ~75% repeats


def test_synth_is_deterministic_per_seed():
    a, pa = synth_interactions(SynthConfig(n_users=50, seed=1))
    b, pb = synth_interactions(SynthConfig(n_users=50, seed=1))
    c, _ = synth_interactions(SynthConfig(n_users=50, seed=2))
    np.testing.assert_array_equal(a.items, b.items)
    np.testing.assert_array_equal(pa, pb)
    assert not np.array_equal(a.items[:50], c.items[:50])


def test_popularity_is_skewed():
    inter, _ = synth_interactions(SynthConfig(n_users=2000, n_items=500, n_interests=5, seed=0))
    counts = np.sort(np.bincount(inter.items, minlength=501)[1:])[::-1]
    assert counts[:50].sum() > 0.4 * counts.sum()  # the top 10% of items take over 40% of events


def test_planted_graph_matches_its_parameters():
    snap, labels = planted_graph(n_items=20_000, n_interests=64, avg_degree=20, mixing=0.3, seed=1)
    assert labels[0] == -1 and len(labels) == 20_001
    assert (snap.src != snap.dst).all()
    fwd = set(zip(snap.src.tolist(), snap.dst.tolist()))
    assert all((d, s) in fwd for s, d in list(fwd)[:2000])
    deg = np.bincount(snap.src, weights=snap.weight, minlength=20_001)[1:]
    assert abs(deg.mean() - 20) < 1.0
    leaving = snap.weight[labels[snap.src] != labels[snap.dst]].sum() / snap.weight.sum()
    assert abs(leaving - 0.3) < 0.02
    sizes = np.bincount(labels[1:])
    assert sizes.max() > 10 * sizes.min()


def test_bad_synth_config_names_the_field():
    with pytest.raises(ValueError, match="interests_per_user"):
        SynthConfig(n_interests=2, interests_per_user=3)
    with pytest.raises(ValueError, match="mixing"):
        planted_graph(n_items=100, n_interests=4, mixing=1.5)
