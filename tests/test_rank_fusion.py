"""Reciprocal-rank fusion of ranked lists (mixrec.search.rank_fusion) and the funnel's ``union(combine="sum")``."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixrec.funnel.query import Query, QueryError
from mixrec.funnel.sources import CandidateSet, blend
from mixrec.search import rank_fusion


def naive_fusion(lists, weights, k, offset):
    """Per row: a dict item -> sum of w / (offset + rank), the largest term's list; sorted by (-sum, item)."""
    out = []
    for row in range(lists[0].shape[0]):
        total, best = {}, {}
        for i, (ids, w) in enumerate(zip(lists, weights)):
            for r, item in enumerate(ids[row]):
                if item < 0:
                    continue
                t = w / (offset + r + 1)
                total[int(item)] = total.get(int(item), 0.0) + t
                if int(item) not in best or t > best[int(item)][0]:
                    best[int(item)] = (t, i)
        ranked = sorted(total, key=lambda d: (-total[d], d))[:k]
        out.append([(d, total[d], best[d][1]) for d in ranked])
    return out


def test_hand_worked_two_lists():
    a = np.array([[5, 7, 9]])
    b = np.array([[7, 1, -1]])
    got = rank_fusion([a, b], [1.0, 0.5], k=4)
    # 5: 1/1 = 1; 7: 1/2 + 0.5/1 = 1; 9: 1/3; 1: 0.5/2 = 0.25. Tie 5 vs 7 -> lower id first.
    assert got.items.tolist() == [[5, 7, 9, 1]]
    np.testing.assert_allclose(got.scores, [[1.0, 1.0, 1 / 3, 0.25]], rtol=1e-6)
    assert got.components.tolist() == [[0, 0, 0, 1]]  # 7: both terms 0.5, the first list wins the tie


def test_offset_and_padding():
    a = np.array([[3, -1], [-1, -1]])
    got = rank_fusion([a], [2.0], k=3, offset=60.0)
    assert got.items.tolist() == [[3, -1, -1], [-1, -1, -1]]
    np.testing.assert_allclose(got.scores[0, 0], 2.0 / 61, rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 6), st.integers(1, 8), st.floats(0, 5), st.data())
def test_matches_naive_loop(rows, n_lists, width, k, offset, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 10_000)))
    lists = []
    for _ in range(n_lists):
        ids = np.full((rows, width), -1, np.int64)
        for r in range(rows):
            m = int(rng.integers(0, width + 1))
            ids[r, :m] = rng.choice(12, m, replace=False)
        lists.append(ids)
    weights = [float(w) for w in rng.uniform(0.1, 2.0, n_lists)]
    got = rank_fusion(lists, weights, k, offset)
    for r, want in enumerate(naive_fusion(lists, weights, k, offset)):
        n = len(want)
        assert got.items[r, :n].tolist() == [d for d, _, _ in want]
        np.testing.assert_allclose(got.scores[r, :n], [s for _, s, _ in want], rtol=1e-5)
        assert got.components[r, :n].tolist() == [i for _, _, i in want]
        assert (got.items[r, n:] == -1).all()


def test_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="one weight per list"):
        rank_fusion([np.zeros((1, 2), np.int64)], [1.0, 2.0], k=2)
    with pytest.raises(ValueError, match="same rows"):
        rank_fusion([np.zeros((1, 2), np.int64), np.zeros((2, 2), np.int64)], [1.0, 1.0], k=2)


def test_blend_sum_equals_rank_fusion_of_one_row():
    a = CandidateSet.make(np.array([4, 2, 8]), np.array([0.9, 0.5, 0.1]), "mixture")
    b = CandidateSet.make(np.array([2, 6]), np.array([3.0, 1.0]), "graph")
    got = blend([a, b], [1.0, 0.7], [None, None], combine="sum", offset=2.0)
    want = rank_fusion([np.array([[4, 2, 8]]), np.array([[2, 6]])], [1.0, 0.7], k=4, offset=2.0)
    assert got.items.tolist() == want.items[0].tolist()
    np.testing.assert_allclose(got.scores, want.scores[0], rtol=1e-6)
    assert got.sources_of(int(np.flatnonzero(got.items == 2)[0])) == ["mixture", "graph"]
    interleave = blend([a, b], [1.0, 0.7], [None, None])  # the default keeps an item's best occurrence
    assert interleave.items.tolist()[:2] == [4, 2] and interleave.scores[1] == pytest.approx(0.7)


def test_union_query_validates_combine():
    q = Query.source().mixture(k=5).union(Query.source().popular(k=5), combine="sum", offset=60)
    assert Query.from_dict(q.to_dict()).to_dict() == q.to_dict()
    with pytest.raises(QueryError, match="combine"):
        Query.from_dict(Query.source().mixture(k=5).union(Query.source().popular(k=5), combine="avg").to_dict())
