"""Run the app under uvicorn: one FAISS/torch thread per request, loopback by default."""
from __future__ import annotations

import logging
import socket

from mixrec.serve.settings import ServeSettings, is_loopback

log = logging.getLogger("mixrec.serve")


def configure_threads() -> None:
    """One FAISS (OpenMP) and one torch thread per request: the request thread pool supplies parallelism."""
    import faiss
    import torch
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)


def run(settings: ServeSettings, sock: socket.socket | None = None, log_level: str = "warning") -> None:
    """Load the model, then serve until SIGINT/SIGTERM; SIGHUP reloads the model directory."""
    import uvicorn

    from mixrec.serve.app import create_app
    configure_threads()
    if not is_loopback(settings.host) and settings.token() is None:
        log.warning("serving on %s without an admin token: /admin/reload is disabled", settings.host)
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                            access_log=False, timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    server.run(sockets=[sock] if sock is not None else None)
