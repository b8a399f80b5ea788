"""A consumer -> creator -> media two-hop query from ``POST /v1/query`` (``source_type``/``target_type``) and from
``mixrec funnel --from --to``: against a ranking worked by hand from the consumer -> creator retrieval and the
authored edges, with every candidate's seed creator and seed type."""
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from mixrec.cli import main
from mixrec.funnel import Funnel, Query
from mixrec.retrieve import Retriever
from mixrec.serve import ServeSettings, create_app

TWO_HOP = Query.source().two_hop(via="creator", relation="authored", k_via=8, per_via=3, k=15)


@pytest.fixture(scope="module")
def model(explore_model):
    return explore_model


@pytest.fixture(scope="module")
def client(model):
    app = create_app(ServeSettings(model_dir=str(model.path), max_k=50))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def by_hand(model, consumer: int, k_via=8, per_via=3, k=15) -> list[tuple]:
    """(medium, score, seed creator, component) rows, raw ids: each of the consumer's top ``k_via`` creators
    (round-robin, followed ones kept) brings its ``per_via`` latest authored media at score s / (j + 1)."""
    top = Retriever(model, source_type="consumer", target_type="creator").recommend([consumer], k_via,
                                                                                   exclude_seen=False)
    e, code = model.train_edges, model.relation_code("authored")
    authored = [(int(s), int(d)) for s, d, r in zip(e["src"], e["dst"], e["rel"]) if r == code]
    best: dict = {}
    for c, s, comp in zip(top.items[0], top.scores[0], top.components[0]):
        latest = []
        for src, dst in reversed(authored):
            if src == c and dst not in latest:
                latest.append(dst)
        for j, m in enumerate(latest[:per_via]):
            if m not in best or float(s) / (j + 1) > best[m][0]:
                best[m] = (float(s) / (j + 1), int(c), int(comp))
    rows = sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[:k]
    media, creators = model.ids["media"], model.ids["creator"]
    return [(media[m], sc, creators[c], comp) for m, (sc, c, comp) in rows]


def served(body: dict) -> list[tuple]:
    return [(c["item"], c["score"], c["seed"], c["component"]) for c in body["items"]]


@pytest.mark.parametrize("consumer", [0, 5, 41, 119])
def test_http_two_hop_equals_the_hand_worked_ranking_with_seed_creators(client, model, consumer):
    raw = model.ids["consumer"][consumer]
    r = client.post("/v1/query", json={"user": raw, "query": TWO_HOP.to_dict(), "source_type": "consumer",
                                       "target_type": "media"})
    assert r.status_code == 200, r.text
    body = r.json()
    want = by_hand(model, consumer)
    assert want and (body["source_type"], body["target_type"]) == ("consumer", "media")
    got = served(body)
    assert [g[0] for g in got] == [w[0] for w in want] and [g[2:] for g in got] == [w[2:] for w in want]
    np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], rtol=1e-12)
    assert all(c["seed_type"] == "creator" and c["source"] == "two_hop" and c["via"] == ["two_hop"]
               for c in body["items"])
    e, code = model.train_edges, model.relation_code("authored")
    authored = {(model.ids["creator"][s], model.ids["media"][d]) for s, d, r in zip(e["src"], e["dst"], e["rel"])
                if r == code}
    assert all((c["seed"], c["item"]) in authored for c in body["items"])  # every medium by its seed creator


def test_http_union_keeps_each_candidates_seed_type(client, model):
    """Mixture (consumer -> media, no seed) blended with two-hop (seed: a creator): provenance per candidate."""
    q = Query.source().mixture(k=10, exclude_seen=False).union(TWO_HOP, quotas=[10, 10])
    raw = model.ids["consumer"][7]
    body = client.post("/v1/query", json={"user": raw, "query": q.to_dict(), "source_type": "consumer",
                                          "target_type": "media"}).json()
    want = Funnel(model, target_type="media").run(q, 7).candidates
    assert [c["item"] for c in body["items"]] == model.ids["media"][want.items].tolist()
    kinds = {c["source"] for c in body["items"]}
    assert kinds == {"mixture", "two_hop"}
    creators = set(model.ids["creator"].tolist())
    for c in body["items"]:
        if c["source"] == "two_hop":
            assert c["seed_type"] == "creator" and c["seed"] in creators
        else:
            assert c["seed"] is None and c["seed_type"] is None and c["component"] >= 0


def test_http_default_types_and_history_seeds_are_unchanged(client, model):
    """Without types the funnel is consumer -> creator, as before; a history seed is a creator of that type."""
    q = Query.source().history(n=3)
    raw = model.ids["consumer"][2]
    body = client.post("/v1/query", json={"user": raw, "query": q.to_dict()}).json()
    assert (body["source_type"], body["target_type"]) == ("consumer", "creator")
    assert all(c["seed"] == c["item"] and c["seed_type"] == "creator" for c in body["items"]) and body["items"]


@pytest.mark.parametrize("extra,needle", [
    ({"target_type": "planet"}, "unknown entity type target_type='planet'; this model has ['consumer', 'creator', "
                                "'media']"),
    ({"source_type": "planet"}, "unknown entity type source_type='planet'"),
    ({}, "this funnel's items are 'creator'; build the funnel with target_type='media'"),  # default: creators
])
def test_http_bad_types_get_422_naming_them(client, model, extra, needle):
    r = client.post("/v1/query", json={"user": model.ids["consumer"][0], "query": TWO_HOP.to_dict(), **extra})
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"]


def test_http_unknown_user_of_the_source_type(client, model):
    r = client.post("/v1/query", json={"user": model.ids["media"][0], "query": TWO_HOP.to_dict(),
                                       "source_type": "consumer", "target_type": "media"})
    assert r.status_code == 404 and "unknown user id" in r.json()["error"]


def test_cli_funnel_from_to_writes_the_hand_worked_ranking_with_seed_creators(model, tmp_path, capsys):
    q = tmp_path / "q.json"
    q.write_text(json.dumps(TWO_HOP.to_dict()))
    out = tmp_path / "c.parquet"
    users = [model.ids["consumer"][i] for i in (0, 41)]
    argv = ["funnel", str(model.path), "--query", str(q), "--from", "consumer", "--to", "media", "--out", str(out)]
    assert main(argv + [x for u in users for x in ("--user", u)]) == 0
    t = pq.read_table(out).to_pydict()
    for i, u in zip((0, 41), users):
        rows = [(it, sc, sd, cp) for uu, it, sc, sd, cp in zip(t["user"], t["item"], t["score"], t["seed"],
                                                               t["component"]) if uu == u]
        want = by_hand(model, i)
        assert [r[0] for r in rows] == [w[0] for w in want] and [r[2:] for r in rows] == [w[2:] for w in want]
        np.testing.assert_allclose([r[1] for r in rows], [w[1] for w in want], rtol=1e-12)
    assert set(t["seed_type"]) == {"creator"} and set(t["source"]) == {"two_hop"}
    capsys.readouterr()
    assert main(argv[:-2] + ["--user", users[0], "--explain"]) == 0
    assert f"creator:{by_hand(model, 0)[0][2]}" in capsys.readouterr().out  # explain names the seed creator
    assert main(argv[:4] + ["--from", "consumer", "--to", "planet", "--user", users[0]]) == 2
    assert "--from/--to 'planet': not an entity type of the model" in capsys.readouterr().err
    assert main(argv[:4] + ["--user", users[0]]) == 2  # without --to: creators, so two_hop is refused
    assert "target_type='media' (mixrec funnel --to media" in capsys.readouterr().err
