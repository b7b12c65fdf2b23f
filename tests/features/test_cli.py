"""`g2rec features ...` end to end on a SQLite store."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from cli.main import cli


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["features", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_apply_publish_lookup_and_versions(tmp_path, monkeypatch):
    for var in ("G2REC_FEAST_ONLINE", "G2REC_FEATURES_ROOT", "G2REC_FEATURES_DB", "G2REC_FEAST_REGISTRY"):
        monkeypatch.delenv(var, raising=False)
    root = ["--root", str(tmp_path)]
    assert "item_interest_profile" in _run(*root, "apply")

    first = json.loads(_run(*root, "publish", "--synthetic", "300", "--rho", "3", "--clusters", "20"))
    assert first["version"] == 1 and first["rows"] == 300
    np.savez(tmp_path / "p.npz", clusters=np.array([[0, 0], [5, 6], [7, 1]]),
             weights=np.array([[0, 0], [0.75, 0.25], [0.5, 0.5]], np.float32),
             item_ids=np.array([0, 42, 43]), n_clusters=8, version=9)
    # The version comes from the store (current + 1), not from the file.
    assert json.loads(_run(*root, "publish", "--from", str(tmp_path / "p.npz")))["version"] == 2

    out = json.loads(_run(*root, "lookup", "--items", "42,1"))["profiles"]
    assert out["version"] == 2 and out["missing"] == [1]
    assert out["items"]["42"] == {"clusters": [5, 6], "weights": [0.75, 0.25], "primary_cluster": 5}

    np.save(tmp_path / "proto.npy", np.ones((8, 3), np.float32))
    _run(*root, "publish-prototypes", str(tmp_path / "proto.npy"), "--version", "1", "--profile-version", "2")
    protos = json.loads(_run(*root, "lookup", "--clusters", "7,8"))["prototypes"]
    assert protos["clusters"] == {"7": [1.0, 1.0, 1.0]} and protos["missing"] == [8]

    assert json.loads(_run(*root, "lookup", "--users", "3"))["histories"]["missing"] == [3]
    states = [json.loads(line)["state"] for line in _run(*root, "versions", "--feature-set",
                                                        "item_interest_profile").splitlines()]
    assert states == ["previous", "current"]
    assert "no lock held" in _run(*root, "unlock", "item_interest_profile")


def test_usage_errors_are_clear(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["features", "--root", str(tmp_path), "lookup", "--items", "a,b"])
    assert r.exit_code == 2 and "comma-separated integer ids" in r.output
    r = runner.invoke(cli, ["features", "--root", str(tmp_path), "publish"])
    assert r.exit_code == 2 and "exactly one of --from FILE or --synthetic N" in r.output
