"""Baselines for the quality benchmark: top-k with exclusion, popularity, hold-out slices, implicit's ALS."""
import numpy as np
import pytest

from mixrec.baselines import (ALSParams, factor_topk, holdout_split, popularity_scores, popularity_topk,
                              topk_by_score)
from mixrec.evaluate.metrics import csr_from_pairs


def _naive_topk(scores, k, excluded):
    out = []
    for u, row in enumerate(scores):
        cand = [(-s, i) for i, s in enumerate(row) if i not in excluded.get(u, ())]
        top = [i for _, i in sorted(cand)[:k]]
        out.append(top + [-1] * (k - len(top)))
    return np.array(out)


def test_topk_by_score_matches_a_naive_loop_with_exclusion():
    rng = np.random.default_rng(0)
    scores = rng.random((7, 12)).astype(np.float32)
    excluded = {0: {1, 2}, 3: set(range(10)), 6: {11}}
    pairs = [(u, i) for u, s in excluded.items() for i in s]
    excl = csr_from_pairs(np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs]), 7)
    got = topk_by_score(lambda u: scores[u], np.arange(7), 4, excl, batch=3)
    np.testing.assert_array_equal(got, _naive_topk(scores, 4, excluded))
    assert list(got[3]) == sorted([10, 11], key=lambda i: -scores[3, i]) + [-1, -1]  # only two items left


def test_popularity_ranks_by_training_count_per_user():
    dst = np.array([2, 2, 2, 0, 0, 3])
    np.testing.assert_array_equal(popularity_scores(dst, 5), [2, 0, 3, 1, 0])
    excl = csr_from_pairs(np.array([1]), np.array([2]), 2)
    top = popularity_topk(dst, 5, np.array([0, 1]), 3, excl)
    np.testing.assert_array_equal(top, [[2, 0, 3], [0, 3, 1]])


def test_holdout_split_takes_a_fraction_per_user_and_keeps_one_edge():
    src = np.repeat(np.arange(4), [10, 1, 20, 3])
    dst = np.arange(len(src))
    hold = holdout_split(src, dst, 0.2, seed=1)
    per_user = np.bincount(src[hold], minlength=4)
    np.testing.assert_array_equal(per_user, [2, 0, 4, 0])
    assert np.array_equal(hold, holdout_split(src, dst, 0.2, seed=1))
    assert not np.array_equal(hold, holdout_split(src, dst, 0.2, seed=2))


def test_factor_topk_is_the_dot_product_ranking():
    uf = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    itf = np.array([[0.9, 0.1], [0.1, 0.9], [0.5, 0.5]], dtype=np.float32)
    np.testing.assert_array_equal(factor_topk(uf, itf, np.array([0, 1]), 2), [[0, 2], [1, 2]])


def test_als_recovers_block_structure():
    pytest.importorskip("implicit")
    from mixrec.baselines import fit_als

    # two user groups, each interacting with its own half of the items (one item held out per user)
    users, items = np.meshgrid(np.arange(40), np.arange(20), indexing="ij")
    block = (users < 20) == (items < 10)
    src, dst = users[block], items[block]
    keep = dst % 10 != (src % 10)
    uf, itf = fit_als(src[keep], dst[keep], 40, 20, ALSParams(factors=4, regularization=0.1, iterations=10))
    excl = csr_from_pairs(src[keep], dst[keep], 40)
    top = factor_topk(uf, itf, np.arange(40), 1, excl)[:, 0]
    assert np.mean((top < 10) == (np.arange(40) < 20)) >= 0.9  # chance: 1 in 11
