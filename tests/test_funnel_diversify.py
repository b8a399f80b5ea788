"""Diversity re-ranking: MMR on the hand-worked example, the repeat penalty against a greedy loop, round-robin."""
import numpy as np
import pytest

from mixrec.funnel.diversify import (cosine_sim, jaccard_sim, mmr_order, penalty_order, rank_within_group,
                                     round_robin_order)


def test_mmr_reproduces_the_worked_example():
    # A1, A2 very similar; B1, B2 very similar; C different. Scores 1, .8, .6, .4, .2; beta 0.5.
    rel = np.array([1.0, 0.8, 0.6, 0.4, 0.2])
    sim = np.eye(5)
    sim[0, 1] = sim[1, 0] = sim[2, 3] = sim[3, 2] = 1.0
    assert mmr_order(rel, sim, 0.5).tolist() == [0, 2, 4, 1, 3]  # A1, B1, C, A2, B2
    assert mmr_order(rel, sim, 0.0).tolist() == [0, 1, 2, 3, 4]  # beta 0: plain relevance
    # only the first k positions are diversified; the rest follow by relevance
    assert mmr_order(rel, sim, 0.5, k=2).tolist() == [0, 2, 1, 3, 4]


def greedy_penalty(scores, keys, penalty):
    left, count, out = list(range(len(scores))), {}, []
    while left:
        adj = [scores[i] - penalty * (count.get(keys[i], 0) if keys[i] >= 0 else 0) for i in left]
        best = max(range(len(left)), key=lambda j: (adj[j], -left[j]))
        i = left.pop(best)
        out.append(i)
        count[keys[i]] = count.get(keys[i], 0) + 1
    return out


@pytest.mark.parametrize("seed", range(5))
def test_penalty_equals_the_greedy_procedure(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.random(30), 3)
    keys = rng.integers(-1, 4, 30)
    order, adj = penalty_order(scores, keys, 0.15)
    assert order.tolist() == greedy_penalty(scores, keys, 0.15)
    assert np.all(np.diff(adj) <= 0)


def test_penalty_hand_example_grows_down_the_list():
    order, adj = penalty_order(np.array([5.0, 4.0, 3.0, 2.0, 1.0]), np.array([0, 0, 0, 1, 1]), 1.5)
    assert order.tolist() == [0, 1, 3, 2, 4]
    np.testing.assert_allclose(adj, [5.0, 2.5, 2.0, 0.0, -0.5])
    same, _ = penalty_order(np.array([3.0, 2.0, 1.0]), np.array([0, 0, 0]), 0.0)
    assert same.tolist() == [0, 1, 2]


def test_round_robin_by_key():
    scores = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0])
    keys = np.array([1, 1, 2, 1, 3, 2, -1])
    # keys by best score: 1 (9), 2 (7), 3 (5), solo (3); then second items of 1 and 2, then third of 1
    assert round_robin_order(scores, keys).tolist() == [0, 2, 4, 6, 1, 5, 3]


def test_rank_within_group_and_similarities():
    assert rank_within_group(np.array([2, 1, 2, 2, 1]), np.array([0.1, 0.9, 0.5, 0.3, 0.2])).tolist() == \
        [2, 0, 0, 1, 1]
    hot = np.array([[1, 1, 0], [0, 1, 1], [0, 0, 0]])
    np.testing.assert_allclose(jaccard_sim(hot), [[1, 1 / 3, 0], [1 / 3, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(cosine_sim(np.array([[1.0, 0], [1, 1], [0, 0]])),
                               [[1, 2 ** -0.5, 0], [2 ** -0.5, 1, 0], [0, 0, 0]], atol=1e-12)
