"""The worker's state machine and store without Kafka: crash recovery, fencing, compaction, sinks."""

import numpy as np
import pytest

from g2rec.graph import GraphConfig, resample_snapshot
from streaming.config import StreamConfig
from streaming.eventlog import read_events
from streaming.models import DeadLetter
from streaming.processor import StreamProcessor
from streaming.sink import MemorySink, make_sink
from streaming.snapshots import dense_counts, read_snapshot, take_snapshot
from streaming.store import ConfigMismatch, StaleOffsets, StateStore
from tests.streaming.conftest import N_PARTITIONS, assert_counts_equal, batch_counts, ends as _ends, feed as _feed
from tests.streaming.conftest import assert_log_equals, make_events

@pytest.fixture
def events():
    return make_events(n=3000, span_s=100_000, seed=0)


def test_resume_after_crash_counts_and_logs_each_event_once(cfg, events):
    users, items, times, values, partitions = events
    ends = _ends(partitions)
    store = StateStore(cfg.store)
    first = StreamProcessor(cfg, store)
    for p in range(N_PARTITIONS):
        first.assign(p, 0)
    _feed(first, values, partitions, {p: e // 3 for p, e in ends.items()})
    first.checkpoint()
    _feed(first, values, partitions, {p: 2 * e // 3 for p, e in ends.items()}, chunk=41)
    prepared = first.prepare_checkpoint()
    first.event_log.write(prepared.events)
    # crash: the second third was applied and written to the event log, but never committed

    second = StreamProcessor(cfg, StateStore(cfg.store))
    seek = {p: second.assign(p, 0) for p in range(N_PARTITIONS)}
    assert seek == {p: e // 3 for p, e in ends.items()}
    first.event_log.write(prepared.events)  # a zombie of the first still writes after the takeover
    _feed(second, values, partitions, ends)  # other batch boundaries: overlapping log files
    second.checkpoint()
    state = store.committed(cfg.topics.events)
    assert state.n_events == len(values)
    assert state.offsets == ends
    assert_counts_equal(state.counts, batch_counts(users, items, times, cfg.graph))
    assert_log_equals(read_events(cfg.event_log_path, committed=state.offsets), users, items, times, partitions)


def test_records_below_the_committed_offset_are_skipped(cfg, events):
    users, items, times, values, partitions = events
    proc = StreamProcessor(cfg, StateStore(cfg.store))
    for p in range(N_PARTITIONS):
        proc.assign(p, 0)
    _feed(proc, values, partitions, _ends(partitions))
    logs = [values[k] for k in np.flatnonzero(partitions == 0)]
    proc.process(0, list(range(len(logs))), logs)  # a redelivery of the whole partition
    proc.checkpoint()
    state = proc.store.committed(cfg.topics.events)
    assert state.n_events == len(values)
    assert_counts_equal(state.counts, batch_counts(users, items, times, cfg.graph))


def test_a_fenced_off_worker_commits_nothing(cfg, events):
    _, _, _, values, partitions = events
    store = StateStore(cfg.store)
    zombie, owner = StreamProcessor(cfg, store), StreamProcessor(cfg, store)
    zombie.assign(0, 0)
    owner.assign(0, 0)
    upto = {0: 100, 1: 0, 2: 0}
    _feed(owner, values, partitions, upto)
    owner.checkpoint()
    before = store.committed(cfg.topics.events)
    _feed(zombie, values, partitions, {0: 150, 1: 0, 2: 0})
    with pytest.raises(StaleOffsets) as err:
        zombie.checkpoint()
    assert err.value.partitions == [0]
    after = store.committed(cfg.topics.events)
    assert after.n_events == before.n_events == 100 and after.offsets == {0: 100}
    assert zombie.reset() == {0: 100}  # resumes where the real owner committed


def test_compaction_keeps_counts_and_windows(cfg, events):
    users, items, times, values, partitions = events
    store = StateStore(cfg.store)
    proc = StreamProcessor(cfg, store)
    for p in range(N_PARTITIONS):
        proc.assign(p, 0)
    ends = _ends(partitions)
    for frac in (0.25, 0.5, 1.0):
        _feed(proc, values, partitions, {p: int(e * frac) for p, e in ends.items()})
        proc.checkpoint()
    windows_before = [store.load_windows(cfg.topics.events, p, cfg.graph.window) for p in range(N_PARTITIONS)]
    store.compact(cfg.topics.events, cfg.graph.window)
    state = store.committed(cfg.topics.events)
    assert state.n_events == len(values)
    assert_counts_equal(state.counts, batch_counts(users, items, times, cfg.graph))
    for p, before in enumerate(windows_before):
        after = store.load_windows(cfg.topics.events, p, cfg.graph.window)
        for field in ("users", "positions", "ptr", "flat"):
            assert np.array_equal(getattr(before, field), getattr(after, field))


def test_store_refuses_a_worker_with_other_sampling_settings(cfg):
    StreamProcessor(cfg, StateStore(cfg.store))
    other = StreamConfig(data_dir=cfg.data_dir, graph=GraphConfig(r=6, window=6, seed=11))
    with pytest.raises(ConfigMismatch, match="r"):
        StreamProcessor(other, StateStore(other.store))


def test_snapshot_is_the_resampled_committed_counts(cfg, events):
    users, items, times, values, partitions = events
    store = StateStore(cfg.store)
    proc = StreamProcessor(cfg, store)
    for p in range(N_PARTITIONS):
        proc.assign(p, 0)
    _feed(proc, values, partitions, _ends(partitions))
    proc.checkpoint()
    info = take_snapshot(store, cfg)
    assert info is not None and info.n_events == len(values) and info.partition_offsets() == _ends(partitions)
    assert info.group_id == cfg.group_id and info.store_id == store.store_id and info.uri.startswith("file:///")
    snap = read_snapshot(info.path, info.snapshot_id)
    counts, item_ids = dense_counts(store.committed(cfg.topics.events), cfg)
    want = resample_snapshot(counts, item_ids, cfg.graph, len(values), info.snapshot_id)
    for field in ("src", "dst", "weight", "item_ids"):
        assert np.array_equal(getattr(snap, field), getattr(want, field))
    assert set(item_ids[1:].tolist()) == set(items.tolist())
    assert store.snapshots()[-1]["n_edges"] == snap.n_edges
    assert take_snapshot(store, cfg) is None  # nothing new committed


def test_sink_gets_each_touched_users_new_events_and_window_before_the_commit(cfg, events):
    users, items, times, values, partitions = events
    sink = RecordingSink()
    proc = StreamProcessor(cfg, StateStore(cfg.store), sink)
    for p in range(N_PARTITIONS):
        proc.assign(p, 0)
    ends = _ends(partitions)
    _feed(proc, values, partitions, {p: e // 2 for p, e in ends.items()})
    proc.checkpoint()
    _feed(proc, values, partitions, ends)
    proc.checkpoint()
    assert len(sink.calls) == 2
    for u in users[:5].tolist():
        mine = np.flatnonzero(users == u)
        pushed = [x for call in sink.calls for x in call if x.user_id == u]
        assert np.concatenate([x.item_ids for x in pushed]).tolist() == items[mine].tolist()
        assert np.concatenate([x.timestamps for x in pushed]).tolist() == times[mine].tolist()
        assert pushed[-1].position == len(mine)
        assert pushed[-1].window.tolist() == items[mine][-cfg.graph.window:].tolist()
        assert pushed[-1].window_times.tolist() == np.floor(times[mine][-cfg.graph.window:]).tolist()


def test_window_times_are_exact_and_unknown_only_for_items_reloaded_from_the_store(cfg, events):
    from dataclasses import replace

    users, items, times, values, partitions = events
    cfg = replace(cfg, user_ttl_s=0.0, compact_interval_s=1e-6)
    sink = RecordingSink()
    proc = StreamProcessor(cfg, StateStore(cfg.store), sink)
    for p in range(N_PARTITIONS):
        proc.assign(p, 0)
    ends = _ends(partitions)
    for k in range(1, 5):  # with TTL 0 users leave memory and come back
        _feed(proc, values, partitions, {p: e * k // 4 for p, e in ends.items()})
        proc.checkpoint()
    assert proc.n_evicted > 0
    n_unknown = 0
    for update in sink.calls[-1]:
        mine = np.flatnonzero(users == update.user_id)[:update.position]
        assert update.window.tolist() == items[mine][-cfg.graph.window:].tolist()
        want = np.floor(times[mine][-len(update.window):])
        unknown = update.window_times == -1
        assert update.window_times[~unknown].tolist() == want[~unknown].tolist()
        assert not unknown[len(unknown) - len(update.item_ids):].any()  # this checkpoint's events
        n_unknown += int(unknown.any())
    assert n_unknown > 0  # some windows were reloaded


class RecordingSink:
    def __init__(self):
        self.calls = []

    def write(self, updates):
        self.calls.append(updates)


def test_sinks_are_picked_by_name_or_import_path(tmp_path):
    assert type(make_sink("none")).__name__ == "NoopSink"
    assert isinstance(make_sink("streaming.sink:MemorySink"), MemorySink)
    assert make_sink("jsonl", {"path": str(tmp_path / "h.jsonl")}).path.endswith("h.jsonl")
    with pytest.raises(ValueError, match="unknown sink 'feest'"):
        make_sink("feest")
    with pytest.raises(ValueError, match="bad sink_options"):
        make_sink("memory", {"colour": "red"})


def test_revoking_needs_a_checkpoint_and_then_forgets_the_partition(cfg, events):
    _, _, _, values, partitions = events
    proc = StreamProcessor(cfg, StateStore(cfg.store))
    for p in range(N_PARTITIONS):
        proc.assign(p, 0)
    _feed(proc, values, partitions, {0: 50, 1: 50, 2: 50})
    with pytest.raises(RuntimeError, match="checkpoint first"):
        proc.revoke({1})
    proc.checkpoint()
    proc.revoke({1})
    assert proc.owned == {0, 2}
    assert set((proc.windows.export().users // 3 % N_PARTITIONS).tolist()) == {0, 2}
    with pytest.raises(ValueError, match="not owned"):
        proc.process(1, [50], [values[0]])
    assert proc.assign(1, 0) == 50  # taking it back resumes at its committed offset


def test_dead_letters_are_committed_with_their_offsets_and_leave_the_outbox_once_forwarded(cfg, events):
    _, _, _, values, partitions = events
    store = StateStore(cfg.store)
    proc = StreamProcessor(cfg, store)
    proc.assign(0, 0)
    batch = [values[0], b"{not json", values[1], b"x" * 200_000]
    rejected = proc.process(0, [0, 1, 2, 3], batch)
    assert [r.index for r in rejected] == [1, 3]
    letters = [DeadLetter.of(cfg.topics.events, 0, r.index, r.reason, None, batch[r.index], 1000) for r in rejected]
    proc.add_dead_letters(letters)
    assert store.outbox(cfg.topics.events, {0}) == []  # nothing before the commit
    proc.checkpoint()
    rows = store.outbox(cfg.topics.events, {0, 1})
    assert [r.letter for r in rows] == letters and all(r.forwarding_from is None for r in rows)
    assert rows[1].letter.truncated and rows[1].letter.size == 200_000
    store.mark_outbox(letters[:1], forwarding_from=5)
    assert [r.forwarding_from for r in store.outbox(cfg.topics.events, {0})] == [5, None]
    store.mark_outbox(letters, forwarded=True)
    assert store.outbox(cfg.topics.events, {0}) == []
    store.compact(cfg.topics.events, cfg.graph.window)  # forwarded rows are dropped
    assert store.offsets(cfg.topics.events) == {0: 4}


def test_users_evicted_after_their_ttl_are_reloaded_and_count_exactly_as_without_eviction(cfg, events):
    from dataclasses import replace

    users, items, times, values, partitions = events
    ends = _ends(partitions)
    evicting = replace(cfg, user_ttl_s=0.0, compact_interval_s=1e-6, data_dir=cfg.data_dir + "/ttl")
    kept = replace(cfg, data_dir=cfg.data_dir + "/kept")
    for name, c in (("ttl", evicting), ("kept", kept)):
        proc = StreamProcessor(c, StateStore(c.store))
        for p in range(N_PARTITIONS):
            proc.assign(p, 0)
        for k in range(1, 11):  # ten checkpoints; with TTL 0 every checkpoint's users leave memory
            _feed(proc, values, partitions, {p: e * k // 10 for p, e in ends.items()}, chunk=53)
            proc.checkpoint()
        state = proc.store.committed(c.topics.events)
        assert state.n_events == len(values)
        assert_counts_equal(state.counts, batch_counts(users, items, times, c.graph))
        if name == "ttl":
            assert proc.n_evicted > 5 * len(np.unique(users))  # users left and came back, many times
            evicted_windows = [proc.store.load_windows(c.topics.events, p, c.graph.window) for p in range(N_PARTITIONS)]
    kept_store = StateStore(kept.store)
    for p, got in enumerate(evicted_windows):
        want = kept_store.load_windows(kept.topics.events, p, kept.graph.window)
        order_g, order_w = np.argsort(got.users), np.argsort(want.users)
        assert np.array_equal(got.users[order_g], want.users[order_w])
        assert np.array_equal(got.positions[order_g], want.positions[order_w])


def test_window_compaction_in_bounded_steps_folds_every_log_once_and_in_order(cfg, events):
    from dataclasses import replace

    users, items, times, values, partitions = events
    cfg = replace(cfg, compact_interval_s=1e9)  # only the calls below compact
    store = StateStore(cfg.store)
    proc = StreamProcessor(cfg, store)
    for p in range(N_PARTITIONS):
        proc.assign(p, 0)
    ends = _ends(partitions)
    for k in range(1, 6):
        _feed(proc, values, partitions, {p: e * k // 5 for p, e in ends.items()})
        proc.checkpoint()
    topic, window = cfg.topics.events, cfg.graph.window
    before = store.load_windows(topic, 0, window)
    steps = 1
    while not store.compact_windows(topic, 0, window, max_events=ends[0] // 4):
        steps += 1
    assert steps > 2  # five logs of ~ends/5 events, at most ~ends/4 per step
    after = store.load_windows(topic, 0, window)
    for field in ("users", "positions"):
        assert np.array_equal(np.sort(getattr(before, field)), np.sort(getattr(after, field)))
    got = dict(zip(after.users.tolist(), (after.flat[a:b].tolist() for a, b in zip(after.ptr[:-1], after.ptr[1:]))))
    mine = partitions == 0
    for u in np.unique(users[mine])[:10].tolist():
        assert got[u] == items[users == u][-window:].tolist()
