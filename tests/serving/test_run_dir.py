"""serving/run_dir.py: preparing a run directory for serving (item counts for the fallback)."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from g2rec.errors import DataError, NotFoundError
from serving.run_dir import MANIFEST, TOPK, TOPK_GRAPH, RunConfig, open_run, prepare_run
from tests.serving.conftest import N, tiny_model
from training.pipeline import DataSource, PipelineConfig, save_run


def run_over(tmp_path, run_dir, data: DataSource):
    out = tmp_path / "run"
    save_run(out, PipelineConfig(data=data), tiny_model("items"), None, {}, np.arange(N + 1) * 10, np.zeros(N + 1))
    (out / "item_counts.npy").unlink()  # a run directory written before save_run kept the counts
    for name in ("model.onnx", "model.topk.onnx", "model_config.json"):  # skip the export: only the counts are missing
        shutil.copy(run_dir / name, out / name)
    return out


def test_missing_item_counts_are_counted_from_the_runs_training_split(run_dir, tmp_path):
    # 20 users x 5 events cover items 1..60; the split keeps 3 per user for training.
    events = [(u, (5 * u + j) % N + 1, j) for u in range(20) for j in range(5)]
    pd.DataFrame(events, columns=["user", "item", "timestamp"]).to_csv(tmp_path / "events.csv", index=False)
    out = run_over(tmp_path, run_dir, DataSource("tiny", str(tmp_path / "events.csv"), "csv"))
    prepare_run(out)
    counts = np.load(out / "item_counts.npy")
    assert counts.shape == (N + 1,) and counts[0] == 0 and counts.sum() == 20 * 3
    assert open_run(RunConfig(out)).recommend([[]], k=1)[0].fallback


def test_missing_counts_without_the_dataset_name_the_fix(run_dir, tmp_path):
    out = run_over(tmp_path, run_dir, DataSource("gone", str(tmp_path / "nowhere.csv"), "csv"))
    with pytest.raises(DataError, match="item_counts.npy"):
        prepare_run(out)


def test_a_directory_without_a_model_is_not_a_run(tmp_path):
    with pytest.raises(NotFoundError, match="not a run directory"):
        open_run(RunConfig(tmp_path))


def test_a_run_exported_with_an_older_top_k_graph_is_exported_again(run_dir, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run_dir, out)
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["topk_graph"] == TOPK_GRAPH
    del manifest["topk_graph"]  # what a run served before the cached-tails graph says
    (out / MANIFEST).write_text(json.dumps(manifest))
    (out / TOPK).write_bytes(b"stale")
    prepare_run(out)
    assert json.loads((out / MANIFEST).read_text())["topk_graph"] == TOPK_GRAPH
    assert len(open_run(RunConfig(out)).recommend([[10, 20]], k=3)[0].items) == 3
