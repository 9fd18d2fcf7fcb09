"""Serving a class: an OpenAI-compatible HTTP server on the batch scheduler.

    bitnet-edu serve [--model PATH] [--host 127.0.0.1] [--port 8000] [--api-key KEY]

:mod:`.app` (endpoints), :mod:`.limits` (rate limit, hashed client ids), :mod:`.metrics`
(Prometheus), ``chat.html`` (the page at ``/``).  Needs ``pip install 'bitnet-edu[serve]'``
(FastAPI, uvicorn, prometheus-client).
"""

__all__ = ["create_app", "ServerConfig", "serve"]


def __getattr__(name):  # FastAPI is optional: import it only when the server is used
    if name in ("create_app", "ServerConfig", "ApiError"):
        from . import app
        return getattr(app, name)
    raise AttributeError(f"module 'bitnet_edu.serve' has no attribute {name!r}")


def serve(model, host: str = "127.0.0.1", port: int = 8000, **config) -> None:
    """Serve ``model`` until Ctrl-C (``config``: :class:`ServerConfig` fields)."""
    import uvicorn

    from .app import ServerConfig, create_app
    uvicorn.run(create_app(model, ServerConfig(**config)), host=host, port=port,
                log_level="warning")
