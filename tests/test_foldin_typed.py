"""Fold-in of a new node of any entity type with outgoing relations (a consumer from the creators it follows, a
creator from the media it authored): near its trained self, equal to the lower-level fold-in, and the same ids
from the library, ``POST /v1/candidates/from-history`` and ``mixrec retrieve --history --from --to``."""
import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from mixrec.cli import main
from mixrec.foldin import FoldInSettings, fold_in, fold_in_model
from mixrec.retrieve import Retriever
from mixrec.serve import ServeSettings, create_app
from tests.conftest import train_explore

STEPS = 20  # fold-in steps of the HTTP and CLI comparisons


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return train_explore(tmp_path_factory.mktemp("foldin_typed"), dim=16, epochs=6)


@pytest.fixture(scope="module")
def client(model):
    app = create_app(ServeSettings(model_dir=str(model.path), max_k=30, foldin_steps=STEPS))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def histories(model, relation: str, nodes) -> tuple[np.ndarray, list[np.ndarray]]:
    """The nodes (of the relation's source type) with training edges of ``relation``, and their destinations."""
    e, code = model.train_edges, model.relation_code(relation)
    hist = [e["dst"][(e["src"] == n) & (e["rel"] == code)] for n in nodes]
    keep = [i for i, h in enumerate(hist) if len(h)]
    return np.asarray(nodes)[keep], [hist[i] for i in keep]


@pytest.mark.parametrize("relation,k", [("follow", 5), ("like", 10), ("authored", 10)])
def test_a_known_node_folded_from_its_own_history_shares_its_trained_candidates(model, relation, k):
    """Folded in from its own training destinations, a node retrieves much what its trained self retrieves."""
    rel = model.relations[model.relation_code(relation)]
    nodes, hist = histories(model, relation, np.arange(min(40, model.num(rel.source_type))))
    f = fold_in_model(model, hist, source_type=rel.source_type, target_type=rel.target_type)
    assert f.vectors.shape == (len(nodes), model.components(rel.source_type), model.config.dim)
    r = Retriever(model, source_type=rel.source_type, target_type=rel.target_type)
    trained = r.recommend(nodes, k).items  # training destinations of the pair excluded, as the history below
    excl = (np.repeat(np.arange(len(nodes)), [len(h) for h in hist]), np.concatenate(hist))
    folded = r.search_vectors(f.vectors, f.weights, k, excl, extra=max(len(h) for h in hist)).items
    own = np.mean([len(set(trained[i]) & set(folded[i])) / k for i in range(len(nodes))])
    other = np.mean([len(set(trained[(i + 7) % len(nodes)]) & set(folded[i])) / k for i in range(len(nodes))])
    assert own > 0.45 and own > 2 * other, (own, other)


@pytest.mark.parametrize("relation", ["follow", "like", "authored"])
def test_fold_in_model_is_the_lower_level_fold_in_with_the_types_components_and_relation_weight(model, relation):
    rel = model.relations[model.relation_code(relation)]
    _, hist = histories(model, relation, np.arange(12))
    s = FoldInSettings(steps=15)
    got = fold_in_model(model, hist, source_type=rel.source_type, target_type=rel.target_type, settings=s)
    omega = model.config.relation(relation).weight  # authored: 0.5 in the schema
    ws = model.config.weight_sets["all"]
    want = fold_in(model.vectors(rel.target_type), hist, model.config, model.components(rel.source_type),
                   edge_weights=[np.full(len(h), omega, np.float32) for h in hist], weight_gamma=ws.gamma,
                   weight_form=ws.form, settings=s)
    np.testing.assert_array_equal(got.vectors, want.vectors)
    np.testing.assert_array_equal(got.weights, want.weights)
    np.testing.assert_array_equal(got.loss, want.loss)
    codes = [np.full(len(h), model.relation_code(relation)) for h in hist]  # explicit relation codes: the same
    again = fold_in_model(model, hist, codes, source_type=rel.source_type, target_type=rel.target_type, settings=s)
    np.testing.assert_array_equal(again.vectors, got.vectors)


def test_the_default_types_are_the_models(model):
    _, hist = histories(model, "follow", np.arange(5))
    s = FoldInSettings(steps=10)
    np.testing.assert_array_equal(fold_in_model(model, hist, settings=s).vectors,
                                  fold_in_model(model, hist, source_type="consumer", target_type="creator",
                                                settings=s).vectors)


def test_wrong_type_pairs_and_relations_are_refused_naming_the_relations(model):
    h = [np.array([0, 1])]
    with pytest.raises(ValueError, match=r"no relation from 'media' to 'creator' to fold in with; fold in along one "
                                         r"of its relations: follow \(consumer -> creator\), like \(consumer -> "
                                         r"media\), authored \(creator -> media\)"):
        fold_in_model(model, h, source_type="media", target_type="creator")
    with pytest.raises(ValueError, match=r"no relation from 'creator' to 'creator'"):
        fold_in_model(model, h, source_type="creator")  # the model's target type, creator
    with pytest.raises(ValueError, match=r"relation\(s\) \['follow'\] do not go from 'creator' to 'media'; use one "
                                         r"of \['authored'\]"):
        fold_in_model(model, h, [np.full(2, model.relation_code("follow"))], source_type="creator",
                      target_type="media")
    with pytest.raises(ValueError, match=r"unknown entity type 'planet' to fold in with; the model has "
                                         r"\['consumer', 'creator', 'media'\]"):
        fold_in_model(model, h, source_type="planet")


def library(model, s_type, t_type, hist, k, exclude_seen=True):
    """The library's answer for one folded-in node: (raw target ids, scores as floats, components)."""
    c = Retriever(model, source_type=s_type, target_type=t_type).recommend_histories(
        [hist], None, k, exclude_seen=exclude_seen, settings=FoldInSettings(steps=STEPS))
    keep = c.items[0] >= 0
    return (model.ids[t_type][c.items[0][keep]].tolist(), c.scores[0][keep].astype(np.float64).tolist(),
            c.components[0][keep].tolist())


@pytest.mark.parametrize("relation", ["follow", "like", "authored"])
def test_http_from_history_between_two_types_equals_the_library(client, model, relation):
    rel = model.relations[model.relation_code(relation)]
    nodes, hist = histories(model, relation, [3, 9])
    for h in hist:
        raw = model.ids[rel.target_type][h].tolist()
        for excl in (True, False):
            r = client.post("/v1/candidates/from-history",
                            json={"items": raw, "k": 10, "source_type": rel.source_type,
                                  "target_type": rel.target_type, "exclude_seen": excl})
            assert r.status_code == 200, r.text
            body = r.json()
            assert (body["source_type"], body["target_type"]) == (rel.source_type, rel.target_type)
            got = ([c["item"] for c in body["items"]], [c["score"] for c in body["items"]],
                   [c["component"] for c in body["items"]])
            assert got == library(model, rel.source_type, rel.target_type, h, 10, excl)
            assert len(body["mixture_weights"]) == model.components(rel.source_type)
            if excl:
                assert not set(got[0]) & set(raw)


def test_http_default_types_are_unchanged(client, model):
    _, hist = histories(model, "follow", [4])
    body = client.post("/v1/candidates/from-history",
                       json={"items": model.ids["creator"][hist[0]].tolist(), "k": 10}).json()
    assert (body["source_type"], body["target_type"]) == ("consumer", "creator")
    assert [c["item"] for c in body["items"]] == library(model, "consumer", "creator", hist[0], 10)[0]


@pytest.mark.parametrize("extra,status,needle", [
    ({"source_type": "planet"}, 422, "unknown entity type source_type='planet'; this model has ['consumer', "
                                     "'creator', 'media']"),
    ({"target_type": "planet"}, 422, "unknown entity type target_type='planet'"),
    ({"source_type": "media", "target_type": "creator"}, 422, "no relation from 'media' to 'creator' to fold in "
                                                              "with; fold in along one of its relations: follow "
                                                              "(consumer -> creator)"),
    ({"source_type": "creator", "target_type": "media", "relations": ["like"]}, 422,
     "relation(s) ['like'] do not go from 'creator' to 'media'; use one of ['authored']"),
    ({"source_type": "creator", "target_type": "media"}, 404, "unknown item id(s)"),  # creator ids are not media
    ({"source_type": 3}, 422, "source_type"),
])
def test_http_bad_types_get_json_errors(client, model, extra, status, needle):
    items = model.ids["creator"][:1].tolist()
    body = {"items": items, "k": 5, **extra}
    if "relations" in body:
        body["items"] = model.ids["media"][:1].tolist()
    r = client.post("/v1/candidates/from-history", json=body)
    assert r.status_code == status, r.text
    assert needle in r.text


def test_cli_retrieve_history_from_to_equals_the_library(model, tmp_path, capsys):
    nodes, hist = histories(model, "authored", np.arange(6))
    ids = model.ids["media"]
    f = tmp_path / "hist.csv"
    f.write_text("\n".join(["user,item"] + [f"new{i},{ids[m]}" for i, h in enumerate(hist) for m in h]) + "\n")
    out = tmp_path / "c.parquet"
    assert main(["retrieve", str(model.path), "--history", str(f), "--from", "creator", "--to", "media", "--k", "8",
                 "--out", str(out), "--foldin-steps", str(STEPS), "--quiet"]) == 0
    t = pq.read_table(out).to_pydict()
    for i, h in enumerate(hist):
        rows = [(rk, it, sc, cp) for u, rk, it, sc, cp in zip(t["user"], t["rank"], t["item"], t["score"],
                                                             t["component"]) if u == f"new{i}"]
        items, scores, comps = library(model, "creator", "media", h, 8)
        assert [x[0] for x in rows] == list(range(1, len(items) + 1))
        assert [x[1] for x in rows] == items and [x[3] for x in rows] == comps
        np.testing.assert_allclose([x[2] for x in rows], scores, rtol=1e-6)
    assert "folded-in users" in capsys.readouterr().out
    assert main(["retrieve", str(model.path), "--history", str(f), "--from", "media", "--to", "creator",
                 "--out", str(out), "--quiet"]) == 2
    assert "no relation from 'media' to 'creator'" in capsys.readouterr().err
