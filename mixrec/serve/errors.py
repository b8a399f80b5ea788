"""HTTP errors: :class:`ApiError` (answered as JSON ``{"error": ...}``) and the app's exception handlers.

Error bodies echo what the client sent (unknown ids, bad keys); :func:`safe` escapes what UTF-8 cannot
carry (a lone surrogate such as ``"\\ud800"`` sent as a JSON escape) so the echo itself never fails.
"""
from __future__ import annotations

import logging
from typing import Any

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


def safe(value: Any) -> Any:
    """``value`` with every string made encodable as UTF-8 (lone surrogates become the text ``\\udXXX``)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
            return value
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {safe(k): safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [safe(v) for v in value]
    return value


def error_response(status: int, body: dict, headers=None) -> JSONResponse:
    """A JSON error response whose echoed strings are always valid UTF-8."""
    return JSONResponse(safe(body), status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Every error as JSON with an ``error`` message: ours, validation (422), routing (404...) and crashes (500)."""
    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError):
        return error_response(e.status, {"error": e.message, **e.extra})

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, e: RequestValidationError):
        detail = [{"loc": [str(p) for p in err.get("loc", ())], "msg": _message(err),
                   "type": str(err.get("type", ""))} for err in e.errors()]
        first = detail[0] if detail else {"loc": [], "msg": "invalid request"}
        msg = f"invalid request: {'.'.join(first['loc'])}: {first['msg']}"
        return error_response(422, {"error": msg, "detail": detail})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException):
        msg = e.detail if isinstance(e.detail, str) else "request failed"
        if e.status_code == 404 and msg == "Not Found":
            msg = "no such endpoint; see /docs or /openapi.json"
        return error_response(e.status_code, {"error": msg}, headers=getattr(e, "headers", None))

    @app.exception_handler(Exception)
    async def crash(_: Request, e: Exception):  # a bug: say so without leaking internals
        log.exception("internal error")
        return error_response(500, {"error": f"internal error ({type(e).__name__}); this is a bug in mixrec serve"})


def _message(err: dict) -> str:
    """A validation error's message; a JSON decode error also says what is wrong with the document."""
    msg = str(err.get("msg", ""))
    reason = (err.get("ctx") or {}).get("error")
    return f"{msg}: {reason}" if err.get("type") == "json_invalid" and reason else msg


__all__ = ["ERRORS", "ApiError", "error_response", "install_error_handlers", "safe"]
