"""Operations routes: what is served, liveness, readiness, Prometheus metrics and the admin reload."""
from __future__ import annotations

import hmac
import os

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from mixrec.serve.errors import ApiError
from mixrec.serve.filter_state import FilterSnapshot, model_kind
from mixrec.serve.jsonbody import StrictJSONRoute
from mixrec.serve.metrics import CONTENT_TYPE
from mixrec.serve.routes_candidates import current_snapshot
from mixrec.serve.schemas import ErrorResponse, ModelInfo, ReloadRequest
from mixrec.serve.settings import ServeSettings, is_loopback
from mixrec.serve.state import Snapshot

router = APIRouter(tags=["operations"], route_class=StrictJSONRoute)
RELOAD_ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 409, 422)}


@router.get("/v1/model", response_model=ModelInfo)
def model_info(request: Request, s: Snapshot = Depends(current_snapshot)) -> ModelInfo:
    """What is being served: a mixture model, or a graph-filter model (``kind`` says which)."""
    if isinstance(s, FilterSnapshot):
        return ModelInfo(model=s.version, kind="filter", path=str(s.path), users=s.n_users, items=s.n_items,
                         user_components=None, item_components=None, dim=None, index=None, index_size=None,
                         weight_sets=s.weight_sets, relations=[r.name for r in s.model.relations],
                         filter=s.describe(), loaded_at=request.app.state.holder.loaded_at, pid=os.getpid())
    m = s.model
    return ModelInfo(model=s.version, path=str(s.path), users=s.n_users, items=s.n_items,
                     user_components=m.components(m.source_type), item_components=m.components(m.target_type),
                     dim=m.config.dim, index=s.index.config.kind, index_size=s.index.size,
                     weight_sets=s.weight_sets, relations=[r.name for r in m.relations],
                     loaded_at=request.app.state.holder.loaded_at, pid=os.getpid())


@router.get("/healthz")
def healthz() -> dict:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": ErrorResponse}})
def readyz(request: Request):
    """Readiness: a model is loaded and can answer."""
    s = request.app.state.holder.current
    if s is None:
        return JSONResponse({"error": "no model loaded yet"}, status_code=503)
    return {"status": "ready", "model": s.version, "kind": model_kind(s)}


@router.get("/metrics", response_class=PlainTextResponse)
def prometheus(request: Request) -> PlainTextResponse:
    """Prometheus text format: request counts, latency histograms, index size."""
    return PlainTextResponse(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


@router.post("/admin/reload", response_model=ModelInfo, responses=RELOAD_ERRORS)
def reload(request: Request, body: ReloadRequest | None = None,
           authorization: str | None = Header(None)) -> ModelInfo:
    """Swap to a model directory atomically; requests in flight finish on the old model."""
    holder, metrics = request.app.state.holder, request.app.state.metrics
    authorize(request.app.state.settings, authorization)
    try:
        holder.reload(body.model_dir if body else None)
    except ApiError:
        metrics.event("reload", "busy")
        raise
    except Exception as e:  # any failure to load (bad checksum, missing file, corrupt index): the old one serves
        metrics.event("reload", "failed")
        reason = str(e) if isinstance(e, (OSError, ValueError, KeyError)) else f"{type(e).__name__}: {e}"
        where = body.model_dir if body and body.model_dir else holder.current.path
        raise ApiError(422, f"reload failed, still serving {holder.current.version}: {where}: {reason}") from None
    metrics.event("reload", "ok")
    return model_info(request, holder.current)


def authorize(settings: ServeSettings, header: str | None) -> None:
    """Admin access: a matching bearer token, or no token configured and a loopback address."""
    token = settings.token()
    if token is None:
        if is_loopback(settings.host):
            return
        raise ApiError(403, "admin endpoints are disabled on a non-loopback address without a token; "
                            "start the server with --admin-token or MIXREC_ADMIN_TOKEN")
    scheme, _, given = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":  # the scheme is case-insensitive (RFC 7235); the token is not
        raise ApiError(401, "missing admin token or not the Bearer scheme; send 'Authorization: Bearer <token>'")
    if not hmac.compare_digest(given.encode("utf-8", "replace"), token.encode()):
        raise ApiError(401, "wrong admin token; send 'Authorization: Bearer <token>'")


__all__ = ["authorize", "router"]
