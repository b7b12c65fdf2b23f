"""serving/source.py RegistrySource: the registry's champion is what serving loads, and a
promotion swaps it; a registered graph whose sha256 changed is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from g2rec.errors import DataError, NotFoundError
from registry import ModelRegistry, RegistryConfig
from serving.run_dir import open_version
from serving.source import RegistrySource
from tests.serving.conftest import COUNTS, N, tiny_model
from training.export import export_onnx
from training.pipeline import save_model


def register(reg: ModelRegistry, folder, seed: int, profile_version: int) -> int:
    folder.mkdir()
    model = tiny_model("items", seed)
    save_model(model, folder / "model.pt")
    export_onnx(model, folder / "model.onnx")
    np.save(folder / "item_ids.npy", np.arange(N + 1) * 10)
    np.save(folder / "item_counts.npy", COUNTS)
    (folder / "config.json").write_text(json.dumps({"model": model.cfg.to_dict()}))
    (folder / "metrics.json").write_text(json.dumps({"valid_ndcg@10": 0.1}))
    (folder / "curve.png").write_bytes(b"png")
    version = reg.register(folder, f"store/{seed}", seed, profile_version, {}, {"valid_ndcg@10": 0.1}).version
    assert reg.promote(version)
    return version


def test_serves_the_champion_and_follows_promotions(tmp_path):
    reg = ModelRegistry(RegistryConfig(tracking_url=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                       artifacts=str(tmp_path / "artifacts")))
    source = RegistrySource(reg, tmp_path / "cache")
    with pytest.raises(NotFoundError, match="no champion yet"):
        source.current()
    register(reg, tmp_path / "v1", seed=1, profile_version=3)
    first = source.current()
    assert first.profile_version == "3" and source.run_dir().parent == tmp_path / "cache"
    assert source.run_dir().name.startswith("v1-")
    rec = open_version(first)
    assert len(rec.recommend([[10, 20]], k=5)[0].items) == 5
    register(reg, tmp_path / "v2", seed=2, profile_version=4)
    second = source.current()
    assert second.version != first.version and second.profile_version == "4"
    assert source.current() == second  # nothing changed: the same version


def test_a_changed_registered_graph_is_refused(tmp_path):
    reg = ModelRegistry(RegistryConfig(tracking_url=f"sqlite:///{tmp_path / 'mlflow.db'}",
                                       artifacts=str(tmp_path / "artifacts")))
    register(reg, tmp_path / "v1", seed=1, profile_version=1)
    champion = reg.champion()
    champion.onnx_path.write_bytes(champion.onnx_path.read_bytes() + b"\0")
    with pytest.raises(DataError, match="sha256 differs"):
        RegistrySource(reg, tmp_path / "cache").current()
