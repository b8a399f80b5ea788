"""Exact all-items ranking by pooled score, with seen-item exclusion; the reference the retriever is judged by."""
from __future__ import annotations

import numpy as np
import torch

from mixrec.csr import csr_rows
from mixrec.model.components import kept_components, masked_pool
from mixrec.model.functional import ALL_DIMS, pool, product_all
from mixrec.progress import progress_bar


def exact_topk(model, users: np.ndarray, k: int, exclude: tuple[np.ndarray, np.ndarray] | None = None, *,
               pooling: str | None = None, target_type: str | None = None, batch: int = 256,
               progress: bool = False, source_vectors: torch.Tensor | None = None,
               source_type: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` targets per user by exact pooled score over all items; ``exclude`` is a CSR of items to skip.

    ``source_vectors`` (U', C_s, n) unit: score these instead of the model's source table (``users`` then
    index into them), e.g. folded-in users.

    Returns (items (U, k) int64, scores (U, k) float32); unfilled slots hold -1 / -inf.
    """
    cfg = model.config
    t_type = target_type or model.target_type
    vt = model.vectors(t_type)
    us_all = model.vectors(source_type or model.source_type) if source_vectors is None else source_vectors
    n = vt.shape[0]
    k_eff = min(k, n)
    out_i = np.full((len(users), k), -1, dtype=np.int64)
    out_s = np.full((len(users), k), -np.inf, dtype=np.float32)
    with torch.no_grad():
        for lo in progress_bar(range(0, len(users), batch), disable=not progress, desc="exact scoring", unit="batch"):
            u = users[lo:lo + batch]
            us = us_all[torch.as_tensor(u)]  # (B, C_s, n)
            m = product_all(us, vt, normalized=True)  # (B, C_s, C_d, N)
            keep = None if source_vectors is not None else kept_components(model, u, source_type=source_type)
            s = pool(m, pooling or cfg.score_pooling, gamma=cfg.gamma, theta=cfg.theta, theta_form=cfg.theta_form,
                     dims=ALL_DIMS) if keep is None else masked_pool(m, keep, pooling or cfg.score_pooling, cfg.gamma,
                                                                     cfg.theta, cfg.theta_form)
            if exclude is not None:
                r, c = csr_rows(exclude[0], exclude[1], u)
                s[torch.as_tensor(r), torch.as_tensor(c)] = -torch.inf
            val, idx = torch.topk(s, k_eff, dim=1)
            idx = idx.numpy()
            val = val.numpy()
            idx[~np.isfinite(val)] = -1
            out_i[lo:lo + len(u), :k_eff] = idx
            out_s[lo:lo + len(u), :k_eff] = val
    return out_i, out_s


def sample_recall(model, dataset, split: str, k: int, max_users: int, seed: int) -> float:
    """Recall@k on (a seeded sample of) a split's users, for early stopping and tuning.

    Only relations between the model's (source, target) types count. The training items excluded are
    those of the relations the split holds (all of them, unless the split holds one target task only,
    e.g. a ``buy`` hold-out, where items only viewed stay rankable).
    """
    from mixrec.evaluate.metrics import csr_from_pairs, ranking_metrics

    pair = model.relations_between(model.source_type, model.target_type)
    e = dataset.split(split, relations=pair)
    users = np.unique(e.src)
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    held = [dataset.relations[c].name for c in np.unique(e.rel)]
    seen = model.seen(None if len(held) == len(pair) else held)
    top, _ = exact_topk(model, users, k, seen)
    keep = np.isin(e.src, users)
    row = np.searchsorted(users, e.src[keep])
    indptr, indices = csr_from_pairs(row, e.dst[keep], len(users))
    return ranking_metrics(top, indptr, indices, [k])[f"recall@{k}"]
