"""A server running inside this Python process, in a thread: for a notebook or a test.

    with BackgroundServer(model, rate_per_min=0) as srv:
        print(srv.url)                         # http://127.0.0.1:PORT
        ...                                    # call it with openai, httpx, RemoteModel

The same app ``bitnet-edu serve`` runs (uvicorn, the batch scheduler), on a free port of
127.0.0.1; :meth:`stop` (or leaving the ``with``) shuts it down and ends its requests.
"""

from __future__ import annotations

import socket
import threading
import time

__all__ = ["BackgroundServer"]


class BackgroundServer:
    """``BackgroundServer(model, host="127.0.0.1", port=None, **ServerConfig fields)``."""

    def __init__(self, model, *, host: str = "127.0.0.1", port: int | None = None,
                 start: bool = True, **config):
        import uvicorn

        from .app import ServerConfig, create_app
        if port is None:
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
        self.host, self.port = host, port
        self.app = create_app(model, ServerConfig(**config))
        self._server = uvicorn.Server(uvicorn.Config(self.app, host=host, port=port,
                                                     log_level="warning"))
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def scheduler(self):
        return self.app.state.scheduler

    def start(self, timeout: float = 30.0) -> "BackgroundServer":
        self._thread = threading.Thread(target=self._server.run, name="bitnet-edu-serve",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the server did not start on {self.url} (is the port taken?)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start within {timeout:g} s")
            time.sleep(0.02)
        return self

    def metrics(self) -> dict:
        """``/metrics`` parsed by prometheus-client: ``{(name, ((label, value), ...)): value}``."""
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
            text = r.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text) for s in fam.samples}

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self) -> str:
        return f"BackgroundServer({self.url})"
