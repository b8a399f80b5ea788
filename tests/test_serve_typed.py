"""``GET /v1/{type}/{id}/candidates`` on a typed graph: the HTTP answer is the library's retrieval between
the two types, item for item and score for score, and bad types, ids and parameters get JSON errors."""
import numpy as np
import pytest
from fastapi.testclient import TestClient

from mixrec.retrieve import Retriever
from mixrec.serve import ServeSettings, create_app


@pytest.fixture(scope="module")
def model(explore_model):
    return explore_model


@pytest.fixture(scope="module")
def client(model):
    app = create_app(ServeSettings(model_dir=str(model.path), max_k=30))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def expected(model, src_type, dst_type, row, k, exclude_seen=True):
    """The library's answer for one dense source: (raw target ids, scores as the JSON floats, components)."""
    c = Retriever(model, source_type=src_type, target_type=dst_type).recommend([row], k, exclude_seen=exclude_seen)
    keep = c.items[0] >= 0
    return (model.ids[dst_type][c.items[0][keep]].tolist(), c.scores[0][keep].astype(np.float64).tolist(),
            c.components[0][keep].tolist())


def got(body):
    return ([c["item"] for c in body["items"]], [c["score"] for c in body["items"]],
            [c["component"] for c in body["items"]])


@pytest.mark.parametrize("src_type,dst_type", [("consumer", "creator"), ("creator", "media"),
                                               ("consumer", "media"), ("consumer", "consumer")])
def test_http_equals_the_library_between_two_types(client, model, src_type, dst_type):
    for row in (0, 7, model.num(src_type) - 1):
        raw = model.ids[src_type][row]
        for excl in (True, False):
            r = client.get(f"/v1/{src_type}/{raw}/candidates",
                           params={"to": dst_type, "k": 10, "exclude_seen": str(excl).lower()})
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["source_type"], body["target_type"], body["id"], body["k"]) == (src_type, dst_type, raw, 10)
            assert got(body) == expected(model, src_type, dst_type, row, 10, excl)
            assert [c["rank"] for c in body["items"]] == list(range(1, len(body["items"]) + 1))
            if src_type == dst_type:
                assert raw not in got(body)[0]


def test_default_target_is_the_models_and_seen_targets_are_excluded(client, model):
    assert model.target_type == "creator"
    raw = model.ids["consumer"][3]
    body = client.get(f"/v1/consumer/{raw}/candidates", params={"k": 20}).json()
    assert body["target_type"] == "creator" and got(body) == expected(model, "consumer", "creator", 3, 20)
    indptr, indices = model.seen(source_type="consumer", target_type="creator")
    followed = set(model.ids["creator"][indices[indptr[3]:indptr[4]]].tolist())
    assert followed and not followed & set(got(body)[0])
    # the users route (the model's own pair) gives the same list
    users = client.get(f"/v1/users/{raw}/candidates", params={"k": 20}).json()
    assert [c["item"] for c in users["items"]] == got(body)[0]


def test_other_target_index_is_built_once_and_saved_beside_the_model(client, model):
    raw = model.ids["creator"][0]
    assert client.get(f"/v1/creator/{raw}/candidates", params={"to": "media"}).status_code == 200
    assert (model.path / "index" / f"media.{model.config.index.kind}.faiss").is_file()
    snap = client.app.state.holder.current
    assert snap.searcher_for("creator", "media") is snap.searcher_for("creator", "media")
    assert snap.searcher_for("consumer", "media").index is snap.searcher_for("creator", "media").index
    assert snap.searcher_for("consumer", "creator") is snap.searcher


@pytest.mark.parametrize("path,params,status,needle", [
    ("/v1/planet/c1/candidates", {}, 404, "unknown entity type 'planet'; this model has ['consumer', 'creator', "
                                          "'media']"),
    ("/v1/consumer/{c}/candidates", {"to": "planet"}, 422, "unknown entity type to='planet'"),
    ("/v1/consumer/nobody/candidates", {"to": "media"}, 404, "unknown consumer id(s) ['nobody']"),
    ("/v1/media/{c}/candidates", {}, 404, "unknown media id(s)"),  # a consumer id is not a media id
    ("/v1/consumer/{c}/candidates", {"weights": "nope"}, 422, "unknown weight set 'nope'"),
    ("/v1/consumer/{c}/candidates", {"k": 31}, 422, "k"),
    ("/v1/consumer/{c}/candidates", {"k": 0}, 422, "k"),
])
def test_bad_requests_get_json_errors(client, model, path, params, status, needle):
    r = client.get(path.format(c=model.ids["consumer"][0]), params=params)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]


def test_unknown_ids_are_echoed_safely(client):
    r = client.get("/v1/creator/%C3%BC%20x/candidates")
    assert r.status_code == 404 and r.json()["unknown"] == ["ü x"]
