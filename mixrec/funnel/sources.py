"""Candidate sets with provenance, the candidate sources and the weighted blend combiner.

A :class:`CandidateSet` is one user's candidates as parallel arrays: the item, a score (higher is
better), the source that produced the kept occurrence, the seed item it came from (history item,
expanded item, a node of another type, or -1) and the seed's entity type ("" for an item of the funnel's
item type), the mixture component that retrieved it (or -1) and a bit mask of *every* source that proposed
it, so de-duplication never loses provenance. ``rank_in`` keeps, per source, the reciprocal rank the item had
in that source's own list (what a learned ranker over the union reads as "where did each source put it").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from mixrec.retrieve import Candidates

SOURCES = ("mixture", "history", "similar", "walk", "popular", "graph", "two_hop")
SOURCE_CODE = {name: i for i, name in enumerate(SOURCES)}


@dataclass
class CandidateSet:
    """One user's candidates; arrays are row-aligned (see the module docstring)."""

    items: np.ndarray  # (n,) int64 dense item index
    scores: np.ndarray  # (n,) float64
    source: np.ndarray  # (n,) int64 code into SOURCES of the kept occurrence
    seed: np.ndarray  # (n,) int64 seed item, -1 if none
    component: np.ndarray  # (n,) int64 user component that retrieved it, -1 if none
    via: np.ndarray  # (n,) int64 bit mask over SOURCES of everything that proposed the item
    seed_type: np.ndarray  # (n,) object: the seed's entity type, "" for an item of the funnel's item type
    rank_in: np.ndarray  # (n, len(SOURCES)) float64: 1 / (1-based rank in each proposing source's list), else 0

    def __len__(self) -> int:
        return int(self.items.shape[0])

    @classmethod
    def make(cls, items, scores, source: str, seed=None, component=None, seed_type: str = "") -> "CandidateSet":
        """A set from one source; ``seed``/``component`` default to -1, ``seed_type`` to "" (seeds are items).

        ``rank_in[:, source]`` is 1 / rank of each row in this list ordered by score (ties: item ascending)."""
        items = np.asarray(items, np.int64).ravel()
        scores = np.asarray(scores, np.float64).ravel()
        n = len(items)
        code = SOURCE_CODE[source]
        fill = lambda v: np.full(n, -1, np.int64) if v is None else np.asarray(v, np.int64).ravel()  # noqa: E731
        rank_in = np.zeros((n, len(SOURCES)))
        rank_in[np.lexsort((items, -scores)), code] = 1.0 / np.arange(1, n + 1)
        return cls(items, scores, np.full(n, code, np.int64), fill(seed), fill(component),
                   np.full(n, 1 << code, np.int64), np.full(n, seed_type, object), rank_in)

    @classmethod
    def empty(cls) -> "CandidateSet":
        z = np.zeros(0, np.int64)
        return cls(z, np.zeros(0), z.copy(), z.copy(), z.copy(), z.copy(), np.zeros(0, object),
                   np.zeros((0, len(SOURCES))))

    def take(self, idx: np.ndarray) -> "CandidateSet":
        """Rows ``idx`` (an index array or boolean mask), in that order."""
        return CandidateSet(*(getattr(self, f)[idx] for f in _FIELDS))

    def with_scores(self, scores: np.ndarray) -> "CandidateSet":
        out = self.take(np.arange(len(self)))
        out.scores = np.asarray(scores, np.float64)
        return out

    def order(self) -> np.ndarray:
        """Positions sorted by score descending, ties by item ascending."""
        return np.lexsort((self.items, -self.scores))

    def sorted(self) -> "CandidateSet":
        return self.take(self.order())

    def head(self, n: int) -> "CandidateSet":
        return self.take(np.arange(min(int(n), len(self))))

    def sources_of(self, row: int) -> list[str]:
        """Names of every source that proposed the item at ``row``."""
        return [s for i, s in enumerate(SOURCES) if self.via[row] >> i & 1]

    @staticmethod
    def concat(sets: Sequence["CandidateSet"]) -> "CandidateSet":
        if not sets:
            return CandidateSet.empty()
        return CandidateSet(*(np.concatenate([getattr(s, f) for s in sets]) for f in _FIELDS))


_FIELDS = ("items", "scores", "source", "seed", "component", "via", "seed_type", "rank_in")


def dedup(cs: CandidateSet, combine: str = "max") -> CandidateSet:
    """One row per item: the highest-scoring occurrence (ties: earliest row) with ``via`` OR-ed over all and
    ``rank_in`` the best (largest reciprocal) rank per source over all.

    ``combine="sum"`` scores the row with the sum of its item's occurrences instead of the best one (seed
    and component stay the best occurrence's). The result is sorted by score descending.
    """
    if len(cs) == 0:
        return cs
    order = np.lexsort((np.arange(len(cs)), -cs.scores, cs.items))
    items = cs.items[order]
    starts = np.flatnonzero(np.r_[True, items[1:] != items[:-1]])
    out = cs.take(order[starts])
    out.via = np.bitwise_or.reduceat(cs.via[order], starts)
    out.rank_in = np.maximum.reduceat(cs.rank_in[order], starts, axis=0)
    if combine == "sum":
        out.scores = np.add.reduceat(cs.scores[order].astype(np.float64), starts).astype(out.scores.dtype)
    elif combine != "max":
        raise ValueError(f"combine must be 'max' or 'sum', got {combine!r}")
    return out.sorted()


def blend(sets: Sequence[CandidateSet], weights: Sequence[float], quotas: Sequence[int | None],
          k: int | None = None, combine: str = "max", offset: float = 0.0) -> CandidateSet:
    """Weighted blend of several inputs with per-input quotas, de-duplicated with provenance.

    Each input is sorted by its own score and cut to its quota (None: no cut) *before* merging; an
    occurrence at 1-based rank r of input i scores ``weights[i] / (offset + r)`` (reciprocal rank, so
    inputs on different score scales mix fairly). Duplicates keep their best-scoring occurrence
    (``combine="max"``: an interleave of the inputs) or the sum of their occurrences (``"sum"``:
    reciprocal-rank fusion, :func:`mixrec.search.rank_fusion` for one row), and the union of ``via``.
    The merged list is sorted and cut to ``k``.
    """
    if not (len(sets) == len(weights) == len(quotas)):
        raise ValueError(f"blend needs one weight and one quota per input: {len(sets)} inputs, "
                         f"{len(weights)} weights, {len(quotas)} quotas")
    parts = []
    for cs, w, q in zip(sets, weights, quotas):
        s = cs.sorted() if q is None else cs.sorted().head(q)
        parts.append(s.with_scores(float(w) / (offset + np.arange(1, len(s) + 1))))
    out = dedup(CandidateSet.concat(parts), combine)
    return out if k is None else out.head(k)


# ----------------------------------------------------------------------------- sources
def from_candidates(c: Candidates, row: int, source: str, seed: int | None = None) -> CandidateSet:
    """One row of a retrieval result (padding dropped)."""
    keep = c.items[row] >= 0
    n = int(keep.sum())
    return CandidateSet.make(c.items[row][keep], c.scores[row][keep], source,
                             None if seed is None else np.full(n, seed), c.components[row][keep])


def history_source(indptr: np.ndarray, items: np.ndarray, user: int, n: int) -> CandidateSet:
    """The user's ``n`` latest distinct history items (CSR in log order, latest last); each is its own seed.

    Scores are 1 / (position from the latest), so the most recent item ranks first.
    """
    row = items[indptr[user]:indptr[user + 1]][::-1][:n]
    return CandidateSet.make(row, 1.0 / np.arange(1, len(row) + 1), "history", seed=row)


def graph_source(model, user: int, k: int, exclude_seen: bool = True) -> CandidateSet:
    """Top ``k`` of a fitted graph-filter model (mixrec.filters) for a training user: its history rows x filter."""
    items, scores = model.recommend([int(user)], k=k, exclude_seen=exclude_seen)
    keep = items[0] >= 0
    return CandidateSet.make(items[0][keep], scores[0][keep], "graph")


def popular_source(ranking: np.ndarray, counts: np.ndarray, k: int) -> CandidateSet:
    """The ``k`` most popular items (``ranking`` = items by count descending); score = count / max count."""
    top = ranking[:k]
    denom = max(float(counts[ranking[0]]) if len(ranking) else 1.0, 1.0)
    return CandidateSet.make(top, counts[top] / denom, "popular")


def history_csr(src: np.ndarray, dst: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Per user, its distinct items in log order of their *last* occurrence (latest last), as a CSR."""
    src, dst = np.asarray(src, np.int64), np.asarray(dst, np.int64)
    pos = np.arange(len(src))
    order = np.lexsort((-pos, dst, src))  # per (user, item): the latest occurrence first
    s, d, p = src[order], dst[order], pos[order]
    first = np.r_[True, (s[1:] != s[:-1]) | (d[1:] != d[:-1])]
    s, d, p = s[first], d[first], p[first]
    order = np.lexsort((p, s))
    indptr = np.zeros(n_users + 1, np.int64)
    np.cumsum(np.bincount(s, minlength=n_users), out=indptr[1:])
    return indptr, d[order]


def two_hop_source(mid: CandidateSet, indptr: np.ndarray, dst: np.ndarray, per_via: int, k: int,
                   via_type: str) -> CandidateSet:
    """Items one relation away from intermediate nodes ``mid`` (e.g. retrieved creators -> their media).

    ``(indptr, dst)``: the relation's destinations per intermediate node, in log order (latest last; see
    :func:`history_csr`). Each node ``v`` with score ``s_v`` contributes its ``per_via`` latest destinations;
    the one at 0-based position ``j`` from the latest scores ``s_v / (j + 1)``. An item reached from several
    nodes keeps its best-scoring occurrence (ties: the better-ranked node). ``seed`` is that node's dense index
    *in the intermediate type* (not an item index) and ``seed_type`` that type, ``via_type``; ``component`` is
    the user component that retrieved it. The top ``k`` are returned, best first.
    """
    if len(mid) == 0:
        return CandidateSet.empty()
    starts, ends = indptr[mid.items], indptr[mid.items + 1]
    n = np.minimum(ends - starts, per_via)
    row = np.repeat(np.arange(len(mid)), n)
    j = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)  # position from the latest
    items = dst[np.repeat(ends, n) - 1 - j]
    out = CandidateSet.make(items, mid.scores[row] / (j + 1), "two_hop", seed=mid.items[row],
                            component=mid.component[row], seed_type=via_type)
    return dedup(out).head(k)


def expand_neighbours(parent: CandidateSet, neigh: Candidates, source: str) -> CandidateSet:
    """Aggregate per-parent neighbour lists into one set (used by item-to-item expansion).

    A neighbour at row i scores ``parent_score_i / max(parent_score) * neighbour_score``; an item reached
    from several parents sums its contributions and keeps, as its seed, the parent with the largest one.
    """
    b, k = neigh.items.shape
    if b == 0 or len(parent) == 0:
        return CandidateSet.empty()
    pmax = parent.scores.max()
    pw = parent.scores / pmax if pmax > 0 else np.ones(len(parent))
    valid = neigh.items >= 0
    rows = np.repeat(np.arange(b), k)[valid.ravel()]
    items = neigh.items[valid]
    contrib = pw[rows] * neigh.scores[valid].astype(np.float64)
    return aggregate(items, contrib, parent.items[rows], source)


def aggregate(items: np.ndarray, contrib: np.ndarray, seeds: np.ndarray, source: str) -> CandidateSet:
    """Sum ``contrib`` per item; the seed is the one with the largest single contribution."""
    if len(items) == 0:
        return CandidateSet.empty()
    order = np.lexsort((seeds, -contrib, items))
    it = items[order]
    starts = np.flatnonzero(np.r_[True, it[1:] != it[:-1]])
    total = np.add.reduceat(contrib[order], starts)
    out = CandidateSet.make(it[starts], total, source, seed=seeds[order][starts])
    return out.sorted()
