"""Ranking metrics (recall, NDCG, hit rate, MRR at K) of top-K lists against held-out relevant items."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from mixrec.csr import csr_from_pairs  # noqa: F401  (re-exported: part of this module's API)

METRICS = ("recall", "ndcg", "hit_rate", "mrr")
_ROW_CHUNK = 1 << 16  # users per chunk in ranking_metrics: bounds the (chunk, Kmax) temporaries


def _check_inputs(topk: np.ndarray, indptr: np.ndarray, indices: np.ndarray, ks: Sequence[int]) -> list[int]:
    if topk.ndim != 2:
        raise ValueError(f"topk must be 2-D (users, K); got shape {topk.shape}")
    if indptr.ndim != 1 or indptr.size != topk.shape[0] + 1:
        raise ValueError(f"truth_indptr must have {topk.shape[0] + 1} entries (one row per topk row); "
                         f"got {indptr.size}")
    if indptr.size and (indptr[0] != 0 or indptr[-1] != indices.size or np.any(np.diff(indptr) < 0)):
        raise ValueError("truth_indptr is not a valid CSR index pointer for truth_indices")
    ks = [int(k) for k in ks]
    if not ks:
        raise ValueError("ks is empty; pass at least one cutoff K")
    bad = [k for k in ks if k < 1 or k > topk.shape[1]]
    if bad:
        raise ValueError(f"cutoffs {bad} outside [1, {topk.shape[1]}]: retrieve at least max(ks) items per user")
    return ks


def hit_matrix(topk: np.ndarray, truth_indptr: np.ndarray, truth_indices: np.ndarray) -> np.ndarray:
    """(U, Kmax) bool: whether ``topk[u, r]`` is a relevant item of row ``u``.

    Padding (-1) is never a hit; a repeated item counts only at its first (best) position.
    """
    topk = np.asarray(topk, dtype=np.int64)
    n_users, kmax = topk.shape
    counts = np.diff(truth_indptr)
    if n_users == 0 or kmax == 0 or truth_indices.size == 0:
        return np.zeros(topk.shape, dtype=bool)
    width = int(max(topk.max(), truth_indices.max())) + 1
    truth_keys = np.sort(np.repeat(np.arange(n_users, dtype=np.int64), counts) * width + truth_indices)
    keys = np.arange(n_users, dtype=np.int64)[:, None] * width + topk
    pos = np.searchsorted(truth_keys, keys)
    hits = truth_keys[np.minimum(pos, truth_keys.size - 1)] == keys
    hits &= topk >= 0
    return hits & ~_repeated(topk)


def _repeated(topk: np.ndarray) -> np.ndarray:
    """(U, K) bool: True where the item already occurred earlier in its row."""
    order = np.argsort(topk, axis=1, kind="stable")
    srt = np.take_along_axis(topk, order, axis=1)
    dup_sorted = np.zeros(topk.shape, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    out = np.zeros(topk.shape, dtype=bool)
    np.put_along_axis(out, order, dup_sorted, axis=1)
    return out


def per_user_metrics(topk: np.ndarray, truth_indptr: np.ndarray, truth_indices: np.ndarray,
                     ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-row metrics: ``{"recall@K": (U,), ...}`` plus ``"n_relevant"`` (U,) int64.

    Rows without relevant items get 0 for every metric; :func:`ranking_metrics` leaves them out.
    """
    topk = np.asarray(topk, dtype=np.int64)
    truth_indptr = np.asarray(truth_indptr, dtype=np.int64)
    truth_indices = np.asarray(truth_indices, dtype=np.int64)
    ks = _check_inputs(topk, truth_indptr, truth_indices, ks)
    n_rel = np.diff(truth_indptr)
    hits = hit_matrix(topk, truth_indptr, truth_indices)
    kmax = topk.shape[1]
    discount = 1.0 / np.log2(np.arange(kmax, dtype=np.float64) + 2.0)
    cum_hits = np.cumsum(hits, axis=1)
    cum_dcg = np.cumsum(hits * discount, axis=1)
    ideal = np.concatenate([[0.0], np.cumsum(discount)])
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), kmax)  # rank index of the first hit
    safe_rel = np.maximum(n_rel, 1)
    out: dict[str, np.ndarray] = {"n_relevant": n_rel}
    for k in ks:
        h = cum_hits[:, k - 1]
        idcg = ideal[np.minimum(n_rel, k)]
        out[f"recall@{k}"] = h / safe_rel
        out[f"ndcg@{k}"] = np.divide(cum_dcg[:, k - 1], idcg, out=np.zeros(len(h)), where=idcg > 0)
        out[f"hit_rate@{k}"] = (h > 0).astype(np.float64)
        out[f"mrr@{k}"] = np.where(first < k, 1.0 / (first + 1.0), 0.0)
    return out


def ranking_metrics(topk: np.ndarray, truth_indptr: np.ndarray, truth_indices: np.ndarray,
                    ks: Sequence[int]) -> dict[str, float]:
    """Mean recall@K, ndcg@K, hit_rate@K and mrr@K over rows with at least one relevant item.

    ``topk`` is (U, Kmax) item indices, best first, padded with -1; ``truth_indptr``/``truth_indices``
    is a CSR of each row's relevant items. recall@K = hits in the top K / number of relevant items
    (LightGCN/BARS convention, not capped at K); ndcg@K uses binary gains, a log2 discount and the
    ideal DCG of min(|relevant|, K) hits; mrr@K is 1/rank of the first hit within K, else 0.
    Every value is NaN when no row has a relevant item. Raises ValueError if some K > Kmax.
    """
    topk = np.asarray(topk, dtype=np.int64)
    truth_indptr = np.asarray(truth_indptr, dtype=np.int64)
    truth_indices = np.asarray(truth_indices, dtype=np.int64)
    ks = _check_inputs(topk, truth_indptr, truth_indices, ks)
    names = [f"{m}@{k}" for k in ks for m in METRICS]
    sums = dict.fromkeys(names, 0.0)
    n_eval = 0
    for lo in range(0, topk.shape[0], _ROW_CHUNK):
        hi = min(lo + _ROW_CHUNK, topk.shape[0])
        ptr = truth_indptr[lo:hi + 1]
        per = per_user_metrics(topk[lo:hi], ptr - ptr[0], truth_indices[ptr[0]:ptr[-1]], ks)
        mask = per["n_relevant"] > 0
        n_eval += int(mask.sum())
        for name in names:
            sums[name] += float(per[name][mask].sum())
    if n_eval == 0:
        return dict.fromkeys(names, float("nan"))
    return {name: sums[name] / n_eval for name in names}
