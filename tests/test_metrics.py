"""Tests of mixrec.evaluate.metrics against hand-computed values and naive loops."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mixrec.evaluate import metrics
from mixrec.evaluate.metrics import csr_from_pairs, per_user_metrics, ranking_metrics


def naive_metrics(topk, truth, ks):
    """Reference: plain loops over users and ranks; truth is a list of sets."""
    out = {}
    for k in ks:
        acc = {"recall": [], "ndcg": [], "hit_rate": [], "mrr": []}
        for row, rel in zip(topk.tolist(), truth):
            if not rel:
                continue
            seen, hits, dcg, rr = set(), 0, 0.0, 0.0
            for r, item in enumerate(row[:k]):
                if item >= 0 and item in rel and item not in seen:
                    hits += 1
                    dcg += 1.0 / math.log2(r + 2)
                    if rr == 0.0:
                        rr = 1.0 / (r + 1)
                seen.add(item)
            idcg = sum(1.0 / math.log2(r + 2) for r in range(min(len(rel), k)))
            acc["recall"].append(hits / len(rel))
            acc["ndcg"].append(dcg / idcg)
            acc["hit_rate"].append(1.0 if hits else 0.0)
            acc["mrr"].append(rr)
        for m, v in acc.items():
            out[f"{m}@{k}"] = sum(v) / len(v) if v else float("nan")
    return out


def to_csr(truth):
    rows = [u for u, rel in enumerate(truth) for _ in rel]
    cols = [i for rel in truth for i in rel]
    return csr_from_pairs(np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64), len(truth))


def random_case(rng, n_users, n_items, kmax, duplicates=False):
    topk = np.full((n_users, kmax), -1, dtype=np.int64)
    truth = []
    for u in range(n_users):
        n_found = rng.integers(0, (kmax if duplicates else min(kmax, n_items)) + 1)
        if duplicates:
            topk[u, :n_found] = rng.integers(0, n_items, n_found)
        else:
            topk[u, :n_found] = rng.choice(n_items, n_found, replace=False)
        truth.append(set(rng.choice(n_items, rng.integers(0, 6), replace=True).tolist()))
    return topk, truth


def assert_close(got, want):
    assert set(got) == set(want)
    for key in want:
        if math.isnan(want[key]):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(want[key], abs=1e-12), key


def test_hand_worked_example():
    topk = np.array([[3, 1, 7, -1], [5, 6, 7, 8], [2, -1, -1, -1]])
    indptr, indices = to_csr([{1, 7, 9}, set(), {2}])
    got = ranking_metrics(topk, indptr, indices, [2, 4])
    l3 = 1 / math.log2(3)
    assert got["recall@2"] == pytest.approx((1 / 3 + 1) / 2)
    assert got["ndcg@2"] == pytest.approx((l3 / (1 + l3) + 1) / 2)
    assert got["hit_rate@2"] == pytest.approx(1.0)
    assert got["mrr@2"] == pytest.approx((0.5 + 1) / 2)
    assert got["recall@4"] == pytest.approx((2 / 3 + 1) / 2)
    assert got["ndcg@4"] == pytest.approx(((l3 + 0.5) / (1 + l3 + 0.5) + 1) / 2)
    assert got["mrr@4"] == pytest.approx(0.75)


def test_per_user_values_and_zero_rows():
    topk = np.array([[0, 1], [4, 2]])
    indptr, indices = to_csr([{1}, set()])
    per = per_user_metrics(topk, indptr, indices, [1, 2])
    np.testing.assert_array_equal(per["n_relevant"], [1, 0])
    np.testing.assert_allclose(per["recall@1"], [0.0, 0.0])
    np.testing.assert_allclose(per["recall@2"], [1.0, 0.0])
    np.testing.assert_allclose(per["ndcg@2"], [1 / math.log2(3), 0.0])
    np.testing.assert_allclose(per["mrr@2"], [0.5, 0.0])


def test_recall_is_not_capped_at_k():
    topk = np.array([[0, 1, 2]])
    indptr, indices = to_csr([set(range(10))])
    got = ranking_metrics(topk, indptr, indices, [2])
    assert got["recall@2"] == pytest.approx(0.2)
    assert got["ndcg@2"] == pytest.approx(1.0)


def test_repeated_item_counts_once():
    topk = np.array([[4, 4, 4, 5]])
    indptr, indices = to_csr([{4, 5}])
    got = ranking_metrics(topk, indptr, indices, [3, 4])
    assert got["recall@3"] == pytest.approx(0.5)
    assert got["recall@4"] == pytest.approx(1.0)


def test_no_relevant_rows_gives_nan():
    got = ranking_metrics(np.array([[1, 2]]), np.array([0, 0]), np.zeros(0, dtype=np.int64), [1])
    assert all(math.isnan(v) for v in got.values()) and len(got) == 4


def test_k_above_kmax_raises():
    indptr, indices = to_csr([{1}])
    with pytest.raises(ValueError, match="cutoffs"):
        ranking_metrics(np.array([[1, 2]]), indptr, indices, [3])
    with pytest.raises(ValueError):
        ranking_metrics(np.array([[1, 2]]), indptr, indices, [0])


def test_misaligned_truth_raises():
    with pytest.raises(ValueError, match="truth_indptr"):
        ranking_metrics(np.array([[1, 2]]), np.array([0, 1, 1]), np.array([1]), [1])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), duplicates=st.booleans())
def test_matches_naive_loop(seed, duplicates):
    rng = np.random.default_rng(seed)
    n_users, n_items, kmax = rng.integers(1, 30), rng.integers(1, 40), rng.integers(1, 12)
    topk, truth = random_case(rng, n_users, n_items, kmax, duplicates)
    ks = sorted(set(rng.integers(1, kmax + 1, 3).tolist()))
    indptr, indices = to_csr(truth)
    assert_close(ranking_metrics(topk, indptr, indices, ks), naive_metrics(topk, truth, ks))


def test_chunked_rows_give_same_means(monkeypatch):
    rng = np.random.default_rng(3)
    topk, truth = random_case(rng, 101, 50, 10)
    indptr, indices = to_csr(truth)
    full = ranking_metrics(topk, indptr, indices, [1, 5, 10])
    monkeypatch.setattr(metrics, "_ROW_CHUNK", 7)
    assert_close(ranking_metrics(topk, indptr, indices, [1, 5, 10]), full)
    assert_close(full, naive_metrics(topk, truth, [1, 5, 10]))


@settings(max_examples=40, deadline=None)
@given(pairs=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 20)), max_size=40))
def test_csr_from_pairs_sorted_deduplicated(pairs):
    rows = np.array([p[0] for p in pairs], dtype=np.int64)
    cols = np.array([p[1] for p in pairs], dtype=np.int64)
    indptr, indices = csr_from_pairs(rows, cols, 6)
    assert indptr.shape == (7,) and indptr[0] == 0
    for r in range(6):
        assert indices[indptr[r]:indptr[r + 1]].tolist() == sorted({c for rr, c in pairs if rr == r})


def test_csr_from_pairs_rejects_bad_rows():
    with pytest.raises(ValueError):
        csr_from_pairs(np.array([3]), np.array([0]), 3)
