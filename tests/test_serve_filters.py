"""Serving a graph-filter model directory: answers equal the library's ranking and a dense numpy filter; errors are 4xx."""
import numpy as np
import pytest
from fastapi.testclient import TestClient

from mixrec.data.dataset import Dataset, Edges, Relation
from mixrec.filters import load_filter, make_filter
from mixrec.serve import ServeSettings, create_app

N_U, N_I, K = 30, 20, 5
USERS = np.array([f"u{i:02d}" for i in range(N_U)])
ITEMS = np.array([f"i{i:02d}" for i in range(N_I)])


def _dense(seed: int, p: float = 0.2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = (rng.random((N_U, N_I)) < p).astype(np.float64)
    r[np.arange(N_U), rng.integers(0, N_I, N_U)] = 1  # every user has an item
    return r


def _dataset(mats: dict[str, np.ndarray]) -> Dataset:
    parts = [(*np.nonzero(m), code) for code, m in enumerate(mats.values())]
    src = np.concatenate([u for u, _, _ in parts]).astype(np.int64)
    dst = np.concatenate([i for _, i, _ in parts]).astype(np.int64)
    rel = np.concatenate([np.full(len(u), c) for u, _, c in parts]).astype(np.int64)
    edges = Edges(src, dst, rel, np.ones(len(src), np.float32))
    return Dataset(ids={"user": USERS, "item": ITEMS}, relations=[Relation(r) for r in mats], edges={"train": edges})


def _linear_operator(r: np.ndarray) -> np.ndarray:
    """GF-CF's linear filter P~ = R~^T R~, R~ = D_u^{-1/2} R D_i^{-1/2}, as a dense item x item matrix."""
    du, di = r.sum(1), r.sum(0)
    rn = r / np.sqrt(np.where(du > 0, du, np.inf))[:, None] / np.sqrt(np.where(di > 0, di, np.inf))[None, :]
    return rn.T @ rn


def _numpy_top(scores: np.ndarray, excluded, k: int = K) -> tuple[list[str], np.ndarray]:
    s = scores.astype(np.float64).copy()
    s[list(excluded)] = -np.inf
    top = np.argsort(-s, kind="stable")[:k]
    return ITEMS[top].tolist(), s[top]


R = _dense(7)
MATS = {"view": _dense(4, 0.4), "buy": _dense(6, 0.1)}


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("filters")
    out = {}
    for kind, params in (("linear", {}), ("gfcf", {"rank": 4}), ("chebyshev", {"order": 4, "cutoff": 0.4})):
        out[kind] = make_filter(kind, **params).fit(_dataset({"click": R})).save(root / kind)
    out["cascade"] = make_filter("cascade", own=0.5).fit(_dataset(MATS)).save(root / "cascade")
    return out


def _client(path) -> TestClient:
    app = create_app(ServeSettings(model_dir=str(path), max_k=50, max_history=50))
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(params=["linear", "gfcf", "chebyshev", "cascade"])
def served(request, dirs):
    with _client(dirs[request.param]) as c:
        yield request.param, c, load_filter(dirs[request.param])


def _ids_scores(body: dict) -> tuple[list, list]:
    return [c["item"] for c in body["items"]], [c["score"] for c in body["items"]]


def test_known_user_equals_the_library(served):
    kind, c, m = served
    for u in (0, 11, 29):
        body = c.get(f"/v1/users/{USERS[u]}/candidates", params={"k": K}).json()
        items, scores = m.recommend([u], k=K)
        got_i, got_s = _ids_scores(body)
        assert body["user"] == USERS[u] and body["k"] == K and body["weights"] == "all"
        assert got_i == ITEMS[items[0]].tolist()
        np.testing.assert_allclose(got_s, scores[0], rtol=1e-6)
        assert [x["rank"] for x in body["items"]] == list(range(1, K + 1))
        assert {x["component"] for x in body["items"]} == {-1}
        typed = c.get(f"/v1/user/{USERS[u]}/candidates", params={"k": K}).json()
        assert typed["target_type"] == "item" and typed["items"] == body["items"]
    batch = c.post("/v1/candidates", json={"users": USERS[[3, 1]].tolist(), "k": K}).json()["results"]
    assert batch[1]["items"] == c.get(f"/v1/users/{USERS[1]}/candidates", params={"k": K}).json()["items"]


def test_linear_filter_equals_dense_numpy(dirs):
    p = _linear_operator(R)
    with _client(dirs["linear"]) as c:
        for u in (0, 5, 17):
            seen = np.flatnonzero(R[u])
            want_i, want_s = _numpy_top(R[u] @ p, seen)
            got_i, got_s = _ids_scores(c.get(f"/v1/users/{USERS[u]}/candidates", params={"k": K}).json())
            assert got_i == want_i
            np.testing.assert_allclose(got_s, want_s, rtol=1e-5)
            all_i, all_s = _ids_scores(c.get(f"/v1/users/{USERS[u]}/candidates",
                                             params={"k": K, "exclude_seen": "false"}).json())
            np.testing.assert_allclose(all_s, np.sort(R[u] @ p)[::-1][:K], rtol=1e-5)
        # a posted history (not a training user): its row through the filter, the history excluded
        hist = [2, 9, 13]
        h = np.zeros(N_I)
        h[hist] = 1
        want_i, want_s = _numpy_top(h @ p, hist)
        body = c.post("/v1/candidates/from-history", json={"items": ITEMS[hist].tolist(), "k": K}).json()
        got_i, got_s = _ids_scores(body)
        assert got_i == want_i and body["user"] is None and body["mixture_weights"] == []
        assert (body["source_type"], body["target_type"]) == ("user", "item")
        np.testing.assert_allclose(got_s, want_s, rtol=1e-5)
        # similar items: the one-item history, the item itself excluded
        want_i, want_s = _numpy_top(np.eye(N_I)[4] @ p, [4])
        got_i, got_s = _ids_scores(c.get(f"/v1/items/{ITEMS[4]}/similar", params={"k": K}).json())
        assert got_i == want_i
        np.testing.assert_allclose(got_s, want_s, rtol=1e-5)
        typed = c.get(f"/v1/item/{ITEMS[4]}/candidates", params={"k": K}).json()
        assert [x["item"] for x in typed["items"]] == want_i


def test_history_of_a_training_user_equals_that_user(served):
    kind, c, m = served
    u = 8
    if kind == "cascade":  # one relation per item: each behaviour's items go through its own stage
        items = [i for r in MATS for i in np.flatnonzero(MATS[r][u])]
        rels = [r for r in MATS for _ in np.flatnonzero(MATS[r][u])]
        req = {"items": ITEMS[items].tolist(), "relations": rels, "k": K}
    else:
        req = {"items": ITEMS[np.flatnonzero(R[u])].tolist(), "k": K}
    got = c.post("/v1/candidates/from-history", json=req)
    assert got.status_code == 200, got.text
    known = c.get(f"/v1/users/{USERS[u]}/candidates", params={"k": K}).json()
    assert got.json()["items"] == known["items"]
    hist = {r: [np.flatnonzero(MATS[r][u])] for r in MATS} if kind == "cascade" else [np.flatnonzero(R[u])]
    lib_i, lib_s = m.recommend_from_history(hist, k=K)
    assert _ids_scores(got.json())[0] == ITEMS[lib_i[0]].tolist()


def test_similar_equals_the_library(served):
    kind, c, m = served
    items, scores = m.similar([6], k=K)
    got_i, got_s = _ids_scores(c.get(f"/v1/items/{ITEMS[6]}/similar", params={"k": K}).json())
    assert got_i == ITEMS[items[0]].tolist() and ITEMS[6] not in got_i
    np.testing.assert_allclose(got_s, scores[0], rtol=1e-6)


def test_model_info_and_readiness_say_filter(dirs):
    with _client(dirs["gfcf"]) as c:
        info = c.get("/v1/model").json()
        assert info["kind"] == "filter" and info["filter"]["kind"] == "gfcf"
        assert info["filter"]["params"]["rank"] == 4 and info["relations"] == ["click"]
        assert (info["users"], info["items"], info["weight_sets"], info["index"]) == (N_U, N_I, ["all"], None)
        assert c.get("/readyz").json()["kind"] == "filter"
        text = c.get("/metrics").text
        assert f"mixrec_items {N_I}" in text and f"mixrec_users {N_U}" in text


@pytest.mark.parametrize("method,path,body,status,needle", [
    ("get", "/v1/users/nobody/candidates", None, 404, "unknown user id"),
    ("get", "/v1/items/nothing/similar", None, 404, "unknown item id"),
    ("get", "/v1/users/u01/candidates?k=51", None, 422, "query.k"),
    ("get", "/v1/users/u01/candidates?k=0", None, 422, "query.k"),
    ("get", "/v1/users/u01/candidates?weights=cluster", None, 422, "only weight set is 'all'"),
    ("get", "/v1/user/u01/candidates?to=user", None, 422, "ranks items only"),
    ("get", "/v1/shop/u01/candidates", None, 404, "unknown entity type"),
    ("post", "/v1/candidates", {"users": ["u01", "ghost"]}, 404, "unknown user id"),
    ("post", "/v1/candidates/from-history", {"items": ["i01", "ghost"]}, 404, "unknown item id"),
    ("post", "/v1/candidates/from-history", {"items": ["ghost"], "ignore_unknown": True}, 422, "none of the"),
    ("post", "/v1/candidates/from-history", {"items": ["i01"], "relations": ["buy"]}, 422, "unknown relation"),
    ("post", "/v1/candidates/from-history", {"items": ["i01"], "k": 51}, 422, "k must be"),
    ("post", "/v1/candidates/from-history", {"items": ["i01"] * 51}, 422, "at most 50"),
    ("post", "/v1/candidates/from-history", {"items": ["i01"], "source_type": "item"}, 422, "no relation"),
    ("post", "/v1/query", {"user": "u01", "query": {"steps": []}}, 422, "graph-filter model (linear)"),
])
def test_bad_requests_are_4xx_with_a_reason(dirs, method, path, body, status, needle):
    with _client(dirs["linear"]) as c:
        r = c.get(path) if method == "get" else c.post(path, json=body)
        assert r.status_code == status, r.text
        assert needle in r.json()["error"]


def test_history_outside_the_input_relations_is_422(dirs, tmp_path):
    m = make_filter("cascade").fit(_dataset(MATS), relations=["view"], target="buy").save(tmp_path / "m")
    with _client(m) as c:
        r = c.post("/v1/candidates/from-history", json={"items": ["i01"], "relations": ["buy"]})
        assert r.status_code == 422 and "input relation" in r.json()["error"]
        assert c.post("/v1/candidates/from-history", json={"items": ["i01"], "relations": ["view"]}).status_code == 200


def test_reload_between_filter_kinds(dirs):
    with _client(dirs["linear"]) as c:
        before = c.get("/v1/model").json()["model"]
        r = c.post("/admin/reload", json={"model_dir": str(dirs["chebyshev"])})
        assert r.status_code == 200 and r.json()["filter"]["kind"] == "chebyshev" and r.json()["model"] != before
        items, _ = load_filter(dirs["chebyshev"]).recommend([2], k=K)
        got = c.get(f"/v1/users/{USERS[2]}/candidates", params={"k": K}).json()
        assert got["model"] == r.json()["model"] and _ids_scores(got)[0] == ITEMS[items[0]].tolist()
