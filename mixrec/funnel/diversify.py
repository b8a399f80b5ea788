"""Diversity re-ranking: a repeat penalty down the list, Maximal Marginal Relevance, and round-robin by key.

All functions take relevance scores (higher is better) and return an order (positions into the
input), so they compose with any candidate set.
"""
from __future__ import annotations

import numpy as np


def rank_within_group(keys: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """For every row, how many rows of the same key score higher (ties: earlier row first)."""
    keys = np.asarray(keys, np.int64)
    order = np.lexsort((np.arange(len(keys)), -np.asarray(scores, np.float64), keys))
    k = keys[order]
    starts = np.r_[True, k[1:] != k[:-1]] if len(k) else np.zeros(0, bool)
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(k)), 0))
    out = np.empty(len(k), np.int64)
    out[order] = np.arange(len(k)) - group_start
    return out


def penalty_order(scores: np.ndarray, keys: np.ndarray, penalty: float) -> tuple[np.ndarray, np.ndarray]:
    """Repeat penalty (seed 003): the j-th item of a key (0-based, best first) is worth ``score - penalty * j``.

    This equals the greedy procedure "pick the best adjusted score, then penalise its key once more",
    because within a key the adjusted scores stay in score order; rows with key -1 are never penalised.
    Returns (order, adjusted scores in that order).
    """
    scores = np.asarray(scores, np.float64)
    keys = np.asarray(keys, np.int64)
    j = rank_within_group(keys, scores)
    adj = scores - penalty * np.where(keys >= 0, j, 0)
    order = np.lexsort((np.arange(len(adj)), -adj))
    return order, adj[order]


def round_robin_order(scores: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Round-robin by key: every key's best item (keys ordered by their best score), then every key's
    second best, and so on. Rows with key -1 each form a key of their own."""
    scores = np.asarray(scores, np.float64)
    keys = np.asarray(keys, np.int64).copy()
    solo = keys < 0
    keys[solo] = keys.max(initial=0) + 1 + np.arange(int(solo.sum()))
    j = rank_within_group(keys, scores)
    uk, inv = np.unique(keys, return_inverse=True)
    best = np.full(len(uk), -np.inf)
    np.maximum.at(best, inv, scores)
    key_rank = np.empty(len(uk), np.int64)
    key_rank[np.lexsort((uk, -best))] = np.arange(len(uk))
    return np.lexsort((-scores, key_rank[inv], j))


def mmr_order(relevance: np.ndarray, sim: np.ndarray, beta: float, k: int | None = None) -> np.ndarray:
    """Maximal Marginal Relevance (seed 001): for the first ``k`` positions pick
    ``argmax (1 - beta) * relevance - beta * max_{selected} sim(item, selected)``; the rest follow by
    relevance. ``sim`` is an (n, n) similarity matrix. Ties go to the earlier row.
    """
    rel = np.asarray(relevance, np.float64)
    n = len(rel)
    k = n if k is None else min(int(k), n)
    chosen = np.zeros(n, bool)
    max_sim = np.zeros(n)
    picks = []
    for _ in range(k):  # k output positions; each one is vectorised over the candidates
        score = np.where(chosen, -np.inf, (1 - beta) * rel - beta * max_sim)
        i = int(np.argmax(score))
        picks.append(i)
        chosen[i] = True
        max_sim = np.maximum(max_sim, sim[i])
    rest = np.flatnonzero(~chosen)
    rest = rest[np.lexsort((rest, -rel[rest]))]
    return np.concatenate([np.asarray(picks, np.int64), rest])


def cosine_sim(vectors: np.ndarray) -> np.ndarray:
    """(n, n) cosine similarities of row vectors (zero rows give 0)."""
    v = np.asarray(vectors, np.float64)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    v = np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)
    return v @ v.T


def jaccard_sim(multi_hot: np.ndarray) -> np.ndarray:
    """(n, n) Jaccard similarity of label sets (items without labels: 0 to all, 1 to themselves)."""
    h = np.asarray(multi_hot, np.float64)
    inter = h @ h.T
    size = h.sum(axis=1)
    union = size[:, None] + size[None, :] - inter
    out = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    np.fill_diagonal(out, 1.0)
    return out
