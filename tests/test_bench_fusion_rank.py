"""bench/fusion_rank.py: the union of two ranked lists with its features, labels and the ranker's order,
against a naive per-user loop."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import load_bench


@pytest.fixture()
def fr(monkeypatch):
    yield from load_bench(monkeypatch, "fusion_rank")


def _model(scores: np.ndarray):
    """A stand-in with MixtureModel.score's contract: (B, N) scores of the given sources against all items."""
    return SimpleNamespace(score=lambda users: torch.as_tensor(scores[np.asarray(users)]))


def test_union_features_match_a_naive_loop(fr):
    rng = np.random.default_rng(3)
    n_users, n_items, k = 5, 30, 6
    f_top = np.stack([rng.choice(n_items, k, replace=False) for _ in range(n_users)])
    m_top = np.stack([rng.choice(n_items, k, replace=False) for _ in range(n_users)])
    m_top[1, 4:] = -1  # a short list
    scores = rng.normal(size=(n_users + 2, n_items)).astype(np.float32)
    users = np.array([2, 0, 6, 1, 4])
    item_deg, user_deg = rng.integers(0, 50, n_items), rng.integers(1, 20, n_users + 2)
    u = fr.union_features(f_top, m_top, _model(scores), users, item_deg, user_deg, batch=2)
    absent = 2.0 * k
    for j, user in enumerate(users):
        want = sorted(set(f_top[j]) | set(m_top[j][m_top[j] >= 0]))
        got = u.items[j][u.items[j] >= 0]
        assert sorted(got.tolist()) == want
        best = max(scores[user][i] for i in want)
        for c, item in enumerate(u.items[j]):
            if item < 0:
                assert not u.x[j, c].any()
                continue
            rf = list(f_top[j]).index(item) + 1 if item in f_top[j] else absent
            rm = list(m_top[j]).index(item) + 1 if item in m_top[j] else absent
            row = [np.log(rf), np.log(rm), rf < absent, rm < absent, scores[user][item],
                   scores[user][item] - best, np.log1p(item_deg[item]), np.log1p(user_deg[user])]
            np.testing.assert_allclose(u.x[j, c], row, rtol=1e-5, atol=1e-6)


def test_labels_and_ranked_order(fr):
    items = np.array([[4, 7, 9, -1], [1, 2, 3, 5]])
    x = np.zeros(items.shape + (len(fr.FEATURES),), np.float32)
    u = fr.Union(items, x)
    truth = (np.array([0, 2, 3]), np.array([9, 11, 3]))  # user 0 holds out 9 and 11 (not a candidate), user 1 item 3
    np.testing.assert_array_equal(fr.labels_of(u, truth), [[0, 0, 1, 0], [0, 0, 1, 0]])

    class ByFirstFeature(torch.nn.Module):
        def forward(self, rows):
            return rows[:, :1]
    u.x[..., 0] = [[0.5, 2.0, 1.0, 9.0], [3.0, 1.0, 2.0, 0.0]]  # the padded slot's 9.0 must not win
    np.testing.assert_array_equal(fr.ranked(ByFirstFeature(), u, 4), [[7, 9, 4, -1], [1, 3, 2, 5]])


def test_folds_partition_the_rows(fr):
    parts = fr.folds(10, 3, seed=1)
    assert sorted(np.concatenate(parts).tolist()) == list(range(10))
    assert all((np.diff(p) > 0).all() for p in parts)
