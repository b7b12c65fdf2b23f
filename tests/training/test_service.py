"""The training service against real components: the stream worker's processor and snapshots, a
Tansu broker for announcements, Feast on SQLite, MLflow's registry on SQLite."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from bench.stream_driver import StreamDriver
from features.publish import PROFILES
from features.store import FeatureRepo
from g2rec.ranking import pad_left
from training.pipeline import load_model
from training.service import TrainService
from training.warm import dense_ids

from .conftest import service_config


def _eager_vs_onnx(version, histories_raw: list[np.ndarray]) -> float:
    model = load_model(version.model_path)
    dense = [dense_ids(version.item_ids(), h) for h in histories_raw]
    x = pad_left([h[h > 0][-model.cfg.max_len:] for h in dense], model.cfg.max_len)
    with torch.no_grad():
        eager = model.score(torch.from_numpy(x)).numpy()
    onnx = ort.InferenceSession(str(version.onnx_path), providers=["CPUExecutionProvider"]).run(
        ["scores"], {"history": x})[0]
    return float(np.abs(eager[:, 1:] - onnx[:, 1:]).max())


@pytest.mark.integration
def test_two_announced_snapshots_give_two_promoted_versions_whose_onnx_matches_eager(events, tmp_path, kafka_broker):
    driver = StreamDriver(tmp_path / "stream", topic="loop-events", bootstrap=kafka_broker.bootstrap)
    service = TrainService(service_config(tmp_path, driver, kafka_broker.bootstrap))
    try:
        for n, (lo, hi) in enumerate([(0.0, 0.6), (0.6, 1.0)], start=1):
            part = events.part(lo, hi)
            driver.feed(part.users, part.items, part.times)
            driver.snapshot()  # announced on the broker only
            assert service.poll_kafka(10.0) == 1
            [cycle] = service.run_pending()
            assert cycle.outcome == "promoted", cycle.reason
            assert cycle.profile_version == n - 1 and cycle.model_version == n
            assert service.poll_kafka(0.5) == 0  # the same announcement again is not a new snapshot
        versions = service.registry.versions()
        assert [v.version for v in versions] == [1, 2]
        assert service.registry.champion().version == 2
        assert [c.full_retrain for c in service.journal.all()] == [1, 0]  # the second one fine-tuned
        assert service.lookup.current_version() == 1
        users = np.unique(events.users)[:50]
        histories = [events.items[events.users == u] for u in users]
        # The fine-tune kept the first model's interest vocabulary (profile version 0, while Feast
        # serves version 1): the same profile rows for every item the first model knew.
        assert [v.profile_version for v in versions] == [0, 0]
        first, second = (load_model(v.model_path) for v in versions)
        rows = torch.from_numpy(dense_ids(versions[1].item_ids(), versions[0].item_ids()[1:]))
        assert torch.equal(second.prof_clusters[rows], first.prof_clusters[1:])
        for v in versions:
            assert _eager_vs_onnx(v, histories) <= 1e-4
            assert v.metrics["gate"]["ndcg@10"] > 0
            assert v.onnx_path.is_file() and (v.onnx_path.parent / "curve.png").is_file()
    finally:
        service.close()
        driver.close()


def _first_cycle(events, tmp_path, driver) -> TrainService:
    part = events.part(0.0, 0.6)
    driver.feed(part.users, part.items, part.times)
    driver.snapshot(announce=False)
    service = TrainService(service_config(tmp_path, driver))
    service.scan_store()
    [cycle] = service.run_pending()
    assert cycle.outcome == "promoted", cycle.reason
    return service


def _assert_unchanged(service: TrainService) -> None:
    assert service.registry.champion().version == 1
    assert [v.version for v in service.registry.versions()] == [1]
    assert service.lookup.current_version() == 0


def _next_snapshot(events, driver, service: TrainService, lo: float = 0.6, hi: float = 0.8):
    part = events.part(lo, hi)
    driver.feed(part.users, part.items, part.times)
    info = driver.snapshot(announce=False)
    assert service.scan_store() == 1
    return info


def test_corrupt_or_missing_snapshot_is_skipped_and_the_service_keeps_going(events, tmp_path, driver, caplog):
    import shutil

    service = _first_cycle(events, tmp_path, driver)
    try:
        info = _next_snapshot(events, driver, service)
        (driver.cfg.snapshots / f"{info.snapshot_id:08d}" / "edges.parquet").write_bytes(b"not parquet")
        [cycle] = service.run_pending()
        assert cycle.outcome == "skipped" and "cannot be read" in cycle.reason
        _assert_unchanged(service)
        info = _next_snapshot(events, driver, service, 0.8, 0.9)
        shutil.rmtree(driver.cfg.snapshots / f"{info.snapshot_id:08d}")
        [cycle] = service.run_pending()
        assert cycle.outcome == "skipped" and "no edges.parquet" in cycle.reason
        _assert_unchanged(service)
        assert '"event": "cycle_skipped"' in caplog.text
        _next_snapshot(events, driver, service, 0.9, 1.0)
        [cycle] = service.run_pending()  # a good snapshot after the bad ones is trained as usual
        assert cycle.outcome in ("promoted", "kept") and cycle.model_version == 2
    finally:
        service.close()


def test_empty_event_log_is_skipped(events, tmp_path, driver):
    service = _first_cycle(events, tmp_path, driver)
    try:
        _next_snapshot(events, driver, service)
        service.cfg = replace(service.cfg, event_log=str(tmp_path / "empty"))
        [cycle] = service.run_pending()
        assert cycle.outcome == "skipped" and "no events" in cycle.reason
        _assert_unchanged(service)
    finally:
        service.close()


def test_snapshot_with_no_item_in_common_with_the_champion_is_skipped(events, tmp_path, driver):
    service = _first_cycle(events, tmp_path, driver)
    try:
        part = events.part(0.6, 1.0)
        driver.feed(part.users, part.items + 10_000, part.times)  # a catalogue the champion never saw
        other = StreamDriver(tmp_path / "other", topic="other-events")
        other.feed(part.users, part.items + 10_000, part.times)
        info = other.snapshot(announce=False)
        service.note(other.store.store_id, info.snapshot_id, info.path, driver.store.committed(
            driver.cfg.topics.events).offsets)
        service.cfg = replace(service.cfg, event_log=str(other.event_log))
        [cycle] = service.run_pending()
        assert cycle.outcome == "skipped" and "shares no item" in cycle.reason
        _assert_unchanged(service)
    finally:
        service.close()


def test_a_snapshot_seen_in_the_store_table_and_announced_is_handled_once(events, tmp_path, driver):
    service = _first_cycle(events, tmp_path, driver)
    try:
        info = _next_snapshot(events, driver, service)
        assert not service.note(info.store_id, info.snapshot_id, info.path, info.partition_offsets())
        assert service.scan_store() == 0
        service.run_pending()
        assert service.run_pending() == []
        assert len(service.journal.all()) == 2
    finally:
        service.close()


def test_only_the_newest_of_several_pending_snapshots_is_trained(events, tmp_path, driver):
    service = _first_cycle(events, tmp_path, driver)
    try:
        _next_snapshot(events, driver, service, 0.6, 0.8)
        _next_snapshot(events, driver, service, 0.8, 1.0)
        [cycle] = service.run_pending()
        assert cycle.snapshot_id == 3 and cycle.model_version == 2
        outcomes = {c.snapshot_id: c.outcome for c in service.journal.all()}
        assert outcomes[2] == "superseded"
        repo = FeatureRepo(service.cfg.features)
        assert repo.versions.lock_holder(PROFILES) is None
        repo.close()
    finally:
        service.close()
