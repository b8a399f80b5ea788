"""Mixture diagnostics: how distinct, used and useful a user's components are, and minority-interest recall."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from mixrec.csr import csr_from_pairs, csr_rows
from mixrec.evaluate.labels import ItemLabels
from mixrec.evaluate.metrics import hit_matrix

DEAD_WEIGHT = 0.01  # a component with a smaller eq. 5 weight than this counts as dead
DOMINANT_SHARE = 0.5  # dominant labels cover at least this share of the user's labelled training items
_BATCH_CELLS = 1 << 24  # bound on the (users, history, labels) temporaries of minority_recall


def component_cosine(vectors: np.ndarray) -> np.ndarray:
    """Mean pairwise cosine of each node's components: (N, C, n) -> (N,), over the C(C-1)/2 pairs c < c'.

    NaN when C = 1. Zero vectors count as cosine 0 with everything.
    """
    v = np.asarray(vectors, dtype=np.float64)
    n, c, _ = v.shape
    if c < 2:
        return np.full(n, np.nan)
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    u = np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)
    gram = np.einsum("ncd,ned->nce", u, u)
    iu = np.triu_indices(c, k=1)
    return gram[:, iu[0], iu[1]].mean(1)


def effective_components(weights: np.ndarray) -> np.ndarray:
    """Effective number of components per node from its eq. 5 weights: exp of their Shannon entropy.

    (N, C) -> (N,) in [1, C]: 1 when one component holds all the weight, C when the weights are uniform
    (the Hill number of order 1; 1 / sum w^2, order 2, weighs the small components less). Rows are
    renormalised; zero weights contribute 0 to the entropy.
    """
    p = np.asarray(weights, dtype=np.float64)
    p = p / np.where(p.sum(1, keepdims=True) > 0, p.sum(1, keepdims=True), 1.0)
    logp = np.log(np.where(p > 0, p, 1.0))
    return np.exp(-(p * logp).sum(1))


def hit_component_share(topk: np.ndarray, components: np.ndarray, truth_indptr: np.ndarray,
                        truth_indices: np.ndarray, k: int, n_components: int) -> np.ndarray:
    """Share of the top-``k`` hits found by each source component: (C,) summing to 1 (NaN if no hit).

    ``components[u, r]`` is the component that won slot ``r`` of row ``u`` in the round-robin merge
    (``Candidates.components``); a hit is a relevant item at its first position in the top ``k``.
    """
    hits = hit_matrix(topk, np.asarray(truth_indptr, np.int64), np.asarray(truth_indices, np.int64))[:, :k]
    won = np.asarray(components, dtype=np.int64)[:, :k][hits]
    counts = np.bincount(won[won >= 0], minlength=n_components)[:n_components].astype(np.float64)
    return counts / counts.sum() if counts.sum() else np.full(n_components, np.nan)


def dead_components(weights: np.ndarray, components: np.ndarray | None = None, k: int | None = None,
                    threshold: float = DEAD_WEIGHT) -> dict[str, float]:
    """Shares of (node, component) pairs that are dead.

    ``weights`` (N, C) are the eq. 5 weights of the evaluated nodes. ``dead_weight``: weight below
    ``threshold``. With ``components`` (N, K) (the round-robin winner of each slot, -1 for padding):
    ``dead_unused``, a component that wins no slot among the first ``k``; ``dead``: either.
    """
    w = np.asarray(weights, dtype=np.float64)
    low = w < threshold
    out = {"dead_weight": float(low.mean()) if low.size else float("nan")}
    if components is not None:
        comp = np.asarray(components, dtype=np.int64)[:, :k]
        rows = np.repeat(np.arange(len(comp)), comp.shape[1])[comp.ravel() >= 0]
        used = np.zeros(w.shape, dtype=bool)
        used[rows, comp.ravel()[comp.ravel() >= 0]] = True
        out["dead_unused"] = float((~used).mean()) if used.size else float("nan")
        out["dead"] = float((low | ~used).mean()) if used.size else float("nan")
    return out


def dominant_labels(history_indptr: np.ndarray, history_indices: np.ndarray, labels: ItemLabels,
                    share: float = DOMINANT_SHARE) -> np.ndarray:
    """(U, G) bool: each history row's dominant labels.

    A row's labels are ranked by how many of its (labelled) history items carry them, most first, ties
    by lower label id. The dominant labels are the shortest prefix of that ranking such that the items
    carrying at least one of them make up at least ``share`` of the row's labelled history items. A row
    without labelled history items has none.
    """
    ptr = np.asarray(history_indptr, np.int64)
    idx = np.asarray(history_indices, np.int64)
    n_rows, g = len(ptr) - 1, labels.n_labels
    hot = labels.dense()
    out = np.zeros((n_rows, g), dtype=bool)
    lens = np.diff(ptr)
    step = max(1, _BATCH_CELLS // max(1, int(lens.max(initial=1)) * max(g, 1)))
    for lo in range(0, n_rows, step):
        hi = min(lo + step, n_rows)
        out[lo:hi] = _dominant_block(ptr[lo:hi + 1] - ptr[lo], idx[ptr[lo]:ptr[hi]], hot, share)
    return out


def _dominant_block(ptr: np.ndarray, idx: np.ndarray, hot: np.ndarray, share: float) -> np.ndarray:
    n_rows, g = len(ptr) - 1, hot.shape[1]
    lens = np.diff(ptr)
    row = np.repeat(np.arange(n_rows), lens)
    item_hot = hot[idx]  # (E, G)
    counts = np.zeros((n_rows, g), dtype=np.int64)
    np.add.at(counts, row, item_hot.astype(np.int64))
    order = np.lexsort((np.broadcast_to(np.arange(g), counts.shape), -counts), axis=1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(g), counts.shape), axis=1)
    labelled = item_hot.any(1)
    # the first rank (in the row's ordering) among an item's labels: the prefix length that covers it
    first = np.where(item_hot, rank[row], g).min(1)
    covered = np.zeros((n_rows, g + 1), dtype=np.int64)
    np.add.at(covered, (row[labelled], first[labelled]), 1)
    cum = np.cumsum(covered[:, :g], axis=1)  # items covered by the prefix of ranks 0..p
    need = share * np.bincount(row[labelled], minlength=n_rows)
    prefix = np.where(need > 0, (cum < need[:, None]).sum(1) + 1, 0)
    return rank < prefix[:, None]


def minority_recall(topk: np.ndarray, truth_indptr: np.ndarray, truth_indices: np.ndarray,
                    dominant: np.ndarray, labels: ItemLabels, ks: Sequence[int]) -> dict[str, float]:
    """``minority_recall@K``: recall of the relevant items outside the user's dominant labels.

    A relevant item is a *minority* item of row ``u`` when it has at least one label and none of its
    labels is among ``dominant[u]`` (see :func:`dominant_labels`, computed from the user's training
    items). Per row: minority items found in the top K / minority items (not capped at K, as recall@K);
    averaged over rows with at least one minority item (NaN if none).
    """
    ptr = np.asarray(truth_indptr, np.int64)
    idx = np.asarray(truth_indices, np.int64)
    row = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    lab_ptr, lab_idx = labels.indptr, labels.indices
    n_lab = np.diff(lab_ptr)[idx]
    lab_row, lab = csr_rows(lab_ptr, lab_idx, idx)  # (position in idx, label) of every relevant item's labels
    in_dominant = np.bincount(lab_row, weights=dominant[row[lab_row], lab], minlength=len(idx)) > 0
    minority = (n_lab > 0) & ~in_dominant
    m_rows, m_items = row[minority], idx[minority]
    m_ptr, m_items = csr_from_pairs(m_rows, m_items, len(ptr) - 1, dedupe=False)
    n_min = np.diff(m_ptr)
    hits = hit_matrix(topk, m_ptr, m_items)
    cum = np.cumsum(hits, axis=1)
    has = n_min > 0
    out = {}
    for k in ks:
        rec = cum[:, k - 1][has] / n_min[has]
        out[f"minority_recall@{k}"] = float(rec.mean()) if has.any() else float("nan")
    return out
