import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from g2rec.graph import (
    CoCounts,
    GraphConfig,
    build_graph,
    coengagement_counts,
    event_partners,
    partner_slots,
    resample_snapshot,
    reservoir_keep,
)
from g2rec.types import Interactions



def dense_counts(counts: CoCounts, n: int) -> np.ndarray:
    """(n, n) symmetric dense counts of a small graph."""
    a, b, w = counts.pairs()
    out = np.zeros((n, n))
    out[a, b] = w
    out[b, a] = w
    return out

def make_interactions(histories: list[list[int]], n_items: int, user_ids=None) -> Interactions:
    lengths = [len(h) for h in histories]
    items = np.array([i for h in histories for i in h], dtype=np.int64)
    return Interactions(
        user_ptr=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        items=items,
        times=np.arange(len(items), dtype=np.int64),
        user_ids=np.arange(len(histories), dtype=np.int64) * 7 + 3 if user_ids is None else user_ids,
        item_ids=np.arange(n_items + 1, dtype=np.int64),
    )


histories_st = st.integers(2, 12).flatmap(
    lambda n: st.tuples(
        st.just(n),
        st.lists(st.lists(st.integers(1, n), min_size=1, max_size=30), min_size=1, max_size=8),
    )
)


def test_partner_slots_are_distinct_in_range_and_padded():
    n = np.array([0, 1, 3, 10, 50, 50])
    slots = partner_slots(5, np.arange(6), np.array([0, 1, 3, 10, 60, 61]), n, r=4)
    assert slots.shape == (6, 4)
    for row, n_c in zip(slots, n):
        chosen = row[row > 0]
        assert len(chosen) == min(4, n_c)
        assert len(set(chosen)) == len(chosen)
        assert chosen.max(initial=0) <= n_c
        assert (row[len(chosen) :] == -1).all()


def test_partner_slots_depend_only_on_their_own_event():
    users = np.array([10, 11, 12, 10])
    pos = np.array([20, 5, 40, 21])
    n = np.minimum(pos, 50)
    together = partner_slots(3, users, pos, n, r=6)
    alone = np.vstack([partner_slots(3, users[i : i + 1], pos[i : i + 1], n[i : i + 1], r=6) for i in range(4)])
    np.testing.assert_array_equal(together, alone)
    perm = np.array([2, 0, 3, 1])
    np.testing.assert_array_equal(partner_slots(3, users[perm], pos[perm], n[perm], r=6), together[perm])
    assert not np.array_equal(partner_slots(4, users, pos, n, r=6), together)


def test_partner_slots_are_uniform_over_the_window():
    m = 20_000
    slots = partner_slots(0, np.zeros(m, dtype=np.int64), np.arange(m) + 10, np.full(m, 10), r=3)
    freq = np.bincount(slots.ravel(), minlength=11)[1:] / m
    assert np.abs(freq - 0.3).max() < 0.02


def test_bad_partner_arguments_name_the_input():
    with pytest.raises(ValueError, match="n_candidates"):
        partner_slots(0, np.zeros(2, dtype=np.int64), np.zeros(2), np.zeros(3), r=2)
    with pytest.raises(TypeError, match="users"):
        partner_slots(0, np.array(["a"]), np.zeros(1), np.zeros(1), r=2)


@settings(max_examples=40, deadline=None)
@given(histories_st, st.integers(1, 5), st.integers(1, 6), st.integers(0, 3))
def test_counts_are_symmetric_without_self_loops_and_bounded(data, r, window, seed):
    n_items, histories = data
    inter = make_interactions(histories, n_items)
    cfg = GraphConfig(r=r, window=window, seed=seed)
    counts = coengagement_counts(inter, cfg)
    dense = dense_counts(counts, n_items + 1)
    np.testing.assert_array_equal(dense, dense.T)
    assert (np.diag(dense) == 0).all()
    assert counts.n_increments <= r * inter.n_interactions
    assert dense.sum() / 2 == pytest.approx(counts.n_increments)


def test_partners_come_from_the_window_of_earlier_items():
    inter = make_interactions([[1, 2, 3, 4, 5, 6, 7, 8]], 8)
    item, partner, _ = event_partners(inter, GraphConfig(r=2, window=3), r=2)
    for i, j in zip(item, partner):
        assert 1 <= i - j <= 3  # items equal positions here, so partner = an earlier item in the window


def test_decay_weights_recent_partners_more():
    inter = make_interactions([[1, 2, 3]], 3)
    counts = coengagement_counts(inter, GraphConfig(r=2, window=2, decay=0.5))
    dense = dense_counts(counts, 4)
    assert dense[3, 2] == 1.0 and dense[3, 1] == 0.5 and dense[2, 1] == 1.0


def test_streaming_replay_of_the_same_events_gives_the_same_counts():
    rng = np.random.default_rng(0)
    histories = [list(rng.integers(1, 30, rng.integers(1, 40))) for _ in range(25)]
    inter = make_interactions(histories, 30)
    cfg = GraphConfig(r=4, window=6, seed=11)
    batch = coengagement_counts(inter, cfg)
    # Events arrive interleaved across users, in micro-batches; the worker keeps each user's window.
    events = [(u, t) for u, h in enumerate(histories) for t in range(len(h))]
    order = sorted(events, key=lambda e: (e[1], rng.random()))
    stream = CoCounts()
    recent: dict[int, list[int]] = {}
    for lo in range(0, len(order), 17):
        part = order[lo : lo + 17]
        users = np.array([inter.user_ids[u] for u, _ in part])
        pos = np.array([t for _, t in part])
        slots = partner_slots(cfg.seed, users, pos, np.minimum(pos, cfg.window), 4)
        for (u, t), row in zip(part, slots):
            item = histories[u][t]
            hist = recent.setdefault(u, [])
            for s in row[row > 0]:
                stream.add_pairs(np.array([item]), np.array([hist[-s]]))
            hist.append(item)
            del hist[: -cfg.window]
    np.testing.assert_array_equal(dense_counts(stream, 31), dense_counts(batch, 31))


def test_merge_and_scale():
    a, b = CoCounts(), CoCounts()
    a.add_pairs(np.array([1, 2]), np.array([2, 3]))
    b.add_pairs(np.array([2, 4]), np.array([1, 4]), 2.0)
    a.merge(b)
    dense = dense_counts(a, 5)
    assert dense[1, 2] == 3.0 and dense[2, 3] == 1.0 and dense[4, 4] == 0.0
    a.scale(0.5)
    assert dense_counts(a, 5)[1, 2] == 1.5


@settings(max_examples=30, deadline=None)
@given(histories_st, st.integers(1, 4), st.integers(0, 3))
def test_snapshot_is_symmetric_capped_and_drawn_from_counts(data, k, seed):
    n_items, histories = data
    inter = make_interactions(histories, n_items)
    cfg = GraphConfig(r=3, k=k, window=5, seed=seed)
    counts = coengagement_counts(inter, cfg)
    snap = resample_snapshot(counts, inter.item_ids, cfg, inter.n_interactions)
    dense = dense_counts(counts, n_items + 1)
    adj = np.zeros_like(dense)
    adj[snap.src, snap.dst] = snap.weight
    np.testing.assert_array_equal(adj, adj.T)
    assert (snap.src != snap.dst).all()
    assert len(set(zip(snap.src.tolist(), snap.dst.tolist()))) == snap.n_edges
    np.testing.assert_allclose(adj[adj > 0], dense[adj > 0])
    # Each item chose at most k; after symmetrising an edge exists only if one end chose it, and an
    # item with at most k neighbours in the counts keeps all of them.
    n_nb = (dense > 0).sum(1)
    small = n_nb <= k
    np.testing.assert_array_equal((adj[small] > 0), (dense[small] > 0))
    assert snap.n_edges <= 2 * k * n_items


def test_reservoir_draws_proportionally_to_weight_without_replacement():
    src = np.array([1, 1, 1, 1])
    dst = np.array([2, 3, 4, 5])
    weight = np.array([8.0, 1.0, 1.0, 1.0])
    first = np.array([dst[reservoir_keep(src, dst, weight, 1, seed)][0] for seed in range(4000)])
    assert abs((first == 2).mean() - 8 / 11) < 0.03
    both = [set(dst[reservoir_keep(src, dst, weight, 2, seed)]) for seed in range(50)]
    assert all(len(b) == 2 for b in both)


def test_build_graph_is_deterministic_and_uses_log_counts():
    rng = np.random.default_rng(1)
    histories = [list(rng.integers(1, 50, 30)) for _ in range(40)]
    inter = make_interactions(histories, 50)
    cfg = GraphConfig(seed=3)
    g1, g2 = build_graph(inter, cfg), build_graph(inter, cfg)
    np.testing.assert_array_equal(g1.src, g2.src)
    np.testing.assert_array_equal(g1.weight, g2.weight)
    assert cfg.partners(inter.n_interactions) == int(np.ceil(np.log2(1200)))
    assert np.bincount(g1.src).max() <= 2 * cfg.neighbours(inter.n_interactions)


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="window"):
        GraphConfig(window=0)
    with pytest.raises(ValueError, match="decay"):
        GraphConfig(decay=1.5)
