"""``POST /v1/query``: run a funnel query document for one user of the served model.

The query is validated (structure, then against the served model: weight sets, relations,
rankers) before anything runs; errors are JSON ``{"error": ..., "step": ..., "argument": ...}``
with status 422. Serving limits: every ``k``/``n`` at most the server's ``max_k``, each walk at
most ``MAX_WALK_STEPS`` walker-steps, and the whole query's estimated cost (:func:`mixrec.funnel.ops.query_cost`)
at most the settings' ``max_query_cost`` (422 naming both). While it runs, the query checks before every
step (sub-queries' too) that it is within ``query_timeout_s`` and that its client is still connected; if not
it stops there and answers 503. Query work runs on its own threads, so the candidate routes' threads are
never taken by it. Rankers are looked up in ``app.state.funnel_rankers`` (loaded from the settings'
``rankers``). The server adds the route to the app with :func:`install_query_route`.
"""
from __future__ import annotations

import os
import threading
from time import monotonic
from typing import Any, Optional, Union

import anyio
import anyio.to_thread
import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from mixrec.filters import load_filter
from mixrec.funnel.engine import Funnel
from mixrec.funnel.ops import MAX_WALK_STEPS, query_cost  # noqa: F401  (MAX_WALK_STEPS: a limit documented here)
from mixrec.funnel.query import Query, QueryError
from mixrec.funnel.rank import FunnelRanker
from mixrec.funnel.sources import SOURCES
from mixrec.registry import FUNNEL_OPS
from mixrec.serve.errors import ERRORS, ApiError
from mixrec.serve.filter_state import model_kind

RawId = Union[int, str]


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no type coercion: "limit": "3" is refused

    user: RawId = Field(description="raw id of the query node (of source_type)")
    query: dict[str, Any] = Field(description="the query document (the JSON form of a TOML/YAML query)")
    source_type: Optional[str] = Field(None, description="entity type of the user (default: the model's source "
                                                         "type), e.g. consumer")
    target_type: Optional[str] = Field(None, description="entity type of the candidates (default: the model's "
                                                         "target type), e.g. media for a two_hop through authored")
    explain: bool = Field(False, description="also return every step's kept/dropped items")
    limit: Optional[int] = Field(None, ge=1, description="return at most this many candidates")


class FunnelCandidate(BaseModel):
    item: RawId
    score: float
    rank: int
    source: str = Field(description="the source of the kept occurrence")
    via: list[str] = Field(description="every source that proposed the item")
    seed: Optional[RawId] = Field(None, description="the seed it came from, if any: an item, or a node of "
                                                    "seed_type (a two_hop source's via-node)")
    seed_type: Optional[str] = Field(None, description="the seed's entity type (None: no seed)")
    component: int = Field(description="user component that retrieved it (-1: not the mixture source)")


class QueryResponse(BaseModel):
    model: str
    user: RawId
    source_type: str
    target_type: str
    items: list[FunnelCandidate]
    explain: Optional[list[dict]] = None


def check_limits(query: Query, max_k: int, where: str = "") -> None:
    """Serving limits on top of the query's own validation."""
    for i, s in enumerate(query.steps, 1):
        here = f"{where}step {i} ({s.op})"
        for arg in ("k", "n"):
            v = s.args.get(arg)
            if isinstance(v, int) and v > max_k:
                raise QueryError(here, arg, f"at most {max_k} on this server, got {v}")
        limits = FUNNEL_OPS.get(s.op).limits  # the operation's own (rank's keep, walk's walker-steps)
        if limits is not None:
            limits(s.args, max_k, here)
        for j, q in enumerate(s.args.get("queries") or []):
            check_limits(q, max_k, f"{here} > queries[{j}] > ")


class QueryStopped(Exception):
    """A running query was stopped between steps (deadline passed or client gone)."""


class Guard:
    """One request's stop conditions, checked between steps: a deadline and a cancellation flag."""

    def __init__(self, timeout_s: float):
        self.start, self.timeout_s = monotonic(), timeout_s
        self.cancelled: str | None = None
        self.steps = 0

    def cancel(self, reason: str) -> None:
        self.cancelled = reason

    def check(self, step) -> None:
        if self.cancelled is not None:
            raise QueryStopped(f"query stopped after {self.steps} step(s), before {step.op}: {self.cancelled}")
        elapsed = monotonic() - self.start
        if elapsed > self.timeout_s:
            raise QueryStopped(f"query stopped after {self.steps} step(s), before {step.op}, at {elapsed:.2f} s: over "
                               f"this server's query deadline of {self.timeout_s:g} s; ask for less work")
        self.steps += 1


_ACTIVE = threading.local()  # the Guard of the query this thread is running


class GuardedFunnel(Funnel):
    """A funnel whose every step (sub-queries' too) first checks the running thread's :class:`Guard`."""

    def _step(self, step, cs, user, trace, depth):
        guard = getattr(_ACTIVE, "guard", None)
        if guard is not None:
            guard.check(step)
        return super()._step(step, cs, user, trace, depth)


def _guarded(guard: Guard, fn, *args):
    _ACTIVE.guard = guard
    try:
        return fn(*args)
    finally:
        _ACTIVE.guard = None


async def _watch_disconnect(request: Request, guard: Guard, every_s: float = 0.05) -> None:
    while guard.cancelled is None:
        if await request.is_disconnected():
            guard.cancel("the client disconnected")
            return
        await anyio.sleep(every_s)


def install_query_route(app: FastAPI) -> None:
    """Add ``POST /v1/query`` to an app of :func:`mixrec.serve.app.create_app` (its ``state.holder`` holds the
    served snapshot) and load the rankers its settings name into ``app.state.funnel_rankers``."""
    holder, settings, metrics = app.state.holder, app.state.settings, app.state.metrics
    app.state.funnel_rankers = {name: FunnelRanker.load(d) for name, d in settings.rankers.items()}
    app.state.funnel_filters = {name: load_filter(d) for name, d in settings.filters.items()}
    cache: dict = {}
    lock = threading.Lock()
    # query work has its own threads: the candidate routes keep all of the default pool
    limiter = anyio.CapacityLimiter(settings.threads or os.cpu_count() or 1)

    def funnel_for(snapshot, source: str, target: str) -> Funnel:
        """The funnel between two types, built once per served snapshot and rankers (sharing its searchers)."""
        with lock:
            if cache.get("version") != snapshot.version or cache.get("rankers") is not app.state.funnel_rankers:
                cache.update(version=snapshot.version, rankers=app.state.funnel_rankers, funnels={})
            if (source, target) not in cache["funnels"]:
                cache["funnels"][source, target] = GuardedFunnel(
                    snapshot.model, searcher=snapshot.searcher_for(source, target), rankers=app.state.funnel_rankers,
                    filters=app.state.funnel_filters, source_type=source, target_type=target,
                    searchers=snapshot.searcher_for)
            return cache["funnels"][source, target]

    def prepare(body: QueryRequest, s) -> tuple[Query, Funnel, int]:
        if model_kind(s) != "mixture":
            raise ApiError(422, f"POST /v1/query runs funnels over a mixture model; this server serves a "
                                f"graph-filter model ({s.kind}), which answers the candidate routes (GET "
                                "/v1/users/{id}/candidates, POST /v1/candidates/from-history, GET "
                                "/v1/items/{id}/similar)")
        types = s.entity_types
        for name, t in (("source_type", body.source_type), ("target_type", body.target_type)):
            if t is not None and t not in types:
                raise ApiError(422, f"unknown entity type {name}={t!r}; this model has {types}", types=types)
        source, target = body.source_type or s.model.source_type, body.target_type or s.model.target_type
        try:
            query = Query.from_dict(body.query)
            check_limits(query, settings.max_k)
            funnel = funnel_for(s, source, target)
            funnel.check(query)
        except QueryError as e:
            raise ApiError(422, str(e), step=e.where, argument=e.arg) from None
        cost, _ = query_cost(query)
        if cost > settings.max_query_cost:
            metrics.event("query", "over_budget")
            raise ApiError(422, f"query too expensive: estimated cost {cost:,} work units, over this server's budget "
                                f"of {settings.max_query_cost:,} (max_query_cost); ask for fewer walkers, steps, "
                                "sub-queries or candidates", cost=cost, budget=settings.max_query_cost)
        idx = s.model.lookup(source).find([body.user])
        if idx[0] < 0:
            raise ApiError(404, f"unknown user id(s) {[body.user]}", unknown=[body.user])
        return query, funnel, int(idx[0])

    def respond(body: QueryRequest, s, funnel: Funnel, res) -> QueryResponse:
        c = res.candidates
        n = len(c) if body.limit is None else min(len(c), body.limit)
        ids = s.model.ids[funnel.target_type]
        seeds, seed_types = funnel.seed_ids(c.head(n))
        items = [FunnelCandidate(item=_raw(ids, c.items[r]), score=float(c.scores[r]), rank=r + 1,
                                 source=SOURCES[int(c.source[r])], via=c.sources_of(r), seed=seeds[r],
                                 seed_type=seed_types[r], component=int(c.component[r]))
                 for r in range(n)]
        trace = [t.to_dict(ids) for t in res.trace] if body.explain else None
        return QueryResponse(model=s.version, user=body.user, source_type=funnel.source_type,
                             target_type=funnel.target_type, items=items, explain=trace)

    @app.post("/v1/query", response_model=QueryResponse, responses={**ERRORS, 503: ERRORS[422]}, tags=["funnel"])
    async def run_query(body: QueryRequest, request: Request) -> QueryResponse:
        """Run a funnel query (sources, union, filter, rank, diversify, take) for one known user."""
        s = holder.current
        guard = Guard(settings.query_timeout_s)
        # parsing, checks and (after a reload) building the funnel run off the event loop too
        query, funnel, user = await anyio.to_thread.run_sync(prepare, body, s, limiter=limiter)
        out: dict = {}
        async with anyio.create_task_group() as tg:  # the work in a thread; this task watches the client
            tg.start_soon(_watch_disconnect, request, guard)
            try:
                out["res"] = await anyio.to_thread.run_sync(_guarded, guard, funnel.run, query, user, False,
                                                            limiter=limiter)
            except QueryStopped as e:
                out["stopped"] = e
            finally:
                tg.cancel_scope.cancel()
        if "stopped" in out:
            metrics.event("query", "disconnected" if guard.cancelled else "deadline")
            raise ApiError(503, str(out["stopped"]), steps_run=guard.steps)
        return await anyio.to_thread.run_sync(respond, body, s, funnel, out["res"], limiter=limiter)


def _raw(ids: np.ndarray, i) -> RawId:
    v = ids[int(i)]
    return v.item() if isinstance(v, np.generic) else v
