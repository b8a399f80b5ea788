"""The HTTP API through the ASGI test client: results, errors as JSON, limits, admin token, metrics and reload."""
import json
import shutil
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mixrec.cli import build_parser
from mixrec.retrieve import Retriever
from mixrec.serve import ServeSettings, create_app, is_loopback
from mixrec.serve.state import IdLookup, Snapshot
from mixrec.train import train
from tests.conftest import small_config


@pytest.fixture(scope="module")
def models(planted, tmp_path_factory):
    """Two models of the same data (different seeds): A is served first, B is reloaded to."""
    ds, _ = planted
    root = tmp_path_factory.mktemp("serve")
    a = train(ds, small_config(2), root / "a", progress=False)
    b = train(ds, small_config(2, seed=1), root / "b", progress=False)
    return a, b


@pytest.fixture()
def client(models):
    app = create_app(ServeSettings(model_dir=str(models[0].path), max_k=50, max_batch=8, max_history=50,
                                   max_body_bytes=4096))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def ids(model, t):
    return model.ids[t].tolist()


def test_user_candidates_match_the_library(client, models):
    m = models[0]
    u = ids(m, "user")[3]
    r = client.get(f"/v1/users/{u}/candidates", params={"k": 10})
    assert r.status_code == 200
    body = r.json()
    assert body["user"] == u and body["k"] == 10 and body["weights"] == "all"
    assert [c["rank"] for c in body["items"]] == list(range(1, 11))
    expected = Retriever(m).recommend([3], 10)
    assert [c["item"] for c in body["items"]] == m.ids["item"][expected.items[0]].tolist()
    assert [c["component"] for c in body["items"]] == expected.components[0].tolist()
    np.testing.assert_allclose([c["score"] for c in body["items"]], expected.scores[0], rtol=1e-6)
    seen = set(m.ids["item"][m.train_edges["dst"][m.train_edges["src"] == 3]].tolist())
    assert not seen & {c["item"] for c in body["items"]}
    incl = client.get(f"/v1/users/{u}/candidates", params={"k": 10, "exclude_seen": "false"}).json()
    assert [c["item"] for c in incl["items"]] == \
        m.ids["item"][Retriever(m).recommend([3], 10, exclude_seen=False).items[0]].tolist()


def test_batch_keeps_order_and_equals_single_requests(client, models):
    us = ids(models[0], "user")[5:8][::-1]
    r = client.post("/v1/candidates", json={"users": us, "k": 5})
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x["user"] for x in res] == us
    single = client.get(f"/v1/users/{us[1]}/candidates", params={"k": 5}).json()
    assert res[1]["items"] == single["items"]


def test_similar_items(client, models):
    m = models[0]
    it = ids(m, "item")[4]
    body = client.get(f"/v1/items/{it}/similar", params={"k": 6}).json()
    assert len(body["items"]) == 6 and it not in [c["item"] for c in body["items"]]
    assert [c["item"] for c in body["items"]] == m.ids["item"][Retriever(m).similar([4], 6).items[0]].tolist()


def test_from_history_folds_in_and_excludes_history(client, models):
    m = models[0]
    hist = ids(m, "item")[:6]
    req = {"items": hist, "relations": ["click"] * 6, "k": 12}
    a = client.post("/v1/candidates/from-history", json=req)
    b = client.post("/v1/candidates/from-history", json=req)
    assert a.status_code == 200 and a.json() == b.json()  # deterministic
    body = a.json()
    assert len(body["items"]) == 12 and not set(hist) & {c["item"] for c in body["items"]}
    assert len(body["mixture_weights"]) == 3 and sum(body["mixture_weights"]) == pytest.approx(1, abs=1e-5)
    r = client.post("/v1/candidates/from-history", json={"items": hist + ["no-such-item"], "k": 3})
    assert r.status_code == 404 and r.json()["unknown"] == ["no-such-item"]
    r = client.post("/v1/candidates/from-history", json={"items": hist + ["no-such-item"], "k": 3,
                                                         "ignore_unknown": True})
    assert r.status_code == 200 and r.json()["unknown_items"] == ["no-such-item"]
    for bad in ({"items": hist, "relations": ["click"]}, {"items": hist, "relations": ["nope"] * 6},
                {"items": []}, {"items": ["zz"], "ignore_unknown": True}, {"items": list(range(51))}):
        r = client.post("/v1/candidates/from-history", json=bad)
        assert r.status_code == 422, bad
        assert r.json()["error"]


@pytest.mark.parametrize("path,params,status,needle", [
    ("/v1/users/nobody/candidates", {}, 404, "unknown user id"),
    ("/v1/items/nothing/similar", {}, 404, "unknown item id"),
    ("/v1/users/{u}/candidates", {"k": 0}, 422, "query.k"),
    ("/v1/users/{u}/candidates", {"k": 51}, 422, "query.k"),
    ("/v1/users/{u}/candidates", {"k": "ten"}, 422, "valid integer"),
    ("/v1/users/{u}/candidates", {"weights": "nope"}, 422, "unknown weight set"),
    ("/v1/users/{u}/candidates", {"exclude_seen": "maybe"}, 422, "exclude_seen"),
    ("/v1/no/such/thing", {}, 404, "no such endpoint"),
])
def test_bad_requests_get_json_errors(client, models, path, params, status, needle):
    r = client.get(path.format(u=ids(models[0], "user")[0]), params=params)
    assert r.status_code == status
    assert needle in r.json()["error"]


@pytest.mark.parametrize("body,status", [
    (b"{not json", 422), (b"[]", 422), (b'{"users": []}', 422), (b'{"users": ["u000000"], "k": -1}', 422),
    (b'{"users": ["u000000"], "k": 51}', 422), (b'{"users": ["u000000"], "extra": 1}', 422),
    (json.dumps({"users": ["u000000"] * 9}).encode(), 422), (b'{"users": ["ghost"]}', 404),
    (b'{"users": [1.5]}', 422), (json.dumps({"users": ["u"] * 2000}).encode(), 413),
])
def test_batch_body_errors(client, body, status):
    r = client.post("/v1/candidates", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["error"]


def test_health_ready_metrics_openapi(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ready"
    client.get("/v1/users/nobody/candidates")
    text = client.get("/metrics").text
    assert 'mixrec_http_requests_total{method="GET",route="/v1/users/{user_id}/candidates",status="404"} 1' in text
    assert 'mixrec_http_request_duration_seconds_bucket{method="GET",route="/healthz",le="+Inf"} 1' in text
    assert "mixrec_index_vectors 200" in text and "mixrec_items 200" in text
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/v1/users/{user_id}/candidates", "/v1/candidates", "/v1/candidates/from-history",
            "/v1/items/{item_id}/similar", "/admin/reload", "/metrics", "/readyz"} <= set(paths)


def test_reload_swaps_models_and_refuses_a_tampered_one(client, models, tmp_path):
    a, b = models
    v_a = client.get("/v1/model").json()["model"]
    r = client.post("/admin/reload", json={"model_dir": str(b.path)})
    assert r.status_code == 200 and r.json()["model"] != v_a
    u = ids(a, "user")[0]
    assert client.get(f"/v1/users/{u}/candidates").json()["model"] == r.json()["model"]
    bad = tmp_path / "tampered"
    shutil.copytree(a.path, bad)
    emb = bad / "embeddings" / "item.npy"
    data = bytearray(emb.read_bytes())
    data[-1] ^= 0xFF
    emb.write_bytes(bytes(data))
    r = client.post("/admin/reload", json={"model_dir": str(bad)})
    assert r.status_code == 422 and "checksum mismatch" in r.json()["error"]
    assert client.get("/v1/model").json()["model"] == r.json()["error"].split("still serving ")[1].split(":")[0]
    assert client.post("/admin/reload", json={"model_dir": str(tmp_path / "missing")}).status_code == 422
    assert 'mixrec_events_total{event="reload",outcome="failed"} 2' in client.get("/metrics").text


def test_tampered_model_refuses_to_load(models, tmp_path):
    bad = tmp_path / "m"
    shutil.copytree(models[0].path, bad)
    (bad / "config.toml").write_text((bad / "config.toml").read_text() + "\n# edited\n")
    with pytest.raises(ValueError, match="checksum mismatch"):
        Snapshot.load(bad)


def test_in_flight_requests_finish_on_the_old_model(models):
    a, b = models
    app = create_app(ServeSettings(model_dir=str(a.path)))
    holder = app.state.holder
    old = holder.current
    started, release = threading.Event(), threading.Event()
    real = old.recommend

    def slow(*args):
        started.set()
        release.wait(10)
        return real(*args)
    old.recommend = slow
    out = {}
    with TestClient(app) as c:
        u = ids(a, "user")[0]
        t = threading.Thread(target=lambda: out.update(r=c.get(f"/v1/users/{u}/candidates?k=5")))
        t.start()
        assert started.wait(10)
        new = holder.reload(str(b.path))
        release.set()
        t.join(10)
        assert out["r"].status_code == 200 and out["r"].json()["model"] == old.version != new.version
        assert c.get(f"/v1/users/{u}/candidates?k=5").json()["model"] == new.version


def test_admin_token(models, monkeypatch):
    monkeypatch.delenv("MIXREC_ADMIN_TOKEN", raising=False)
    snap = Snapshot.load(models[0].path)
    public = create_app(ServeSettings(model_dir=str(models[0].path), host="0.0.0.0"), snapshot=snap)
    with TestClient(public) as c:
        r = c.post("/admin/reload")
        assert r.status_code == 403 and "token" in r.json()["error"]
    guarded = create_app(ServeSettings(model_dir=str(models[0].path), host="0.0.0.0", admin_token="s3cret"),
                         snapshot=snap)
    with TestClient(guarded) as c:
        assert c.post("/admin/reload").status_code == 401
        assert c.post("/admin/reload", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/admin/reload", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    monkeypatch.setenv("MIXREC_ADMIN_TOKEN", "envtoken")
    local = create_app(ServeSettings(model_dir=str(models[0].path)), snapshot=snap)
    with TestClient(local) as c:  # a configured token is required even on loopback
        assert c.post("/admin/reload").status_code == 401
        assert c.post("/admin/reload", headers={"Authorization": "Bearer envtoken"}).status_code == 200


def test_loopback_default_and_cli_parser():
    a = build_parser().parse_args(["serve", "model/"])
    assert a.host == "127.0.0.1" and a.port == 8000 and a.admin_token is None
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.com")


def test_id_lookup_int_and_string_ids():
    ints = IdLookup(np.array([30, 10, 20]))
    assert ints.find(["10", "20", 30, "010", "1e1", "99", "9" * 40, "-0", ""]).tolist() == [1, 2, 0] + [-1] * 6
    strs = IdLookup(np.array(["b", "a", "c"], dtype=object))
    assert strs.find(["a", "c", "zz", "1"]).tolist() == [1, 2, -1, -1]
    assert IdLookup(np.array([], np.int64)).find(["1"]).tolist() == [-1]


def test_sighup_reload_runs_aside_and_counts(models):
    from mixrec.serve.app import _reload_in_thread
    app = create_app(ServeSettings(model_dir=str(models[0].path)))
    _reload_in_thread(app.state.holder, app.state.metrics)
    for t in [t for t in threading.enumerate() if t.name == "mixrec-reload"]:
        t.join(30)
    assert 'mixrec_events_total{event="reload",outcome="ok"} 1' in app.state.metrics.render()


def test_serve_cli_rejects_bad_limits(models, capsys):
    from mixrec.cli import main
    assert main(["serve", str(models[0].path), "--max-k", "0"]) == 2
    assert "max_k" in capsys.readouterr().err


def test_saved_index_is_reused_across_search_parameters_but_rebuilt_for_build_ones(models, tmp_path):
    from mixrec.config import IndexConfig
    from mixrec.index import ComponentIndex
    from mixrec.model import MixtureModel
    from mixrec.retrieve import load_or_build_index
    shutil.copytree(models[0].path, tmp_path / "m")
    model = MixtureModel.load(tmp_path / "m")
    first = load_or_build_index(model, model.target_type, IndexConfig(kind="hnsw", ef_search=64))
    path = tmp_path / "m" / "index" / f"{model.target_type}.hnsw.faiss"
    stamp = path.stat().st_mtime_ns
    snap = Snapshot.load(tmp_path / "m", index_kind="hnsw", ef_search=16)
    assert path.stat().st_mtime_ns == stamp  # loaded, not rebuilt
    assert snap.index.config.ef_search == 16 and snap.index.size == first.size
    load_or_build_index(model, model.target_type, IndexConfig(kind="hnsw", hnsw_m=8))
    assert path.stat().st_mtime_ns != stamp  # a different graph degree needs a new index
    assert ComponentIndex.load(path).config.hnsw_m == 8


def test_responses_conform_to_the_published_schemas(client, models):
    """The hot endpoints serialise by hand; their bodies must still validate against the OpenAPI models."""
    from mixrec.serve.schemas import BatchResponse, CandidatesResponse, HistoryResponse
    a = models[0]
    users, items = ids(a, "user"), ids(a, "item")
    r = client.get(f"/v1/users/{users[0]}/candidates", params={"k": 7})
    one = CandidatesResponse.model_validate(r.json())
    assert [c.rank for c in one.items] == list(range(1, 8)) and one.user == users[0]
    assert all(isinstance(c.component, int) and 0 <= c.component < 3 for c in one.items)
    BatchResponse.model_validate(client.post("/v1/candidates", json={"users": users[:3], "k": 4}).json())
    h = HistoryResponse.model_validate(client.post("/v1/candidates/from-history", json={"items": items[:5], "k": 4}).json())
    assert len(h.mixture_weights) == 3 and abs(sum(h.mixture_weights) - 1) < 1e-5
    CandidatesResponse.model_validate(client.get(f"/v1/items/{items[0]}/similar", params={"k": 3}).json())


def test_server_uses_uvloop_and_httptools_when_installed(monkeypatch):
    import importlib.util

    import uvicorn

    from mixrec.serve import server
    pytest.importorskip("uvloop")
    pytest.importorskip("httptools")
    stack = server.fast_stack()
    assert stack == {"loop": "uvloop", "http": "httptools"}
    config = uvicorn.Config(lambda *a: None, **stack)
    config.load()
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    assert config.http_protocol_class is HttpToolsProtocol
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("uvloop", "httptools")
                        else real(name, *a))
    assert server.fast_stack() == {"loop": "asyncio", "http": "h11"}
