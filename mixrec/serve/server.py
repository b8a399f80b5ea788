"""Run the app under uvicorn: one FAISS/torch thread per request, loopback by default, one or more workers."""
from __future__ import annotations

import importlib.util
import json
import logging
import multiprocessing as mp
import os
import signal
import socket
import tempfile
import threading
from pathlib import Path

import faiss
import torch
import uvicorn
from fastapi import FastAPI

from mixrec.funnel.service import install_query_route
from mixrec.io import atomic_file
from mixrec.serve.app import create_app
from mixrec.serve.settings import ServeSettings, is_loopback
from mixrec.serve.state import Snapshot

log = logging.getLogger("mixrec.serve")
POLL_S = 0.25


def build_app(settings: ServeSettings, snapshot: Snapshot | None = None, broadcast=None) -> FastAPI:
    """The served app: the base routes of :func:`mixrec.serve.app.create_app` plus the funnel's ``POST /v1/query``."""
    return create_app(settings, snapshot, broadcast, extensions=[install_query_route])


def configure_threads() -> None:
    """One FAISS (OpenMP) and one torch thread per request: the request thread pool supplies parallelism."""
    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)


class ReloadBroadcast:
    """Keeps every worker process on the same model: a reload in one worker is published to a control file
    (written atomically: model directory and a generation number) that the other workers poll."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.seen = self._read().get("generation", 0)

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def publish(self, model_dir: str | Path) -> None:
        gen = self._read().get("generation", 0) + 1
        with atomic_file(self.path) as fh:
            fh.write(json.dumps({"model_dir": str(model_dir), "generation": gen}).encode())
        self.seen = gen

    def watch(self, holder, metrics, stop: threading.Event) -> threading.Thread:
        """Poll the control file; reload ``holder`` when another worker published a newer generation."""
        def loop():
            while not stop.wait(POLL_S):
                state = self._read()
                if state.get("generation", 0) <= self.seen:
                    continue
                self.seen = state["generation"]
                try:
                    holder.reload(state["model_dir"], publish=False)
                    metrics.event("reload", "ok")
                except Exception as e:  # keep serving the old model
                    metrics.event("reload", "failed")
                    log.error("worker %d: reload of %s failed, still serving the old model: %s",
                              os.getpid(), state.get("model_dir"), e)
        t = threading.Thread(target=loop, name="mixrec-reload-watch", daemon=True)
        t.start()
        return t


def fast_stack() -> dict:
    """uvicorn's ``loop``/``http`` settings: uvloop and httptools when installed (the usual production setup,
    lower latency than asyncio and h11), otherwise uvicorn's pure-Python defaults."""
    have = lambda name: importlib.util.find_spec(name) is not None  # noqa: E731
    return {"loop": "uvloop" if have("uvloop") else "asyncio", "http": "httptools" if have("httptools") else "h11"}


def _listen_shared(host: str, port: int) -> socket.socket:
    """A listening socket with SO_REUSEPORT: every worker gets its own accept queue on the same port and
    the kernel spreads connections over them."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(2048)
    return sock


def _worker(settings_json: str, control: str, log_level: str) -> None:
    """One worker process: its own model copy and SO_REUSEPORT socket; reloads follow the control file."""
    configure_threads()
    settings = ServeSettings.model_validate_json(settings_json)
    app = build_app(settings, broadcast=ReloadBroadcast(control))
    sock = _listen_shared(settings.host, settings.port)
    uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=10,
                                  **fast_stack())).run(sockets=[sock])


def _run_workers(settings: ServeSettings, log_level: str) -> None:
    """Start ``settings.workers`` processes on one port (SO_REUSEPORT); SIGHUP re-reads the model in all."""
    ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="mixrec-serve-") as tmp:
        control = Path(tmp) / "model.json"
        broadcast = ReloadBroadcast(control)
        broadcast.publish(settings.model_dir)
        procs = [ctx.Process(target=_worker, args=(settings.model_dump_json(), str(control), log_level),
                             name=f"mixrec-serve-{i}") for i in range(settings.workers)]
        for p in procs:
            p.start()
        stopping = threading.Event()

        def stop(*_):
            stopping.set()
            for p in procs:
                if p.is_alive():
                    p.terminate()  # SIGTERM: uvicorn finishes the requests in flight, then exits
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, lambda *_: broadcast.publish(json.loads(control.read_text())["model_dir"]))
        while not stopping.is_set() and all(p.is_alive() for p in procs):
            stopping.wait(0.5)
        stop()
        for p in procs:
            p.join(30)
        failed = [p.exitcode for p in procs if p.exitcode not in (0, -signal.SIGTERM)]
        if failed and not stopping.is_set():
            raise SystemExit(f"a server worker exited with code {failed[0]}; see the log above")


def run(settings: ServeSettings, sock: socket.socket | None = None, log_level: str = "warning") -> None:
    """Load the model, then serve until SIGINT/SIGTERM; SIGHUP reloads the model directory.

    With ``settings.workers > 1``, that many processes listen on the same port (SO_REUSEPORT), each with
    its own copy of the model (memory grows with the workers) and its own interpreter (no shared GIL);
    ``POST /admin/reload`` answered by any of them is passed on to the others within a fraction of a second.
    """
    configure_threads()
    if not is_loopback(settings.host) and settings.token() is None:
        log.warning("serving on %s without an admin token: /admin/reload is disabled", settings.host)
    if settings.workers > 1:
        return _run_workers(settings, log_level)
    server = uvicorn.Server(uvicorn.Config(build_app(settings), host=settings.host, port=settings.port,
                                           log_level=log_level, access_log=False, timeout_graceful_shutdown=10,
                                           **fast_stack()))
    server.run(sockets=[sock] if sock is not None else None)
