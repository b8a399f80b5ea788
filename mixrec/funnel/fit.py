"""Fitting the ranking stages from training data only.

The caller holds out some training edges as *labels* (``holdout_split``) and builds the funnel's
history from the rest, so that features never contain the label they are asked to predict. For
each sampled user the candidate query is run, the user's held-out items are added as positives,
and every (user, candidate) gets one label per relation. The final ranker is trained on those
rows; the first pass is then distilled from the final ranker's values on the same lists.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mixrec.data.split import holdout_mask
from mixrec.funnel.engine import Funnel
from mixrec.funnel.query import Query
from mixrec.funnel.features import RANKER_FEATURE_SETS
from mixrec.funnel.rank import FunnelRanker, ValueModel, distill_first_pass, stage_inputs, train_multitask
from mixrec.funnel.sources import SOURCES


@dataclass
class CandidateLists:
    """Concatenated per-user candidate lists: ``offsets[u]:offsets[u+1]`` belong to ``users[u]``."""

    users: np.ndarray  # (U,)
    offsets: np.ndarray  # (U + 1,)
    items: np.ndarray  # (n,)
    labels: np.ndarray  # (n, R) float32, 1 where the (user, item) pair is a held-out edge of relation r
    rank_in: np.ndarray | None = None  # (n, S) each row's CandidateSet.rank_in (0 for added positives)

    def row_users(self) -> np.ndarray:
        return np.repeat(self.users, np.diff(self.offsets))

    def padded(self, values: np.ndarray, max_len: int | None = None, fill: float = 0.0):
        """(U, L, ...) padded copy of a per-row array and the (U, L) mask."""
        lens = np.diff(self.offsets)
        length = int(lens.max(initial=1)) if max_len is None else max_len
        rows = np.repeat(np.arange(len(self.users)), lens)
        cols = np.arange(len(rows)) - np.repeat(self.offsets[:-1], lens)
        ok = cols < length
        out = np.full((len(self.users), length) + values.shape[1:], fill, dtype=values.dtype)
        mask = np.zeros((len(self.users), length), bool)
        out[rows[ok], cols[ok]] = values[ok]
        mask[rows[ok], cols[ok]] = True
        return out, mask


def holdout_split(src: np.ndarray, dst: np.ndarray, rel: np.ndarray, fraction: float = 0.1,
                  seed: int = 0) -> np.ndarray:
    """Boolean mask of held-out edges: about ``fraction`` of each (user, relation) group, at least one
    where the group has two or more edges, never the only one (:func:`mixrec.data.split.holdout_mask`)."""
    group = np.unique(src.astype(np.int64) * (int(rel.max(initial=0)) + 1) + rel, return_inverse=True)[1]
    return holdout_mask(group, fraction, seed, at_least_one=True)


def candidate_lists(funnel: Funnel, query: Query, users: Sequence[int], label_edges: tuple,
                    add_positives: bool = False) -> CandidateLists:
    """Run ``query`` for each user and label the candidates with the held-out ``label_edges`` (src, dst, rel).

    ``add_positives`` also inserts held-out items the query did not retrieve; beware that a ranker then
    learns "not retrieved means relevant" (every retrieved row it sees is mostly negative), so the default
    trains on what the sources actually return, as a production ranker trained on impressions would.
    """
    src, dst, rel = (np.asarray(a, np.int64) for a in label_edges)
    n_items, n_rel = funnel.n_items, len(funnel.relations)
    lab_keys = [np.unique(src[rel == r] * n_items + dst[rel == r]) for r in range(n_rel)]
    users = np.asarray(users, np.int64)
    order = np.argsort(src, kind="stable")
    ptr = np.searchsorted(src[order], np.r_[users, users + 1].reshape(2, -1))
    parts, ranks = [], []
    for i, u in enumerate(users):
        cs = funnel.run(query, int(u), validate=(i == 0)).candidates
        items, rank_in = cs.items, cs.rank_in
        if add_positives:
            extra = np.setdiff1d(dst[order][ptr[0, i]:ptr[1, i]], items)
            items = np.r_[items, extra]
            rank_in = np.r_[rank_in, np.zeros((len(extra), rank_in.shape[1]))]
        parts.append(items)
        ranks.append(rank_in)
    offsets = np.zeros(len(users) + 1, np.int64)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    items = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    rank_in = np.concatenate(ranks) if ranks else np.zeros((0, len(SOURCES)))
    q = np.repeat(users, np.diff(offsets)) * n_items + items
    labels = np.stack([np.isin(q, k) for k in lab_keys], 1).astype(np.float32)
    return CandidateLists(users, offsets, items, labels, rank_in)


def fit_ranker(funnel: Funnel, lists: CandidateLists, value_weights: dict[str, float], *,
               epochs: int = 5, hidden: Sequence[int] = (64, 32), distill: bool = True, distill_epochs: int = 30,
               max_list: int = 300, seed: int = 0, source_features: bool = False,
               feature_set: str = "full", wide: bool = False) -> FunnelRanker:
    """Train the final multi-task ranker on ``lists``; then distil a first and a second pass from its values.

    ``feature_set``: ``full`` (with the user and item embeddings) or ``scalar`` (cosines and counts only,
    for few labels). ``source_features``: every stage also reads each candidate's reciprocal rank in each
    source's list (``lists.rank_in``), so the ranker can learn how far to trust each source's own order;
    ``wide`` also gives those ranks a linear path to the heads (:class:`~mixrec.funnel.rank.MultiTaskRanker`)."""
    users = lists.row_users()
    if source_features and lists.rank_in is None:
        raise ValueError("source_features needs lists with rank_in (built by candidate_lists)")
    if wide and not source_features:
        raise ValueError("wide reads the sources' ranks: give source_features=True with it")
    if feature_set not in RANKER_FEATURE_SETS:
        raise ValueError(f"feature_set must be one of {RANKER_FEATURE_SETS}, got {feature_set!r}")
    x = stage_inputs(funnel.features, "final", users, lists.items, lists.rank_in, feature_set=feature_set,
                     source_features=source_features)
    final = train_multitask(x, lists.labels, funnel.relations, hidden=hidden, epochs=epochs, seed=seed,
                            wide=lists.rank_in.shape[1] if wide else 0)
    ranker = FunnelRanker(final, ValueModel(dict(value_weights)),
                          info={"rows": int(len(users)), "users": int(len(lists.users)),
                                "positives": {r: int(lists.labels[:, i].sum())
                                              for i, r in enumerate(funnel.relations)}},
                          source_features=source_features, feature_set=feature_set)
    if distill:
        teacher = ranker.values(x)
        light = ranker.inputs("first_pass", funnel.features, users, lists.items, lists.rank_in)
        xl, mask = lists.padded(light, min(max_list, int(np.diff(lists.offsets).max(initial=1))))
        tv, _ = lists.padded(teacher, xl.shape[1])
        ranker.first_pass = distill_first_pass(xl, tv, mask, epochs=distill_epochs, seed=seed)
        xf, _ = lists.padded(x, xl.shape[1])  # the second pass: a small model on the full features
        ranker.second_pass = distill_first_pass(xf, tv, mask, hidden=(32,), epochs=distill_epochs, seed=seed)
    return ranker
