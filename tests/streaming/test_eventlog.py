"""The Parquet event log: written before each commit, read back once per committed event."""

import numpy as np
import pytest

from g2rec.data import from_events
from streaming.eventlog import EventLogWriter, LoggedEvents, read_events, read_histories
from tests.streaming.conftest import N_PARTITIONS, ends as _ends, feed as _feed, make_events, owner_of_all

DAY = 86400.0


@pytest.fixture
def events():
    """Events over ~3 days, so ranges span several day folders."""
    return make_events(n=2000, span_s=3 * DAY, seed=1, float_times=True)


def test_rows_past_the_committed_offsets_are_not_read_as_committed(cfg, events):
    users, items, times, values, partitions = events
    proc = owner_of_all(cfg)
    _feed(proc, values, partitions, {p: 100 for p in range(N_PARTITIONS)})
    proc.checkpoint()
    _feed(proc, values, partitions, {p: 200 for p in range(N_PARTITIONS)})
    proc.event_log.write(proc.prepare_checkpoint().events)  # written, not committed
    assert read_events(cfg.event_log_path).num_rows == 200 * N_PARTITIONS
    committed = proc.store.offsets(cfg.topics.events)
    table = read_events(cfg.event_log_path, committed=committed)
    assert table.num_rows == 100 * N_PARTITIONS and table["kafka_offset"].to_numpy().max() == 99


def test_histories_of_a_time_range_are_the_batch_interactions_of_those_events(cfg, events):
    users, items, times, values, partitions = events
    proc = owner_of_all(cfg)
    _feed(proc, values, partitions, _ends(partitions))
    proc.checkpoint()
    start, end = times[0] + DAY / 2, times[0] + 2 * DAY
    inter = read_histories(cfg.event_log_path, start, end)
    sel = (times >= start) & (times < end)
    want = from_events(users[sel], items[sel], np.floor(times[sel]).astype(np.int64))
    for name in ("user_ptr", "items", "times", "user_ids", "item_ids"):
        assert np.array_equal(getattr(inter, name), getattr(want, name)), name


def _day_batch(partition: int, day: int, n: int) -> LoggedEvents:
    t = 1_600_000_000 - 1_600_000_000 % DAY + day * DAY + np.arange(n, dtype=np.float64)
    offsets = np.arange(day * 1000, day * 1000 + n, dtype=np.int64)
    return LoggedEvents(partition, int(offsets[0]), int(offsets[-1]) + 1, offsets, offsets % 7, offsets % 11, t)


def test_retention_drops_the_oldest_days_by_age_or_size(tmp_path):
    by_age = EventLogWriter(tmp_path / "age", retention_days=2, retention_every_s=0)
    by_age.write([_day_batch(0, d, 50) for d in range(5)])
    assert sorted(p.name for p in (tmp_path / "age").iterdir()) == \
        ["date=2020-09-15", "date=2020-09-16", "date=2020-09-17"]
    by_size = EventLogWriter(tmp_path / "size", retention_bytes=1, retention_every_s=0)
    by_size.write([_day_batch(1, d, 50) for d in range(3)])
    assert [p.name for p in (tmp_path / "size").iterdir()] == ["date=2020-09-15"]  # the newest day stays
    kept = EventLogWriter(tmp_path / "all")
    kept.write([_day_batch(0, d, 5) for d in range(4)])
    assert read_events(tmp_path / "all").num_rows == 20  # default: keep everything
