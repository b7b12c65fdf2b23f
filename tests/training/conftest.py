"""Fixtures for the training-service tests: synthetic timestamped events fed through the stream
worker's processor (bench/stream_driver.py), a fresh SQLite Feast store, an MLflow SQLite
registry, a tiny model; a real Tansu broker for the tests that need announcements."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bench.stream_driver import StreamDriver
from features.config import StoreConfig
from features.store import FeatureRepo
from g2rec.cluster import ClusterConfig
from g2rec.model import ModelConfig
from g2rec.synth import SynthConfig, synth_interactions
from g2rec.train import TrainConfig
from training.pipeline import PipelineConfig
from registry import RegistryConfig
from training.service import ServiceConfig

_projects = itertools.count()


@dataclass(frozen=True)
class Events:
    users: np.ndarray
    items: np.ndarray
    times: np.ndarray

    def part(self, lo: float, hi: float) -> "Events":
        """The events of this share [lo, hi) of the time span."""
        n = len(self.users)
        s = slice(int(lo * n), int(hi * n))
        return Events(self.users[s], self.items[s], self.times[s])


@pytest.fixture(scope="session")
def events() -> Events:
    inter, _ = synth_interactions(SynthConfig(n_users=300, n_items=150, n_interests=6, mean_history=12, seed=1))
    users = np.repeat(inter.user_ids, inter.lengths())
    items = inter.item_ids[inter.items]
    # Users take turns, so every slice of the span holds events of most users.
    order = np.lexsort((users, inter.times))
    return Events(users[order], items[order], 1_600_000_000 + 10 * np.arange(len(users)))


def service_config(work: Path, driver: StreamDriver, bootstrap: str = "", **over) -> ServiceConfig:
    features = StoreConfig(root=work / "features", project=f"t{next(_projects)}")
    repo = FeatureRepo(features)
    repo.apply()
    repo.close()
    return ServiceConfig(
        work_dir=str(work / "service"), event_log=str(driver.event_log), store_url=driver.cfg.store,
        bootstrap=bootstrap, topic=driver.cfg.topics.events,
        registry=RegistryConfig(tracking_url=f"sqlite:///{work / 'mlflow.db'}", artifacts=str(work / "artifacts")),
        features=features,
        pipeline=PipelineConfig(
            model=ModelConfig(d_model=32, n_layers=1, n_heads=2, dropout=0.1, max_len=20, mode="g2rec",
                              direct_weight=0.5),
            train=TrainConfig(epochs=3, eval_every=1, patience=2, progress=False),
            cluster=ClusterConfig(n_clusters=8, rho=2, iters=40), threads=1),
        finetune=TrainConfig(epochs=2, eval_every=1, patience=1, progress=False),
        eval_users=200, parity_users=100, poll_s=0.5, **over)


@pytest.fixture
def driver(tmp_path):
    d = StreamDriver(tmp_path / "stream", topic=f"ev{next(_projects)}")
    yield d
    d.close()


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory):
    """A Tansu broker for this module's tests, stopped by pid afterwards."""
    from infra import kafka

    broker = kafka.start(log_dir=tmp_path_factory.mktemp("kafka"))
    yield broker
    kafka.stop(broker.pid)
