"""The retrieval core: one searcher from a source entity type to a target type over a component index, lists merged by rescoring or round-robin."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from mixrec.config import IndexConfig
from mixrec.csr import csr_rows
from mixrec.index import ComponentIndex, IndexFileError, embeddings_digest, same_build

log = logging.getLogger("mixrec.retrieve")


@dataclass
class Candidates:
    """Retrieved items per query row, best first; -1 / 0 pads rows with fewer than k."""

    items: np.ndarray  # (B, k) int64
    scores: np.ndarray  # (B, k) float32: max_c w_sc / rank (round-robin) or the pooled score (rescore)
    components: np.ndarray  # (B, k) int64: the source component that won (rescore: the best-matching one)


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
    return _top_per_row(b, k, *(a[first_of_pair] for a in (ubatch, uitem, score, comp)))


def _top_per_row(b: int, k: int, rows: np.ndarray, items: np.ndarray, scores: np.ndarray,
                 comps: np.ndarray) -> Candidates:
    """The first ``k`` entries of each row of flat arrays sorted by row, best first within a row."""
    pos = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    top = pos < k
    out = Candidates(np.full((b, k), -1, np.int64), np.zeros((b, k), np.float32), np.full((b, k), -1, np.int64))
    out.items[rows[top], pos[top]] = items[top]
    out.scores[rows[top], pos[top]] = scores[top]
    out.components[rows[top], pos[top]] = comps[top]
    return out


def rank_fusion(lists: Sequence[np.ndarray], weights: Sequence[float], k: int, offset: float = 0.0) -> Candidates:
    """Weighted reciprocal-rank fusion of ranked lists from several sources (models, filters).

    ``lists[i]`` (B, K_i) holds source i's items per row, best first, -1 padding. An item at 1-based rank r
    of list i adds ``weights[i] / (offset + r)``; a row ranks its items by the sum over the lists that hold
    it (ties: lower item id). ``components`` names the list whose term was largest (ties: the first list).
    ``offset`` 0 rewards the head of every list; the usual RRF constant is 60.
    """
    if len(lists) != len(weights) or not lists:
        raise ValueError(f"rank_fusion needs one weight per list: {len(lists)} lists, {len(weights)} weights")
    b = lists[0].shape[0]
    if any(x.shape[0] != b for x in lists):
        raise ValueError(f"every list needs the same rows: {[x.shape[0] for x in lists]}")
    rows, items, terms, src = [], [], [], []
    for i, (ids, w) in enumerate(zip(lists, weights)):
        r, c = np.nonzero(ids >= 0)
        rows.append(r.astype(np.int64))
        items.append(ids[r, c].astype(np.int64))
        terms.append(float(w) / (offset + c + 1.0))
        src.append(np.full(len(r), i, np.int64))
    rows, items, terms, src = (np.concatenate(x) for x in (rows, items, terms, src))
    n = int(items.max()) + 1 if len(items) else 1
    key, inv = np.unique(rows * n + items, return_inverse=True)
    inv = inv.reshape(-1)
    total = np.bincount(inv, weights=terms, minlength=len(key))
    best = np.lexsort((src, -terms, inv))  # per key: the largest term first, then the first list
    first = best[np.searchsorted(inv[best], np.arange(len(key)))]
    urow, uitem = key // n, key % n
    order = np.lexsort((uitem, -total, urow))
    return _top_per_row(b, k, urow[order], uitem[order], total[order].astype(np.float32), src[first][order])


def rescore_merge(queries: np.ndarray, w_src: np.ndarray, ids: np.ndarray, target_vectors: np.ndarray, k: int,
                  exclude: tuple[np.ndarray, np.ndarray] | None = None, *, pooling: str = "smoothmax",
                  gamma: float = 0.1, theta: float = 0.1, theta_form: str = "mean", chunk: int = 65536) -> Candidates:
    """The union of the per-component neighbour lists ranked by the exact pooled score.

    ``queries`` (B, C_s, n) and ``target_vectors`` (N, C_d, n) are unit vectors; ``ids`` (B, C_s, M) flat
    neighbour ids as in :func:`round_robin_merge`. A candidate d of row b scores pool_{c,l} cos(q_bc, v_dl)
    over the source components with ``w_src`` > 0 (pruned ones left out, as the exact ranking does); its
    component is the kept c with the largest max_l cos. Ties: lower item id. When every destination in the
    exact top ``k`` is among some component's neighbours (always for max pooling), this is the exact ranking.
    """
    from mixrec.model.components import masked_pool
    from mixrec.model.functional import ALL_DIMS, pool

    b, cs, _ = ids.shape
    n, cd, _ = target_vectors.shape
    flat = ids.reshape(b, -1)
    valid = flat >= 0
    key = np.unique(np.broadcast_to(np.arange(b, dtype=np.int64)[:, None], flat.shape)[valid] * n
                    + flat[valid] // cd)
    urow, uitem = key // n, key % n
    if exclude is not None and len(exclude[0]):
        keep_pair = ~np.isin(key, np.asarray(exclude[0], np.int64) * n + exclude[1])
        urow, uitem = urow[keep_pair], uitem[keep_pair]
    kept = torch.from_numpy(np.asarray(w_src).reshape(b, cs) > 0)
    score, comp = np.empty(len(urow), np.float32), np.empty(len(urow), np.int64)
    kw = dict(gamma=gamma, theta=theta, theta_form=theta_form)
    with torch.no_grad():
        for lo in range(0, len(urow), chunk):
            r, it = urow[lo:lo + chunk], uitem[lo:lo + chunk]
            q = torch.from_numpy(np.asarray(queries[r], np.float32))
            m = q @ torch.from_numpy(np.asarray(target_vectors[it], np.float32)).transpose(1, 2)  # (P, C_s, C_d)
            kp = kept[r]
            m4 = m.unsqueeze(-1)
            s = pool(m4, pooling, dims=ALL_DIMS, **kw) if bool(kp.all()) else masked_pool(m4, kp, pooling, **kw)
            score[lo:lo + len(r)] = s[:, 0].numpy()
            comp[lo:lo + len(r)] = m.amax(-1).masked_fill(~kp, -torch.inf).argmax(-1).numpy()
    order = np.lexsort((uitem, -score, urow))
    return _top_per_row(b, k, urow[order], uitem[order], score[order], comp[order])


def load_or_build_index(model, target_type: str, config: IndexConfig) -> ComponentIndex:
    """The model directory's saved index for this config, or a fresh one (saved when the model has a path)."""
    path = digest = None
    vectors = model.vectors(target_type).numpy()
    if model.path is not None:  # only a saved index is tied to the embeddings it was built from
        digest = embeddings_digest(vectors)
        path = Path(model.path) / "index" / f"{target_type}.{config.kind}.faiss"
        if path.is_file():
            saved = _saved_index(path, config, digest)
            if saved is not None:
                return saved
    idx = ComponentIndex.build(vectors, config)
    if path is not None:
        path.parent.mkdir(exist_ok=True)
        idx.save(path, embeddings=digest)
    return idx


def _saved_index(path: Path, config: IndexConfig, digest: str) -> ComponentIndex | None:
    """The saved index at ``path`` when it was built with ``config``'s build parameters from exactly the
    embeddings ``digest`` names and its file is intact; None (with a warning saying why) otherwise."""
    try:
        meta = ComponentIndex.read_sidecar(path)
        if not same_build(IndexConfig(**meta["config"]), config):
            return None  # another build (hnsw_m, nlist...): rebuilt quietly, as configured
        if meta.get("embeddings_sha256") != digest:
            log.warning("%s: built from other embeddings than the model's (retrained since?); rebuilding it", path)
            return None
        # search-time parameters (efSearch, nprobe) and the device need no rebuild
        return ComponentIndex.load(path, config)
    except IndexFileError as e:
        log.warning("%s; rebuilding it", e)
        return None


SeenFn = Callable[[Sequence[str] | None], tuple[np.ndarray, np.ndarray]]


def exclusion(seen: tuple[np.ndarray, np.ndarray], rows: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], int]:
    """(row position, item) pairs to exclude for ``rows`` of a seen-items CSR, and the longest row's length."""
    indptr, indices = seen
    return csr_rows(indptr, indices, rows), int((indptr[rows + 1] - indptr[rows]).max(initial=0))


class Searcher:
    """Per-component KNN from ``source_type`` to ``target_type`` of a model, over one index, lists merged.

    The index config's ``merge`` picks how the per-component lists are merged ('round_robin' or 'rescore').
    Weight sets are materialised once, on first use, and cached; ``seen`` (default ``model.seen``) gives
    the CSR of each source's already-seen targets, optionally restricted to some relations.
    """

    def __init__(self, model, index: ComponentIndex, source_type: str | None = None,
                 target_type: str | None = None, seen: SeenFn | None = None):
        self.model, self.index = model, index
        self.source_type = source_type or model.source_type
        self.target_type = target_type or model.target_type
        self.source_vectors = model.vectors(self.source_type).numpy()
        self.target_vectors = model.vectors(self.target_type).numpy()
        self.seen = seen or (lambda rels: model.seen(rels, source_type=self.source_type,
                                                      target_type=self.target_type))
        self._weights: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def for_model(cls, model, index_config=None, source_type: str | None = None, target_type: str | None = None,
                  index: ComponentIndex | None = None, seen: SeenFn | None = None) -> "Searcher":
        """A searcher over the model's saved index for ``index_config`` (built, and saved, when missing)."""
        t_type = target_type or model.target_type
        index = index or load_or_build_index(model, t_type, index_config or model.config.index)
        return cls(model, index, source_type, t_type, seen)

    @property
    def weight_sets(self) -> list[str]:
        """The model's weight set names (``all`` alone, uniform, when it has none)."""
        return sorted(self.model.weights) or ["all"]

    def weights(self, weight_set: str = "all") -> tuple[np.ndarray, np.ndarray]:
        """(w_source (N_s, C_s), w_target (N_d, C_d)) of a weight set, cached; KeyError names the sets."""
        if weight_set not in self._weights:
            if self.model.weights and weight_set not in self.model.weights:
                raise KeyError(f"unknown weight set {weight_set!r}; this model has {self.weight_sets}")
            m = self.model
            self._weights[weight_set] = (m.mixture_weights(self.source_type, weight_set),
                                         m.mixture_weights(self.target_type, weight_set))
        return self._weights[weight_set]

    def search(self, queries: np.ndarray, w_src: np.ndarray, k: int,
               exclude: tuple[np.ndarray, np.ndarray] | None = None, extra: int = 0,
               weight_set: str = "all") -> Candidates:
        """Round-robin for query mixtures (B, C_s, n) with weights (B, C_s); ``exclude`` = (row, item) pairs,
        ``extra`` = how many more neighbours per component to fetch so that ``k`` survive the exclusion."""
        b, cs, dim = queries.shape
        if b == 0:  # no query rows (e.g. a funnel seed set that is empty)
            return Candidates(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
        m = min((k + extra) * self.index.components, self.index.size)
        flat = np.ascontiguousarray(queries.reshape(b * cs, dim))
        live = np.asarray(w_src).reshape(-1) > 0  # pruned components (weight 0) are not searched
        if live.all():
            sims, ids = self.index.search(flat, m)
        else:
            sims, ids = np.zeros((b * cs, m), np.float32), np.full((b * cs, m), -1, np.int64)
            if live.any():
                sims[live], ids[live] = self.index.search(np.ascontiguousarray(flat[live]), m)
        if self.index.config.merge == "rescore":
            cfg = self.model.config
            return rescore_merge(queries, w_src, ids.reshape(b, cs, -1), self.target_vectors, k, exclude,
                                 pooling=cfg.score_pooling, gamma=cfg.gamma, theta=cfg.theta,
                                 theta_form=cfg.theta_form)
        w_dst = self.weights(weight_set)[1]
        return round_robin_merge(sims.reshape(b, cs, -1), ids.reshape(b, cs, -1), w_src, w_dst, k, exclude)

    def recommend(self, users: Sequence[int] | np.ndarray, k: int, weight_set: str = "all",
                  exclude_seen: bool | Sequence[str] = True) -> Candidates:
        """Top ``k`` targets for dense source indices; ``exclude_seen`` = True (every relation between the two
        types), False, or the relation names whose seen targets are excluded. Between two nodes of one type
        the query itself is always excluded."""
        users = np.asarray(users, dtype=np.int64)
        excl, extra = None, 0
        if exclude_seen is not False:
            excl, extra = exclusion(self.seen(None if exclude_seen is True else list(exclude_seen)), users)
        if self.source_type == self.target_type:  # user->user, item->item: never the query itself
            rows, cols = excl if excl is not None else (np.zeros(0, np.int64), np.zeros(0, np.int64))
            excl, extra = (np.r_[rows, np.arange(len(users))], np.r_[cols, users]), extra + 1
        return self.search(self.source_vectors[users], self.weights(weight_set)[0][users], k, excl, extra,
                           weight_set)

    def similar(self, items: Sequence[int] | np.ndarray, k: int, weight_set: str = "all") -> Candidates:
        """Target-to-target neighbours: each target's own components and weights as the query (itself excluded)."""
        items = np.asarray(items, dtype=np.int64)
        w_dst = self.weights(weight_set)[1]
        return self.search(self.target_vectors[items], w_dst[items], k, (np.arange(len(items)), items), 1,
                           weight_set)

    def from_vectors(self, vectors: np.ndarray, w_src: np.ndarray, k: int, weight_set: str = "all",
                     histories: Sequence[np.ndarray] | None = None) -> Candidates:
        """Round-robin for new (e.g. folded-in) sources; ``histories`` (one array of dense targets per row)
        are excluded from each row's candidates when given."""
        if histories is None:
            return self.search(vectors, w_src, k, None, 0, weight_set)
        hist = [np.asarray(h, np.int64) for h in histories]
        excl = (np.repeat(np.arange(len(hist)), [len(h) for h in hist]),
                np.concatenate(hist) if hist else np.zeros(0, np.int64))
        return self.search(vectors, w_src, k, excl, max((len(h) for h in hist), default=0), weight_set)
