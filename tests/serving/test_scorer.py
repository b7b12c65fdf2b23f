"""serving/scorer.py: eager vs ONNX parity, ranking, provider choice and the model version."""

import numpy as np
import pytest
import torch

from g2rec.errors import ConfigError
from g2rec.ranking import pad_left
from serving.scorer import OnnxScorer, ScorerConfig, model_version
from tests.serving.conftest import MAX_LEN, N, tiny_model
from training.export import export_onnx, export_topk


@pytest.fixture(scope="module", params=["items", "g2rec"])
def exported(request, tmp_path_factory):
    m = tiny_model(request.param)
    path = export_onnx(m, tmp_path_factory.mktemp(request.param) / "model.onnx")
    export_topk(export_onnx(m, path.with_name("model.probs.onnx"), probs=True), path.with_name("model.topk.onnx"))
    return m, path


def test_the_top_k_graph_in_length_chunks_matches_the_dense_reference(exported):
    _, path = exported
    scorer = OnnxScorer(ScorerConfig(str(path), str(path.with_name("model.topk.onnx")), max_len=MAX_LEN, chunk=4))
    rng = np.random.default_rng(1)
    hist = [rng.integers(1, N + 1, size=rng.integers(1, 3 * MAX_LEN)) for _ in range(11)]
    excludes = [np.concatenate([h, rng.integers(1, N + 1, size=3)]) for h in hist]
    for k in (1, 10, N + 5):
        for fast, ref in zip(scorer.recommend(hist, k, excludes), scorer.recommend_reference(hist, k, excludes)):
            assert np.array_equal(fast.items, ref.items)
            np.testing.assert_allclose(fast.scores, ref.scores, atol=1e-5)


def test_onnx_reproduces_eager_scores_for_any_batch_and_length(exported):
    m, path = exported
    scorer = OnnxScorer(ScorerConfig(str(path), max_len=MAX_LEN))
    rng = np.random.default_rng(0)
    for B, T in [(1, 1), (3, 5), (7, 12)]:
        hist = [rng.integers(1, N + 1, size=rng.integers(1, T + 1)) for _ in range(B)]
        eager = m.score(torch.from_numpy(pad_left(hist, max(len(h) for h in hist)))).numpy()
        onnx = scorer.scores(hist)
        finite = np.isfinite(eager)
        assert np.array_equal(finite, np.isfinite(onnx))
        np.testing.assert_allclose(onnx[finite], eager[finite], atol=1e-4)


def test_recommendations_exclude_history_and_are_sorted(exported):
    _, path = exported
    scorer = OnnxScorer(ScorerConfig(str(path), max_len=MAX_LEN))
    hist = [np.array([1, 2, 3]), np.array([4])]
    for h, rec in zip(hist, scorer.recommend(hist, k=5)):
        assert len(rec.items) == 5 and not set(rec.items) & set(h) and 0 not in rec.items
        assert np.all(np.diff(rec.scores) <= 0)


def test_k_beyond_the_catalogue_returns_every_unseen_item_once(exported):
    _, path = exported
    rec = OnnxScorer(ScorerConfig(str(path), max_len=MAX_LEN)).recommend([np.array([1, 2])], k=10**9)[0]
    assert sorted(rec.items.tolist()) == list(range(3, N + 1)) and np.isfinite(rec.scores).all()


def test_histories_longer_than_max_len_score_as_their_most_recent_items(exported):
    _, path = exported
    scorer = OnnxScorer(ScorerConfig(str(path), max_len=MAX_LEN))
    long = np.arange(1, 3 * MAX_LEN + 1) % N + 1
    np.testing.assert_allclose(scorer.scores([long]), scorer.scores([long[-MAX_LEN:]]), atol=1e-6)


def test_cpu_is_the_default_provider_and_unknown_providers_are_config_errors(exported):
    _, path = exported
    assert OnnxScorer(ScorerConfig(str(path))).providers == ["CPUExecutionProvider"]
    assert "CPUExecutionProvider" in OnnxScorer(ScorerConfig(str(path), provider="auto")).providers
    with pytest.raises(ConfigError, match="provider"):
        OnnxScorer(ScorerConfig(str(path), provider="tpu"))


def test_model_version_is_a_sha256_prefix_of_the_file(exported, tmp_path):
    _, path = exported
    v = model_version(path)
    assert len(v) == 12 and int(v, 16) >= 0
    (tmp_path / "other.onnx").write_bytes(path.read_bytes() + b"\0")
    assert model_version(tmp_path / "other.onnx") != v


def _g2rec(positions: str, direct_weight: float, layout: str = "interleaved") -> torch.nn.Module:
    m = tiny_model("g2rec", layout=layout)
    object.__setattr__(m.cfg, "positions", positions)  # a frozen config; these two change no weight
    object.__setattr__(m.cfg, "direct_weight", direct_weight)
    return m


@pytest.mark.parametrize("layout", ["interleaved", "fused"])
@pytest.mark.parametrize("positions,direct_weight", [("end", 0.0), ("start", 0.0), ("end", 0.9), ("start", 0.98)])
def test_score_probs_is_exp_of_score_for_every_position_scheme_and_mixture(positions, direct_weight, layout):
    m = _g2rec(positions, direct_weight, layout)
    rng = np.random.default_rng(2)
    hist = pad_left([rng.integers(1, N + 1, size=rng.integers(1, MAX_LEN + 1)) for _ in range(9)], MAX_LEN)
    ref, fast = m.score(torch.from_numpy(hist)).exp(), m.score_probs(torch.from_numpy(hist))
    assert fast[:, 0].eq(0).all()
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("layout", ["interleaved", "fused"])
def test_the_served_graph_with_the_direct_head_mixed_in_matches_the_dense_reference(tmp_path, layout):
    m = _g2rec("start", 0.9, layout)
    dense = export_onnx(m, tmp_path / "model.onnx")
    topk = export_topk(export_onnx(m, tmp_path / "model.probs.onnx", probs=True), tmp_path / "model.topk.onnx")
    scorer = OnnxScorer(ScorerConfig(str(dense), str(topk), max_len=MAX_LEN, chunk=3))
    rng = np.random.default_rng(3)
    hist = [rng.integers(1, N + 1, size=rng.integers(1, 2 * MAX_LEN)) for _ in range(8)]
    for fast, ref in zip(scorer.recommend(hist, 10), scorer.recommend_reference(hist, 10)):
        assert np.array_equal(fast.items, ref.items)
        np.testing.assert_allclose(fast.scores, ref.scores, atol=1e-5)


def test_a_model_with_context_reads_history_beyond_its_window_in_the_served_graph(tmp_path):
    m = tiny_model("g2rec", layout="fused", context_len=MAX_LEN, direct_weight=0.5)
    topk = export_topk(export_onnx(m, tmp_path / "model.probs.onnx", probs=True), tmp_path / "model.topk.onnx")
    scorer = OnnxScorer(ScorerConfig(str(export_onnx(m, tmp_path / "model.onnx")), str(topk), max_len=m.cfg.input_len, chunk=3))
    rng = np.random.default_rng(4)
    hist = [rng.integers(1, N + 1, size=rng.integers(1, 3 * MAX_LEN)) for _ in range(9)]
    for h, fast, ref in zip(hist, scorer.recommend(hist, 10), scorer.recommend_reference(hist, 10)):
        assert np.array_equal(fast.items, ref.items)
        eager = m.score(torch.from_numpy(pad_left([h], m.cfg.input_len)))[0]
        eager[torch.from_numpy(np.asarray(h))] = -torch.inf
        assert np.array_equal(fast.items, eager.topk(10).indices.numpy())
