"""POST /v1/query's whole-request bounds: a cost estimate checked before running (hand-computed oracle), a deadline
and a client disconnect checked between steps, and query work off the candidate routes' threads."""
import json
import threading

import anyio
import pytest
from fastapi.testclient import TestClient

from mixrec.funnel import Funnel, Query
from mixrec.funnel import service
from mixrec.funnel.ops import SEARCH_COST, query_cost
from mixrec.serve import ServeSettings, create_app
from mixrec.train import train
from tests.conftest import small_config


@pytest.fixture(scope="module")
def model(planted, tmp_path_factory):
    ds, _ = planted
    return train(ds, small_config(1), tmp_path_factory.mktemp("budget") / "m", progress=False)


def _app(model, **over):
    return create_app(ServeSettings(model_dir=str(model.path), max_k=50, max_body_bytes=1 << 16, **over))


def _user(model):
    return model.ids["user"][0].item() if hasattr(model.ids["user"][0], "item") else model.ids["user"][0]


def test_cost_estimates_add_up_by_hand():
    walk = Query.source().mixture(k=20).walk(k=30, walkers=1000, max_steps=10)
    assert query_cost(walk) == (SEARCH_COST + 20 + 1000 * 10 + 20, 30)
    sim = Query.source().history(n=5).similar(k=4).take(n=7)
    assert query_cost(sim) == (5 + 5 * (SEARCH_COST + 4) + 1, 7)
    union = Query.source().popular(k=10).union(Query.source().history(n=3), Query.source().popular(k=8),
                                               quotas=[6, 2, 8], k=12).rank(keep=[9, 4])
    # popular 10 | subs 3 + 8 | blend 10 + 3 + 8 | sizes min(6,10)+min(2,3)+min(8,8)=16 -> k=12 | rank 10*12 + 10*9
    assert query_cost(union) == (10 + 3 + 8 + 10 + 3 + 8 + 10 * 12 + 10 * 9, 4)


def test_a_query_over_budget_is_refused_before_running(model, monkeypatch):
    ran = []
    real = Funnel._step
    monkeypatch.setattr(Funnel, "_step", lambda self, *a: ran.append(a[0].op) or real(self, *a))
    members = [{"steps": [{"op": "history", "n": 5}, {"op": "walk", "walkers": 100_000, "max_steps": 20, "k": 50}]}
               for _ in range(40)]  # 40 walks, each within the per-walk limit
    q = {"steps": [{"op": "mixture", "k": 10}, {"op": "union", "queries": members}]}
    body = json.dumps({"user": _user(model), "query": q})
    assert len(body) < 8192
    with TestClient(_app(model, max_query_cost=1_000_000), raise_server_exceptions=False) as c:
        r = c.post("/v1/query", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        expected = SEARCH_COST + 10 + 40 * (5 + 100_000 * 20 + 5) + 10 + 40 * 50
        assert r.json()["cost"] == expected and r.json()["budget"] == 1_000_000
        assert f"{expected:,}" in r.json()["error"] and "1,000,000" in r.json()["error"]
        assert ran == []
        assert 'mixrec_events_total{event="query",outcome="over_budget"} 1' in c.get("/metrics").text
        small = {"steps": [{"op": "mixture", "k": 10}, {"op": "take", "n": 3}]}
        assert c.post("/v1/query", json={"user": _user(model), "query": small}).status_code == 200
        assert ran == ["mixture", "take"]


def test_the_deadline_stops_a_query_between_steps(model, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(service, "monotonic", lambda: clock[0])
    real = Funnel.recommend

    def slow(self, *a, **kw):  # the first step "takes" longer than the deadline
        clock[0] += 5.0
        return real(self, *a, **kw)
    monkeypatch.setattr(Funnel, "recommend", slow)
    q = {"steps": [{"op": "mixture", "k": 10}, {"op": "filter", "exclude_seen": True}, {"op": "take", "n": 3}]}
    with TestClient(_app(model, query_timeout_s=4.0), raise_server_exceptions=False) as c:
        r = c.post("/v1/query", json={"user": _user(model), "query": q})
        assert r.status_code == 503, r.text
        assert r.json()["steps_run"] == 1 and "deadline of 4 s" in r.json()["error"] and "filter" in r.json()["error"]
        assert 'mixrec_events_total{event="query",outcome="deadline"} 1' in c.get("/metrics").text
    with TestClient(_app(model, query_timeout_s=6.0), raise_server_exceptions=False) as c:
        assert c.post("/v1/query", json={"user": _user(model), "query": q}).status_code == 200


def test_a_dropped_client_stops_the_query(model, monkeypatch):
    real, entered = Funnel.recommend, threading.Event()

    def until_cancelled(self, *a, **kw):  # hold the first step until the server has seen the disconnect
        entered.set()
        guard = service._ACTIVE.guard
        for _ in range(3000):
            if guard.cancelled:
                break
            threading.Event().wait(0.01)
        return real(self, *a, **kw)
    monkeypatch.setattr(Funnel, "recommend", until_cancelled)
    app = _app(model)
    q = {"steps": [{"op": "mixture", "k": 10}, {"op": "take", "n": 3}]}
    data = json.dumps({"user": _user(model), "query": q}).encode()
    sent = []

    async def call():
        messages = [{"type": "http.request", "body": data, "more_body": False}]

        async def receive():  # the body, then (once the first step runs) the client is gone
            if messages:
                return messages.pop(0)
            if not entered.is_set():
                await anyio.sleep(60)  # the server polls with a cancelled scope: "still connected"
            return {"type": "http.disconnect"}

        async def send(msg):
            sent.append(msg)
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/v1/query", "raw_path": b"/v1/query", "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]}
        await app(scope, receive, send)
    anyio.run(call)
    assert sent[0]["status"] == 503
    body = json.loads(sent[1]["body"])
    assert body["steps_run"] == 1 and "client disconnected" in body["error"]
    assert 'mixrec_events_total{event="query",outcome="disconnected"} 1' in app.state.metrics.render()


def test_a_running_query_does_not_hold_the_candidate_routes_threads(model, monkeypatch):
    entered, release = threading.Event(), threading.Event()
    real = Funnel.recommend

    def blocked(self, *a, **kw):
        entered.set()
        release.wait(60)
        return real(self, *a, **kw)
    monkeypatch.setattr(Funnel, "recommend", blocked)
    out = {}
    u = _user(model)
    with TestClient(_app(model, threads=1), raise_server_exceptions=False) as c:
        q = {"steps": [{"op": "mixture", "k": 10}]}
        tq = threading.Thread(target=lambda: out.update(q=c.post("/v1/query", json={"user": u, "query": q})))
        tq.start()
        assert entered.wait(60)
        tc = threading.Thread(target=lambda: out.update(c=c.get(f"/v1/users/{u}/candidates", params={"k": 5})))
        tc.start()
        tc.join(60)  # a liveness bound: on a shared thread this waits for the release below, which never comes
        served_while_blocked = not tc.is_alive() and not release.is_set() and tq.is_alive()
        release.set()
        tq.join(60)
        tc.join(60)
    assert served_while_blocked and out["c"].status_code == 200
    assert out["q"].status_code == 200


@pytest.mark.parametrize("flag,value,field", [("--max-query-cost", "0", "max_query_cost"),
                                              ("--query-timeout", "0", "query_timeout_s")])
def test_serve_cli_rejects_bad_query_bounds(model, capsys, flag, value, field):
    from mixrec.cli import main
    assert main(["serve", str(model.path), flag, value]) == 2
    assert field in capsys.readouterr().err
