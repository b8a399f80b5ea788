"""Reference recommenders for benchmarks: popularity and implicit's ALS, ranked like mixrec (full, seen excluded)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from mixrec.csr import csr_rows
from mixrec.data.split import holdout_mask

ScoreFn = Callable[[np.ndarray], np.ndarray]  # user indices (B,) -> scores (B, n_items)


def topk_by_score(score: ScoreFn, users: np.ndarray, k: int,
                  exclude: tuple[np.ndarray, np.ndarray] | None = None, batch: int = 1024) -> np.ndarray:
    """Top ``k`` items per user from a batched score function; ``exclude`` is a CSR of items to skip.

    Returns (U, k) int64 item indices, best first; slots that cannot be filled hold -1.
    """
    users = np.asarray(users, dtype=np.int64)
    out = np.full((len(users), k), -1, dtype=np.int64)
    for lo in range(0, len(users), batch):
        u = users[lo:lo + batch]
        s = np.array(score(u), dtype=np.float32, copy=True)
        if exclude is not None:
            r, c = csr_rows(exclude[0], exclude[1], u)
            s[r, c] = -np.inf
        kk = min(k, s.shape[1])
        part = np.argpartition(-s, kk - 1, axis=1)[:, :kk]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
        idx = np.take_along_axis(part, order, 1)
        idx[~np.isfinite(np.take_along_axis(s, idx, 1))] = -1
        out[lo:lo + len(u), :kk] = idx
    return out


def popularity_scores(dst: np.ndarray, n_items: int) -> np.ndarray:
    """Training-edge count of every item (n_items,) float32: the popularity recommender's score."""
    return np.bincount(np.asarray(dst, dtype=np.int64), minlength=n_items).astype(np.float32)


def popularity_topk(train_dst: np.ndarray, n_items: int, users: np.ndarray, k: int,
                    exclude: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """The same most-popular list for everyone, minus each user's excluded items."""
    pop = popularity_scores(train_dst, n_items)
    return topk_by_score(lambda u: np.broadcast_to(pop, (len(u), n_items)), users, k, exclude)


def interaction_matrix(src: np.ndarray, dst: np.ndarray, n_users: int, n_items: int):
    """Binary user x item scipy CSR (duplicates merged), as implicit expects."""
    import scipy.sparse as sp

    m = sp.csr_matrix((np.ones(len(src), dtype=np.float32), (src, dst)), shape=(n_users, n_items))
    m.data[:] = 1.0
    return m


@dataclass
class ALSParams:
    """Hyper-parameters of implicit's ALS (confidence 1 + alpha * r)."""

    factors: int = 128
    regularization: float = 1.0
    alpha: float = 10.0
    iterations: int = 15
    seed: int = 0


def fit_als(src: np.ndarray, dst: np.ndarray, n_users: int, n_items: int, params: ALSParams,
            threads: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Fit implicit's ALS on the (user, item) pairs; returns (user_factors, item_factors) as numpy."""
    from implicit.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=params.factors, regularization=params.regularization,
                                    alpha=params.alpha, iterations=params.iterations,
                                    random_state=params.seed, num_threads=threads, use_gpu=False)
    model.fit(interaction_matrix(src, dst, n_users, n_items), show_progress=False)
    uf, itf = model.user_factors, model.item_factors
    return np.asarray(getattr(uf, "to_numpy", lambda: uf)()), np.asarray(getattr(itf, "to_numpy", lambda: itf)())


def factor_topk(user_factors: np.ndarray, item_factors: np.ndarray, users: np.ndarray, k: int,
                exclude: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Top ``k`` items by dot product of factor matrices."""
    return topk_by_score(lambda u: user_factors[u] @ item_factors.T, users, k, exclude)


def holdout_split(src: np.ndarray, dst: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask of held-out edges: about ``fraction`` of each user's edges, at least one kept in training
    (:func:`mixrec.data.split.holdout_mask` per user). Used to tune baselines where a dataset ships no
    validation split."""
    return holdout_mask(src, fraction, seed)


def tune_als(fit_pairs: tuple[np.ndarray, np.ndarray], eval_fn: Callable[[np.ndarray, np.ndarray], float],
             n_users: int, n_items: int, grid: Sequence[ALSParams]) -> tuple[ALSParams, list[dict]]:
    """Fit every grid point on ``fit_pairs`` and keep the best by ``eval_fn(user_factors, item_factors)``."""
    trials, best = [], None
    for p in grid:
        uf, itf = fit_als(fit_pairs[0], fit_pairs[1], n_users, n_items, p)
        value = float(eval_fn(uf, itf))
        trials.append({**p.__dict__, "valid": value})
        if best is None or value > best[0]:
            best = (value, p)
    if best is None:
        raise ValueError("tune_als needs a non-empty grid")
    return best[1], trials
