"""HTTP serving for mixrec models: ``create_app`` (FastAPI) and ``serve`` (uvicorn); see docs/serving.md."""
from mixrec.serve.settings import ServeSettings, is_loopback

__all__ = ["ServeSettings", "is_loopback", "create_app", "serve"]


def create_app(*args, **kwargs):
    """Build the FastAPI app (see :func:`mixrec.serve.app.create_app`)."""
    from mixrec.serve.app import create_app as _create
    return _create(*args, **kwargs)


def serve(settings: ServeSettings) -> None:
    """Run the server with uvicorn until interrupted (see :func:`mixrec.serve.server.run`)."""
    from mixrec.serve.server import run
    run(settings)
