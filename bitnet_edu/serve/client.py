"""A model that lives on a server: ``RemoteModel(url).stream(prompt, ...)`` over HTTP.

What a student's notebook uses to talk to the instructor's ``bitnet-edu serve`` (or any
OpenAI-compatible server) with nothing but the standard library: ``POST /v1/completions`` with
``"stream": true``, read as server-sent events.  It has the ``stream`` method the chat widget
and :func:`bitnet_edu.deploy.stream_reply` call, so ``ChatWidget(url=...)`` works like the
local widget.  Errors the server sends (rate limit, bad input) become ``ValueError`` with the
server's message.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

__all__ = ["RemoteModel"]


class RemoteModel:
    """``url``: the server's base address (``http://HOST:8000``); ``api_key``: the instructor's
    key if the server has one; ``model``: the model id (default: the first of ``/v1/models``)."""

    tokenizer = None  # token counts are the server's business (it enforces its own limits)

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None,
                 timeout: float = 120.0):
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        self.url, self.api_key, self.timeout = url.rstrip("/"), api_key, timeout
        self.model = model or self._get("/v1/models")["data"][0]["id"]
        self.last_stats: dict = {}

    def __repr__(self) -> str:
        return f"RemoteModel({self.url!r}, model={self.model!r})"

    def _request(self, path, body=None):
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, headers=headers,
                                     method="GET" if body is None else "POST")
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            try:
                msg = json.loads(e.read())["error"]["message"]
            except Exception:  # noqa: BLE001 - not an OpenAI error body
                msg = e.reason
            raise ValueError(f"the server said {e.code}: {msg}") from None
        except (urllib.error.URLError, OSError) as e:
            raise ValueError(f"cannot reach {self.url}: {getattr(e, 'reason', e)}") from None

    def _get(self, path):
        with self._request(path) as r:
            return json.loads(r.read())

    def stream(self, prompt: str, max_new_tokens: int = 32, *, temperature: float = 0.0,
               top_p: float = 1.0, seed=None, **extra):
        """Yield the continuation of ``prompt`` piece by piece, as the server streams it."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": int(max_new_tokens),
                "temperature": float(temperature), "top_p": float(top_p), "stream": True, **extra}
        if seed is not None:
            body["seed"] = int(seed)
        with self._request("/v1/completions", body) as r:
            for raw in r:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    return
                obj = json.loads(data)
                if "error" in obj:
                    raise ValueError(f"the server said: {obj['error']['message']}")
                if obj.get("usage"):
                    self.last_stats = dict(obj["usage"])
                text = obj["choices"][0].get("text") or ""
                if text:
                    yield text

    def generate(self, prompt: str, max_new_tokens: int = 32, **opts) -> str:
        return "".join(self.stream(prompt, max_new_tokens, **opts))
