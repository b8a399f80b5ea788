"""Mixture diagnostics and minority-interest recall against naive loops and a hand-worked case."""
import itertools

import numpy as np
import pytest

from mixrec.evaluate.diagnostics import (component_cosine, dead_components, dominant_labels, effective_components,
                                         hit_component_share, minority_recall)
from mixrec.evaluate.labels import ItemLabels
from mixrec.evaluate.metrics import csr_from_pairs


def _labels(item_labels: list[list[int]], n_labels: int) -> ItemLabels:
    pairs = [(i, g) for i, gs in enumerate(item_labels) for g in gs]
    items, labs = (np.array(x, dtype=np.int64) for x in zip(*pairs))
    return ItemLabels.from_pairs(items, labs, len(item_labels), [f"g{j}" for j in range(n_labels)])


def test_component_cosine_matches_loop():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(7, 4, 5))
    want = []
    for node in v:
        cos = [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in itertools.combinations(node, 2)]
        want.append(np.mean(cos))
    np.testing.assert_allclose(component_cosine(v), want, rtol=1e-12)
    assert np.isnan(component_cosine(v[:, :1])).all()


def test_effective_components_by_hand_and_loop():
    w = np.array([[1.0, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0, 0]])
    np.testing.assert_allclose(effective_components(w), [1.0, 4.0, 2.0])
    rng = np.random.default_rng(1)
    w = rng.dirichlet(np.ones(3), size=5)
    want = [np.exp(-sum(p * np.log(p) for p in row)) for row in w]
    np.testing.assert_allclose(effective_components(w), want)


def test_hit_component_share_and_dead_components_by_hand():
    topk = np.array([[5, 1, 2, 3], [4, 6, 7, -1]])
    comps = np.array([[0, 1, 1, 2], [2, 2, 0, -1]])
    ptr, idx = csr_from_pairs(np.array([0, 0, 0, 1, 1]), np.array([1, 2, 9, 4, 7]), 2)
    # hits in the top 3: row 0 items 1 (comp 1), 2 (comp 1); row 1 items 4 (comp 2), 7 (comp 0)
    np.testing.assert_allclose(hit_component_share(topk, comps, ptr, idx, 3, 3), [0.25, 0.5, 0.25])
    # top 1: only row 1's item 4 (component 2)
    np.testing.assert_allclose(hit_component_share(topk, comps, ptr, idx, 1, 3), [0, 0, 1])
    w = np.array([[0.5, 0.495, 0.005], [0.2, 0.3, 0.5]])
    d = dead_components(w, comps, 3)
    # weight dead: (0, 2); unused in top 3: row 0 comps {0, 1} used -> 2 unused; row 1 {2, 0} -> 1 unused
    assert d["dead_weight"] == pytest.approx(1 / 6)
    assert d["dead_unused"] == pytest.approx(2 / 6)
    assert d["dead"] == pytest.approx(2 / 6)


def _naive_dominant(history: list[list[int]], item_labels: list[list[int]], n_labels: int, share: float):
    out = []
    for items in history:
        lab_items = [i for i in items if item_labels[i]]
        counts = [sum(g in item_labels[i] for i in lab_items) for g in range(n_labels)]
        ranking = sorted(range(n_labels), key=lambda g: (-counts[g], g))
        chosen = set()
        if lab_items:
            for g in ranking:
                chosen.add(g)
                covered = sum(bool(chosen & set(item_labels[i])) for i in lab_items)
                if covered >= share * len(lab_items):
                    break
        out.append(chosen)
    return out


def test_minority_recall_hand_worked():
    # labels: items 0-2 drama (0), items 3-4 comedy (1), item 5 horror (2), item 6 drama + horror, item 7 none
    item_labels = [[0], [0], [0], [1], [1], [2], [0, 2], []]
    labels = _labels(item_labels, 3)
    # user 0 watched 0, 1, 3 in training: drama covers 2 of 3 items >= half -> dominant {drama}
    # user 1 watched 3, 4, 0, 5: comedy covers 2/4 = half -> dominant {comedy}
    h_ptr, h_idx = csr_from_pairs(np.array([0, 0, 0, 1, 1, 1, 1]), np.array([0, 1, 3, 3, 4, 0, 5]), 2)
    dom = dominant_labels(h_ptr, h_idx, labels)
    np.testing.assert_array_equal(dom, [[True, False, False], [False, True, False]])
    # test items: user 0 -> 2 (drama: majority), 4 (comedy: minority), 5 (horror: minority), 6 (drama+horror:
    # majority), 7 (no label: left out); user 1 -> 3 (comedy: majority) only, so user 1 has no minority item
    t_ptr, t_idx = csr_from_pairs(np.array([0, 0, 0, 0, 0, 1]), np.array([2, 4, 5, 6, 7, 3]), 2)
    topk = np.array([[5, 2, 7, 4], [3, 0, 1, 2]])
    got = minority_recall(topk, t_ptr, t_idx, dom, labels, [1, 2, 4])
    # user 0 minority items {4, 5}: top1 finds 5 -> 1/2; top2 -> 1/2; top4 finds 4 too -> 1
    assert got == {"minority_recall@1": 0.5, "minority_recall@2": 0.5, "minority_recall@4": 1.0}


def test_dominant_labels_match_naive_loop():
    rng = np.random.default_rng(3)
    n_items, n_labels = 40, 6
    item_labels = [sorted(rng.choice(n_labels, rng.integers(0, 3), replace=False).tolist()) for _ in range(n_items)]
    labels = _labels(item_labels + [[0]], n_labels)  # an extra item so that every label id is in range
    labels = ItemLabels(labels.indptr[:-1], labels.indices[:labels.indptr[-2]], labels.names)
    history = [sorted(rng.choice(n_items, rng.integers(0, 12), replace=False).tolist()) for _ in range(25)]
    rows = np.repeat(np.arange(len(history)), [len(h) for h in history])
    ptr, idx = csr_from_pairs(rows, np.concatenate([np.array(h, np.int64) for h in history]), len(history))
    for share in (0.3, 0.5, 0.8):
        got = dominant_labels(ptr, idx, labels, share)
        want = _naive_dominant(history, item_labels, n_labels, share)
        assert [set(np.flatnonzero(r).tolist()) for r in got] == want
