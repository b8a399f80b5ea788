"""bench/fusion.py's learned alternative to rank fusion: the funnel's ranker over the union of two sources' lists.

Each (user, candidate) of the union of the filter's and the model's top lists gets the features a ranker can
see without the sources' internals: the log rank in each list (``absent`` past the list's end), whether each
list holds it, the model's pooled score and its gap to the user's best, the item's and the user's training
degree. :func:`mixrec.funnel.rank.train_multitask` (the funnel's multi-task ranker, one head) learns the
held-out items from them. Protocol in bench/fusion.py: fitted on validation users whose lists come from
sources fitted without the validation edges, then applied to the test lists of the refitted sources.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mixrec.funnel.rank import train_multitask

FEATURES = ("log rank filter", "log rank model", "in filter", "in model", "model score", "gap to best",
            "log item degree", "log user degree")


@dataclass
class Union:
    """Per-user candidate unions, padded: ``items`` (U, L) with -1 padding, ``x`` (U, L, F) features."""

    items: np.ndarray
    x: np.ndarray

    @property
    def mask(self) -> np.ndarray:
        return self.items >= 0


def union_features(f_top: np.ndarray, m_top: np.ndarray, model, users: np.ndarray, item_degree: np.ndarray,
                   user_degree: np.ndarray, batch: int = 2048) -> Union:
    """The union of the two (U, K) lists per user, each candidate with :data:`FEATURES` (vectorised; the
    model scores every pair in batches of ``batch`` users)."""
    n_u, k = f_top.shape
    absent = 2.0 * max(k, m_top.shape[1])
    items = np.concatenate([f_top, m_top], 1)
    rank = np.full(items.shape + (2,), absent)
    rank[:, :k, 0] = np.arange(1, k + 1)
    rank[:, k:, 1] = np.arange(1, m_top.shape[1] + 1)
    row = np.repeat(np.arange(n_u), items.shape[1])
    ok = items.reshape(-1) >= 0
    span = int(items.max()) + 1  # row * span + item: one key per (user, item)
    key, inv = np.unique(row[ok] * span + items.reshape(-1)[ok], return_inverse=True)
    best = np.full((len(key), 2), absent)
    np.minimum.at(best, inv.reshape(-1), rank.reshape(-1, 2)[ok])
    u_of, it_of = key // span, key % span
    lens = np.bincount(u_of, minlength=n_u)
    col = np.arange(len(key)) - np.repeat(np.r_[0, np.cumsum(lens)[:-1]], lens)
    width = int(lens.max(initial=1))
    out = np.full((n_u, width), -1, np.int64)
    out[u_of, col] = it_of
    score = np.zeros((n_u, width), np.float32)
    for b in range(0, n_u, batch):
        part = slice(b, min(b + batch, n_u))
        safe = np.maximum(out[part], 0)
        with torch.no_grad():
            s = model.score(users[part]).numpy()
        score[part] = np.take_along_axis(s, safe, 1)
    score = np.where(out >= 0, score, -np.inf)
    gap = score - score.max(1, keepdims=True)
    r = np.full((n_u, width, 2), absent)
    r[u_of, col] = best
    x = np.stack([np.log(r[..., 0]), np.log(r[..., 1]), (r[..., 0] < absent), (r[..., 1] < absent),
                  score, gap, np.log1p(item_degree[np.maximum(out, 0)]),
                  np.broadcast_to(np.log1p(user_degree[users])[:, None], out.shape)], -1).astype(np.float32)
    x[out < 0] = 0.0
    return Union(out, x)


def labels_of(u: Union, truth: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(U, L) 1.0 where the candidate is one of the user's held-out items (truth: CSR over the rows)."""
    indptr, items = truth
    row = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    width = int(max(u.items.max(initial=0), items.max(initial=0))) + 1
    held = np.unique(row * width + items)
    rows = np.broadcast_to(np.arange(len(u.items))[:, None], u.items.shape)
    return (np.isin(rows * width + u.items, held) & u.mask).astype(np.float32)


def fit(u: Union, y: np.ndarray, rows: np.ndarray, epochs: int = 5, seed: int = 0):
    """The ranker fitted on the candidates of ``rows`` (users) with labels ``y`` (U, L)."""
    m = u.mask[rows]
    return train_multitask(u.x[rows][m], y[rows][m][:, None], ["held_out"], epochs=epochs, seed=seed)


def ranked(ranker, u: Union, k: int) -> np.ndarray:
    """Each user's top ``k`` candidates by the ranker's value (U, k), -1 padded."""
    with torch.no_grad():
        v = ranker(torch.as_tensor(u.x.reshape(-1, u.x.shape[-1]))).reshape(u.items.shape).numpy()
    v = np.where(u.mask, v, -np.inf)
    order = np.argsort(-v, 1, kind="stable")[:, :k]
    top = np.take_along_axis(u.items, order, 1)
    return np.where(np.take_along_axis(u.mask, order, 1), top, -1)


def folds(n: int, k: int, seed: int = 0) -> list[np.ndarray]:
    """``k`` sorted, disjoint, seeded folds of range(n)."""
    perm = np.random.default_rng(seed).permutation(n)
    return [np.sort(perm[i::k]) for i in range(k)]
