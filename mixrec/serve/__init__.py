"""HTTP serving for mixrec models: ``create_app`` (FastAPI) and ``serve`` (uvicorn); see docs/serving.md."""
from mixrec.serve.settings import ServeSettings, is_loopback

__all__ = ["ServeSettings", "is_loopback", "create_app", "serve"]


def create_app(*args, **kwargs):
    """Build the served FastAPI app: base routes and the funnel's (see :func:`mixrec.serve.server.build_app`)."""
    from mixrec.serve.server import build_app  # lazy: ServeSettings alone needs no FastAPI, FAISS or torch
    return build_app(*args, **kwargs)


def serve(settings: ServeSettings) -> None:
    """Run the server with uvicorn until interrupted (see :func:`mixrec.serve.server.run`)."""
    from mixrec.serve.server import run  # lazy, as above
    run(settings)
