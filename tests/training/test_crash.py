"""SIGKILL the training service in the middle of each stage, restart it: the cycle is resumed or
redone, the profile version and the champion are whole, and no version is promoted twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from features.lookup import FeatureLookup
from features.publish import PROFILES
from features.store import FeatureRepo
from g2rec.config import to_mapping
from training.journal import Journal
from registry import ModelRegistry
from training.service import FAULT_STAGES

from .conftest import service_config

REPO = Path(__file__).resolve().parents[2]


def _run_service(config: Path, fault: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "G2REC_TRAIN_FAULT"}
    env.update(PYTHONPATH=str(REPO), **({"G2REC_TRAIN_FAULT": fault} if fault else {}))
    return subprocess.run([sys.executable, "-m", "cli.main", "train-service", "--config", str(config), "--once"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.integration
@pytest.mark.parametrize("stage", FAULT_STAGES)
def test_killed_in_a_stage_then_restarted_promotes_the_version_exactly_once(stage, events, tmp_path, driver):
    part = events.part(0.0, 0.6)
    driver.feed(part.users, part.items, part.times)
    driver.snapshot(announce=False)
    cfg = service_config(tmp_path, driver)
    config = tmp_path / "service.json"
    config.write_text(json.dumps(to_mapping(cfg), default=str))

    killed = _run_service(config, stage)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert f'"fault_injection", "stage": "{stage}"' in killed.stderr
    again = _run_service(config, None)
    assert again.returncode == 0, again.stderr[-3000:]

    [cycle] = Journal(f"sqlite:///{Path(cfg.work_dir) / 'journal.db'}").all()
    assert (cycle.stage, cycle.outcome, cycle.attempts) == ("done", "promoted", 2)
    registry = ModelRegistry(cfg.registry)
    [version] = registry.versions()  # registered once, even when killed right after registering
    assert registry.champion().version == version.version == cycle.model_version
    assert registry.promoted(version.version)
    assert version.onnx_sha256 and version.onnx_path.is_file()
    repo = FeatureRepo(cfg.features)
    try:
        assert FeatureLookup(repo).current_version() == 0 == cycle.profile_version
        assert repo.versions.lock_holder(PROFILES) is None
        assert [r["state"] for r in repo.versions.history(PROFILES)] == ["current"]
    finally:
        repo.close()
