import json
import pytest

from bench.quality import merge_runs, summarise
from g2rec.metrics import METRIC_NAMES


def fake_run(seed: int, ndcg: float) -> dict:
    metrics = {k: ndcg for k in METRIC_NAMES}
    return {"seed": seed, "test": {"masked": metrics, "unmasked": metrics}, "valid": {"masked": metrics},
            "train_seconds": 1.0, "best_epoch": 3, "params": 10, "extra": {}}


def test_seeds_run_in_separate_processes_summarise_as_one():
    first = summarise([fake_run(0, 0.1), fake_run(1, 0.2)])
    second = summarise([fake_run(2, 0.3), fake_run(1, 0.4)])  # seed 1 again: the newer run wins
    merged = merge_runs(first, second)
    assert merged["seeds"] == [0, 1, 2]
    assert merged["ndcg@10"] == pytest.approx((0.1 + 0.4 + 0.3) / 3)
    assert merged == summarise([fake_run(0, 0.1), fake_run(1, 0.4), fake_run(2, 0.3)])


def test_update_json_rewrites_from_the_old_contents(tmp_path):
    from bench.quality import update_json

    path = tmp_path / "r.json"
    update_json(path, lambda old: {"seen": old})
    update_json(path, lambda old: {"seen": old})
    assert json.loads(path.read_text()) == {"seen": {"seen": None}}


def test_epoch_cost_builds_g2rec_from_its_preset_with_profiles():
    from bench.epoch_cost import _model

    m = _model("ml-100k", "g2rec", n_items=40, seed=0)
    assert m.fused and m.cfg.n_clusters == 64 and m.prof_clusters.shape == (41, m.cfg.rho)
    assert float(m.prof_weights[0].sum()) == 0.0 and float(m.prof_weights[1].sum()) == pytest.approx(1.0)
