"""Batch retrieval: per-component KNN searches merged into one list (exact rescoring, or section 3.5's round-robin)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

from mixrec.config import IndexConfig
from mixrec.foldin import FoldInSettings, fold_in_model, fold_in_relations
from mixrec.index import ComponentIndex
from mixrec.progress import progress_bar
from mixrec.search import Candidates, Searcher, load_or_build_index, round_robin_merge  # noqa: F401 (re-exported)


class Retriever:
    """Round-robin retrieval for one model: a FAISS index over the target type and a weight set."""

    def __init__(self, model, weight_set: str = "all", index: ComponentIndex | None = None,
                 index_config: IndexConfig | None = None, target_type: str | None = None,
                 source_type: str | None = None):
        self.model = model
        self.searcher = Searcher.for_model(model, index_config, source_type=source_type, target_type=target_type,
                                           index=index)
        self.source_type, self.target_type = self.searcher.source_type, self.searcher.target_type
        self.weight_set = weight_set
        self.w_src, self.w_dst = self.searcher.weights(weight_set)
        self.index = self.searcher.index
        self.source_vectors, self.target_vectors = self.searcher.source_vectors, self.searcher.target_vectors

    def search_vectors(self, queries: np.ndarray, weights: np.ndarray, k: int,
                       exclude: tuple[np.ndarray, np.ndarray] | None = None, extra: int = 0) -> Candidates:
        """Round-robin for arbitrary query mixtures (B, C, n) with weights (B, C) (e.g. folded-in users)."""
        return self.searcher.search(queries, weights, k, exclude, extra, self.weight_set)

    def recommend(self, users: Sequence[int] | np.ndarray, k: int = 100,
                  exclude_seen: bool | Sequence[str] = True) -> Candidates:
        """Top ``k`` targets for dense source indices; ``exclude_seen`` = True (all training relations between
        the two types), False, or a list of relation names whose training targets are excluded. Between
        two nodes of one type the query itself is always excluded."""
        return self.searcher.recommend(users, k, self.weight_set, exclude_seen)

    def recommend_all(self, k: int = 100, users: np.ndarray | None = None, exclude_seen: bool | Sequence[str] = True,
                      batch: int = 512, progress: bool = True) -> tuple[np.ndarray, Candidates]:
        """Candidates for every (or the given) user, in batches of similar history length."""
        model = self.model
        users = np.arange(model.num(self.source_type)) if users is None else np.asarray(users, np.int64)
        indptr, _ = model.seen(source_type=self.source_type, target_type=self.target_type)
        perm = np.argsort(indptr[users + 1] - indptr[users], kind="stable")
        order = users[perm]
        parts = []
        bar = progress_bar(total=len(order), unit="user", disable=not progress, desc="retrieving")
        for lo in range(0, len(order), batch):
            parts.append(self.recommend(order[lo:lo + batch], k, exclude_seen))
            bar.update(len(order[lo:lo + batch]))
        bar.close()
        back = np.argsort(perm)
        cat = {f: np.concatenate([getattr(p, f) for p in parts]) if parts else np.zeros((0, k), np.int64)
               for f in ("items", "scores", "components")}
        return users, Candidates(*(cat[f][back] for f in ("items", "scores", "components")))

    def similar(self, items: Sequence[int] | np.ndarray, k: int = 10) -> Candidates:
        """Item-to-item neighbours: an item's own components and weights as the query (itself excluded)."""
        return self.searcher.similar(items, k, self.weight_set)

    def recommend_histories(self, histories: Sequence[np.ndarray], relations: Sequence[np.ndarray] | None, k: int,
                            exclude_seen: bool = True, settings: FoldInSettings | None = None,
                            batch: int = 256) -> Candidates:
        """Fold new nodes of the source type in from dense histories of the target type (and relation codes
        between the two), then retrieve ``k`` targets each; ``exclude_seen`` drops each node's own history."""
        parts = []
        for lo in range(0, len(histories), batch):
            h = histories[lo:lo + batch]
            folded = fold_in_model(self.model, h, None if relations is None else relations[lo:lo + batch],
                                   weight_set=self.weight_set, source_type=self.source_type,
                                   target_type=self.target_type, settings=settings,
                                   items=self.model.vectors(self.target_type))
            parts.append(self.searcher.from_vectors(folded.vectors, folded.weights, k, self.weight_set,
                                                    h if exclude_seen else None))
        if not parts:
            return Candidates(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
        return Candidates(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("items", "scores", "components")))

    def dense_histories(self, users: Sequence, items: Sequence[Sequence], relations: Sequence[Sequence | None],
                        where: str) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Raw item ids and relation names per user (as :func:`mixrec.foldin.read_histories` returns them)
        -> dense item indices and relation codes; ValueError naming ``where`` on unknown ids or relations, and
        naming the relations there are when none goes from the source type to the target type."""
        fold_in_relations(self.model, self.source_type, self.target_type)
        lookup, names = self.model.lookup(self.target_type), [r.name for r in self.model.relations]
        hist, codes = [], []
        for u, its, rs in zip(users, items, relations):
            hist.append(lookup.require(list(its), f"{where}: user {u}", "item"))
            if rs is not None:
                bad = sorted(set(rs) - set(names))
                if bad:
                    raise ValueError(f"{where}: unknown relation(s) {bad}; the model has {names}")
                codes.append(np.array([names.index(x) for x in rs], np.int64))
        return hist, (codes or None)

    def to_table(self, users: np.ndarray, cands: Candidates, user_ids: np.ndarray | None = None) -> pa.Table:
        """Long table (user, rank, item, score, component) with raw ids; padding dropped. ``user_ids``: the
        raw id of each row (default: the model's ids of the dense ``users``)."""
        b, k = cands.items.shape
        mask = cands.items >= 0
        u_idx = np.repeat(np.arange(b), k).reshape(b, k)[mask]
        ranks = np.tile(np.arange(1, k + 1), b).reshape(b, k)[mask]
        uid = (self.model.ids[self.source_type][users] if user_ids is None else np.asarray(user_ids))[u_idx]
        iid = self.model.ids[self.target_type][cands.items[mask]]
        return pa.table({"user": _arr(uid), "rank": pa.array(ranks, pa.int32()), "item": _arr(iid),
                         "score": pa.array(cands.scores[mask], pa.float32()),
                         "component": pa.array(cands.components[mask], pa.int16())})


def _arr(values: np.ndarray) -> pa.Array:
    if values.dtype.kind in "iu":
        return pa.array(values.astype(np.int64))
    return pa.array([str(v) for v in values], pa.string())
