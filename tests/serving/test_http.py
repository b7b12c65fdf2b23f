"""serving/http.py: the HTTP API over a tiny run, in process (FastAPI TestClient)."""

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from g2rec.errors import UnavailableError
from serving.http import HttpConfig, make_app
from serving.schemas import Limits
from tests.serving.conftest import MAX_LEN, N

USERS = {5: np.array([30, 40]), 6: np.array([], np.int64), 7: np.array([99999])}


@pytest.fixture(scope="module")
def client(recommender):
    config = HttpConfig(Limits(max_batch=4), max_body_bytes=1 << 20)
    with TestClient(make_app(recommender, USERS.get, config), raise_server_exceptions=False) as c:
        yield c


def post(client, body, path="/recommend", **kw):
    return client.post(path, content=body if isinstance(body, (bytes, str)) else json.dumps(body),
                       headers={"content-type": "application/json", **kw.pop("headers", {})}, **kw)


def test_recommend_by_history_names_the_model_and_counts_items(client, recommender):
    r = post(client, {"history": [10, 20, 99999], "k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == recommender.version and len(body["items"]) == 4
    assert not {10, 20} & set(body["items"]) and body["scores"] == sorted(body["scores"], reverse=True)
    assert (body["history_items"], body["used_items"], body["unknown_items"], body["fallback"]) == (3, 2, 1, False)


def test_recommend_by_user_id_reads_the_history_source(client):
    body = post(client, {"user_id": 5, "k": 4}).json()
    assert body["user_id"] == 5 and not {30, 40} & set(body["items"]) and not body["fallback"]
    assert body["history_items"] == 2


@pytest.mark.parametrize("user", [6, 7, 8])
def test_users_without_a_known_item_get_the_popularity_fallback(client, user):
    body = post(client, {"user_id": user, "k": 3, "exclude": [10 * N]}).json()
    assert body["fallback"] and body["items"] == [10 * (N - 1), 10 * (N - 2), 10 * (N - 3)]
    assert body["unknown_items"] == (1 if user == 7 else 0)


def test_k_beyond_what_is_left_returns_fewer_items_all_scored(client):
    seen = [10 * i for i in range(1, N - 1)]
    body = post(client, {"history": seen, "k": 1000}).json()
    assert sorted(body["items"]) == [10 * (N - 1), 10 * N] and all(isinstance(s, float) for s in body["scores"])
    assert body["used_items"] == MAX_LEN and body["history_items"] == N - 2


def test_batch_answers_each_user_in_order(client, recommender):
    r = post(client, {"users": [{"history": [10]}, {"user_id": 5, "exclude": [50]}, {"user_id": 6}], "k": 2},
             "/recommend/batch")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == recommender.version
    assert [x["fallback"] for x in body["results"]] == [False, False, True]
    assert [x["user_id"] for x in body["results"]] == [None, 5, 6] and 50 not in body["results"][1]["items"]
    single = post(client, {"history": [10], "k": 2}).json()
    assert body["results"][0]["items"] == single["items"]


def test_batch_over_the_configured_size_names_the_field(client):
    r = post(client, {"users": [{"history": [10]}] * 5}, "/recommend/batch")
    assert r.status_code == 422 and r.json()["message"].startswith("body.users")


def test_user_id_without_a_feature_store_is_a_400(recommender):
    with TestClient(make_app(recommender)) as c:
        r = post(c, {"user_id": 5})
    assert r.status_code == 400 and "user_id" in r.json()["message"]


def test_health_ready_docs_and_metrics(client, recommender):
    assert client.get("/health").json() == {"status": "ok"}
    ready = client.get("/ready").json()
    assert ready["model_version"] == recommender.version and ready["items"] == N
    assert client.get("/docs").status_code == 200
    assert "/recommend/batch" in client.get("/openapi.json").json()["paths"]
    post(client, {"history": [99999]})
    text = client.get("/metrics").text
    assert f'g2rec_model_info{{items="{N}",version="{recommender.version}"}} 1.0' in text
    assert 'g2rec_requests_total{endpoint="/recommend",status="200"}' in text
    assert 'g2rec_request_seconds_bucket{endpoint="/recommend",le="0.001"}' in text
    assert "g2rec_fallbacks_total" in text and "g2rec_unknown_items_total" in text


def test_bearer_token_guards_the_recommend_endpoints_only(recommender):
    with TestClient(make_app(recommender, config=HttpConfig(token="s3cret"))) as c:
        assert post(c, {"history": [10]}).status_code == 401
        assert post(c, {"history": [10]}, headers={"authorization": "Bearer nope"}).status_code == 401
        assert post(c, {"history": [10]}, headers={"authorization": "Bearer s3cret"}).status_code == 200
        assert post(c, {"users": [{"history": [10]}]}, "/recommend/batch").status_code == 401
        assert c.get("/health").status_code == 200 and c.get("/metrics").status_code == 200


def test_string_catalogues_take_strict_string_ids(str_run_dir):
    from serving.run_dir import RunConfig, open_run

    with TestClient(make_app(open_run(RunConfig(str_run_dir)))) as c:
        ok = post(c, {"history": ["i1", "zzz"], "k": 2}).json()
        assert ok["unknown_items"] == 1 and all(isinstance(i, str) for i in ok["items"])
        r = post(c, {"history": [1]})
        assert r.status_code == 422 and "body.history.0" in r.json()["message"]


def test_an_unreachable_feature_store_is_a_503_naming_it(recommender):
    def down(user_id):
        raise UnavailableError("feature store at 127.0.0.1:6379: connection refused")

    with TestClient(make_app(recommender, down)) as c:
        r = post(c, {"user_id": 5})
    assert r.status_code == 503 and "feature store" in r.json()["message"]
