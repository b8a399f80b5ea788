"""Running funnel queries: :class:`Funnel` runs a query for one user and records what each step kept.

The :class:`Funnel` holds a model, its index, the interaction history, item labels and rankers;
:meth:`Funnel.run` executes a :class:`~mixrec.funnel.query.Query` for one user and records, per step, what
it kept and dropped (:meth:`FunnelResult.explain`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from mixrec.csr import csr_from_pairs
from mixrec.evaluate.labels import ItemLabels
from mixrec.funnel import diversify as div
from mixrec.funnel.features import FeatureTables
from mixrec.funnel.query import Query, QueryError, Step
from mixrec.funnel.rank import FunnelRanker
from mixrec.funnel.sources import CandidateSet, from_candidates, history_csr, two_hop_source
from mixrec.funnel.walk import BipartiteGraph
from mixrec.index import ComponentIndex
from mixrec.registry import FUNNEL_OPS
from mixrec.search import Candidates, Searcher


@dataclass
class StepTrace:
    """What one step did: sizes in and out, the items it kept and dropped, and its time."""

    step: str
    depth: int
    n_in: int
    n_out: int
    kept: np.ndarray
    dropped: np.ndarray
    seconds: float

    def to_dict(self, item_ids: np.ndarray, limit: int = 50) -> dict:
        raw = lambda a: [v.item() if isinstance(v, np.generic) else v for v in item_ids[a[:limit]]]  # noqa: E731
        return {"step": self.step, "depth": self.depth, "in": self.n_in, "out": self.n_out,
                "kept": raw(self.kept), "dropped": raw(self.dropped), "dropped_count": int(len(self.dropped)),
                "ms": round(self.seconds * 1e3, 3)}


@dataclass
class FunnelResult:
    """A user's final candidates (best first) and the trace of every step."""

    user: int
    candidates: CandidateSet
    trace: list[StepTrace] = field(default_factory=list)

    def explain(self, item_ids: np.ndarray | None = None, top: int = 10, ids: dict | None = None) -> str:
        """The funnel for this user: one line per step (sub-queries indented), then the top items. ``ids``:
        raw ids per entity type, for seeds of another type than the items (shown as ``type:id``)."""
        name = (lambda i: str(i)) if item_ids is None else (lambda i: str(item_ids[i]))
        lines = [f"funnel for user {self.user}:"]
        for t in self.trace:
            pad = "  " * (t.depth + 1)
            lines.append(f"{pad}{t.step:<60} {t.n_in:>6} -> {t.n_out:<6} dropped {len(t.dropped):<6} "
                         f"{t.seconds * 1e3:8.2f} ms")
        c = self.candidates
        lines.append(f"  top {min(top, len(c))} of {len(c)}:")
        for r in range(min(top, len(c))):
            t = c.seed_type[r]
            seed = ("-" if c.seed[r] < 0 else name(c.seed[r]) if not t
                    else f"{t}:{c.seed[r] if ids is None else ids[t][c.seed[r]]}")
            lines.append(f"    {r + 1:>3}. item {name(c.items[r]):<12} score {c.scores[r]:.4f}  seed {seed:<10} "
                         f"component {c.component[r]:>2}  via {'+'.join(c.sources_of(r))}")
        return "\n".join(lines)


class Funnel:
    """Everything a query needs, from ``source_type`` (users) to ``target_type`` (items), by default the model's
    first relation's types. ``history`` = (src, dst, relation code) training edges (default: the model's own
    between the two types); ``rankers`` maps names used by ``rank(ranker=...)`` to trained rankers;
    ``searcher``: an already built :class:`~mixrec.search.Searcher` of the two types to share (serving passes
    its snapshot's, so the vectors and weight sets are not materialised twice); ``searchers(source_type,
    target_type)``: where ``two_hop`` gets its first hop's searcher (default: built from the model)."""

    def __init__(self, model, *, index: ComponentIndex | None = None,
                 history: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                 labels: ItemLabels | None = None, rankers: dict[str, FunnelRanker] | None = None,
                 filters: dict | None = None, source_type: str | None = None, target_type: str | None = None,
                 searcher: Searcher | None = None, searchers: Callable[[str, str], Searcher] | None = None):
        self.model = model
        self.source_type = source_type or model.source_type
        self.target_type = target_type or model.target_type
        self.relations = [r.name for r in model.relations]
        if history is None:  # the model's own training edges between the two types
            e = model.train_edges
            between = [self.relations.index(r) for r in model.relations_between(self.source_type, self.target_type)]
            m = np.isin(e["rel"], between)
            history = (e["src"][m], e["dst"][m], e["rel"][m])
            seen = None  # exclude exactly what Retriever and serving exclude
        else:
            seen = self.seen
        self.src, self.dst, self.rel = (np.asarray(a, np.int64) for a in history)
        if searcher is not None and (seen is not None or (searcher.source_type, searcher.target_type)
                                     != (self.source_type, self.target_type)):
            raise ValueError("searcher= serves the model's own history between the funnel's two types only")
        self.searcher = searcher or Searcher.for_model(model, index=index, source_type=self.source_type,
                                                       target_type=self.target_type, seen=seen)
        self.index = self.searcher.index
        self.labels, self.rankers = labels, dict(rankers or {})
        self.filters = dict(filters or {})  # name -> fitted mixrec.filters model, for graph(model=...)
        self.searchers = searchers or (lambda s_t, d_t: Searcher.for_model(model, source_type=s_t, target_type=d_t))
        self.n_users, self.n_items = model.num(self.source_type), model.num(self.target_type)
        self.user_vectors, self.item_vectors = self.searcher.source_vectors, self.searcher.target_vectors
        self._cache: dict = {}

    # ----------------------------------------------------------------- cached tables
    def _codes(self, relations: Sequence[str] | None) -> tuple:
        return tuple(range(len(self.relations))) if relations is None else tuple(
            self.relations.index(r) for r in relations)

    def _edges(self, relations):
        codes = self._codes(relations)
        m = np.isin(self.rel, codes)
        return self.src[m], self.dst[m]

    def _cached(self, key, build):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    def seen(self, relations: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self._cached(("seen", self._codes(relations)), lambda: csr_from_pairs(*self._edges(relations),
                                                                                      self.n_users))

    def history(self, relations: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        return self._cached(("hist", self._codes(relations)), lambda: history_csr(*self._edges(relations),
                                                                                  self.n_users))

    def popularity(self, relations: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        def build():
            counts = np.bincount(self._edges(relations)[1], minlength=self.n_items).astype(np.float64)
            return np.lexsort((np.arange(self.n_items), -counts)), counts
        return self._cached(("pop", self._codes(relations)), build)

    @property
    def graph(self) -> BipartiteGraph:
        return self._cached("graph", lambda: BipartiteGraph.from_edges(self.src, self.dst, self.n_users,
                                                                       self.n_items))

    @property
    def features(self) -> FeatureTables:
        return self._cached("features", lambda: FeatureTables.build(self.model, self.src, self.dst, self.rel))

    def weights(self, weight_set: str) -> tuple[np.ndarray, np.ndarray]:
        return self.searcher.weights(weight_set)

    # ----------------------------------------------------------------- retrieval primitives
    def recommend(self, user: int, k: int, weight_set: str = "all", exclude_seen=True) -> CandidateSet:
        """Mixture retrieval for one user, lists merged by the model's ``index.merge`` (``exclude_seen``: bool or
        relation names)."""
        return from_candidates(self.searcher.recommend([user], k, weight_set, exclude_seen), 0, "mixture")

    def two_hop(self, user: int, via: str, relation: str, k_via: int, per_via: int, k: int,
                weight_set: str = "all", exclude_seen: bool = False) -> CandidateSet:
        """The user's top ``k_via`` nodes of type ``via`` (the served retrieval), then up to ``per_via`` of each
        one's latest ``relation`` destinations in the model's training edges (see :func:`two_hop_source`)."""
        searcher = self._cached(("via", via), lambda: self.searchers(self.source_type, via))
        mid = from_candidates(searcher.recommend([user], k_via, weight_set, exclude_seen), 0, "two_hop")
        indptr, dst = self._cached(("hop", relation), lambda: self._relation_csr(relation))
        return two_hop_source(mid, indptr, dst, per_via, k, via)

    def _relation_csr(self, relation: str) -> tuple[np.ndarray, np.ndarray]:
        e, code = self.model.train_edges, self.relations.index(relation)
        m = np.asarray(e["rel"]) == code
        src_type = self.model.relations[code].source_type
        return history_csr(e["src"][m], e["dst"][m], self.model.num(src_type))

    def similar(self, items: np.ndarray, k: int, weight_set: str = "all") -> Candidates:
        """Item-to-item neighbours from the destination embeddings (each item itself excluded)."""
        return self.searcher.similar(items, k, weight_set)

    # ----------------------------------------------------------------- validation
    def check(self, query: Query, where: str = "") -> None:
        """Validate ``query`` against this funnel (weight sets, relations, rankers, labels)."""
        sets = sorted(self.model.weights) or ["all"]
        for i, s in enumerate(query.steps, 1):
            here = f"{where}step {i} ({s.op})"
            a = s.args
            if "weights" in a and s.op != "union" and a["weights"] not in sets:
                raise QueryError(here, "weights", f"unknown weight set {a['weights']!r}; the model has {sets}")
            for key in ("relation", "exclude_seen"):
                names = a.get(key)
                if isinstance(names, list):
                    bad = [r for r in names if r not in self.relations]
                    if bad:
                        raise QueryError(here, key, f"unknown relation(s) {bad}; the model has {self.relations}")
            op_check = FUNNEL_OPS.get(s.op).check
            if op_check is not None:
                op_check(self, a, here)
            for j, q in enumerate(a.get("queries") or []):
                self.check(q, f"{here} > queries[{j}] > ")

    # ----------------------------------------------------------------- execution
    def run(self, query: Query, user: int | None = None, validate: bool = True) -> FunnelResult:
        """Execute ``query`` for the dense user index ``user`` (default: the query's own raw ``user`` id)."""
        if user is None:
            if query.user is None:
                raise QueryError("query", "user", "no user: pass a user index or build the query with Query.user(id)")
            user = self.user_index(query.user)
        if not 0 <= int(user) < self.n_users:
            raise QueryError("query", "user", f"user index {user} outside [0, {self.n_users})")
        if validate:
            self.check(query)
        trace: list[StepTrace] = []
        cands = self._run(query, int(user), trace, 0)
        return FunnelResult(int(user), cands, trace)

    def _run(self, query: Query, user: int, trace: list[StepTrace], depth: int) -> CandidateSet:
        cs = CandidateSet.empty()
        for step in query.steps:
            t0 = time.perf_counter()
            pos = len(trace)
            out = self._step(step, cs, user, trace, depth)
            dropped = np.setdiff1d(cs.items, out.items)
            trace.insert(pos, StepTrace(step.describe(), depth, len(cs), len(out), out.items, dropped,
                                        time.perf_counter() - t0))
            cs = out
        return cs

    def apply(self, step: Step, cs: CandidateSet, user: int) -> CandidateSet:
        """Apply one step to a candidate set (e.g. to try several diversifiers on one ranked list)."""
        return self._step(step, cs, int(user), [], 0)

    def _step(self, step: Step, cs: CandidateSet, user: int, trace: list, depth: int) -> CandidateSet:
        run_sub = lambda q: self._run(q, user, trace, depth + 1)  # noqa: E731
        return FUNNEL_OPS.get(step.op).execute(self, step.args, cs, user, run_sub)

    def _filter(self, cs: CandidateSet, user: int, a: dict) -> CandidateSet:
        keep = np.ones(len(cs), bool)
        if a["exclude_seen"] is not False:
            indptr, indices = self.seen(None if a["exclude_seen"] is True else a["exclude_seen"])
            keep &= ~np.isin(cs.items, indices[indptr[user]:indptr[user + 1]])
        if a["exclude_items"]:
            keep &= ~np.isin(cs.items, self.item_index(a["exclude_items"]))
        if a["min_score"] is not None:
            keep &= cs.scores >= a["min_score"]
        return cs.take(keep)

    def _rank(self, cs: CandidateSet, user: int, a: dict) -> CandidateSet:
        ranker = self.rankers[a["ranker"]]
        for stage, keep in zip(a["stages"], a["keep"]):
            users = np.full(len(cs), user, np.int64)
            if len(cs) == 0:
                break
            x = ranker.inputs(stage, self.features, users, cs.items, cs.rank_in)
            if stage == "first_pass":
                scores = ranker.first_pass.score(x)
            elif stage == "second_pass":
                scores = ranker.second_pass.score(x)
            else:
                scores = ranker.values(x)
            cs = cs.with_scores(scores).sorted().head(keep)
        return cs

    def _diversify(self, cs: CandidateSet, a: dict) -> CandidateSet:
        if len(cs) == 0:
            return cs
        cs = cs.sorted()
        keys = self.keys(cs, a["by"])
        if a["method"] == "penalty":
            order, adj = div.penalty_order(cs.scores, keys, a["penalty"])
            return cs.take(order).with_scores(adj)
        if a["method"] == "round_robin":
            order = div.round_robin_order(cs.scores, keys)
        else:
            order = div.mmr_order(cs.scores, self.similarity(cs, a["by"], keys), a["beta"], a["k"])
        out = cs.take(order)
        return out.with_scores(np.arange(len(out), 0, -1, dtype=np.float64))

    def keys(self, cs: CandidateSet, by: str) -> np.ndarray:
        """Grouping key per candidate: its seed, component, source, origin (seed, else component) or first
        label (-1: no key)."""
        if by == "seed":
            return cs.seed
        if by == "component":
            return cs.component
        if by == "source":
            return cs.source
        if by == "origin":  # the seed item, else the retrieving component (in its own key range)
            return np.where(cs.seed >= 0, cs.seed, np.where(cs.component >= 0, self.n_items + cs.component, -1))
        if by == "label":
            first = self.labels.indices[np.minimum(self.labels.indptr[cs.items], len(self.labels.indices) - 1)]
            return np.where(self.labels.counts()[cs.items] > 0, first, -1)
        return np.full(len(cs), -1, np.int64)  # "embedding": no grouping key

    def similarity(self, cs: CandidateSet, by: str, keys: np.ndarray) -> np.ndarray:
        """(n, n) similarity for MMR: label Jaccard, embedding cosine, or 'same key'."""
        if by == "label":
            return div.jaccard_sim(self.labels.dense()[cs.items])
        if by == "embedding":
            w = self.weights("all")[1][cs.items][:, :, None]
            return div.cosine_sim((self.item_vectors[cs.items] * w).sum(1))
        same = (keys[:, None] == keys[None, :]) & (keys[:, None] >= 0)
        return same.astype(np.float64)

    def seed_ids(self, cs: CandidateSet) -> tuple[list, list]:
        """(raw seed id, seed entity type) per candidate, None for both where it has no seed: an item of the
        funnel's item type, or a node of another type (a ``two_hop`` source's via-node)."""
        ids, types = [], []
        for seed, t in zip(cs.seed.tolist(), cs.seed_type.tolist()):
            t = t or self.target_type
            raw = None if seed < 0 else self.model.ids[t][seed]
            ids.append(raw.item() if isinstance(raw, np.generic) else raw)
            types.append(None if seed < 0 else t)
        return ids, types

    def user_index(self, raw) -> int:
        """Dense index of a raw user id (QueryError if unknown)."""
        idx = int(self.model.lookup(self.source_type).find([raw])[0])
        if idx < 0:
            raise QueryError("query", "user", f"unknown user id {raw!r}")
        return idx

    def item_index(self, raw: Sequence) -> np.ndarray:
        """Dense indices of raw item ids (unknown ids dropped)."""
        idx = self.model.lookup(self.target_type).find(list(raw))
        return idx[idx >= 0]
