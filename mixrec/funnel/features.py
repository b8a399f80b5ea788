"""Ranking features of (user, item) pairs from the mixture model and simple interaction counts.

Full features (final ranker): the user's mixture-weighted mean vector ``u``, the item's mean vector
``v``, ``u * v``, the best component cosine, the mixture-weighted cosine, and per relation
``log1p`` of the item's popularity, the user's activity and the user-item interaction count.
Scalar features: the full set less the embeddings (the two cosines and the counts), for rankers that
learn from few labels (the 3d embedding inputs overfit them). Light features (first pass): the two
cosines and the per-relation item popularity and user-item counts only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


FEATURE_SETS = ("full", "scalar", "light")
RANKER_FEATURE_SETS = ("full", "scalar")  # what a final ranker (and its second pass) may read


@dataclass
class FeatureTables:
    """Everything the features need, precomputed once per model and history."""

    relations: list[str]
    user_comp: np.ndarray  # (N_u, C_s, d) unit components
    user_w: np.ndarray  # (N_u, C_s) mixture weights
    item_comp: np.ndarray  # (N_i, C_d, d)
    item_w: np.ndarray  # (N_i, C_d)
    pop: np.ndarray  # (R, N_i) log1p edge counts
    activity: np.ndarray  # (R, N_u) log1p edge counts
    pair_keys: list[np.ndarray]  # per relation: sorted user * N_i + item
    pair_counts: list[np.ndarray]  # per relation: edges of that pair

    @classmethod
    def build(cls, model, src: np.ndarray, dst: np.ndarray, rel: np.ndarray, weight_set: str = "all",
              relations: Sequence[str] | None = None) -> "FeatureTables":
        """From a model and history edges (dense src, dst, relation codes in ``model.relations`` order)."""
        names = [r.name for r in model.relations] if relations is None else list(relations)
        n_u, n_i = model.num(model.source_type), model.num(model.target_type)
        pop, act, keys, counts = [], [], [], []
        for code in range(len(names)):
            m = rel == code
            pop.append(np.log1p(np.bincount(dst[m], minlength=n_i)))
            act.append(np.log1p(np.bincount(src[m], minlength=n_u)))
            k, c = np.unique(src[m].astype(np.int64) * n_i + dst[m], return_counts=True)
            keys.append(k)
            counts.append(c)
        src_type = model.source_type
        return cls(names, model.vectors(src_type).numpy(), model.mixture_weights(src_type, weight_set),
                   model.vectors(model.target_type).numpy(), model.mixture_weights(model.target_type, weight_set),
                   np.stack(pop), np.stack(act), keys, counts)

    @property
    def n_items(self) -> int:
        return int(self.item_comp.shape[0])

    def pair_count(self, code: int, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Training edges of relation ``code`` between each (user, item) pair."""
        keys, counts = self.pair_keys[code], self.pair_counts[code]
        q = users.astype(np.int64) * self.n_items + items
        pos = np.searchsorted(keys, q).clip(0, max(len(keys) - 1, 0))
        hit = (keys[pos] == q) if len(keys) else np.zeros(len(q), bool)
        return np.where(hit, counts[pos] if len(keys) else 0, 0)

    def cosines(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(best component cosine, mixture-weighted cosine) per pair."""
        m = np.einsum("ncd,nld->ncl", self.user_comp[users], self.item_comp[items])
        w = self.user_w[users][:, :, None] * self.item_w[items][:, None, :]
        return m.max(axis=(1, 2)), (m * w).sum(axis=(1, 2))

    def counts(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ui = np.stack([np.log1p(self.pair_count(c, users, items)) for c in range(len(self.relations))], 1)
        return self.pop[:, items].T, self.activity[:, users].T, ui

    def full(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(n, 3d + 2 + 3R) float32 features for the final ranker."""
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        u = (self.user_comp[users] * self.user_w[users][:, :, None]).sum(1)
        v = (self.item_comp[items] * self.item_w[items][:, :, None]).sum(1)
        return np.concatenate([u, v, u * v, self.scalar(users, items)], 1).astype(np.float32)

    def scalar(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(n, 2 + 3R) float32: the full features without the embeddings (cosines and counts)."""
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        best, mixed = self.cosines(users, items)
        pop, act, ui = self.counts(users, items)
        return np.concatenate([best[:, None], mixed[:, None], pop, act, ui], 1).astype(np.float32)

    def of(self, feature_set: str, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """The named feature set (``full``, ``scalar`` or ``light``) of each (user, item) pair."""
        if feature_set not in FEATURE_SETS:
            raise ValueError(f"unknown feature set {feature_set!r}; expected one of {FEATURE_SETS}")
        return getattr(self, feature_set)(users, items)

    def light(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(n, 2 + 2R) float32 cheap features for the first pass."""
        users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
        best, mixed = self.cosines(users, items)
        pop, _, ui = self.counts(users, items)
        return np.concatenate([best[:, None], mixed[:, None], pop, ui], 1).astype(np.float32)
