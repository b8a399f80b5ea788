"""Candidate routes: top-k for known users (one or a batch), for a folded-in history, and similar items."""
from __future__ import annotations

import json

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from mixrec.foldin import fold_in_relations
from mixrec.retrieve import Candidates
from mixrec.serve.errors import ERRORS, ApiError
from mixrec.serve.jsonbody import StrictJSONRoute
from mixrec.serve.schemas import (BatchRequest, BatchResponse, CandidatesResponse, HistoryRequest, HistoryResponse,
                                  TypedCandidatesResponse)
from mixrec.serve.settings import ServeSettings
from mixrec.serve.state import Snapshot


def current_snapshot(request: Request) -> Snapshot:
    """The snapshot being served (a dependency: a reload swaps it between requests, never during one)."""
    s = request.app.state.holder.current
    if s is None:  # pragma: no cover - create_app always loads one
        raise ApiError(503, "no model loaded yet")
    return s


def candidates_router(settings: ServeSettings) -> APIRouter:
    """The candidate routes, with ``k`` bounded by ``settings.max_k`` in their schema."""
    router = APIRouter(route_class=StrictJSONRoute)
    k_query = Query(min(100, settings.max_k), ge=1, le=settings.max_k,
                    description=f"number of candidates, 1..{settings.max_k}")

    @router.get("/v1/users/{user_id}/candidates", response_model=CandidatesResponse, responses=ERRORS,
                tags=["candidates"])
    def user_candidates(user_id: str, k: int = k_query, weights: str = "all", exclude_seen: bool = True,
                        s: Snapshot = Depends(current_snapshot)) -> Response:
        """Top-k round-robin candidates for one known user (training items excluded by default)."""
        users = _lookup(s.users.find([user_id]), [user_id], "user")
        cands = _run(s.recommend, users, k, weights, exclude_seen)
        return _json({"user": _raw(s, "source", users[0]), "items": _items(s, cands, 0), "model": s.version,
                      "weights": weights, "k": k})

    @router.post("/v1/candidates", response_model=BatchResponse, responses=ERRORS, tags=["candidates"])
    def batch_candidates(body: BatchRequest, s: Snapshot = Depends(current_snapshot)) -> Response:
        """Top-k candidates for a batch of known users, in the order given."""
        k = _check_k(body.k, settings)
        if len(body.users) > settings.max_batch:
            raise ApiError(422, f"at most {settings.max_batch} users per request, got {len(body.users)}; split "
                                "the batch")
        users = _lookup(s.users.find(body.users), body.users, "user")
        cands = _run(s.recommend, users, k, body.weights, body.exclude_seen)
        results = [{"user": _raw(s, "source", u), "items": _items(s, cands, i)} for i, u in enumerate(users)]
        return _json({"model": s.version, "weights": body.weights, "k": k, "results": results})

    @router.post("/v1/candidates/from-history", response_model=HistoryResponse, responses=ERRORS,
                 tags=["candidates"])
    def history_candidates(body: HistoryRequest, s: Snapshot = Depends(current_snapshot)) -> Response:
        """Candidates for a node the model never saw (a user, or any ``source_type`` with relations to
        ``target_type``): fold it in from its history of ``target_type`` nodes, then retrieve those."""
        k = _check_k(body.k, settings)
        source = s.model.source_type if body.source_type is None else body.source_type
        target = s.model.target_type if body.target_type is None else body.target_type
        _check_type(s, source, 422, "source_type=")
        _check_type(s, target, 422, "target_type=")
        idx, rel, unknown = _history(body, s, settings, source, target)
        cands, w = _run(s.from_history, idx, rel, k, body.weights, body.exclude_seen, source, target)
        return _json({"user": None, "source_type": source, "target_type": target, "items": _items(s, cands, 0, target),
                      "model": s.version, "weights": body.weights, "k": k,
                      "mixture_weights": [float(x) for x in w], "unknown_items": unknown})

    @router.get("/v1/items/{item_id}/similar", response_model=CandidatesResponse, responses=ERRORS, tags=["items"])
    def similar_items(item_id: str, k: int = Query(min(10, settings.max_k), ge=1, le=settings.max_k),
                      weights: str = "all", s: Snapshot = Depends(current_snapshot)) -> Response:
        """Item-to-item neighbours from the learned item components (the item itself excluded)."""
        items = _lookup(s.items.find([item_id]), [item_id], "item")
        cands = _run(s.similar, items, k, weights)
        return _json({"user": None, "items": _items(s, cands, 0), "model": s.version, "weights": weights, "k": k})

    @router.get("/v1/{entity_type}/{entity_id}/candidates", response_model=TypedCandidatesResponse,
                responses=ERRORS, tags=["candidates"])
    def typed_candidates(entity_type: str, entity_id: str, to: str | None = None, k: int = k_query,
                         weights: str = "all", exclude_seen: bool = True,
                         s: Snapshot = Depends(current_snapshot)) -> Response:
        """Top-k nodes of type ``to`` (default: the model's target type) for one known node of ``entity_type``:
        retrieval between any two entity types (their training edges excluded by default; between two
        nodes of one type, the query itself always)."""
        target = s.model.target_type if to is None else to
        _check_type(s, entity_type, 404, "")
        _check_type(s, target, 422, "to=")
        src = _lookup(s.model.lookup(entity_type).find([entity_id]), [entity_id], entity_type)
        cands = _run(s.candidates, entity_type, target, src, k, weights, exclude_seen)
        raw = s.model.ids[entity_type][int(src[0])]
        return _json({"source_type": entity_type, "target_type": target,
                      "id": raw.item() if isinstance(raw, np.generic) else raw,
                      "items": _items(s, cands, 0, target), "model": s.version, "weights": weights, "k": k})

    return router


def _check_type(s: Snapshot, entity_type: str, status: int, where: str) -> None:
    if entity_type not in s.model.tables:
        raise ApiError(status, f"unknown entity type {where}{entity_type!r}; this model has {s.entity_types}",
                       types=s.entity_types)


def _history(body: HistoryRequest, s: Snapshot, settings: ServeSettings, source: str, target: str):
    """(known item indices, their relation codes or None, unknown raw ids) of a history request, or ApiError."""
    try:
        allowed = [s.model.relations[c].name for c in fold_in_relations(s.model, source, target)]
    except ValueError as e:  # no relation joins the two types
        raise ApiError(422, str(e)) from None
    if len(body.items) > settings.max_history:
        raise ApiError(422, f"at most {settings.max_history} history items, got {len(body.items)}")
    if body.relations is not None and len(body.relations) != len(body.items):
        raise ApiError(422, f"give one relation per item: {len(body.relations)} relations for "
                            f"{len(body.items)} items")
    idx = s.model.lookup(target).find(body.items)
    unknown = [body.items[i] for i in np.flatnonzero(idx < 0)]
    if unknown and not body.ignore_unknown:
        raise ApiError(404, f"unknown item id(s) {unknown[:10]}; pass ignore_unknown=true to skip them",
                       unknown=unknown[:100])
    keep = idx >= 0
    if not keep.any():
        raise ApiError(422, "none of the history items is known to the model; cannot fold this user in")
    rel = None
    if body.relations is not None:
        names = [r.name for r in s.model.relations]
        bad = sorted({r for r in body.relations if r not in names})
        if bad:
            raise ApiError(422, f"unknown relation(s) {bad}; this model has {names}")
        other = sorted({r for r in body.relations if r not in allowed})
        if other:
            raise ApiError(422, f"relation(s) {other} do not go from {source!r} to {target!r}; use one of {allowed}")
        rel = np.array([names.index(r) for r in body.relations], np.int64)[keep]
    return idx[keep], rel, unknown


def _check_k(k: int | None, settings: ServeSettings) -> int:
    if k is None:
        return min(100, settings.max_k)
    if k > settings.max_k:
        raise ApiError(422, f"k must be between 1 and {settings.max_k}, got {k}")
    return k


def _run(fn, *args):
    try:
        return fn(*args)
    except KeyError as e:  # unknown weight set
        raise ApiError(422, e.args[0] if e.args else str(e)) from None


def _lookup(idx: np.ndarray, raw: list, kind: str) -> np.ndarray:
    missing = [raw[i] for i in np.flatnonzero(idx < 0)]
    if missing:
        raise ApiError(404, f"unknown {kind} id(s) {missing[:10]}", unknown=missing[:100])
    return idx


def _raw(s: Snapshot, side: str, i: int):
    t = s.model.source_type if side == "source" else s.model.target_type
    v = s.model.ids[t][int(i)]
    return v.item() if isinstance(v, np.generic) else v


def _items(s: Snapshot, c: Candidates, row: int, target_type: str | None = None) -> list[dict]:
    """One row of candidates (ids of ``target_type``, default the model's) as JSON-ready dicts (the
    :class:`Candidate` schema), built from numpy in bulk."""
    keep = c.items[row] >= 0
    raw = s.model.ids[target_type or s.model.target_type][c.items[row][keep]].tolist()
    scores = c.scores[row][keep].astype(np.float64).tolist()
    comps = c.components[row][keep].tolist()
    return [{"item": i, "score": sc, "rank": r, "component": cp}
            for r, i, sc, cp in zip(range(1, len(raw) + 1), raw, scores, comps)]


def _json(body: dict) -> Response:
    """Serialise a response body directly: the hot endpoints skip pydantic re-validation (the schema is the same)."""
    return Response(json.dumps(body, separators=(",", ":")).encode(), media_type="application/json")


__all__ = ["candidates_router", "current_snapshot"]
