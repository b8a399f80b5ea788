"""One query, four doors: the library (Retriever), the serving Snapshot, the Funnel and HTTP agree exactly."""
import numpy as np
import pytest
from fastapi.testclient import TestClient

from mixrec.funnel import Funnel, Query
from mixrec.retrieve import Retriever
from mixrec.serve import ServeSettings, create_app
from mixrec.serve.state import Snapshot
from mixrec.train import train
from tests.conftest import small_config

USERS = [0, 3, 17, 42]
K = 10


@pytest.fixture(scope="module")
def doors(planted, tmp_path_factory):
    ds, _ = planted
    model = train(ds, small_config(2), tmp_path_factory.mktemp("contract") / "m", progress=False)
    snap = Snapshot.load(model.path)
    with TestClient(create_app(ServeSettings(model_dir=str(model.path), max_k=50), snapshot=snap)) as client:
        yield model, Retriever(model), snap, Funnel(model, index=snap.index), client


def _library(model, r, snap, funnel, client, kind, exclude):
    c = r.recommend(USERS, K, exclude_seen=exclude) if kind == "user" else r.similar(USERS, K)
    return [(c.items[i][c.items[i] >= 0].tolist(), c.scores[i][c.items[i] >= 0].tolist()) for i in range(len(USERS))]


def _snapshot(model, r, snap, funnel, client, kind, exclude):
    c = snap.recommend(np.array(USERS), K, "all", exclude) if kind == "user" else snap.similar(np.array(USERS), K)
    return [(c.items[i][c.items[i] >= 0].tolist(), c.scores[i][c.items[i] >= 0].tolist()) for i in range(len(USERS))]


def _funnel(model, r, snap, funnel, client, kind, exclude):
    if kind == "item":
        c = funnel.similar(np.array(USERS), K)
        return [(c.items[i][c.items[i] >= 0].tolist(), c.scores[i][c.items[i] >= 0].tolist())
                for i in range(len(USERS))]
    q = Query.source().mixture(k=K, exclude_seen=exclude)
    out = [funnel.run(q, u).candidates for u in USERS]
    return [(c.items.tolist(), np.float32(c.scores).tolist()) for c in out]


def _http(model, r, snap, funnel, client, kind, exclude):
    rows = []
    for u in USERS:
        if kind == "user":
            raw = model.ids["user"].tolist()[u]
            body = client.get(f"/v1/users/{raw}/candidates",
                              params={"k": K, "exclude_seen": str(exclude).lower()}).json()
        else:
            raw = model.ids["item"].tolist()[u]
            body = client.get(f"/v1/items/{raw}/similar", params={"k": K}).json()
        dense = model.lookup("item").find([c["item"] for c in body["items"]])
        rows.append((dense.tolist(), np.float32([c["score"] for c in body["items"]]).tolist()))
    return rows


@pytest.mark.parametrize("door", [_snapshot, _funnel, _http], ids=["snapshot", "funnel", "http"])
@pytest.mark.parametrize("kind,exclude", [("user", True), ("user", False), ("item", None)],
                         ids=["recommend-exclude-seen", "recommend-include-seen", "similar-items"])
def test_every_door_returns_the_library_candidates(doors, door, kind, exclude):
    want = _library(*doors, kind, exclude)
    got = door(*doors, kind, exclude)
    assert all(len(items) == K for items, _ in want)
    assert got == want  # same items, same order, same float32 scores


def test_seen_items_are_excluded_through_every_door(doors):
    """The oracle of the exclusion itself: no user's training item comes back when exclude_seen is on."""
    model = doors[0]
    indptr, indices = model.seen()
    for door in (_library, _snapshot, _funnel, _http):
        for u, (items, _) in zip(USERS, door(*doors, "user", True)):
            assert not set(items) & set(indices[indptr[u]:indptr[u + 1]].tolist())
