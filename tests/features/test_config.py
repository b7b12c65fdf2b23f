"""StoreConfig: defaults, environment, errors, and agreement with the checked-in YAML files."""

from __future__ import annotations

from pathlib import Path

import pytest
from feast.repo_config import load_repo_config

from features.config import PACKAGE_DIR, StoreConfig


def test_defaults_are_sqlite_online_file_offline_sql_registry(tmp_path):
    c = StoreConfig(root=tmp_path)
    y = c.feast_yaml_dict()
    assert y["online_store"] == {"type": "sqlite", "path": str(tmp_path / "data" / "online.db")}
    assert y["offline_store"] == {"type": "file"}
    assert y["registry"]["registry_type"] == "sql"
    assert y["registry"]["path"] == f"sqlite:///{tmp_path / 'data' / 'registry.db'}"
    assert c.metadata == f"sqlite:///{tmp_path / 'data' / 'metadata.db'}"


def test_environment_picks_backend_and_servers(tmp_path):
    env = {"G2REC_FEATURES_ROOT": str(tmp_path), "G2REC_FEAST_ONLINE": "Redis", "G2REC_REDIS": "127.0.0.1:7000"}
    c = StoreConfig.from_env(env)
    assert c.root == tmp_path and c.online_store() == {"type": "redis", "connection_string": "127.0.0.1:7000"}
    c = StoreConfig.from_env({"G2REC_FEAST_ONLINE": "postgres", "G2REC_PG_PORT": "5555"}, root=tmp_path)
    pg = c.online_store()
    assert pg["type"] == "postgres" and pg["port"] == 5555 and pg["sslmode"] == "disable"
    assert StoreConfig.from_env({"G2REC_FEAST_ONLINE": "redis"}, online="sqlite").online == "sqlite"


def test_history_length_comes_from_the_environment_and_covers_what_the_presets_read(tmp_path):
    from training.presets import preset

    assert StoreConfig.from_env({"G2REC_HISTORY_LEN": "80"}, root=tmp_path).history_len == 80
    read = max(preset(d, m).model.input_len for d in ("beauty", "lastfm", "ml-100k") for m in ("items", "g2rec"))
    assert StoreConfig(root=tmp_path).history_len == read == 250


def test_bad_settings_name_themselves(tmp_path):
    with pytest.raises(ValueError, match="G2REC_FEAST_ONLINE"):
        StoreConfig.from_env({"G2REC_FEAST_ONLINE": "dynamo"})
    with pytest.raises(ValueError, match="G2REC_PG_PORT"):
        StoreConfig.from_env({"G2REC_PG_PORT": "five"})
    with pytest.raises(ValueError, match="G2REC_HISTORY_LEN"):
        StoreConfig.from_env({"G2REC_HISTORY_LEN": "-3"})
    with pytest.raises(ValueError, match="history_len=0"):
        StoreConfig.from_env({"G2REC_HISTORY_LEN": "0"})
    with pytest.raises(ValueError, match="online="):
        StoreConfig(root=tmp_path, online="mongo")
    with pytest.raises(ValueError, match="redis="):
        StoreConfig(root=tmp_path, redis="localhost")
    with pytest.raises(ValueError, match="project="):
        StoreConfig(root=tmp_path, project="a-b")


def _loaded(name: str, monkeypatch, **env) -> dict:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rc = load_repo_config(PACKAGE_DIR, PACKAGE_DIR / name)
    return {"project": rc.project, "online": rc.online_store.type, "offline": rc.offline_store.type,
            "registry": rc.registry.registry_type, "key_version": rc.entity_key_serialization_version}


@pytest.mark.parametrize("name,online,env", [
    ("feature_store.yaml", "sqlite", {}),
    ("feature_store.redis.yaml", "redis", {"G2REC_REDIS": "127.0.0.1:6379"}),
    ("feature_store.postgres.yaml", "postgres", {"G2REC_PG_HOST": "127.0.0.1", "G2REC_PG_PORT": "5432"}),
])
def test_checked_in_yaml_matches_the_python_config(name, online, env, monkeypatch):
    ours = StoreConfig(online=online).feast_yaml_dict()
    assert _loaded(name, monkeypatch, **env) == {
        "project": ours["project"], "online": ours["online_store"]["type"], "offline": "file",
        "registry": "sql", "key_version": ours["entity_key_serialization_version"],
    }


def test_feastignore_leaves_only_definition_modules_to_scan():
    from feast.repo_operations import get_repo_files

    scanned = {Path(p).name for p in get_repo_files(PACKAGE_DIR)}
    assert scanned == {"entities.py", "data_sources.py", "feature_views.py", "feature_services.py"}
