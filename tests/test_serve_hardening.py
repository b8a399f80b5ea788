"""Bad input at the HTTP edge: lone surrogates in ids, a corrupt index on reload, loose JSON types,
NaN ids and the admin token's scheme. Each answer is a 4xx JSON error (never a 500), checked
against what was sent."""
import json
import shutil

import pytest
from fastapi.testclient import TestClient

from mixrec.index import ComponentIndex
from mixrec.serve import ServeSettings, create_app
from mixrec.serve.state import Snapshot
from mixrec.train import train
from tests.conftest import small_config

LONE = '"\\ud800"'  # a lone surrogate, as a JSON escape (valid JSON, not encodable as UTF-8)


@pytest.fixture(scope="module")
def model(planted, tmp_path_factory):
    ds, _ = planted
    return train(ds, small_config(1), tmp_path_factory.mktemp("harden") / "m", progress=False)


@pytest.fixture()
def client(model):
    app = create_app(ServeSettings(model_dir=str(model.path), max_k=50, max_body_bytes=8192))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _post(client, path: str, body: str):
    return client.post(path, content=body.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("path,body,status", [
    ("/v1/candidates", '{"users": [%s]}' % LONE, 404),
    ("/v1/candidates", '{"users": ["u000000", %s], "k": 3}' % LONE, 404),
    ("/v1/candidates/from-history", '{"items": [%s]}' % LONE, 404),
    ("/v1/candidates/from-history", '{"items": [%s], "relations": [%s]}' % (LONE, LONE), 404),
    ("/v1/query", '{"user": %s, "query": {"steps": [{"op": "mixture", "k": 5}]}}' % LONE, 404),
    ("/v1/query", '{"user": "u000000", "query": {"steps": [{"op": %s}]}}' % LONE, 422),
    ("/v1/query", '{"user": "u000000", "query": {"steps": [{"op": "mixture", %s: 1}]}}' % LONE, 422),
    ("/v1/candidates", '{"users": ["u000000"], %s: 1}' % LONE, 422),
])
def test_lone_surrogates_answer_4xx_with_an_escaped_echo(client, path, body, status):
    r = _post(client, path, body)
    assert r.status_code == status, r.text
    r.content.decode("utf-8")  # strict UTF-8: the echo cannot carry the raw surrogate
    error = r.json()["error"]
    assert "\ud800" not in error
    if status == 404:  # the unknown id is echoed, escaped
        assert "\\ud800" in error
        assert r.json()["unknown"] and all("\ud800" not in str(x) for x in r.json()["unknown"])


def _corrupt_index(src, dst):
    shutil.copytree(src, dst)
    faiss_files = sorted((dst / "index").glob("*.faiss"))
    assert faiss_files, "the model directory has a saved index"
    for f in faiss_files:
        f.write_bytes(b"not a faiss index" * 64)


def test_reload_to_a_corrupt_index_is_rebuilt_and_served(client, model, tmp_path):
    Snapshot.load(model.path)  # make sure the served directory has its index saved
    bad = tmp_path / "corrupt"
    _corrupt_index(model.path, bad)
    r = client.post("/admin/reload", json={"model_dir": str(bad)})
    assert r.status_code == 200, r.text
    assert r.json()["index_size"] == model.num("item") * model.components("item")
    assert client.get("/v1/users/u000000/candidates", params={"k": 3}).status_code == 200


def test_a_reload_that_fails_inside_faiss_is_422_counted_and_keeps_serving(client, model, tmp_path, monkeypatch):
    Snapshot.load(model.path)
    bad = tmp_path / "corrupt"
    _corrupt_index(model.path, bad)  # so the reload must build an index, which then fails

    def fail(*a, **kw):
        raise RuntimeError("Error in faiss::Index: simulated failure while building")
    monkeypatch.setattr(ComponentIndex, "build", fail)
    before = client.get("/v1/model").json()["model"]
    r = client.post("/admin/reload", json={"model_dir": str(bad)})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert "reload failed" in error and before in error and str(bad) in error and "simulated failure" in error
    assert client.get("/v1/model").json()["model"] == before
    assert client.get("/v1/users/u000000/candidates", params={"k": 3}).status_code == 200
    assert 'mixrec_events_total{event="reload",outcome="failed"} 1' in client.get("/metrics").text


@pytest.mark.parametrize("path,body,field", [
    ("/v1/candidates", {"users": ["u000000"], "k": True}, "k"),
    ("/v1/candidates", {"users": ["u000000"], "k": "5"}, "k"),
    ("/v1/candidates", {"users": ["u000000"], "k": 5.0}, "k"),
    ("/v1/candidates", {"users": ["u000000"], "exclude_seen": "true"}, "exclude_seen"),
    ("/v1/candidates", {"users": ["u000000"], "exclude_seen": 1}, "exclude_seen"),
    ("/v1/candidates", {"users": [True]}, "users"),
    ("/v1/candidates/from-history", {"items": ["ITEM"], "k": True}, "k"),
    ("/v1/candidates/from-history", {"items": ["ITEM"], "k": "5"}, "k"),
    ("/v1/candidates/from-history", {"items": ["ITEM"], "ignore_unknown": "yes"}, "ignore_unknown"),
    ("/v1/query", {"user": "u000000", "query": {"steps": [{"op": "mixture", "k": 5}]}, "limit": True}, "limit"),
    ("/v1/query", {"user": "u000000", "query": {"steps": [{"op": "mixture", "k": 5}]}, "limit": "3"}, "limit"),
    ("/v1/query", {"user": "u000000", "query": {"steps": [{"op": "mixture", "k": 5}]}, "explain": "no"}, "explain"),
])
def test_loose_json_types_are_refused(client, model, path, body, field):
    r = _post(client, path, json.dumps(body).replace('"ITEM"', str(model.ids["item"][0])))
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]


@pytest.mark.parametrize("path,body", [
    ("/v1/candidates", '{"users": [NaN]}'),
    ("/v1/candidates", '{"users": [Infinity]}'),
    ("/v1/candidates/from-history", '{"items": ["ITEM", NaN]}'),
    ("/v1/query", '{"user": NaN, "query": {"steps": [{"op": "mixture", "k": 5}]}}'),
    ("/v1/candidates", '{"users": ["u000000"], "k": NaN}'),
])
def test_nan_ids_are_refused_by_name(client, model, path, body):
    r = _post(client, path, body.replace('"ITEM"', str(model.ids["item"][0])))
    assert r.status_code == 422, r.text
    assert "NaN" in r.json()["error"] and "Infinity" in r.json()["error"]


def test_nan_as_a_string_id_is_just_an_unknown_id(client):
    r = client.post("/v1/candidates", json={"users": ["NaN"]})
    assert r.status_code == 404 and r.json()["unknown"] == ["NaN"]


def test_admin_token_needs_the_bearer_scheme(model, monkeypatch):
    monkeypatch.delenv("MIXREC_ADMIN_TOKEN", raising=False)
    app = create_app(ServeSettings(model_dir=str(model.path), admin_token="s3cret"))
    with TestClient(app) as c:
        for header in ("s3cret", "Token s3cret", "Basic s3cret", "Bearers3cret", "Bearer  s3cret x"):
            r = c.post("/admin/reload", headers={"Authorization": header})
            assert r.status_code == 401, header
            assert "Bearer" in r.json()["error"]
        assert c.post("/admin/reload", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/admin/reload", headers={"Authorization": "bearer s3cret"}).status_code == 200  # RFC 7235


def test_error_bodies_are_strict_utf8_json(client):
    r = _post(client, "/v1/candidates", '{"users": ["\\ud83d\\ude00", "caf\\u00e9"]}')  # a valid pair, an accent
    assert r.status_code == 404
    assert json.loads(r.content.decode("utf-8"))["unknown"] == ["\U0001f600", "café"]
