import json

import numpy as np
import pytest

from g2rec.graph import GraphConfig
from streaming.config import StreamConfig, TopicConfig, load_stream_config, stream_config_from_mapping
from streaming.models import encode_event
from streaming.processor import StreamProcessor
from streaming.snapshots import dense_counts
from streaming.store import StateStore
from tests.streaming.conftest import batch_counts


def test_config_files_are_strict_and_name_the_file(tmp_path):
    path = tmp_path / "stream.json"
    path.write_text(json.dumps({"bootstrap": "h:1", "graph": {"r": 8, "window": 30}, "topics": {"events": "ev"}}))
    cfg = load_stream_config(path, max_batch=5)
    assert (cfg.bootstrap, cfg.r, cfg.graph.window, cfg.max_batch) == ("h:1", 8, 30, 5)
    assert (cfg.topics.dead_letters, cfg.topics.snapshots) == ("ev-dlq", "ev-snapshots")
    path.write_text(json.dumps({"graph": {"r": 8, "windw": 30}}))
    with pytest.raises(ValueError, match=r"stream.json: graph: unknown key 'windw'"):
        load_stream_config(path)
    with pytest.raises(ValueError, match="r must be fixed"):
        stream_config_from_mapping({"graph": {"r": None}})
    with pytest.raises(ValueError, match="three different topics"):
        TopicConfig(events="a", dead_letters="a")


def test_app_wires_the_topics_service_and_timer_without_connecting(tmp_path):
    from streaming.app import create_app

    cfg = StreamConfig(data_dir=str(tmp_path), topics=TopicConfig(events="ev"), snapshot_interval_s=7)
    app = create_app(cfg)
    assert app.dead_letters.get_topic_name() == "ev-dlq"
    assert app.snapshot_announcements.get_topic_name() == "ev-snapshots"
    assert [s.__name__ for s in app._extra_services] == ["Ingest"]
    assert app.conf.web_enabled is False
    assert app.conf.broker_session_timeout == 6.0


def _processor(tmp_path, **kw):
    cfg = StreamConfig(data_dir=str(tmp_path), graph=GraphConfig(r=4, window=5), **kw)
    proc = StreamProcessor(cfg, StateStore(cfg.store))
    proc.assign(0, 0)
    return cfg, proc


def test_decay_boosts_by_event_time_and_snapshots_decay_to_the_latest_event(tmp_path):
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 20, 400), rng.integers(0, 30, 400)
    cfg, proc = _processor(tmp_path, half_life_s=100.0, time_origin=1000.0)
    t = 1000.0 + 100.0  # one half-life after the origin: every increment is stored doubled
    proc.process(0, list(range(400)), [encode_event(f"e{k}", u, i, t) for k, (u, i) in
                                       enumerate(zip(users.tolist(), items.tolist()))])
    proc.checkpoint()
    state = proc.store.committed(cfg.topics.events)
    want = batch_counts(users, items, np.full(400, 1100), cfg.graph)
    got_a, got_b, got_w = state.counts.pairs()
    assert np.array_equal(got_w, 2 * want.pairs()[2])
    dense, item_ids = dense_counts(state, cfg)  # decayed to t = 1100: back to plain counts
    a, b, w = dense.pairs()
    assert np.array_equal(item_ids[a], got_a) and np.array_equal(w, want.pairs()[2])


def test_timestamps_beyond_the_decay_range_are_rejected_not_fatal(tmp_path):
    cfg, proc = _processor(tmp_path, half_life_s=1.0, time_origin=0.0)
    rejected = proc.process(0, [0, 1], [encode_event("a", 1, 2, 10.0), encode_event("b", 1, 3, 5000.0)])
    assert [(r.index, "too far from time_origin" in r.reason) for r in rejected] == [(1, True)]
    assert proc.has_pending() and proc.next_offset[0] == 2  # the rejected event is consumed too
