"""Tiny models and run directories shared by the serving tests (each exported to ONNX once)."""

import shutil

import numpy as np
import pytest
import torch

from g2rec.model import G2RecModel, ModelConfig
from serving.run_dir import RunConfig, open_run
from training.pipeline import DataSource, PipelineConfig, save_run

N, K, MAX_LEN = 60, 5, 12


def tiny_model(mode: str, seed: int = 0, **kw) -> G2RecModel:
    torch.manual_seed(seed)
    m = G2RecModel(ModelConfig(n_items=N, max_len=MAX_LEN, d_model=16, n_layers=1, mode=mode,
                               n_clusters=K if mode == "g2rec" else 0, rho=2 if mode == "g2rec" else 1, top_b=3, **kw))
    if mode == "g2rec":
        w = torch.tensor([[0.6, 0.4]]).repeat(N + 1, 1)
        w[0] = 0
        m.set_profiles(torch.stack([torch.arange(N + 1) % K, (torch.arange(N + 1) + 2) % K], 1), w)
    return m.eval()


# Training counts: item i (dense) was seen i times, so popularity ranks the highest ids first.
COUNTS = np.arange(N + 1, dtype=np.int64)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    """A run directory over original ids 10, 20, ..., 600, with its item counts."""
    out = tmp_path_factory.mktemp("run")
    save_run(out, PipelineConfig(data=DataSource("synth")), tiny_model("items"), None, {}, np.arange(N + 1) * 10, COUNTS)
    open_run(RunConfig(out))  # exports model.onnx once
    return out


@pytest.fixture(scope="session")
def other_run_dir(tmp_path_factory):
    """Another model (seed 1) over the same catalogue: what a retrain or a promotion swaps in."""
    out = tmp_path_factory.mktemp("run2")
    save_run(out, PipelineConfig(data=DataSource("synth")), tiny_model("items", seed=1), None, {}, np.arange(N + 1) * 10,
             COUNTS)
    open_run(RunConfig(out))
    return out


@pytest.fixture(scope="session")
def str_run_dir(run_dir, tmp_path_factory):
    """The same model over string item ids "i1" .. "i60"."""
    out = tmp_path_factory.mktemp("strrun")
    for name in ("model.onnx", "model.topk.onnx", "serving.json", "model_config.json", "item_counts.npy", "config.json",
                 "model.pt"):
        shutil.copy(run_dir / name, out / name)
    np.save(out / "item_ids.npy", np.array([""] + [f"i{i}" for i in range(1, N + 1)], dtype=object), allow_pickle=True)
    return out


@pytest.fixture(scope="session")
def recommender(run_dir):
    return open_run(RunConfig(run_dir))
