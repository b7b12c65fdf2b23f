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


def _as_dict(table: WindowTable) -> dict[int, tuple[int, list[int]]]:
    return {int(u): (int(p), table.flat[table.ptr[k]:table.ptr[k + 1]].tolist())
            for k, (u, p) in enumerate(zip(table.users, table.positions))}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), window=st.integers(1, 6),
       ops=st.lists(st.sampled_from(["extend", "extend", "extend", "evict", "drop", "load"]), max_size=25))
def test_windows_match_a_plain_reference_through_growth_eviction_drops_and_loads(seed, window, ops):
    """The sorted user index and the in-place growth keep every row where `find` says it is."""
    rng = np.random.default_rng(seed)
    win = UserWindows(window, capacity=1)
    ref: dict[int, tuple[int, list[int], int, float]] = {}  # user -> (position, window, partition, stamp)
    for step, op in enumerate(ops):
        if op == "extend":
            part = int(rng.integers(0, 2))
            users = rng.integers(0, 40, int(rng.integers(1, 30))) * 2 + part  # partition by parity
            items = rng.integers(0, 1000, len(users))
            win.extend(users, items, partition=part, stamp=float(step))
            for u, i in zip(users.tolist(), items.tolist()):
                p, w, _, _ = ref.get(u, (0, [], part, 0.0))
                ref[u] = (p + 1, (w + [i])[-window:], part, float(step))
        elif op == "evict":
            before = float(step - int(rng.integers(1, 4)))
            assert win.evict(before) == sum(s < before for *_, s in ref.values())
            ref = {u: v for u, v in ref.items() if v[3] >= before}
        elif op == "drop":
            win.drop_partitions({0})
            ref = {u: v for u, v in ref.items() if v[2] != 0}
        else:  # load stored windows of some users, new and known
            users = np.unique(rng.integers(0, 40, 5) * 2 + 1)
            positions = rng.integers(window, 3 * window, len(users))
            flat = rng.integers(0, 1000, len(users) * window)
            win.load(WindowTable(users, positions, np.arange(len(users) + 1) * window, flat), partition=1,
                     stamp=float(step))
            for k, u in enumerate(users.tolist()):
                ref[u] = (int(positions[k]), flat[k * window:(k + 1) * window].tolist(), 1, float(step))
        assert _as_dict(win.export()) == {u: (p, w) for u, (p, w, _, _) in ref.items()}
        probe = np.arange(0, 84)
        rows = win.find(probe)
        assert ((rows >= 0) == np.isin(probe, list(ref))).all()
        assert np.array_equal(win.users[rows[rows >= 0]], probe[rows >= 0])


def test_items_are_int32_until_an_id_needs_int64():
    win = UserWindows(window=3)
    win.extend(np.array([1, 2, 1]), np.array([10, 20, 30]), partition=0)
    assert win.items.dtype == np.int32
    big = 2**40 + 7
    win.extend(np.array([2, 1]), np.array([big, 40]), partition=0)
    assert win.items.dtype == np.int64
    assert _as_dict(win.export()) == {1: (3, [10, 30, 40]), 2: (2, [20, big])}
    win.load(WindowTable(np.array([5]), np.array([1]), np.array([0, 1]), np.array([-(2**35)])), partition=0)
    assert _as_dict(win.export())[5] == (1, [-(2**35)])


def test_a_table_grows_in_place_without_a_second_copy():
    win = UserWindows(window=4, capacity=1)
    for lo in range(0, 20_000, 2_000):
        win.extend(np.arange(lo, lo + 2_000), np.arange(2_000), partition=0)
    assert len(win) == 20_000 and win.in_place_resizes > 0
    assert win.find(np.array([0, 19_999, 20_000])).tolist() == [0, 19_999, -1]
