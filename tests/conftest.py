"""Suite-wide settings: one torch thread (the suite shares 2 cores with its own servers, and
OpenMP threads spinning against each other made single tests several times slower); a real
Postgres server shared by the feature store and stream worker tests."""

import itertools
import shutil

import pytest
import torch

torch.set_num_threads(1)

_databases = itertools.count()


@pytest.fixture(scope="session")
def postgres_server():
    """A real Postgres on a free loopback port for the whole session, stopped by pid afterwards."""
    from infra import postgres as infra_postgres

    # Its own temp dir, not pytest's: that one is private to us, and as root the server runs as
    # the `postgres` user, which could not enter it.
    server = infra_postgres.start()
    yield server
    infra_postgres.stop(server.pid)
    shutil.rmtree(server.dir, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_server):
    """A factory of fresh databases on the session's server: name -> SQLAlchemy URL."""
    return lambda name: postgres_server.create_database(f"{name}_{next(_databases)}")
