"""Pure ASGI middleware: a request body size limit (413) and per-route request metrics."""
from __future__ import annotations

import json
import time

from mixrec.serve.metrics import Metrics


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class _HttpMiddleware:
    """ASGI middleware that handles HTTP requests in :meth:`http` and passes every other scope through."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        return await self.http(scope, receive, send)

    async def http(self, scope, receive, send):
        raise NotImplementedError


class BodyLimitMiddleware(_HttpMiddleware):
    """Reject bodies over ``max_bytes`` with 413 before the app parses them (Content-Length or streamed)."""

    def __init__(self, app, max_bytes: int):
        super().__init__(app)
        self.max_bytes = max_bytes

    async def http(self, scope, receive, send):
        too_big = {"error": f"request body larger than {self.max_bytes} bytes; send smaller batches"}
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    return await _send_json(send, 400, {"error": "malformed Content-Length header"})
                if declared > self.max_bytes:
                    return await _send_json(send, 413, too_big)
        chunks, size = [], 0
        while True:  # read the (bounded) body once, then replay it to the app
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await _send_json(send, 413, too_big)
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()
        return await self.app(scope, replay, send)


class MetricsMiddleware(_HttpMiddleware):
    """Count every HTTP request by method, route template and status, and time it."""

    def __init__(self, app, metrics: Metrics):
        super().__init__(app)
        self.metrics = metrics

    async def http(self, scope, receive, send):
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(msg):
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope.get("method", "?"), name, status, time.perf_counter() - t0)
