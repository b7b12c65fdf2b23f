import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from g2rec.graph import CoCounts, GraphConfig
from g2rec.windows import UserWindows, WindowTable, fold_histories, sample_increments
from tests.streaming.conftest import assert_counts_equal, batch_counts


def _events(seed: int, n: int, n_users: int, n_items: int):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n) * 7 + 3  # raw ids, not dense
    items = rng.integers(0, n_items, n) * 5 + 11
    times = np.sort(rng.integers(0, 10_000, n))
    return users, items, times


def _stream(users, items, cuts, cfg: GraphConfig) -> CoCounts:
    win = UserWindows(cfg.window, capacity=2)
    counts = CoCounts()
    bounds = [0, *sorted(set(cuts)), len(users)]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        ctx = win.extend(users[lo:hi], items[lo:hi], partition=0)
        a, b, w, _ = sample_increments(ctx, cfg, cfg.r)
        counts.add_pairs(a, b, w)
    return counts


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), window=st.integers(1, 12), r=st.integers(1, 8),
       cuts=st.lists(st.integers(0, 600), max_size=12), decay=st.sampled_from([1.0, 0.5]))
def test_streamed_counts_equal_the_batch_builder_for_any_batching(seed, window, r, cuts, decay):
    users, items, times = _events(seed, 600, n_users=25, n_items=40)
    cfg = GraphConfig(window=window, r=r, seed=seed, decay=decay)
    got = _stream(users, items, cuts, cfg)
    want = batch_counts(users, items, times, cfg)
    if decay == 1.0:
        assert_counts_equal(got, want)
    else:  # float sums in another order: equal up to rounding
        ga, gb, gw = got.pairs()
        wa, wb, ww = want.pairs()
        assert np.array_equal(ga, wa) and np.array_equal(gb, wb)
        np.testing.assert_allclose(gw, ww, rtol=1e-12)


def test_windows_hold_each_users_last_items_and_count():
    users = np.array([5, 9, 5, 5, 9, 5, 5])
    items = np.array([1, 2, 3, 4, 5, 6, 7])
    win = UserWindows(window=3)
    win.extend(users[:2], items[:2], partition=0)
    win.extend(users[2:], items[2:], partition=0)
    table = win.export()
    got = {int(u): (int(p), table.flat[table.ptr[k]:table.ptr[k + 1]].tolist())
           for k, (u, p) in enumerate(zip(table.users, table.positions))}
    assert got == {5: (5, [4, 6, 7]), 9: (2, [2, 5])}


def test_fold_and_reload_reproduce_the_live_windows():
    users, items, _ = _events(3, 500, n_users=30, n_items=50)
    live = UserWindows(window=4)
    live.extend(users, items, partition=2)
    half = fold_histories(WindowTable.empty(), users[:200], items[:200], window=4)
    folded = fold_histories(half, users[200:], items[200:], window=4)
    reloaded = UserWindows(window=4)
    reloaded.load(folded, partition=2)
    a, b = live.export(), reloaded.export()
    order_a, order_b = np.argsort(a.users), np.argsort(b.users)
    assert np.array_equal(a.users[order_a], b.users[order_b])
    assert np.array_equal(a.positions[order_a], b.positions[order_b])
    rows_a = [a.flat[a.ptr[k]:a.ptr[k + 1]].tolist() for k in order_a]
    rows_b = [b.flat[b.ptr[k]:b.ptr[k + 1]].tolist() for k in order_b]
    assert rows_a == rows_b


def test_dropping_a_partition_forgets_only_its_users():
    win = UserWindows(window=2)
    win.extend(np.array([1, 2]), np.array([10, 20]), partition=0)
    win.extend(np.array([3]), np.array([30]), partition=1)
    win.drop_partitions({0})
    assert sorted(win.export().users.tolist()) == [3]
    ctx = win.extend(np.array([1]), np.array([11]), partition=0)
    assert ctx.positions.tolist() == [0]  # user 1 starts afresh


def test_evict_forgets_users_stamped_before_the_cutoff_and_keeps_the_rest():
    win = UserWindows(window=2)
    win.extend(np.array([1, 2]), np.array([10, 20]), partition=0, stamp=1.0)
    win.extend(np.array([2, 3]), np.array([21, 30]), partition=0, stamp=5.0)
    assert win.evict(before=4.0) == 1
    table = win.export()
    assert sorted(zip(table.users.tolist(), table.positions.tolist())) == [(2, 2), (3, 1)]
    assert win.find(np.array([1, 2, 3])).tolist()[0] == -1
