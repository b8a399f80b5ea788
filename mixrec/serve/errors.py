"""HTTP errors: :class:`ApiError` (answered as JSON ``{"error": ...}``) and the app's exception handlers."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mixrec.serve.schemas import ErrorResponse

log = logging.getLogger("mixrec.serve")
ERRORS = {404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}}  # the error responses of most routes


class ApiError(Exception):
    """An error answered as JSON ``{"error": message, ...extra}`` with the given status."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def install_error_handlers(app: FastAPI) -> None:
    """Every error as JSON with an ``error`` message: ours, validation (422), routing (404...) and crashes (500)."""
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


__all__ = ["ERRORS", "ApiError", "install_error_handlers"]
