"""Hypothesis fuzz of the HTTP API: random paths, query values and bodies never produce a 5xx."""
import json
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mixrec.serve import ServeSettings, create_app
from mixrec.train import train
from tests.conftest import small_config

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def client(planted, tmp_path_factory):
    ds, _ = planted
    m = train(ds, small_config(1), tmp_path_factory.mktemp("fuzz") / "m", progress=False)
    app = create_app(ServeSettings(model_dir=str(m.path), max_k=200, max_history=100, max_body_bytes=20000,
                                   foldin_steps=5))
    with TestClient(app, raise_server_exceptions=False) as c:
        c.known = (m.ids["user"].tolist(), m.ids["item"].tolist())
        yield c


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20)
scalar = st.one_of(st.integers(-10 ** 30, 10 ** 30), st.text(max_size=12), st.sampled_from(
    ["0", "1", "100", "1000000", "-1", "1e3", "true", "false", "", "nan", "all", "\x00"]))


def _check(r):
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert r.json()["error"]


def _id(client, kind: str, draw_known: bool, text: str, n: int):
    return client.known[0 if kind == "user" else 1][n % 50] if draw_known else text


@FUZZ
@given(known=st.booleans(), raw=st.text(min_size=1, max_size=30), n=st.integers(0, 1000),
       params=st.dictionaries(st.sampled_from(["k", "weights", "exclude_seen", "other"]), scalar, max_size=4),
       endpoint=st.sampled_from(["users", "items"]))
def test_fuzz_get_endpoints(client, known, raw, n, params, endpoint):
    ident = _id(client, "user" if endpoint == "users" else "item", known, raw, n)
    path = f"/v1/users/{quote(str(ident), safe='')}/candidates" if endpoint == "users" else \
        f"/v1/items/{quote(str(ident), safe='')}/similar"
    _check(client.get(path, params={k: str(v) for k, v in params.items()}))


@FUZZ
@given(body=st.one_of(json_values, st.fixed_dictionaries(
    {"users": st.lists(st.one_of(scalar, json_values), max_size=6)},
    optional={"k": scalar, "weights": scalar, "exclude_seen": json_values, "x": json_values})))
def test_fuzz_batch_body(client, body):
    _check(client.post("/v1/candidates", content=json.dumps(body), headers={"content-type": "application/json"}))


@FUZZ
@given(items=st.lists(st.one_of(st.integers(0, 250), st.text(max_size=5), json_values), max_size=8),
       relations=st.one_of(st.none(), st.lists(st.sampled_from(["click", "like", "view", ""]), max_size=8)),
       extra=st.dictionaries(st.sampled_from(["k", "weights", "exclude_seen", "ignore_unknown", "bad"]), scalar,
                             max_size=3))
def test_fuzz_history_body(client, items, relations, extra):
    body = {"items": items, **extra}
    if relations is not None:
        body["relations"] = relations
    _check(client.post("/v1/candidates/from-history", content=json.dumps(body),
                       headers={"content-type": "application/json"}))


@FUZZ
@given(raw=st.binary(max_size=300), path=st.sampled_from(["/v1/candidates", "/v1/candidates/from-history",
                                                           "/admin/reload"]),
       ctype=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]))
def test_fuzz_raw_bytes(client, raw, path, ctype):
    _check(client.post(path, content=raw, headers={"content-type": ctype} if ctype else {}))


def test_no_server_error_was_recorded(client):
    assert 'status="5' not in client.get("/metrics").text
