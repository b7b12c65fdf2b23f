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


def test_ablation_seeds_summarise_per_variant_and_a_changed_variant_starts_over():
    from bench.quality import add_ablation_run

    def entry(seed: int, ndcg: float, over: dict) -> dict:
        return {"seed": seed, "valid_ndcg@10": ndcg, "test": {"ndcg@10": ndcg, "recall@10": 2 * ndcg}, "overrides": over}

    header = {"dataset": "d"}
    f = add_ablation_run(None, header, "K/2", entry(0, 0.1, {"cluster": {"n_clusters": 32}}))
    f = add_ablation_run(f, header, "K/2", entry(1, 0.3, {"cluster": {"n_clusters": 32}}))
    f = add_ablation_run(f, header, "base", entry(0, 0.5, {}))
    assert f["variants"]["K/2"]["seeds"] == [0, 1]
    assert f["variants"]["K/2"]["test_recall@10"] == pytest.approx(0.4)
    assert f["variants"]["K/2"]["std"]["valid_ndcg@10"] == pytest.approx(0.1)
    f = add_ablation_run(f, header, "K/2", entry(2, 0.2, {"cluster": {"n_clusters": 16}}))  # another preset
    assert f["variants"]["K/2"]["seeds"] == [2] and f["variants"]["base"]["seeds"] == [0]


@pytest.mark.parametrize("dataset", ["beauty", "lastfm", "ml-100k"])
def test_every_ablation_variant_is_a_valid_change_of_the_g2rec_preset(dataset):
    from bench.quality import ABLATIONS
    from g2rec.config import override
    from training.presets import preset

    base = preset(dataset, "g2rec")
    for label, alternative in ABLATIONS:
        cfg = override(base, alternative(base), label)
        assert (cfg == base) == (label == "base"), label
