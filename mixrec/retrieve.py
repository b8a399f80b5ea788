"""Round-robin KNN retrieval (section 3.5): per-component searches merged by max_c w_sc / rank."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa

from mixrec.config import IndexConfig
from mixrec.evaluate.exact import csr_rows
from mixrec.index import ComponentIndex, same_build
from mixrec.progress import progress_bar


@dataclass
class Candidates:
    """Retrieved items per query row, best first; -1 / 0 pads rows with fewer than k."""

    items: np.ndarray  # (B, k) int64
    scores: np.ndarray  # (B, k) float32: max_c w_sc / rank
    components: np.ndarray  # (B, k) int64: the source component that won


def round_robin_merge(sims: np.ndarray, ids: np.ndarray, w_src: np.ndarray, w_dst: np.ndarray, k: int,
                      exclude: tuple[np.ndarray, np.ndarray] | None = None) -> Candidates:
    """Merge per-component neighbour lists as in section 3.5.

    ``sims``/``ids`` (B, C_s, M): each source component's M nearest destination components (flat id
    ``d * C_d + l``, -1 if missing). alpha(c, d) = sum_l w_dl * sim (0 where not found); rank r(c, d)
    per component by alpha descending; final score max_c w_sc / r(c, d); top ``k`` per row. ``exclude``
    = (rows, items) pairs removed before ranking. Ties: higher alpha, then lower item id.
    """
    b, cs, m = ids.shape
    n, cd = w_dst.shape
    flat_ids = ids.reshape(-1)
    valid = flat_ids >= 0
    row = np.repeat(np.arange(b * cs, dtype=np.int64), m)[valid]
    fid = flat_ids[valid]
    item = fid // cd
    alpha = w_dst[item, fid % cd].astype(np.float64) * sims.reshape(-1)[valid]
    key = row * n + item
    ukey, inv = np.unique(key, return_inverse=True)
    agg = np.bincount(inv.reshape(-1), weights=alpha, minlength=len(ukey))
    urow, uitem = ukey // n, ukey % n
    ubatch = urow // cs
    if exclude is not None and len(exclude[0]):
        keep = ~np.isin(ubatch * n + uitem, np.asarray(exclude[0], np.int64) * n + exclude[1])
        urow, uitem, ubatch, agg = urow[keep], uitem[keep], ubatch[keep], agg[keep]
    order = np.lexsort((uitem, -agg, urow))
    urow, uitem, ubatch, agg = urow[order], uitem[order], ubatch[order], agg[order]
    first = np.searchsorted(urow, urow, side="left")
    rank = np.arange(len(urow)) - first + 1
    comp = urow % cs
    score = w_src[ubatch, comp].astype(np.float64) / rank
    order = np.lexsort((uitem, -agg, -score, ubatch))
    ubatch, uitem, score, comp = ubatch[order], uitem[order], score[order], comp[order]
    pair = ubatch * n + uitem
    _, first_of_pair = np.unique(pair, return_index=True)  # best occurrence of each (row, item)
    first_of_pair.sort()
    ubatch, uitem, score, comp = (a[first_of_pair] for a in (ubatch, uitem, score, comp))
    start = np.searchsorted(ubatch, ubatch, side="left")
    pos = np.arange(len(ubatch)) - start
    top = pos < k
    out = Candidates(np.full((b, k), -1, np.int64), np.zeros((b, k), np.float32), np.full((b, k), -1, np.int64))
    out.items[ubatch[top], pos[top]] = uitem[top]
    out.scores[ubatch[top], pos[top]] = score[top]
    out.components[ubatch[top], pos[top]] = comp[top]
    return out


class Retriever:
    """Round-robin retrieval for one model: a FAISS index over the target type and a weight set."""

    def __init__(self, model, weight_set: str = "all", index: ComponentIndex | None = None,
                 index_config: IndexConfig | None = None, target_type: str | None = None,
                 source_type: str | None = None):
        self.model = model
        self.source_type = source_type or model.source_type
        self.target_type = target_type or model.target_type
        self.weight_set = weight_set
        self.w_dst = model.mixture_weights(self.target_type, weight_set)
        self.w_src = model.mixture_weights(self.source_type, weight_set)
        self.index = index or load_or_build_index(model, self.target_type, index_config or model.config.index)
        self.source_vectors = model.vectors(self.source_type).numpy()
        self.target_vectors = model.vectors(self.target_type).numpy()

    def search_vectors(self, queries: np.ndarray, weights: np.ndarray, k: int,
                       exclude: tuple[np.ndarray, np.ndarray] | None = None, extra: int = 0) -> Candidates:
        """Round-robin for arbitrary query mixtures (B, C, n) with weights (B, C) (e.g. folded-in users)."""
        b, cs, dim = queries.shape
        cd = self.index.components
        m = min((k + extra) * cd, self.index.size)
        live = np.asarray(weights).reshape(-1) > 0  # pruned components (weight 0) are not searched
        sims, ids = np.zeros((b * cs, m), np.float32), np.full((b * cs, m), -1, np.int64)
        if live.any():
            sims[live], ids[live] = self.index.search(queries.reshape(b * cs, dim)[live], m)
        return round_robin_merge(sims.reshape(b, cs, -1), ids.reshape(b, cs, -1), weights, self.w_dst, k, exclude)

    def recommend(self, users: Sequence[int] | np.ndarray, k: int = 100,
                  exclude_seen: bool | Sequence[str] = True) -> Candidates:
        """Top ``k`` targets for dense source indices; ``exclude_seen`` = True (all training relations between
        the two types), False, or a list of relation names whose training targets are excluded. Between
        two nodes of one type the query itself is always excluded."""
        users = np.asarray(users, dtype=np.int64)
        vectors = self.source_vectors[users]
        excl, extra = None, 0
        if exclude_seen is not False:
            rels = None if exclude_seen is True else list(exclude_seen)
            indptr, indices = self.model.seen(rels, source_type=self.source_type, target_type=self.target_type)
            excl = csr_rows(indptr, indices, users)
            extra = int((indptr[users + 1] - indptr[users]).max(initial=0))
        if self.source_type == self.target_type:  # user->user, item->item: never the query itself
            rows, cols = excl if excl is not None else (np.zeros(0, np.int64), np.zeros(0, np.int64))
            excl, extra = (np.r_[rows, np.arange(len(users))], np.r_[cols, users]), extra + 1
        return self.search_vectors(vectors, self.w_src[users], k, excl, extra)

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
        items = np.asarray(items, dtype=np.int64)
        vec = self.target_vectors[items]
        excl = (np.arange(len(items)), items)
        return self.search_vectors(vec, self.w_dst[items], k, excl, extra=1)

    def to_table(self, users: np.ndarray, cands: Candidates) -> pa.Table:
        """Long table (user, rank, item, score, component) with raw ids; padding dropped."""
        b, k = cands.items.shape
        mask = cands.items >= 0
        u_idx = np.repeat(users, k).reshape(b, k)[mask]
        ranks = np.tile(np.arange(1, k + 1), b).reshape(b, k)[mask]
        uid = self.model.ids[self.source_type][u_idx]
        iid = self.model.ids[self.target_type][cands.items[mask]]
        return pa.table({"user": _arr(uid), "rank": pa.array(ranks, pa.int32()), "item": _arr(iid),
                         "score": pa.array(cands.scores[mask], pa.float32()),
                         "component": pa.array(cands.components[mask], pa.int16())})


def load_or_build_index(model, target_type: str, config: IndexConfig) -> ComponentIndex:
    """The model directory's saved index for this config, or a fresh one (saved when the model has a path)."""
    path = None
    if model.path is not None:
        path = Path(model.path) / "index" / f"{target_type}.{config.kind}.faiss"
        if path.is_file():
            n_items, _, saved = ComponentIndex.read_meta(path)
            if same_build(saved, config) and n_items == model.num(target_type):
                # search-time parameters (efSearch, nprobe) and the device need no rebuild
                return ComponentIndex.load(path, config)
    idx = ComponentIndex.build(model.vectors(target_type).numpy(), config)
    if path is not None:
        path.parent.mkdir(exist_ok=True)
        idx.save(path)
    return idx


def _arr(values: np.ndarray) -> pa.Array:
    return pa.array(values.astype(np.int64)) if values.dtype.kind in "iu" else pa.array([str(v) for v in values])
