"""Standard JSON request bodies only: a route class that refuses non-standard numbers with 422.

``NaN``, ``Infinity`` and ``-Infinity``, which Python's parser accepts, are refused with 422 naming them
(a route class for every router of the app)."""
from __future__ import annotations

import json
from typing import Any, Callable

from fastapi import Request, Response
from fastapi.routing import APIRoute

NOT_JSON = ("{} is not JSON (NaN, Infinity and -Infinity are not valid JSON values): send ids as integers or "
            "strings and numbers as finite values")


def _refuse_constant(name: str):
    raise json.JSONDecodeError(NOT_JSON.format(name), name, 0)


def loads_strict(data: bytes | str) -> Any:
    """``json.loads`` without the non-standard constants (a :class:`json.JSONDecodeError` naming them)."""
    return json.loads(data, parse_constant=_refuse_constant)


class StrictJSONRequest(Request):
    """A request whose ``json()`` is :func:`loads_strict`."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads_strict(await self.body())
        return self._json


class StrictJSONRoute(APIRoute):
    """An API route that parses its JSON body with :func:`loads_strict` (FastAPI turns the error into a 422)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def strict_handler(request: Request) -> Response:
            return await handler(StrictJSONRequest(request.scope, request.receive))
        return strict_handler


__all__ = ["StrictJSONRequest", "StrictJSONRoute", "loads_strict"]
