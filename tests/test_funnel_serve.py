"""POST /v1/query through the ASGI test client: results match the library, errors are JSON 4xx naming the step."""
import numpy as np
import pytest
from fastapi.testclient import TestClient

from mixrec.funnel import Funnel, Query
from mixrec.funnel.fit import candidate_lists, fit_ranker
from mixrec.serve import ServeSettings, create_app
from mixrec.train import train
from tests.conftest import small_config


@pytest.fixture(scope="module")
def model(planted, tmp_path_factory):
    ds, _ = planted
    return train(ds, small_config(2), tmp_path_factory.mktemp("fserve") / "m", progress=False)


@pytest.fixture(scope="module")
def ranker(model):
    f = Funnel(model)
    e = model.train_edges
    lists = candidate_lists(f, Query.source().mixture(k=30, exclude_seen=False), np.arange(60),
                            (e["src"], e["dst"], e["rel"]))
    return fit_ranker(f, lists, {"click": 0.5, "like": 1.0}, epochs=1, distill_epochs=2)


@pytest.fixture()
def client(model, ranker):
    app = create_app(ServeSettings(model_dir=str(model.path), max_k=50, max_body_bytes=8192))
    app.state.funnel_rankers["default"] = ranker
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


QUERY = Query.source().mixture(k=20).union(Query.source().history(n=5).similar(k=5), quotas=[20, 10]) \
    .filter(exclude_seen=True).rank(keep=[15, 8]).diversify(by="origin", method="round_robin")


def test_query_matches_the_library(client, model, ranker):
    user = str(model.ids["user"][5])
    r = client.post("/v1/query", json={"user": user, "query": QUERY.to_dict(), "explain": True})
    assert r.status_code == 200, r.text
    body = r.json()
    want = Funnel(model, rankers={"default": ranker}).run(QUERY, 5).candidates
    assert [c["item"] for c in body["items"]] == model.ids["item"][want.items].tolist()
    assert [c["rank"] for c in body["items"]] == list(range(1, len(want) + 1))
    assert all(set(c["via"]) <= {"mixture", "similar"} and c["source"] in c["via"] for c in body["items"])
    assert [t["step"].split("(")[0] for t in body["explain"]][:4] == ["mixture", "union", "history", "similar"]
    rank = [t for t in body["explain"] if t["step"].startswith("rank")][0]
    assert rank["out"] == 8 and rank["dropped_count"] == rank["in"] - 8
    short = client.post("/v1/query", json={"user": user, "query": QUERY.to_dict(), "limit": 3}).json()
    assert [c["item"] for c in short["items"]] == [c["item"] for c in body["items"][:3]] and short["explain"] is None


@pytest.mark.parametrize("query, status, step, arg", [
    ({"steps": [{"op": "mixture", "k": 0}]}, 422, "step 1 (mixture)", "k"),
    ({"steps": [{"op": "mixture", "k": 500}]}, 422, "step 1 (mixture)", "k"),  # over the server's max_k
    ({"steps": [{"op": "similar"}]}, 422, "step 1 (similar)", None),
    ({"steps": [{"op": "mixture", "k": 10}, {"op": "rank", "ranker": "nope", "keep": [5]}]}, 422, "step 2 (rank)",
     "ranker"),
    ({"steps": [{"op": "mixture", "k": 10, "weights": "nope"}]}, 422, "step 1 (mixture)", "weights"),
    ({"steps": [{"op": "history"}, {"op": "walk", "k": 10, "walkers": 100000, "max_steps": 100}]}, 422, "step 2 (walk)",
     "walkers"),
    ({"steps": [{"op": "mixture", "k": 10},
                {"op": "union", "queries": [{"steps": [{"op": "popular", "k": 5, "relation": "x"}]}]}]},
     422, "step 2 (union) > queries[0] > step 1 (popular)", "relation"),
])
def test_invalid_queries_are_422_naming_step_and_argument(client, model, query, status, step, arg):
    r = client.post("/v1/query", json={"user": str(model.ids["user"][0]), "query": query})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["step"] == step and body["argument"] == arg and body["error"].startswith(step)


def test_unknown_user_and_malformed_bodies(client):
    r = client.post("/v1/query", json={"user": "nobody", "query": {"steps": [{"op": "popular", "k": 5}]}})
    assert r.status_code == 404 and "unknown user" in r.json()["error"]
    for bad in ({"query": {"steps": []}}, {"user": 1, "query": "steps"}, {"user": 1, "query": {}, "colour": 1},
                {"user": 1, "query": {"steps": [{"op": "popular"}]}, "limit": 0}):
        r = client.post("/v1/query", json=bad)
        assert r.status_code == 422 and "error" in r.json()
    big = {"user": 1, "query": {"steps": [{"op": "popular"}] * 2000}}
    assert client.post("/v1/query", json=big).status_code == 413


def test_serve_loads_rankers_from_directories(model, ranker, tmp_path):
    """`mixrec serve --ranker NAME=DIR`: a saved ranker answers rank steps exactly as the in-memory one."""
    from mixrec.cli import _rankers
    ranker.save(tmp_path / "r")
    assert _rankers([f"default={tmp_path / 'r'}"]) == {"default": str(tmp_path / "r")}
    with pytest.raises(ValueError, match="NAME=DIR"):
        _rankers(["nodir"])
    with pytest.raises(ValueError, match="no ranker.json"):
        _rankers([f"x={tmp_path}"])
    app = create_app(ServeSettings(model_dir=str(model.path), rankers={"default": str(tmp_path / "r")}))
    with TestClient(app, raise_server_exceptions=False) as c:
        user = str(model.ids["user"][5])
        r = c.post("/v1/query", json={"user": user, "query": QUERY.to_dict()})
    assert r.status_code == 200, r.text
    want = Funnel(model, rankers={"default": ranker}).run(QUERY, 5).candidates
    assert [x["item"] for x in r.json()["items"]] == model.ids["item"][want.items].tolist()


def test_graph_filter_sources_through_http_and_the_cli(model, planted, tmp_path):
    """A blend of the model and a fitted graph filter (mixrec fit-filter directory) answers the same over
    POST /v1/query (``--filter`` / ServeSettings.filters), from ``mixrec funnel --filter`` and in the library."""
    import pyarrow.parquet as pq

    from mixrec.cli import _filters, main
    from mixrec.filters import load_filter, make_filter
    ds, _ = planted
    make_filter("linear").fit(ds).save(tmp_path / "lin")
    q = Query.source().mixture(k=10).union(Query.source().graph(k=10), quotas=[10, 10], combine="sum", offset=1.0)
    want = Funnel(model, filters={"default": load_filter(tmp_path / "lin")}).run(q, 5).candidates
    assert "graph" in {s for r in range(len(want)) for s in want.sources_of(r)}
    user = str(model.ids["user"][5])
    app = create_app(ServeSettings(model_dir=str(model.path), max_k=50, filters=_filters([f"default={tmp_path / 'lin'}"])))
    with TestClient(app, raise_server_exceptions=False) as c:
        body = c.post("/v1/query", json={"user": user, "query": q.to_dict()}).json()
        missing = c.post("/v1/query", json={"user": user, "query": Query.source().graph(k=5, model="other").to_dict()})
    assert [x["item"] for x in body["items"]] == model.ids["item"][want.items].tolist()
    assert missing.status_code == 422 and "other" in missing.text
    (tmp_path / "q.json").write_text(q.to_json())
    assert main(["funnel", str(model.path), "--query", str(tmp_path / "q.json"), "--user", user,
                 "--filter", str(tmp_path / "lin"), "--out", str(tmp_path / "c.parquet")]) == 0
    got = pq.read_table(tmp_path / "c.parquet").column("item").to_pylist()
    assert got == [str(x) for x in model.ids["item"][want.items]]
    with pytest.raises(ValueError, match="no model.json"):
        _filters([f"default={tmp_path}"])
