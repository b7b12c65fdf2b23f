"""Where the feature store lives: one frozen config, turned into Feast's RepoConfig.

Defaults match features/feature_store.yaml: SQLite online store, file offline store, SQL registry
on SQLite, all under `<root>/data/`. Redis or Postgres online stores are picked by `online`.
Only entry points read the environment (`StoreConfig.from_env`); library code takes a config.

Environment read by `from_env` (all optional):
    G2REC_FEATURES_ROOT   folder holding data/ (default: the features/ package folder)
    G2REC_FEAST_ONLINE    sqlite | redis | postgres
    G2REC_REDIS           Feast Redis connection string, host:port[,db=N,...]
    G2REC_PG_HOST, G2REC_PG_PORT, G2REC_PG_DB, G2REC_PG_USER, G2REC_PG_PASSWORD, G2REC_PG_SSLMODE
    G2REC_FEAST_REGISTRY  SQLAlchemy URL of the Feast registry (default sqlite under data/)
    G2REC_FEATURES_DB     SQLAlchemy URL of the version metadata DB (default sqlite under data/)
    G2REC_HISTORY_LEN     events kept per user in user_recent_history (default 250)
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from g2rec.errors import ConfigError

ONLINE_BACKENDS = ("sqlite", "redis", "postgres")
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class PostgresSettings:
    """Connection to the Postgres online store. sslmode defaults to disable: the local server
    started by infra/postgres.py has no certificate, and Feast's own default is `require`."""

    host: str = "127.0.0.1"
    port: int = 5432
    database: str = "g2rec"
    user: str = "g2rec"
    password: str = "g2rec"
    db_schema: str = "public"
    sslmode: str = "disable"


@dataclass(frozen=True)
class StoreConfig:
    """The g2rec feature store. `root` holds data/ (online.db, registry.db, metadata.db, offline/).

    history_len: how many recent events a user's history keeps in the online store. The default
        is what the G2Rec preset reads (its 50-item window and 200 older items as context), so a
        user served by id is scored on as much history as in training.
    registry_url / metadata_url: SQLAlchemy URLs; None means SQLite files under root/data.
    """

    root: Path = PACKAGE_DIR
    online: str = "sqlite"
    redis: str = "127.0.0.1:6379"
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    registry_url: str | None = None
    metadata_url: str | None = None
    project: str = "g2rec"
    history_len: int = 250

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())
        if self.online not in ONLINE_BACKENDS:
            raise ConfigError(f"online={self.online!r}", f"expected one of {', '.join(ONLINE_BACKENDS)}")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_]*", self.project):
            raise ConfigError(f"project={self.project!r}", "use letters, digits and underscores")
        if self.history_len < 1:
            raise ConfigError(f"history_len={self.history_len}", "must be >= 1")
        if not re.fullmatch(r"[^,:\s]+:\d+(,.*)?", self.redis):
            raise ConfigError(f"redis={self.redis!r}", "expected host:port[,option=value...]")

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def registry(self) -> str:
        return self.registry_url or f"sqlite:///{self.data_dir / 'registry.db'}"

    @property
    def metadata(self) -> str:
        return self.metadata_url or f"sqlite:///{self.data_dir / 'metadata.db'}"

    def online_store(self) -> dict[str, Any]:
        """The `online_store:` block of feature_store.yaml for the chosen backend."""
        if self.online == "sqlite":
            return {"type": "sqlite", "path": str(self.data_dir / "online.db")}
        if self.online == "redis":
            return {"type": "redis", "connection_string": self.redis}
        return {"type": "postgres", **dataclasses.asdict(self.postgres)}

    def feast_yaml_dict(self) -> dict[str, Any]:
        """The whole feature_store.yaml, with absolute paths (valid from any working directory)."""
        return {
            "project": self.project,
            "provider": "local",
            "registry": {"registry_type": "sql", "path": self.registry, "cache_ttl_seconds": 60},
            "online_store": self.online_store(),
            "offline_store": {"type": "file"},
            "entity_key_serialization_version": 3,
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.feast_yaml_dict(), sort_keys=False)

    def repo_config(self):
        """Feast's RepoConfig for this store; repo_path is root, so file sources resolve there."""
        from feast.repo_config import RepoConfig

        self.data_dir.mkdir(parents=True, exist_ok=True)
        return RepoConfig(repo_path=self.root, **self.feast_yaml_dict())

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "StoreConfig":
        """Config from G2REC_* environment variables (see module docstring); overrides win."""
        env = os.environ if env is None else env
        kw: dict[str, Any] = {}
        if "G2REC_FEATURES_ROOT" in env:
            kw["root"] = Path(env["G2REC_FEATURES_ROOT"])
        if "G2REC_FEAST_ONLINE" in env:
            backend = env["G2REC_FEAST_ONLINE"].strip().lower()
            if backend not in ONLINE_BACKENDS:
                raise ConfigError(f"G2REC_FEAST_ONLINE={backend!r}", f"expected one of {', '.join(ONLINE_BACKENDS)}")
            kw["online"] = backend
        if "G2REC_REDIS" in env:
            kw["redis"] = env["G2REC_REDIS"]
        pg: dict[str, Any] = {}
        for var, key in (("G2REC_PG_HOST", "host"), ("G2REC_PG_DB", "database"), ("G2REC_PG_USER", "user"),
                         ("G2REC_PG_PASSWORD", "password"), ("G2REC_PG_SSLMODE", "sslmode")):
            if var in env:
                pg[key] = env[var]
        if "G2REC_PG_PORT" in env:
            if not env["G2REC_PG_PORT"].isdigit():
                raise ConfigError(f"G2REC_PG_PORT={env['G2REC_PG_PORT']!r}", "is not a port number")
            pg["port"] = int(env["G2REC_PG_PORT"])
        if pg:
            kw["postgres"] = PostgresSettings(**pg)
        if "G2REC_FEAST_REGISTRY" in env:
            kw["registry_url"] = env["G2REC_FEAST_REGISTRY"]
        if "G2REC_FEATURES_DB" in env:
            kw["metadata_url"] = env["G2REC_FEATURES_DB"]
        if "G2REC_HISTORY_LEN" in env:
            if not env["G2REC_HISTORY_LEN"].isdigit():
                raise ConfigError(f"G2REC_HISTORY_LEN={env['G2REC_HISTORY_LEN']!r}", "is not a whole number")
            kw["history_len"] = int(env["G2REC_HISTORY_LEN"])
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)
