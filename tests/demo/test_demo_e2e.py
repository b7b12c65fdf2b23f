"""The demo end to end on ML-100K: events through the real broker, Feast, the training service,
the registry and the server; a live event changes a user's recommendations, the second cycle
hot-swaps the served model, and no process is left running."""

from __future__ import annotations

import json

import pytest

from demo.run import DemoConfig, run_demo
from g2rec.data import DatasetError, load_dataset

# A small model and budget: this test checks the loop, g2rec bench quality checks quality.
SERVICE = {
    "pipeline": {"model": {"d_model": 32, "n_layers": 1, "n_negatives": 256},
                 "train": {"epochs": 2, "eval_every": 1},
                 "cluster": {"n_clusters": 16, "iters": 30, "auto_resolution": False}},
    "finetune": {"epochs": 1, "eval_every": 1},
    "promote_tolerance": 1.0,  # always promote the second version: the hot swap is what is tested
}


@pytest.mark.integration
@pytest.mark.slow
def test_demo_on_ml100k_updates_live_and_hot_swaps(tmp_path, capsys):
    try:
        load_dataset("ml-100k")
    except DatasetError as e:
        pytest.skip(f"public dataset not present: {e}")
    cfg = DemoConfig(out=str(tmp_path / "demo"), dataset="ml-100k", max_events=30_000, first_share=0.8,
                     train_minutes=0.5, finetune_minutes=0.3, timeout_s=240.0, service=SERVICE)
    result = run_demo(cfg)
    assert result.live_update_s is not None and result.live_update_s < 30
    assert result.hot_swap_ok, result.swap
    assert result.processes_left == 0
    assert len(result.users) == 3 and all(len(u["top10"]) == 10 for u in result.users)
    saved = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert saved["hot_swap_ok"] and saved["processes_left"] == 0
    assert (tmp_path / "demo" / "report.html").is_file()
    assert "v2 (held-out latest event)" in capsys.readouterr().out
