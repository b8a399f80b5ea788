"""The model directory, exact ranking against a numpy oracle, retrieval vs exact, and the evaluate() report."""
import numpy as np
import pytest
import torch

from mixrec.config import Config
from mixrec.data.dataset import Dataset
from mixrec.evaluate import evaluate
from mixrec.evaluate.exact import csr_rows, exact_topk
from mixrec.evaluate.labels import ItemLabels
from mixrec.model import MixtureModel
from mixrec.retrieve import Retriever
from mixrec.train import train

CFG = {"dim": 8, "epochs": 3, "batch_size": 256, "negatives.batch": 32, "negatives.uniform": 32, "lr": 0.5,
       "init_scale": 0.1, "margin": 0.3, "components.user": 3}


@pytest.fixture(scope="module")
def trained(planted, tmp_path_factory):
    ds, _ = planted
    out = tmp_path_factory.mktemp("m") / "model"
    return train(ds, Config().with_overrides(CFG), out, progress=False), ds


def test_csr_rows_selects_rows():
    indptr, indices = np.array([0, 2, 2, 5]), np.array([1, 4, 0, 2, 3])
    pos, cols = csr_rows(indptr, indices, np.array([2, 0]))
    assert pos.tolist() == [0, 0, 0, 1, 1] and cols.tolist() == [0, 2, 3, 1, 4]


def test_exact_topk_matches_numpy_oracle_with_exclusions(trained):
    model, _ = trained
    users = np.array([0, 5, 17, 42])
    seen = model.seen()
    top, scores = exact_topk(model, users, 10, seen, batch=3)
    full = model.score(users).numpy()
    for row, u in enumerate(users):
        s = full[row].copy()
        s[seen[1][seen[0][u]:seen[0][u + 1]]] = -np.inf
        want = np.argsort(-s, kind="stable")[:10]
        np.testing.assert_allclose(scores[row], s[want], rtol=1e-5)
        assert set(top[row]) == set(want) or np.allclose(np.sort(s[top[row]]), np.sort(s[want]))


def test_model_round_trip(trained):
    model, _ = trained
    back = MixtureModel.load(model.path)
    for t in model.tables:
        assert torch.allclose(back.vectors(t), model.vectors(t), atol=1e-6)
        np.testing.assert_array_equal(back.ids[t], model.ids[t])
    np.testing.assert_allclose(back.weights["all"]["user"], model.weights["all"]["user"])
    assert back.config == model.config


def test_retrieval_excludes_seen_and_agrees_with_exact_for_single_component(planted):
    ds, _ = planted
    model = train(ds, Config().with_overrides({**CFG, "components.user": 1}), progress=False)
    users = np.arange(40)
    cands = Retriever(model).recommend(users, k=10)
    top, _ = exact_topk(model, users, 10, model.seen())
    # with C_s = C_d = 1, round-robin is a plain nearest-neighbour search: the same items in the same order
    np.testing.assert_array_equal(cands.items, top)
    indptr, indices = model.seen()
    for row, u in enumerate(users):
        assert not set(cands.items[row]) & set(indices[indptr[u]:indptr[u + 1]])


def test_similar_never_returns_the_item_itself(trained):
    model, _ = trained
    c = Retriever(model).similar(np.arange(20), k=5)
    assert (c.items != np.arange(20)[:, None]).all() and (c.items >= 0).all()


def test_evaluate_reports_both_methods_per_relation(trained):
    model, ds = trained
    n = ds.num("item")
    labels = ItemLabels.from_pairs(np.arange(n), np.arange(n) % 4, n, ["a", "b", "c", "d"])
    rep = evaluate(model, ds, [5, 10], labels=labels)
    assert set(rep["relations"]) == {"click", "like"}
    for res in rep["relations"].values():
        for method in ("exact", "retrieval"):
            m = res[method]
            assert 0 <= m["recall@5"] <= m["recall@10"] <= 1
            assert 0 <= m["div@10"] <= 1 and 0 < m["catalog_coverage@10"] <= 1
    none = evaluate(model, ds, [10], exclude_seen="none", methods=["exact"])
    alls = evaluate(model, ds, [10], exclude_seen="all", methods=["exact"])
    # with nothing excluded the (train-heavy) top-10 hits fewer test items
    assert none["relations"]["click"]["exact"]["recall@10"] < alls["relations"]["click"]["exact"]["recall@10"]


def test_evaluate_rejects_bad_arguments(trained):
    model, ds = trained
    with pytest.raises(ValueError, match="exclude_seen"):
        evaluate(model, ds, [5], exclude_seen="some")
    with pytest.raises(ValueError, match="method"):
        evaluate(model, ds, [5], methods=["sampled"])


def test_index_of_maps_raw_ids(planted):
    ds, _ = planted
    raw = ds.ids["user"][[3, 0]]
    assert ds.index_of("user", list(raw) + ["nobody"]).tolist() == [3, 0, -1]
    ints = Dataset({"item": np.array([7, 9])}, [], {})
    assert ints.index_of("item", ["9", 7, "007"]).tolist() == [1, 0, -1]


def test_evaluate_diagnostics_and_minority_recall_follow_the_retrieved_lists(trained):
    from mixrec.evaluate import format_report
    from mixrec.evaluate.diagnostics import dominant_labels, effective_components, hit_component_share
    from mixrec.evaluate.metrics import csr_from_pairs
    model, ds = trained
    n = ds.num("item")
    labels = ItemLabels.from_pairs(np.arange(n), np.arange(n) % 4, n, ["a", "b", "c", "d"])
    rep = evaluate(model, ds, [5, 10], relation="click", labels=labels)
    e = ds.split("test", relations=["click"])
    users = np.unique(e.src)
    truth = csr_from_pairs(np.searchsorted(users, e.src), e.dst, len(users))
    _, cands = Retriever(model).recommend_all(10, users=users, progress=False)
    share = rep["diagnostics"]["relations"]["click"]["component_hit_share@10"]
    np.testing.assert_allclose(share, hit_component_share(cands.items, cands.components, *truth, 10, 3))
    assert sum(share) == pytest.approx(1.0)
    w = model.mixture_weights("user")
    assert rep["diagnostics"]["model"]["effective_components"] == pytest.approx(effective_components(w).mean())
    # minority recall by a loop over users: test items whose one label is not the user's dominant label
    dom = dominant_labels(*csr_from_pairs(*csr_rows(*model.seen(), users), len(users)), labels)
    rec = []
    for row in range(len(users)):
        items = [i for i in truth[1][truth[0][row]:truth[0][row + 1]] if not dom[row, i % 4]]
        if items:
            rec.append(len(set(items) & set(cands.items[row, :10])) / len(items))
    assert rep["relations"]["click"]["retrieval"]["minority_recall@10"] == pytest.approx(np.mean(rec))
    assert "minority_recall@10" in format_report(rep) and "hits found by component" in format_report(rep)
