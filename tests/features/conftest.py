"""Fixtures for the feature store tests: a real Redis server on a free loopback port (started once
per session, stopped at the end; Postgres comes from tests/conftest.py) and a freshly applied
store per test."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from features.config import PostgresSettings, StoreConfig
from features.store import FeatureRepo

_projects = itertools.count()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from infra import redis as infra_redis

    server = infra_redis.start(data_dir=tmp_path_factory.mktemp("redis"))
    yield server
    infra_redis.stop(server.pid)


def make_config(backend: str, root: Path, request) -> StoreConfig:
    """A store of `backend` under root; Redis and Postgres get a project of their own, so tests
    sharing one server never see each other's rows."""
    project = f"t{next(_projects)}"
    if backend == "sqlite":
        return StoreConfig(root=root, project=project)
    if backend == "redis":
        server = request.getfixturevalue("redis_server")
        return StoreConfig(root=root, online="redis", redis=server.address, project=project)
    if backend == "postgres":
        server = request.getfixturevalue("postgres_server")
        pg = PostgresSettings(port=server.port, user=server.user, password=server.password,
                              database=server.database)
        return StoreConfig(root=root, online="postgres", postgres=pg, project=project)
    raise ValueError(backend)


BACKENDS = [
    "sqlite",
    pytest.param("redis", marks=pytest.mark.integration),
    pytest.param("postgres", marks=pytest.mark.integration),
]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def config(backend, tmp_path, request) -> StoreConfig:
    return make_config(backend, tmp_path, request)


@pytest.fixture
def repo(config):
    repo = FeatureRepo(config)
    repo.apply()
    yield repo
    repo.close()
