"""Graphs with several entity types: eq. 5 over every edge of a node, seen-exclusion and evaluation per type."""
import numpy as np
import pytest
import torch

from mixrec.config import Config
from mixrec.data.dataset import Dataset, Edges, Relation
from mixrec.evaluate import evaluate
from mixrec.evaluate.exact import sample_recall
from mixrec.model import MixtureModel
from mixrec.model.functional import product
from mixrec.retrieve import Retriever
from mixrec.weights import compute_weight_sets


def _edges(src, dst, rel) -> Edges:
    src, dst, rel = (np.asarray(a, dtype=np.int64) for a in (src, dst, rel))
    return Edges(src, dst, rel, np.ones(len(src), np.float32))


def typed_dataset(relations: list[Relation], counts: dict[str, int], train: list, test: list | None = None,
                  seed: int = 0) -> Dataset:
    """A dataset with raw ids = dense index per type; ``train``/``test`` are (src, dst, rel code) triples."""
    ids = {t: np.arange(n, dtype=np.int64) for t, n in counts.items()}
    edges = {"train": _edges(*zip(*train))}
    if test:
        edges["test"] = _edges(*zip(*test))
    return Dataset(ids=ids, relations=relations, edges=edges)


def random_edges(rng, n_src, n_dst, n, code):
    return [(int(s), int(d), code) for s, d in zip(rng.integers(0, n_src, n), rng.integers(0, n_dst, n))]


def model_of(ds: Dataset, **over) -> MixtureModel:
    cfg = Config().with_overrides({"dim": 6, "components.user": 3, "components.item": 2, "init_scale": 1.0,
                                   **over})
    return MixtureModel.initialise(ds, cfg)


# ---------------------------------------------------------------------------------------------- eq. 5
def literal_eq5(model: MixtureModel, codes: list[int], gamma: float) -> dict[str, np.ndarray]:
    """Eq. 5 by a loop over edges: every edge in which a node takes part adds sum_l exp(M_cl / gamma) to w_nc."""
    acc = {t: np.zeros((model.num(t), model.components(t))) for t in model.tables}
    e = model.train_edges
    for s, d, r in zip(e["src"], e["dst"], e["rel"]):
        if r not in codes:
            continue
        rel = model.relations[r]
        m = product(model.tables[rel.source_type][s], model.tables[rel.target_type][d]).double().numpy()
        x = np.exp(m / gamma)
        acc[rel.source_type][s] += x.sum(1)
        acc[rel.target_type][d] += x.sum(0)
    touched = {model.relations[c].source_type for c in codes} | {model.relations[c].target_type for c in codes}
    out = {}
    for t in touched:
        w = acc[t]
        empty = w.sum(1) == 0
        w[empty] = 1.0 / w.shape[1]
        out[t] = w / w.sum(1, keepdims=True)
    return out


@pytest.fixture(scope="module")
def user_item_user():
    rng = np.random.default_rng(3)
    rels = [Relation("click", "user", "item"), Relation("follow", "user", "user")]
    train = random_edges(rng, 12, 9, 60, 0) + random_edges(rng, 12, 12, 25, 1)
    return typed_dataset(rels, {"user": 12, "item": 9}, train)


@pytest.mark.parametrize("weight_set", [None, ["click"], ["follow"]])
def test_weights_sum_every_edge_of_a_node_across_type_pairs(user_item_user, weight_set):
    """User->item plus user->user: one normalisation over all of a user's edges, as a source and as a target."""
    model = model_of(user_item_user, **({} if weight_set is None else {"weight_sets.all.relations": weight_set}))
    got = compute_weight_sets(model)["all"]
    codes = [0, 1] if weight_set is None else [model.relation_code(r) for r in weight_set]
    want = literal_eq5(model, codes, model.config.weight_sets["all"].gamma)
    assert set(got) == set(want)
    for t in want:
        np.testing.assert_allclose(got[t], want[t], rtol=1e-4, atol=1e-6)


def test_weights_across_pairs_hand_case():
    """One user: three item edges explained by component 0, one follow edge explained by component 1."""
    rels = [Relation("click", "user", "item"), Relation("follow", "user", "user")]
    ds = typed_dataset(rels, {"user": 2, "item": 3}, [(0, 0, 0), (0, 1, 0), (0, 2, 0), (0, 1, 1)])
    model = model_of(ds, **{"components.user": 2, "components.item": 1, "weight_sets.all.gamma": 1.0})
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    model.tables["user"] = torch.stack([torch.stack([e0, e1]), torch.stack([e1, e1])])
    model.tables["item"] = torch.stack([e0, e0, e0]).unsqueeze(1)
    w = compute_weight_sets(model)["all"]["user"]
    e = np.e
    # clicks: 3 * (e^1, e^0); follow as source (user 1 = [e1, e1]): (2 e^0, 2 e^1); one normalisation
    want = np.array([3 * e + 2, 3 + 2 * e]) / (5 * e + 5)  # averaging per type pair would give (0.5, 0.5)
    np.testing.assert_allclose(w[0], want, rtol=1e-5)
    # user 1 is only a follow target: both its components are e1; the column sums are (e^0 + e^1) each
    np.testing.assert_allclose(w[1], [0.5, 0.5], rtol=1e-5)


# ----------------------------------------------------------------------------------- seen per type
@pytest.fixture(scope="module")
def click_and_tag():
    """Clicks user->item, follows user->tag, related item->item; test clicks on items whose ids are followed tags."""
    rels = [Relation("click", "user", "item"), Relation("follow", "user", "tag"), Relation("related", "item", "item")]
    train = [(0, 0, 0), (0, 3, 0), (0, 1, 1), (0, 2, 1), (1, 4, 0), (1, 0, 1), (0, 5, 2), (3, 4, 2)]
    test = [(0, 1, 0), (0, 2, 0), (1, 0, 0), (0, 0, 1), (1, 2, 1)]
    return typed_dataset(rels, {"user": 2, "item": 6, "tag": 3}, train, test)


def naive_seen(model, codes, n_rows) -> list[set]:
    e = model.train_edges
    out = [set() for _ in range(n_rows)]
    for s, d, r in zip(e["src"], e["dst"], e["rel"]):
        if r in codes:
            out[s].add(int(d))
    return out


def _rows(csr, n):
    return [set(csr[1][csr[0][u]:csr[0][u + 1]].tolist()) for u in range(n)]


def test_seen_stays_within_the_destination_type(click_and_tag):
    model = model_of(click_and_tag)
    assert _rows(model.seen(), 2) == naive_seen(model, [0], 2)  # default pair user->item: clicks only
    assert _rows(model.seen(target_type="tag"), 2) == naive_seen(model, [1], 2)
    assert _rows(model.seen(source_type="item", target_type="item"), 6) == naive_seen(model, [2], 6)
    with pytest.raises(ValueError, match="follow"):
        model.seen(["follow"])  # user->tag relation asked for user->item exclusion


def test_retriever_exclude_seen_removes_only_items(click_and_tag):
    model = model_of(click_and_tag, **{"components.user": 1, "components.item": 1})
    got = Retriever(model).recommend([0, 1], k=6, exclude_seen=True)
    for u, seen in enumerate(naive_seen(model, [0], 2)):
        items = [i for i in got.items[u].tolist() if i >= 0]
        assert sorted(items) == sorted(set(range(6)) - seen)  # k = all items: exactly the unseen ones


def test_sample_recall_excludes_only_items(click_and_tag):
    """Held-out clicks on items 1, 2 (ids of user 0's followed tags) stay rankable: recall@all = 1."""
    model = model_of(click_and_tag, **{"components.user": 1, "components.item": 1})
    assert sample_recall(model, click_and_tag, "test", 4, 10, 0) == 1.0


def test_evaluate_scores_each_relation_against_its_destination_type(click_and_tag):
    model = model_of(click_and_tag, **{"components.user": 1, "components.item": 1, "components.tag": 1})
    k = 2
    rep = evaluate(model, click_and_tag, ks=[k], methods=["exact"], exclude_seen="all")
    assert set(rep["relations"]) == {"click", "follow"}  # 'related' has no test edges
    u = model.vectors("user")[:, 0].numpy()
    for name, t, code in (("click", "item", 0), ("follow", "tag", 1)):
        v = model.vectors(t)[:, 0].numpy()
        seen = naive_seen(model, [code], 2)
        test = click_and_tag.split("test", relations=[name])
        recalls = []
        for user in np.unique(test.src):
            s = u[user] @ v.T
            s[list(seen[user])] = -np.inf
            top = [i for i in np.argsort(-s, kind="stable")[:k] if np.isfinite(s[i])]
            truth = set(test.dst[test.src == user].tolist())
            recalls.append(len(truth & set(top)) / len(truth))
        assert rep["relations"][name]["exact"][f"recall@{k}"] == pytest.approx(np.mean(recalls)), name
        assert rep["relations"][name]["target_type"] == t


# ---------------------------------------------------------------------------------- user->user funnel
def test_friends_then_similar_is_empty_for_a_user_without_friends():
    """history(follow) -> similar on user->user: a user with no follows gets no candidates (not an error)."""
    from mixrec.funnel import Funnel, Query

    rels = [Relation("click", "user", "item"), Relation("follow", "user", "user")]
    ds = typed_dataset(rels, {"user": 4, "item": 3}, [(0, 0, 0), (3, 1, 0), (0, 1, 1), (1, 2, 1), (2, 0, 1)])
    funnel = Funnel(model_of(ds), source_type="user", target_type="user")
    assert funnel.similar(np.zeros(0, np.int64), 2).items.shape == (0, 2)
    q = Query().history(relation="follow", n=10).similar(k=2)
    assert len(funnel.run(q, 3).candidates) == 0  # user 3 follows nobody
    got = funnel.run(q, 0).candidates.items  # user 0 follows user 1: user 1's 2 nearest users
    assert sorted(got.tolist()) == sorted(funnel.similar(np.array([1]), 2).items[0].tolist())
