"""``POST /v1/query``: run a funnel query document for one user of the served model.

The query is validated (structure, then against the served model: weight sets, relations,
rankers) before anything runs; errors are JSON ``{"error": ..., "step": ..., "argument": ...}``
with status 422. Serving limits: every ``k``/``n`` at most the server's ``max_k``, and each walk at
most ``MAX_WALK_STEPS`` walker-steps. Rankers are looked up in ``app.state.funnel_rankers`` (loaded from the
settings' ``rankers``). The server adds the route to the app with :func:`install_query_route`.
"""
from __future__ import annotations

import threading
from typing import Any, Optional, Union

import numpy as np
from fastapi import FastAPI, Request
from pydantic import BaseModel, ConfigDict, Field

from mixrec.funnel.engine import Funnel
from mixrec.funnel.ops import MAX_WALK_STEPS  # noqa: F401  (re-exported: the limit this module documents)
from mixrec.funnel.query import Query, QueryError
from mixrec.funnel.rank import FunnelRanker
from mixrec.funnel.sources import SOURCES
from mixrec.registry import FUNNEL_OPS
from mixrec.serve.errors import ERRORS, ApiError

RawId = Union[int, str]


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # no type coercion: "limit": "3" is refused

    user: RawId = Field(description="raw user id")
    query: dict[str, Any] = Field(description="the query document (the JSON form of a TOML/YAML query)")
    explain: bool = Field(False, description="also return every step's kept/dropped items")
    limit: Optional[int] = Field(None, ge=1, description="return at most this many candidates")


class FunnelCandidate(BaseModel):
    item: RawId
    score: float
    rank: int
    source: str = Field(description="the source of the kept occurrence")
    via: list[str] = Field(description="every source that proposed the item")
    seed: Optional[RawId] = Field(None, description="the seed item it came from, if any")
    component: int = Field(description="user component that retrieved it (-1: not the mixture source)")


class QueryResponse(BaseModel):
    model: str
    user: RawId
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


def install_query_route(app: FastAPI) -> None:
    """Add ``POST /v1/query`` to an app of :func:`mixrec.serve.app.create_app` (its ``state.holder`` holds the
    served snapshot) and load the rankers its settings name into ``app.state.funnel_rankers``."""
    holder, settings = app.state.holder, app.state.settings
    app.state.funnel_rankers = {name: FunnelRanker.load(d) for name, d in settings.rankers.items()}
    cache: dict = {}
    lock = threading.Lock()

    def funnel_for(snapshot) -> Funnel:
        with lock:
            if cache.get("version") != snapshot.version or cache.get("rankers") is not app.state.funnel_rankers:
                cache.update(version=snapshot.version, rankers=app.state.funnel_rankers,
                             funnel=Funnel(snapshot.model, index=snapshot.index, rankers=app.state.funnel_rankers))
            return cache["funnel"]

    @app.post("/v1/query", response_model=QueryResponse, responses=ERRORS, tags=["funnel"])
    def run_query(body: QueryRequest, request: Request) -> QueryResponse:
        """Run a funnel query (sources, union, filter, rank, diversify, take) for one known user."""
        s = holder.current
        try:
            query = Query.from_dict(body.query)
            check_limits(query, settings.max_k)
            funnel = funnel_for(s)
            funnel.check(query)
        except QueryError as e:
            raise ApiError(422, str(e), step=e.where, argument=e.arg) from None
        idx = s.users.find([body.user])
        if idx[0] < 0:
            raise ApiError(404, f"unknown user id(s) {[body.user]}", unknown=[body.user])
        res = funnel.run(query, int(idx[0]), validate=False)
        c = res.candidates
        n = len(c) if body.limit is None else min(len(c), body.limit)
        ids = s.model.ids[s.model.target_type]
        items = [FunnelCandidate(item=_raw(ids, c.items[r]), score=float(c.scores[r]), rank=r + 1,
                                 source=SOURCES[int(c.source[r])], via=c.sources_of(r),
                                 seed=None if c.seed[r] < 0 else _raw(ids, c.seed[r]), component=int(c.component[r]))
                 for r in range(n)]
        trace = [t.to_dict(ids) for t in res.trace] if body.explain else None
        return QueryResponse(model=s.version, user=body.user, items=items, explain=trace)


def _raw(ids: np.ndarray, i) -> RawId:
    v = ids[int(i)]
    return v.item() if isinstance(v, np.generic) else v
