"""Freshness (bench/serve_freshness.py): events produced on a real broker reach POST /recommend
through `g2rec stream --sink feast` and `g2rec serve --features`; the lag arithmetic."""

import numpy as np
import pytest

from bench.serve_freshness import FreshnessConfig, freshness_figures, measure_freshness


def test_an_event_counts_from_the_first_answer_whose_history_holds_it():
    cfg = FreshnessConfig(users=1, rate=10, seconds=2, watched_every_s=1)
    rows = np.array([(0.1, 7, 0, 0.01), (0.3, 7, 1, 0.01), (1.2, 7, 1, 0.01), (1.5, 7, 2, 0.03), (2.0, 7, 2, 0.01)])
    out = freshness_figures({7: [0.0, 1.0, 1.9]}, rows, cfg, 10.0)
    assert out["freshness_events"] == 2 and out["freshness_not_seen"] == 1
    assert out["freshness_max_s"] == pytest.approx(0.5) and out["freshness_p50_s"] == pytest.approx(0.4)
    assert out["freshness_poll_period_s"] == pytest.approx(0.475)


@pytest.mark.integration
def test_events_produced_on_kafka_reach_recommend_for_their_users(run_dir, tmp_path):
    cfg = FreshnessConfig(users=3, rate=30, seconds=3, watched_every_s=0.5, pollers=1, partitions=2,
                          background_users=20, timeout_s=90)
    out = measure_freshness(run_dir, tmp_path / "fresh", cfg)
    assert out["freshness_not_seen"] == 0 and out["freshness_events"] == 3 * 6, out
    assert 0 < out["freshness_p50_s"] <= out["freshness_p99_s"] < 10, out
