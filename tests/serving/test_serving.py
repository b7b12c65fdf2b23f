"""Eager vs ONNX parity, the onnxruntime scorer, batch CLI and the HTTP service."""

import json
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from g2rec.model import G2RecModel, ModelConfig
from serving.scorer import OnnxScorer, ScorerConfig
from training.export import export_onnx
from training.pipeline import DataSource, PipelineConfig, save_run

N, K = 60, 5


def model(mode: str) -> G2RecModel:
    torch.manual_seed(0)
    m = G2RecModel(ModelConfig(n_items=N, max_len=12, d_model=16, n_layers=1, mode=mode,
                               n_clusters=K if mode == "g2rec" else 0, rho=2 if mode == "g2rec" else 1, top_b=3))
    if mode == "g2rec":
        w = torch.tensor([[0.6, 0.4]]).repeat(N + 1, 1)
        w[0] = 0
        m.set_profiles(torch.stack([torch.arange(N + 1) % K, (torch.arange(N + 1) + 2) % K], 1), w)
    return m.eval()


@pytest.fixture(scope="module", params=["items", "g2rec"])
def exported(request, tmp_path_factory):
    m = model(request.param)
    path = export_onnx(m, tmp_path_factory.mktemp(request.param) / "model.onnx")
    return m, path


def test_onnx_reproduces_eager_scores_for_any_batch_and_length(exported):
    m, path = exported
    scorer = OnnxScorer(ScorerConfig(str(path), max_len=12))
    rng = np.random.default_rng(0)
    for B, T in [(1, 1), (3, 5), (7, 12)]:
        hist = [rng.integers(1, N + 1, size=rng.integers(1, T + 1)) for _ in range(B)]
        from g2rec.ranking import pad_left

        eager = m.score(torch.from_numpy(pad_left(hist, max(len(h) for h in hist)))).numpy()
        onnx = scorer.scores(hist)
        finite = np.isfinite(eager)
        assert np.array_equal(finite, np.isfinite(onnx))
        np.testing.assert_allclose(onnx[finite], eager[finite], atol=1e-4)


def test_recommendations_exclude_history_and_are_sorted(exported):
    _, path = exported
    scorer = OnnxScorer(ScorerConfig(str(path), max_len=12))
    hist = [np.array([1, 2, 3]), np.array([4])]
    for h, rec in zip(hist, scorer.recommend(hist, k=5)):
        assert len(rec.items) == 5 and not set(rec.items) & set(h) and 0 not in rec.items
        assert np.all(np.diff(rec.scores) <= 0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    item_ids = np.arange(N + 1) * 10  # original ids 10, 20, ...
    save_run(out, PipelineConfig(data=DataSource("synth"), model={"mode": "items"}), model("items"), None, {}, item_ids)
    return out


def test_batch_score_cli_maps_original_ids_and_names_bad_lines(run_dir, tmp_path):
    from serving.cli import score

    lines = "\n".join(json.dumps({"user": u, "history": [10 * (u + 1), 10 * (u + 2)]}) for u in range(5))
    res = CliRunner().invoke(score, [str(run_dir), "-k", "3"], input=lines + "\n")
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in res.output.strip().splitlines()]
    assert [r["user"] for r in rows] == list(range(5))
    assert all(len(r["items"]) == 3 and all(i % 10 == 0 and i > 0 for i in r["items"]) for r in rows)
    bad = CliRunner().invoke(score, [str(run_dir)], input='{"user": 1, "history": [99999]}\n')
    assert bad.exit_code != 0 and "<stdin>:1: bad input line" in bad.output


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_http_service_recommends_over_loopback(run_dir, tmp_path):
    import os

    import pandas as pd
    from datetime import datetime, timezone

    from features.config import StoreConfig
    from features.store import FeatureRepo

    # A real feature store holding user 5's recent history (original item ids 30, 40).
    repo = FeatureRepo(StoreConfig(root=tmp_path))
    repo.apply()
    repo.store.push("user_history_push", pd.DataFrame({
        "user_id": [5], "item_ids": [[30, 40]], "timestamps": [[1, 2]], "event_timestamp": [datetime.now(timezone.utc)],
    }))
    repo.close()
    port = free_port()
    env = {**os.environ, "G2REC_FEATURES_ROOT": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", str(run_dir), "--port", str(port), "--features"], env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 240  # the first start exports the ONNX model
        while True:
            assert proc.poll() is None, "server exited"
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                assert time.time() < deadline, "server did not come up"
                time.sleep(0.2)
        req = urllib.request.Request(url + "/recommend", data=json.dumps({"history": [10, 20], "k": 4}).encode(),
                                     headers={"Content-Type": "application/json"})
        body = json.loads(urllib.request.urlopen(req, timeout=10).read())
        assert len(body["items"]) == 4 and 10 not in body["items"] and 20 not in body["items"]
        req = urllib.request.Request(url + "/recommend", data=json.dumps({"user_id": 5, "k": 4}).encode(),
                                     headers={"Content-Type": "application/json"})
        body = json.loads(urllib.request.urlopen(req, timeout=10).read())
        assert len(body["items"]) == 4 and not {30, 40} & set(body["items"])
        for payload, code in [(b'{"history": []}', 422), (b'{"user_id": 6}', 404), (b'{"user_id": 5, "history": [10]}', 422)]:
            bad = urllib.request.Request(url + "/recommend", data=payload, headers={"Content-Type": "application/json"})
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(bad, timeout=10)
            assert e.value.code == code, payload
    finally:
        proc.terminate()
        proc.wait(10)
