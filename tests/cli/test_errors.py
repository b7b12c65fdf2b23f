"""Each command, given a typical mistake, fails with one line naming the input, and status 2."""

from __future__ import annotations

import json

import click
from click.testing import CliRunner

from cli.main import cli
from g2rec.errors import G2RecError
from infra.process import free_port


def _fails(args: list[str], *fragments: str) -> str:
    result = CliRunner().invoke(cli, args)
    out = result.output.strip()
    assert result.exit_code == 2, (result.exit_code, out, result.exception)
    assert "\n" not in out and out.startswith("Error: ") and "Traceback" not in out, out
    for fragment in fragments:
        assert fragment in out, (fragment, out)
    return out


def test_missing_dataset(tmp_path):
    _fails(["--data-root", str(tmp_path), "train", "--dataset", "ml-100k", "--out", str(tmp_path / "r")],
           "dataset 'ml-100k' not found", str(tmp_path / "ml-100k"))


def test_publish_before_apply(tmp_path, monkeypatch):
    for var in ("G2REC_FEAST_ONLINE", "G2REC_FEATURES_ROOT", "G2REC_FEATURES_DB", "G2REC_FEAST_REGISTRY"):
        monkeypatch.delenv(var, raising=False)
    _fails(["features", "--root", str(tmp_path), "publish", "--synthetic", "10"],
           "is not registered", "fix: run `g2rec features apply` first")


def test_serve_on_a_directory_without_a_model(tmp_path):
    _fails(["serve", str(tmp_path)], f"{tmp_path}: not a run directory")


def test_broker_not_reachable():
    bootstrap = f"127.0.0.1:{free_port()}"
    _fails(["replay", "--bootstrap", bootstrap, "--source", "synthetic", "--events", "100"],
           f"no Kafka broker answers on {bootstrap}")


def test_bad_config_key(tmp_path):
    path = tmp_path / "over.json"
    path.write_text(json.dumps({"model": {"dropot": 0.1}}))
    _fails(["train", "--dataset-path", str(path), "--format", "csv", "--config", str(path), "--out", str(tmp_path / "r")],
           f"{path}: model: unknown key 'dropot'", "dropout")


def test_debug_shows_the_original_error(tmp_path, monkeypatch):
    result = CliRunner().invoke(cli, ["--debug", "serve", str(tmp_path)])
    assert isinstance(result.exception, G2RecError)
    monkeypatch.setenv("G2REC_DEBUG", "1")
    assert isinstance(CliRunner().invoke(cli, ["serve", str(tmp_path)]).exception, G2RecError)


def test_every_exception_the_project_defines_belongs_to_the_family():
    import importlib
    import inspect
    import pkgutil

    outside = []
    for package in ("g2rec", "streaming", "features", "training", "serving", "infra", "cli"):
        for info in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
            module = importlib.import_module(info.name)
            for name, obj in inspect.getmembers(module, inspect.isclass):
                if obj.__module__ == module.__name__ and issubclass(obj, BaseException) \
                        and not issubclass(obj, (G2RecError, click.ClickException)):
                    outside.append(f"{module.__name__}.{name}")
    assert outside == []
