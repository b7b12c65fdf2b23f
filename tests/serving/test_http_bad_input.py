"""serving/http.py: bad input is a 4xx naming the field, never a 5xx nor an echo of the input;
property-based requests against the OpenAPI schema's endpoints."""

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving.http import HttpConfig, make_app
from serving.schemas import BatchResponse, Limits, Recommendation

BODY_LIMIT = 1 << 20


@pytest.fixture(scope="module")
def client(recommender):
    config = HttpConfig(Limits(max_batch=8, max_history=10_000), max_body_bytes=BODY_LIMIT)
    with TestClient(make_app(recommender, {5: np.array([30, 40])}.get, config),
                    raise_server_exceptions=False) as c:
        yield c


def post(client, body: bytes | str, path="/recommend", **kw):
    return client.post(path, content=body, headers={"content-type": "application/json"}, **kw)


BAD = [  # (body, field the message must name, status)
    ('{"history":[1],"k":NaN}', "body.k", 422),
    ('{"history":[1],"k":Infinity}', "body.k", 422),
    ('{"history":[1e400]}', "body.history.0", 422),
    ('{"user_id":1000000000000000000000000000000}', "body.user_id", 422),
    ('{"user_id":-1}', "body.user_id", 422),
    ('{"history":[true]}', "body.history.0", 422),
    ('{"history":[1.0]}', "body.history.0", 422),
    ('{"history":["10"]}', "body.history.0", 422),
    ('{"history":[10],"k":"10"}', "body.k", 422),
    ('{"history":[10],"k":0}', "body.k", 422),
    ('{"history":[10],"k":1000000000}', "body.k", 422),
    ('{"history":[10],"exclude":[false]}', "body.exclude.0", 422),
    ('{"history":[100000000000000000000]}', "body.history.0", 422),
    ('{"history":[]}', "body.history", 422),
    ('{"history":[10],"user_id":5}', "body", 422),
    ('{}', "body", 422),
    ('[1,2]', "body", 422),
    ('"x"', "body", 422),
    ('{"history":[10', "body", 422),
    (b'{"history":[10]}\xff\xfe', "body", 400),
    ("[" * 100_000 + "]" * 100_000, "body", 400),
    (json.dumps({"history": list(range(1, 100_001))}), "body.history", 422),
    ('{"users":[],"k":1}', "body.users", 422),
]


@pytest.mark.parametrize("body,field,status", BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_bad_requests_are_4xx_naming_the_field(client, body, field, status):
    path = "/recommend/batch" if "users" in str(body[:10]) else "/recommend"
    r = post(client, body, path)
    assert r.status_code == status and "message" in r.json(), r.text[:300]
    assert r.json()["message"].startswith(field), r.text[:300]
    assert len(r.content) < 2000  # never an echo of the input


def test_an_unknown_field_is_named_briefly_not_echoed(client):
    r = post(client, json.dumps({"history": [10], "x" * 500_000: 1}))
    assert r.status_code == 422 and "Extra inputs" in r.text and len(r.content) < 1000


def test_a_50_mb_body_is_refused_by_its_length_before_it_is_read(client):
    r = post(client, b'{"history":[' + b"1," * (25 << 20) + b"1]}")
    assert r.status_code == 413 and "body" in r.json()["message"] and len(r.content) < 200


def test_a_streamed_body_without_length_is_cut_at_the_limit(client):
    def chunks():
        yield b'{"history":['
        for _ in range(64):
            yield b"1," * 16384
        yield b"1]}"

    r = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_a_non_numeric_content_length_is_a_400(client):
    r = client.post("/recommend", content=b'{"history":[10]}', headers={"content-length": "ten"})
    assert r.status_code in (400, 413) and r.status_code < 500


# ---- property-based: any JSON, and near-valid bodies built from the schema's fields ------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
    max_leaves=20,
)
item = st.integers(-(2**64), 2**64) | st.sampled_from([10, 20, 600, 0]) | json_values
query = st.fixed_dictionaries({}, optional={
    "history": st.lists(item, max_size=30) | json_values, "user_id": st.integers(-5, 2**64) | json_values,
    "exclude": st.lists(item, max_size=5) | json_values, "k": st.integers(-2, 2000) | json_values,
})
batch = st.fixed_dictionaries({}, optional={"users": st.lists(query, max_size=10) | json_values,
                                            "k": st.integers(-2, 2000) | json_values})


def check(r, model):
    assert r.status_code < 500, r.text[:300]
    if r.status_code == 200:
        model.model_validate(r.json())
    else:
        assert r.status_code in (400, 401, 404, 408, 413, 422) and r.json()["message"]


SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(body=query | json_values)
def test_any_json_to_recommend_is_answered_without_a_5xx(client, body):
    check(post(client, json.dumps(body)), Recommendation)


@SETTINGS
@given(body=batch | json_values)
def test_any_json_to_recommend_batch_is_answered_without_a_5xx(client, body):
    check(post(client, json.dumps(body), "/recommend/batch"), BatchResponse)


@SETTINGS
@given(raw=st.binary(max_size=64))
def test_any_bytes_are_answered_without_a_5xx(client, raw):
    check(post(client, raw), Recommendation)


def test_every_get_endpoint_in_the_schema_answers(client):
    for path, ops in client.get("/openapi.json").json()["paths"].items():
        if "get" in ops:
            assert client.get(path).status_code == 200, path
