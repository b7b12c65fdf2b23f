"""serving/cli.py: `g2rec score` and `g2rec serve` (a real server over loopback)."""

import json
import socket
import time

import pandas as pd
import pytest
from click.testing import CliRunner

from bench.serve import ServeProcess
from cli.main import cli


def test_score_writes_parquet_rows_and_lists_bad_lines_then_exits_2(run_dir, recommender, tmp_path):
    lines = [json.dumps({"user": u, "history": [10 * (u + 1), 10 * (u + 2), 99999]}) for u in range(5)]
    lines[2:2] = ['{"user": 9, "history": [10', '{"user": 9, "history": ["10"]}', "[1]"]
    lines.append(json.dumps({"user": "cold", "history": [424242]}))
    (tmp_path / "users.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "recs.parquet"
    res = CliRunner().invoke(cli, ["score", str(run_dir), "--input", str(tmp_path / "users.jsonl"), "--out", str(out),
                                   "-k", "3", "--batch-size", "2"])
    assert res.exit_code == 2 and "3 bad input lines" in res.output, res.output
    rows = pd.read_parquet(out)
    assert rows["user"].unique().tolist() == ["0", "1", "2", "3", "4", "cold"]
    assert rows.groupby("user")["rank"].apply(list).tolist() == [[1, 2, 3]] * 6
    assert (rows["item"] % 10 == 0).all() and (rows["unknown_items"] == 1).all()
    assert rows["fallback"].tolist() == [False] * 15 + [True] * 3
    assert set(rows["model_version"]) == {recommender.version}
    errors = [json.loads(x) for x in (tmp_path / "recs.parquet.errors.jsonl").read_text().splitlines()]
    assert [e["line"] for e in errors] == [3, 4, 5]
    assert errors[1]["reason"].startswith("history.0:") and errors[2]["reason"].startswith("line:")


def test_score_writes_json_lines_from_stdin_and_exits_0_on_clean_input(run_dir, tmp_path):
    out = tmp_path / "recs.jsonl"
    res = CliRunner().invoke(cli, ["score", str(run_dir), "--out", str(out), "--format", "jsonl", "-k", "2"],
                             input='{"user": 1, "history": [10, 20]}\n')
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["user"], r["rank"]) for r in rows] == [("1", 1), ("1", 2)] and rows[0]["score"] >= rows[1]["score"]


@pytest.mark.parametrize("k", ["0", "-1"])
def test_score_rejects_k_below_1(run_dir, tmp_path, k):
    res = CliRunner().invoke(cli, ["score", str(run_dir), "--out", str(tmp_path / "x.parquet"), "-k", k], input="")
    assert res.exit_code == 2 and "-k" in res.output


Server = ServeProcess  # `g2rec serve ARGS` over loopback (bench/serve.py's launcher)


@pytest.mark.integration
def test_serve_logs_and_answers_a_stalled_body_within_its_deadline(run_dir):
    server = Server(run_dir, "--body-timeout", "1")
    try:
        status, body = server.post("/recommend", {"history": [10, 20], "k": 4})
        assert status == 200 and len(body["items"]) == 4
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"history\": [")
            t0 = time.time()
            answer = b""
            while chunk := s.recv(4096):  # until the server closes the connection
                answer += chunk
            assert time.time() - t0 < 5
            assert answer.startswith(b"HTTP/1.1 408") and b"body: not received within 1 s" in answer
        time.sleep(0.2)
        log = server.log
        assert '"POST /recommend HTTP/1.1" 200' in log  # the access log
        assert "CUDA" not in log and "Traceback" not in log, log
    finally:
        server.stop()


@pytest.mark.integration
def test_serve_requires_the_token_from_the_environment(run_dir):
    server = Server(run_dir, env={"G2REC_SERVE_TOKEN": "t0ken"})
    try:
        status, body = server.post("/recommend", {"history": [10]})
        assert status == 401 and "bearer token" in body["message"]
        assert "auth bearer token" in server.log
    finally:
        server.stop()


@pytest.mark.integration
def test_serve_answers_users_from_the_feature_store(run_dir, tmp_path):
    from datetime import datetime, timezone

    import pandas as pd

    from features.config import StoreConfig
    from features.store import FeatureRepo

    # A real feature store holding user 5's recent history (original item ids 30, 40).
    repo = FeatureRepo(StoreConfig(root=tmp_path))
    repo.apply()
    repo.store.push("user_history_push", pd.DataFrame({
        "user_id": [5], "item_ids": [[30, 40]], "timestamps": [[1, 2]], "position": [2],
        "event_timestamp": [datetime.now(timezone.utc)],
    }))
    repo.close()
    server = Server(run_dir, "--features", env={"G2REC_FEATURES_ROOT": str(tmp_path)})
    try:
        status, body = server.post("/recommend", {"user_id": 5, "k": 4})
        assert status == 200 and len(body["items"]) == 4 and not {30, 40} & set(body["items"]) and not body["fallback"]
        status, body = server.post("/recommend/batch", {"users": [{"user_id": 6}, {"user_id": 5}], "k": 2})
        assert status == 200 and [r["fallback"] for r in body["results"]] == [True, False]
        for payload in [{"history": []}, {"user_id": 5, "history": [10]}, {"user_id": 10**30}]:
            assert server.post("/recommend", payload)[0] == 422, payload
    finally:
        server.stop()
