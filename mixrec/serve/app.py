"""The FastAPI application: candidate, fold-in and similar-item endpoints, health, metrics and hot reload."""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from mixrec.foldin import FoldInSettings
from mixrec.retrieve import Candidates
from mixrec.serve.metrics import CONTENT_TYPE, Metrics
from mixrec.serve.middleware import BodyLimitMiddleware, MetricsMiddleware
from mixrec.serve.schemas import (BatchRequest, BatchResponse, CandidatesResponse, ErrorResponse, HistoryRequest,
                                  HistoryResponse, ModelInfo, ReloadRequest)
from mixrec.serve.settings import ServeSettings, is_loopback
from mixrec.serve.state import Snapshot

log = logging.getLogger("mixrec.serve")
ERRORS = {404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}


class ApiError(Exception):
    """An error answered as JSON ``{"error": message, ...extra}`` with the given status."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


class ModelHolder:
    """The current snapshot; a reload builds the new one aside and swaps the reference in one assignment."""

    def __init__(self, settings: ServeSettings, snapshot: Snapshot | None = None, broadcast=None):
        self.settings, self.broadcast = settings, broadcast
        self.current: Snapshot | None = snapshot
        self.loaded_at = time.time()
        self._lock = threading.Lock()

    def load(self, path: str | Path) -> Snapshot:
        s = self.settings
        return Snapshot.load(path, s.index_kind, FoldInSettings(steps=s.foldin_steps, negatives=s.foldin_negatives),
                             ef_search=s.ef_search, nprobe=s.nprobe)

    def reload(self, path: str | Path | None = None, publish: bool = True) -> Snapshot:
        """Load ``path`` (default: the current directory) and make it current; the old one serves until then.

        With several worker processes the new directory is then published so the other workers follow.
        """
        if not self._lock.acquire(blocking=False):
            raise ApiError(409, "a reload is already running; retry when it has finished")
        try:
            target = path or (self.current.path if self.current else self.settings.model_dir)
            snap = self.load(target)
            self.current, self.loaded_at = snap, time.time()  # atomic reference swap
            log.info("serving model %s from %s", snap.version, snap.path)
            if publish and self.broadcast is not None:
                self.broadcast.publish(snap.path)
            return snap
        finally:
            self._lock.release()


def create_app(settings: ServeSettings, snapshot: Snapshot | None = None, broadcast=None) -> FastAPI:
    """Build the app and load the model now (pass ``snapshot`` to reuse one already loaded).

    ``broadcast`` (a :class:`mixrec.serve.server.ReloadBroadcast`) keeps several worker processes on one model.
    """
    holder = ModelHolder(settings, snapshot, broadcast)
    if holder.current is None:
        holder.current = holder.load(settings.model_dir)
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if settings.reload_signal and threading.current_thread() is threading.main_thread():
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError, AttributeError):
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, _reload_in_thread, holder, metrics)
        stop = threading.Event()
        if broadcast is not None:
            broadcast.watch(holder, metrics, stop)
        # requests computing at once (default: one per CPU); the rest wait in the event loop instead of
        # contending for the GIL, which measured faster under load than the ASGI default of 40 threads
        import anyio.to_thread
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads or os.cpu_count() or 1
        yield
        stop.set()

    app = FastAPI(title="mixrec", version="1", lifespan=lifespan,
                  description="Mixture-embedding candidate retrieval (Brinkman et al. 2020): round-robin KNN "
                              "candidates for known users, folded-in new users and similar items.")
    app.state.holder, app.state.metrics, app.state.settings = holder, metrics, settings
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    _install_error_handlers(app)
    metrics.gauge("mixrec_index_vectors", "Vectors in the FAISS index.", lambda: holder.current.index.size)
    metrics.gauge("mixrec_items", "Items the model can return.", lambda: holder.current.n_items)
    metrics.gauge("mixrec_users", "Users the model knows.", lambda: holder.current.n_users)
    metrics.gauge("mixrec_model_loaded_timestamp_seconds", "When the current model was loaded.",
                  lambda: holder.loaded_at)

    def snap() -> Snapshot:
        if holder.current is None:  # pragma: no cover - create_app always loads one
            raise ApiError(503, "no model loaded yet")
        return holder.current

    default_k = min(100, settings.max_k)
    K = Query(default_k, ge=1, le=settings.max_k, description=f"number of candidates, 1..{settings.max_k}")

    @app.get("/v1/users/{user_id}/candidates", response_model=CandidatesResponse, responses=ERRORS,
             tags=["candidates"])
    def user_candidates(user_id: str, k: int = K, weights: str = "all", exclude_seen: bool = True,
                        s: Snapshot = Depends(snap)) -> Response:
        """Top-k round-robin candidates for one known user (training items excluded by default)."""
        users = _lookup(s.users.find([user_id]), [user_id], "user")
        cands = _run(s.recommend, users, k, weights, exclude_seen)
        return _json({"user": _raw(s, "source", users[0]), "items": _items(s, cands, 0), "model": s.version,
                      "weights": weights, "k": k})

    @app.post("/v1/candidates", response_model=BatchResponse, responses=ERRORS, tags=["candidates"])
    def batch_candidates(body: BatchRequest, s: Snapshot = Depends(snap)) -> Response:
        """Top-k candidates for a batch of known users, in the order given."""
        k = _check_k(body.k, settings)
        if len(body.users) > settings.max_batch:
            raise ApiError(422, f"at most {settings.max_batch} users per request, got {len(body.users)}; split "
                                "the batch")
        users = _lookup(s.users.find(body.users), body.users, "user")
        cands = _run(s.recommend, users, k, body.weights, body.exclude_seen)
        results = [{"user": _raw(s, "source", u), "items": _items(s, cands, i)} for i, u in enumerate(users)]
        return _json({"model": s.version, "weights": body.weights, "k": k, "results": results})

    @app.post("/v1/candidates/from-history", response_model=HistoryResponse, responses=ERRORS,
              tags=["candidates"])
    def history_candidates(body: HistoryRequest, s: Snapshot = Depends(snap)) -> Response:
        """Candidates for a user the model never saw: fold it in from its item history, then retrieve."""
        k = _check_k(body.k, settings)
        if len(body.items) > settings.max_history:
            raise ApiError(422, f"at most {settings.max_history} history items, got {len(body.items)}")
        if body.relations is not None and len(body.relations) != len(body.items):
            raise ApiError(422, f"give one relation per item: {len(body.relations)} relations for "
                                f"{len(body.items)} items")
        idx = s.items.find(body.items)
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
            rel = np.array([names.index(r) for r in body.relations], np.int64)[keep]
        cands, w = _run(s.from_history, idx[keep], rel, k, body.weights, body.exclude_seen)
        return _json({"user": None, "items": _items(s, cands, 0), "model": s.version, "weights": body.weights, "k": k,
                      "mixture_weights": [float(x) for x in w], "unknown_items": unknown})

    @app.get("/v1/items/{item_id}/similar", response_model=CandidatesResponse, responses=ERRORS, tags=["items"])
    def similar_items(item_id: str, k: int = Query(min(10, settings.max_k), ge=1, le=settings.max_k), weights: str = "all",
                      s: Snapshot = Depends(snap)) -> Response:
        """Item-to-item neighbours from the learned item components (the item itself excluded)."""
        items = _lookup(s.items.find([item_id]), [item_id], "item")
        cands = _run(s.similar, items, k, weights)
        return _json({"user": None, "items": _items(s, cands, 0), "model": s.version, "weights": weights, "k": k})

    @app.get("/v1/model", response_model=ModelInfo, tags=["operations"])
    def model_info(s: Snapshot = Depends(snap)) -> ModelInfo:
        """What is being served."""
        m = s.model
        return ModelInfo(model=s.version, path=str(s.path), users=s.n_users, items=s.n_items,
                         user_components=m.components(m.source_type), item_components=m.components(m.target_type),
                         dim=m.config.dim, index=s.index.config.kind, index_size=s.index.size,
                         weight_sets=s.weight_sets, relations=[r.name for r in m.relations],
                         loaded_at=holder.loaded_at, pid=os.getpid())

    @app.get("/healthz", tags=["operations"])
    def healthz() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], responses={503: {"model": ErrorResponse}})
    def readyz():
        """Readiness: a model is loaded and can answer."""
        s = holder.current
        if s is None:
            return JSONResponse({"error": "no model loaded yet"}, status_code=503)
        return {"status": "ready", "model": s.version}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"])
    def prometheus() -> PlainTextResponse:
        """Prometheus text format: request counts, latency histograms, index size."""
        return PlainTextResponse(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/admin/reload", response_model=ModelInfo, tags=["operations"],
              responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 409: {"model": ErrorResponse},
                         422: {"model": ErrorResponse}})
    def reload(body: ReloadRequest | None = None, authorization: str | None = Header(None)) -> ModelInfo:
        """Swap to a model directory atomically; requests in flight finish on the old model."""
        _authorize(settings, authorization)
        try:
            holder.reload(body.model_dir if body else None)
        except ApiError:
            metrics.event("reload", "busy")
            raise
        except (OSError, ValueError, KeyError) as e:
            metrics.event("reload", "failed")
            raise ApiError(422, f"reload failed, still serving {holder.current.version}: {e}") from None
        metrics.event("reload", "ok")
        return model_info(holder.current)

    from mixrec.funnel.rank import FunnelRanker
    from mixrec.funnel.service import install_query_route  # POST /v1/query (the candidate funnel)
    app.state.funnel_rankers = {name: FunnelRanker.load(d) for name, d in settings.rankers.items()}
    install_query_route(app, holder, settings)
    return app


# ----------------------------------------------------------------------------- helpers
def _reload_in_thread(holder: ModelHolder, metrics: Metrics) -> None:
    def work():
        try:
            holder.reload()
            metrics.event("reload", "ok")
        except Exception as e:  # keep serving the old model
            metrics.event("reload", "failed")
            log.error("SIGHUP reload failed, still serving the old model: %s", e)
    threading.Thread(target=work, name="mixrec-reload", daemon=True).start()


def _authorize(settings: ServeSettings, header: str | None) -> None:
    token = settings.token()
    if token is None:
        if is_loopback(settings.host):
            return
        raise ApiError(403, "admin endpoints are disabled on a non-loopback address without a token; "
                            "start the server with --admin-token or MIXREC_ADMIN_TOKEN")
    given = (header or "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(401, "missing or wrong admin token; send 'Authorization: Bearer <token>'")


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


def _items(s: Snapshot, c: Candidates, row: int) -> list[dict]:
    """One row of candidates as JSON-ready dicts (the :class:`Candidate` schema), built from numpy in bulk."""
    keep = c.items[row] >= 0
    raw = s.model.ids[s.model.target_type][c.items[row][keep]].tolist()
    scores = c.scores[row][keep].astype(np.float64).tolist()
    comps = c.components[row][keep].tolist()
    return [{"item": i, "score": sc, "rank": r, "component": cp}
            for r, i, sc, cp in zip(range(1, len(raw) + 1), raw, scores, comps)]


def _json(body: dict) -> Response:
    """Serialise a response body directly: the hot endpoints skip pydantic re-validation (the schema is the same)."""
    return Response(json.dumps(body, separators=(",", ":")).encode(), media_type="application/json")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError):
        return JSONResponse({"error": e.message, **e.extra}, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError):
        detail = [{"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", "")),
                   "type": str(err.get("type", ""))} for err in e.errors()]
        first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
        msg = f"invalid request: {'.'.join(first['loc'])}: {first['msg']}"
        return JSONResponse({"error": msg, "detail": detail}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException):
        msg = e.detail if isinstance(e.detail, str) else "request failed"
        if e.status_code == 404 and msg == "Not Found":
            msg = "no such endpoint; see /docs or /openapi.json"
        return JSONResponse({"error": msg}, status_code=e.status_code, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def crash(_: Request, e: Exception):  # a bug: say so without leaking internals
        log.exception("internal error")
        return JSONResponse({"error": f"internal error ({type(e).__name__}); this is a bug in mixrec serve"},
                            status_code=500)
