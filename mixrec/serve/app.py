"""The FastAPI application: the model holder, middleware, error handlers and the base routes.

The base routes are the candidates and operations ones; other layers add theirs through ``extensions``
(the server adds the funnel's ``POST /v1/query``)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

import anyio.to_thread
from fastapi import FastAPI

from mixrec.filters import is_filter_dir
from mixrec.foldin import FoldInSettings
from mixrec.serve.errors import ApiError, install_error_handlers
from mixrec.serve.filter_state import FilterSnapshot
from mixrec.serve.jsonbody import StrictJSONRoute
from mixrec.serve.metrics import Metrics
from mixrec.serve.middleware import BodyLimitMiddleware, MetricsMiddleware
from mixrec.serve.routes_candidates import candidates_router
from mixrec.serve.routes_ops import router as operations_router
from mixrec.serve.settings import ServeSettings
from mixrec.serve.state import Snapshot

log = logging.getLogger("mixrec.serve")
Extension = Callable[[FastAPI], None]  # adds routes or state to the app (``app.state.holder`` is the model)


class ModelHolder:
    """The current snapshot; a reload builds the new one aside and swaps the reference in one assignment."""

    def __init__(self, settings: ServeSettings, snapshot: Snapshot | None = None, broadcast=None):
        self.settings, self.broadcast = settings, broadcast
        self.current: Snapshot | None = snapshot
        self.loaded_at = time.time()
        self._lock = threading.Lock()

    def load(self, path: str | Path) -> Snapshot | FilterSnapshot:
        if is_filter_dir(path):  # a closed-form graph-filter model (mixrec fit-filter): exact, no index
            return FilterSnapshot.load(path)
        s = self.settings
        return Snapshot.load(path, s.index_kind, FoldInSettings(steps=s.foldin_steps, negatives=s.foldin_negatives),
                             ef_search=s.ef_search, nprobe=s.nprobe, merge=s.merge)

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


def create_app(settings: ServeSettings, snapshot: Snapshot | None = None, broadcast=None,
               extensions: Sequence[Extension] = ()) -> FastAPI:
    """Build the app with the base routes and load the model now (pass ``snapshot`` to reuse one already loaded),
    then apply each of ``extensions`` to it.

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
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.threads or os.cpu_count() or 1
        yield
        stop.set()

    app = FastAPI(title="mixrec", version="1", lifespan=lifespan,
                  description="Mixture-embedding candidate retrieval (Brinkman et al. 2020): round-robin KNN "
                              "candidates for known users, folded-in new users and similar items.")
    app.router.route_class = StrictJSONRoute  # the routes extensions add parse their bodies strictly too
    app.state.holder, app.state.metrics, app.state.settings = holder, metrics, settings
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    install_error_handlers(app)
    metrics.gauge("mixrec_index_vectors", "Vectors in the FAISS index.", lambda: holder.current.index.size)
    metrics.gauge("mixrec_items", "Items the model can return.", lambda: holder.current.n_items)
    metrics.gauge("mixrec_users", "Users the model knows.", lambda: holder.current.n_users)
    metrics.gauge("mixrec_model_loaded_timestamp_seconds", "When the current model was loaded.",
                  lambda: holder.loaded_at)
    app.include_router(candidates_router(settings))
    app.include_router(operations_router)
    for extend in extensions:
        extend(app)
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


__all__ = ["ApiError", "Extension", "ModelHolder", "create_app"]
