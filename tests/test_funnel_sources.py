"""Candidate sets: de-duplication with provenance, the quota blend, history order, popularity, expansion."""
import numpy as np
import pytest

from mixrec.funnel.sources import (SOURCE_CODE, CandidateSet, aggregate, blend, dedup, expand_neighbours,
                                   history_csr, history_source, popular_source)
from mixrec.retrieve import Candidates


def cs(items, scores, source, seed=None):
    return CandidateSet.make(items, scores, source, seed=seed)


def test_dedup_keeps_best_occurrence_and_all_provenance():
    a = CandidateSet.concat([cs([1, 2, 3], [0.9, 0.5, 0.1], "mixture"), cs([3, 2, 4], [0.8, 0.2, 0.3], "walk",
                                                                             seed=[7, 8, 9])])
    out = dedup(a)
    assert out.items.tolist() == [1, 3, 2, 4]
    assert out.scores.tolist() == [0.9, 0.8, 0.5, 0.3]
    assert out.source.tolist() == [SOURCE_CODE[s] for s in ("mixture", "walk", "mixture", "walk")]
    assert out.seed.tolist() == [-1, 7, -1, 9]  # the kept occurrence's seed
    assert out.sources_of(1) == ["mixture", "walk"] and out.sources_of(2) == ["mixture", "walk"]
    assert out.sources_of(0) == ["mixture"] and out.sources_of(3) == ["walk"]


def test_blend_hand_worked_weights_and_quotas():
    a = cs([10, 11, 12, 13], [4, 3, 2, 1], "mixture")
    b = cs([12, 20, 21], [9, 8, 7], "similar")
    c = cs([30, 10], [5, 4], "popular")
    out = blend([a, b, c], weights=[1.0, 3.0, 0.5], quotas=[3, 2, None])
    # a: 10 -> 1, 11 -> 1/2, 12 -> 1/3 (13 cut by the quota); b: 12 -> 3, 20 -> 3/2 (21 cut);
    # c: 30 -> 0.5, 10 -> 0.25 (10 kept from a with 1.0)
    assert out.items.tolist() == [12, 20, 10, 11, 30]
    np.testing.assert_allclose(out.scores, [3.0, 1.5, 1.0, 0.5, 0.5])
    assert out.sources_of(0) == ["mixture", "similar"]
    assert out.sources_of(2) == ["mixture", "popular"]
    assert 13 not in out.items and 21 not in out.items
    assert blend([a, b, c], [1.0, 3.0, 0.5], [3, 2, None], k=2).items.tolist() == [12, 20]


def test_blend_quota_counts_before_dedup_and_checks_lengths():
    a = cs([1, 2], [2, 1], "mixture")
    b = cs([1, 2, 3], [3, 2, 1], "walk")
    assert sorted(blend([a, b], [1, 1], [2, 2]).items.tolist()) == [1, 2]
    with pytest.raises(ValueError, match="one weight and one quota per input"):
        blend([a, b], [1], [2, 2])


def test_history_csr_orders_by_last_occurrence_and_dedups():
    src = np.array([0, 0, 1, 0, 0, 1])
    dst = np.array([5, 6, 7, 5, 8, 7])
    indptr, items = history_csr(src, dst, 3)
    assert items[indptr[0]:indptr[1]].tolist() == [6, 5, 8]  # 5 was seen again after 6
    assert items[indptr[1]:indptr[2]].tolist() == [7]
    assert indptr[3] == indptr[2]
    h = history_source(indptr, items, 0, 2)
    assert h.items.tolist() == [8, 5] and h.seed.tolist() == [8, 5]
    np.testing.assert_allclose(h.scores, [1.0, 0.5])
    assert len(history_source(indptr, items, 2, 5)) == 0


def test_popular_source():
    counts = np.array([3.0, 10.0, 0.0, 5.0])
    ranking = np.lexsort((np.arange(4), -counts))
    p = popular_source(ranking, counts, 2)
    assert p.items.tolist() == [1, 3]
    np.testing.assert_allclose(p.scores, [1.0, 0.5])


def test_expand_neighbours_sums_contributions_and_keeps_the_strongest_seed():
    parent = cs([100, 200], [2.0, 1.0], "history", seed=[100, 200])
    neigh = Candidates(items=np.array([[1, 2, -1], [2, 3, 4]]),
                       scores=np.array([[1.0, 0.5, 0.0], [1.0, 0.5, 0.25]], np.float32),
                       components=np.zeros((2, 3), np.int64))
    out = expand_neighbours(parent, neigh, "similar")
    # parent weights 1 and 0.5: item 1 -> 1; item 2 -> 0.5 + 0.5 = 1 (seed: tie, lower seed 100);
    # item 3 -> 0.25; item 4 -> 0.125
    assert out.items.tolist() == [1, 2, 3, 4]
    np.testing.assert_allclose(out.scores, [1.0, 1.0, 0.25, 0.125])
    assert out.seed.tolist() == [100, 100, 200, 200]
    assert all(out.sources_of(i) == ["similar"] for i in range(4))


def test_aggregate_matches_a_loop():
    rng = np.random.default_rng(0)
    items, contrib, seeds = rng.integers(0, 6, 40), rng.random(40), rng.integers(0, 4, 40)
    out = aggregate(items, contrib, seeds, "walk")
    for i, it in enumerate(out.items):
        m = items == it
        assert out.scores[i] == pytest.approx(contrib[m].sum())
        assert contrib[m & (seeds == out.seed[i])].max() == pytest.approx(contrib[m].max())


def test_rank_in_hand_worked_through_make_dedup_and_blend():
    m = cs([5, 6, 7], [0.2, 0.9, 0.5], "mixture")  # ordered by score: 6, 7, 5
    assert m.rank_in[:, SOURCE_CODE["mixture"]].tolist() == [1 / 3, 1.0, 1 / 2]
    assert m.rank_in[:, SOURCE_CODE["graph"]].tolist() == [0, 0, 0]
    g = cs([7, 8], [3.0, 3.0], "graph")  # a tie: item ascending, so 7 first
    out = blend([m, g], weights=[1.0, 1.0], quotas=[None, None])
    got = {int(i): r for i, r in zip(out.items, out.rank_in)}
    assert got[7][SOURCE_CODE["mixture"]] == 0.5 and got[7][SOURCE_CODE["graph"]] == 1.0
    assert got[8][SOURCE_CODE["graph"]] == 0.5 and got[8][SOURCE_CODE["mixture"]] == 0
    assert got[6][SOURCE_CODE["mixture"]] == 1.0 and got[6][SOURCE_CODE["graph"]] == 0
    assert CandidateSet.empty().rank_in.shape == (0, len(SOURCE_CODE))


@pytest.mark.parametrize("seed", range(5))
def test_dedup_rank_in_is_the_best_rank_per_source_as_a_loop(seed):
    rng = np.random.default_rng(seed)
    names = list(SOURCE_CODE)
    parts = []
    for _ in range(4):
        n = int(rng.integers(1, 9))
        parts.append(cs(rng.choice(12, n, replace=False), rng.random(n), names[int(rng.integers(len(names)))]))
    allrows = CandidateSet.concat(parts)
    out = dedup(allrows)
    for row, item in enumerate(out.items):
        want = np.zeros(len(names))
        for p in parts:  # naive: the reciprocal rank of the item in each list that holds it, best per source
            order = sorted(range(len(p)), key=lambda j: (-p.scores[j], p.items[j]))
            for r, j in enumerate(order, 1):
                if p.items[j] == item:
                    code = int(p.source[j])
                    want[code] = max(want[code], 1.0 / r)
        np.testing.assert_allclose(out.rank_in[row], want)
