"""An OpenAI-compatible HTTP server for one model, on FastAPI (Starlette) + uvicorn.

Endpoints: ``GET /v1/models``, ``POST /v1/completions``, ``POST /v1/chat/completions`` (the
2B4T chat template; ``"stream": true`` as server-sent events; ``usage`` counts; errors in
OpenAI's body shape ``{"error": {"message", "type", "param", "code"}}``), ``GET /health``,
``GET /metrics`` (Prometheus text) and ``GET /`` (a chat page).

Every generation goes to one :class:`~bitnet_edu.model.batching.BatchScheduler` running in a
background thread, so concurrent requests are decoded together.  Before any compute a request
passes, in this order: the API key (401), the per-client rate limit (429 + ``Retry-After``),
the body size (413), JSON and parameter checks (400), the prompt length (400).  A request that
runs past ``timeout_s`` is cancelled (504); a client that disconnects frees its batch slot at
the scheduler's next step.  Greedy and seeded requests are answered from a response cache when
they repeat.  One JSON log line per request, with a salted hash of the client id and no
prompt text unless ``log_prompts``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import numbers
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..deploy import ResponseCache
from ..model.batching import BatchScheduler
from ..model.generation import TextPieces, _prompt_ids, chat_prompt
from .limits import RateLimiter, client_hash
from .metrics import ServerMetrics

__all__ = ["ServerConfig", "create_app", "ApiError"]

log = logging.getLogger("bitnet_edu.serve")


@dataclass
class ServerConfig:
    """Settings of one server (``bitnet-edu serve --help`` sets them)."""

    model_name: str = "bitnet-edu"
    api_key: str | None = None          # None: no key needed (a server on 127.0.0.1)
    rate_per_min: float = 60.0          # requests per client per minute (<= 0: unlimited)
    burst: int = 10                     # requests a client may make at once
    max_body_bytes: int = 64 * 1024     # 413 above this
    max_prompt_tokens: int | None = None  # None: the model's context minus one
    max_new_tokens: int = 512           # the largest max_tokens a request may ask for
    timeout_s: float = 120.0            # a request running longer is cancelled (504)
    max_batch: int = 16                 # sequences decoded together
    cache_size: int = 256               # response cache entries (0: no cache)
    log_prompts: bool = False           # prompt text in the logs (off: students' privacy)


class ApiError(Exception):
    """An error answered in OpenAI's shape with HTTP ``status``."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             413: "invalid_request_error", 429: "rate_limit_error", 500: "server_error",
             504: "timeout_error"}

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}
        self.logged = False  # True once counted and logged where it happened

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "error"),
                          "param": self.param, "code": self.code}}


# --- request parameters ---------------------------------------------------------------------------

def _number(body, name, default, lo=None, hi=None, whole=False):
    v = body.get(name, default)
    if v is None:
        return default
    ok = isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)
    if ok and whole:
        ok = float(v).is_integer()
    if not ok or (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f" between {lo} and {hi}" if lo is not None and hi is not None else \
              (f" >= {lo}" if lo is not None else "")
        raise ApiError(400, f"'{name}' must be a{' whole' if whole else ''} number{rng}, "
                            f"got {v!r}", param=name)
    return int(v) if whole else float(v)


def _settings(body: dict, cfg: ServerConfig) -> dict:
    """OpenAI's sampling parameters -> the engine's (OpenAI's defaults: temperature 1, top_p 1)."""
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    s = {"max_new_tokens": _number({"max_tokens": max_tokens}, "max_tokens", 16, 0,
                                   cfg.max_new_tokens, whole=True),
         "temperature": _number(body, "temperature", 1.0, 0, 2),
         "top_p": _number(body, "top_p", 1.0, 0, 1),
         "top_k": _number(body, "top_k", 0, 0, None, whole=True),
         "repetition_penalty": _number(body, "repetition_penalty", 1.0, 0.01, 10)}
    seed = body.get("seed")
    if seed is not None:
        s["seed"] = _number(body, "seed", None, 0, None, whole=True)
    if body.get("n", 1) not in (1, None):
        raise ApiError(400, "only n=1 is supported: send several requests (they are batched)",
                       param="n")
    stop = body.get("stop")
    if stop is None:
        stops = []
    elif isinstance(stop, str):
        stops = [stop]
    elif isinstance(stop, list) and all(isinstance(x, str) for x in stop) and len(stop) <= 4:
        stops = list(stop)
    else:
        raise ApiError(400, "'stop' must be a string or a list of at most 4 strings", param="stop")
    if any(x == "" for x in stops):
        raise ApiError(400, "'stop' strings must not be empty", param="stop")
    return s, stops


class _IdPieces:
    """The text of a model without a tokenizer (random weights, for benchmarks): ``<id>`` per
    token, so a client still sees one piece per token."""

    def add(self, token: int) -> str:
        return f"<{int(token)}>"

    def finish(self) -> str:
        return ""


class _StopText:
    """Cuts the text at the first ``stop`` string, holding back a tail that could still start
    one, so a stop string is never half-sent."""

    def __init__(self, stops):
        self.stops, self.text, self.sent, self.hit = stops, "", 0, False
        self.hold = max((len(x) for x in stops), default=1) - 1

    def add(self, piece: str) -> str:
        self.text += piece
        for st in self.stops:
            i = self.text.find(st)
            if i >= 0:
                self.text, self.hit = self.text[:i], True
        end = len(self.text) if self.hit else max(self.sent, len(self.text) - self.hold)
        out, self.sent = self.text[self.sent:end], end
        return out

    def flush(self) -> str:
        out, self.sent = self.text[self.sent:], len(self.text)
        return out


# --- the app --------------------------------------------------------------------------------------

def create_app(model, config: ServerConfig | None = None) -> FastAPI:
    """The ASGI app serving ``model`` (run it with ``uvicorn.run(app)``; the scheduler thread
    starts and stops with the app's lifespan)."""
    cfg = config or ServerConfig()
    metrics = ServerMetrics()
    limiter = RateLimiter(cfg.rate_per_min, cfg.burst)
    cache = ResponseCache(cfg.cache_size) if cfg.cache_size > 0 else None
    sched = BatchScheduler(model, max_batch=cfg.max_batch)
    context = model.config.max_position_embeddings
    max_prompt = cfg.max_prompt_tokens or context - 1
    metrics.queue_depth.set_function(lambda: sched.waiting)
    metrics.running.set_function(lambda: sched.running)
    if cache is not None:  # derived from the cache's own counters when scraped
        metrics.cache_hit_ratio.set_function(lambda: cache.hits / max(1, cache.hits + cache.misses))

    def on_step(b, seconds):
        metrics.batch_size.observe(b)
        if seconds > 0:
            metrics.tokens_per_s.set(b / seconds)
    sched.on_step = on_step

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app):
        sched.start()
        try:
            yield
        finally:
            sched.shutdown()

    app = FastAPI(title="bitnet-edu", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.scheduler, app.state.metrics, app.state.config = sched, metrics, cfg

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    def client_of(request: Request) -> str:
        # the address, not a token the client chooses: a made-up bearer per request would
        # otherwise be a fresh bucket each time (behind one NAT a class shares one address)
        return "ip:" + (request.client.host if request.client else "?")

    def check_key(request: Request):
        if cfg.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        if not auth.lower().startswith("bearer ") or auth[7:].strip() != cfg.api_key:
            raise ApiError(401, "missing or wrong API key: send 'Authorization: Bearer <key>' "
                                "(the instructor has it)", code="invalid_api_key")

    async def read_body(request: Request) -> dict:
        n = request.headers.get("content-length")
        if n is not None and n.isdigit() and int(n) > cfg.max_body_bytes:
            raise ApiError(413, f"request body of {n} bytes is over the limit of "
                                f"{cfg.max_body_bytes} bytes")
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > cfg.max_body_bytes:
                raise ApiError(413, f"request body is over the limit of {cfg.max_body_bytes} bytes")
        try:
            body = json.loads(raw or b"null")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object")
        return body

    def check_model(body):
        name = body.get("model")
        if name not in (None, "", cfg.model_name):
            raise ApiError(404, f"model {name!r} does not exist here; this server has "
                                f"{cfg.model_name!r} (GET /v1/models)", param="model",
                           code="model_not_found")

    def log_line(**kw):
        log.info(json.dumps({"ts": round(time.time(), 3), **kw}, ensure_ascii=False))

    async def generate(request: Request, endpoint: str, body: dict, prompt: str, chat: bool):
        t0 = time.perf_counter()
        client = client_hash(client_of(request))
        settings, stops = _settings(body, cfg)
        try:
            ids, _ = _prompt_ids(model, prompt)
        except ValueError as e:  # no tokenizer for text, ids out of the vocabulary, ...
            raise ApiError(400, str(e), param="messages" if chat else "prompt") from None
        if len(ids) > max_prompt or len(ids) + settings["max_new_tokens"] > context:
            raise ApiError(400, f"the prompt has {len(ids)} tokens; with max_tokens="
                                f"{settings['max_new_tokens']} that exceeds this model's context "
                                f"of {context} tokens (prompts may have at most {max_prompt})",
                           param="messages" if chat else "prompt", code="context_length_exceeded")
        stream = bool(body.get("stream", False))
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        obj = "chat.completion" if chat else "text_completion"
        metrics.prompt_tokens.inc(len(ids))

        def usage(n):
            return {"prompt_tokens": len(ids), "completion_tokens": n,
                    "total_tokens": len(ids) + n}

        def choice(text, finish, delta=False):
            if chat:
                key = "delta" if delta else "message"
                msg = {"content": text} if delta else {"role": "assistant", "content": text}
                return {"index": 0, key: msg, "finish_reason": finish,
                        **({} if delta else {"logprobs": None})}
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

        def done_log(status, n, ttft):
            metrics.requests.labels(endpoint, str(status)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
            metrics.completion_tokens.inc(n)
            extra = {"prompt": prompt} if cfg.log_prompts else {}
            log_line(event="request", client=client, endpoint=endpoint, status=status,
                     prompt_tokens=len(ids), completion_tokens=n, stream=stream,
                     latency_s=round(time.perf_counter() - t0, 4),
                     ttft_s=None if ttft is None else round(ttft, 4), **extra)

        key = None
        if cache is not None and ResponseCache.cacheable(settings):
            key = ResponseCache.key(ids, {**settings, "stop": tuple(stops), "chat": chat,
                                          "adapter": _adapter_tag(model)}, model)
            hit = cache.get(key)
            metrics.cache.labels("hit" if hit else "miss").inc()
            if hit is not None:
                text, finish, n = hit
                metrics.ttft.labels(endpoint).observe(time.perf_counter() - t0)
                if not stream:
                    done_log(200, n, time.perf_counter() - t0)
                    return {"id": rid, "object": obj, "created": created, "model": cfg.model_name,
                            "choices": [choice(text, finish)], "usage": usage(n)}

                async def cached_events():
                    for c in ([choice("", None, True) | {"delta": {"role": "assistant"}}] if chat else []) + \
                             [choice(text, None, chat), choice("", finish, chat)]:
                        yield _sse({"id": rid, "object": obj + (".chunk" if chat else ""),
                                    "created": created, "model": cfg.model_name, "choices": [c]})
                    yield _sse(None)
                    done_log(200, n, 0.0)
                return StreamingResponse(cached_events(), media_type="text/event-stream")

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        try:
            req = sched.submit(ids, settings["max_new_tokens"], temperature=settings["temperature"],
                               top_k=settings["top_k"], top_p=settings["top_p"],
                               repetition_penalty=settings["repetition_penalty"],
                               seed=settings.get("seed"),
                               on_token=lambda t: loop.call_soon_threadsafe(queue.put_nowait, t),
                               on_done=lambda r: loop.call_soon_threadsafe(queue.put_nowait, None))
        except ValueError as e:
            raise ApiError(400, str(e)) from None
        deadline = t0 + cfg.timeout_s
        pieces = TextPieces(model) if getattr(model, "tokenizer", None) is not None else _IdPieces()
        cut = _StopText(stops)
        state = {"n": 0, "ttft": None}

        async def next_piece():
            """The next text (possibly ''), or None at the end; raises TimeoutError."""
            left = deadline - time.perf_counter()
            if left <= 0:
                raise asyncio.TimeoutError
            tok = await asyncio.wait_for(queue.get(), timeout=left)
            if tok is None:
                return None
            state["n"] += 1
            if state["ttft"] is None:
                state["ttft"] = time.perf_counter() - t0
                metrics.ttft.labels(endpoint).observe(state["ttft"])
            p = pieces.add(tok)
            out = cut.add(p) if p else ""
            if cut.hit:
                req.cancel()
            return out

        def finish_reason():
            if cut.hit or req.finish_reason == "stop":
                return "stop"
            return "length"

        def remember(text):  # only complete answers (not cut off by a timeout or an error)
            if key is not None:
                cache.put(key, (text, finish_reason(), state["n"]))

        if not stream:
            text = []
            try:
                while True:
                    nxt = asyncio.ensure_future(next_piece())
                    while not nxt.done():
                        await asyncio.wait({nxt}, timeout=0.25)
                        if not nxt.done() and await request.is_disconnected():
                            nxt.cancel()
                            req.cancel()
                            done_log(499, state["n"], state["ttft"])
                            return Response(status_code=499)
                    piece = nxt.result()
                    if piece is None or cut.hit:
                        if piece:
                            text.append(piece)
                        break
                    text.append(piece)
            except asyncio.TimeoutError:
                req.cancel()
                done_log(504, state["n"], state["ttft"])
                err = ApiError(504, f"the request ran past the server's timeout of "
                                    f"{cfg.timeout_s:g} s; ask for fewer tokens", code="timeout")
                err.logged = True
                raise err from None
            if req.finish_reason == "error":
                done_log(500, state["n"], state["ttft"])
                err = ApiError(500, f"generation failed: {req.error}")
                err.logged = True
                raise err
            if not cut.hit:
                text.append(cut.add(pieces.finish()) + cut.flush())
            out = "".join(text)
            if req.finish_reason in ("stop", "length") or cut.hit:
                remember(out)
            done_log(200, state["n"], state["ttft"])
            return {"id": rid, "object": obj, "created": created, "model": cfg.model_name,
                    "choices": [choice(out, finish_reason())], "usage": usage(state["n"])}

        async def events():
            chunk_obj = obj + ".chunk" if chat else obj
            sent, status = [], 200

            def chunk(c):
                return _sse({"id": rid, "object": chunk_obj, "created": created,
                             "model": cfg.model_name, "choices": [c]})
            try:
                if chat:
                    yield _sse({"id": rid, "object": chunk_obj, "created": created,
                                "model": cfg.model_name,
                                "choices": [{"index": 0, "delta": {"role": "assistant"},
                                             "finish_reason": None}]})
                while True:
                    piece = await next_piece()
                    if piece is None:
                        break
                    if piece:
                        sent.append(piece)
                        yield chunk(choice(piece, None, delta=True))
                    if cut.hit:
                        break
                if req.finish_reason == "error":
                    status = 500
                    yield _sse(ApiError(500, f"generation failed: {req.error}").body())
                else:
                    if not cut.hit:
                        rest = cut.add(pieces.finish()) + cut.flush()
                        if rest:
                            sent.append(rest)
                            yield chunk(choice(rest, None, delta=True))
                    final = choice("", finish_reason(), delta=True)
                    if chat:
                        final["delta"] = {}
                    yield _sse({"id": rid, "object": chunk_obj, "created": created,
                                "model": cfg.model_name, "choices": [final],
                                "usage": usage(state["n"])})
                    if req.finish_reason in ("stop", "length") or cut.hit:
                        remember("".join(sent))
                yield _sse(None)
            except asyncio.TimeoutError:
                status = 504
                yield _sse(ApiError(504, f"the request ran past the server's timeout of "
                                         f"{cfg.timeout_s:g} s", code="timeout").body())
                yield _sse(None)
            finally:  # also when the client went away (the task is cancelled)
                req.cancel()
                if status == 200 and not req.done:
                    status = 499
                done_log(status, state["n"], state["ttft"])

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def guarded(request: Request, endpoint: str, handler):
        try:
            check_key(request)
            wait = limiter.allow(client_of(request))
            if wait > 0:
                metrics.rate_limited.inc()
                raise ApiError(429, f"too many requests: at most {cfg.rate_per_min:g} per minute "
                                    f"(bursts of {cfg.burst}); retry in {math.ceil(wait)} s",
                               code="rate_limit_exceeded",
                               headers={"Retry-After": str(max(1, math.ceil(wait)))})
            body = await read_body(request)
            check_model(body)
            return await handler(body)
        except ApiError as e:
            if not e.logged:  # a timeout or a failed generation was counted where it happened
                metrics.requests.labels(endpoint, str(e.status)).inc()
                log_line(event="request", client=client_hash(client_of(request)),
                         endpoint=endpoint, status=e.status, error=e.code or e.TYPES.get(e.status))
            raise

    @app.post("/v1/completions")
    async def completions(request: Request):
        async def handler(body):
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
                prompt = prompt[0]
            if isinstance(prompt, list) and prompt and all(isinstance(i, int) for i in prompt):
                vocab = model.config.vocab_size
                if any(i < 0 or i >= vocab for i in prompt):
                    raise ApiError(400, f"token ids must be in [0, {vocab})", param="prompt")
            elif not isinstance(prompt, str) or not prompt:
                raise ApiError(400, "'prompt' must be a non-empty string (or one list of token "
                                    "ids)", param="prompt")
            return await generate(request, "completions", body, prompt, chat=False)
        return await guarded(request, "completions", handler)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        async def handler(body):
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs or not all(
                    isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs):
                raise ApiError(400, "'messages' must be a non-empty list of {role, content} "
                                    "objects with string content", param="messages")
            try:
                prompt = chat_prompt(model, msgs)
            except ValueError as e:
                raise ApiError(400, str(e), param="messages") from None
            return await generate(request, "chat", body, prompt, chat=True)
        return await guarded(request, "chat", handler)

    @app.get("/v1/models")
    async def models(request: Request):
        check_key(request)
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model",
                                            "created": 0, "owned_by": "bitnet-edu"}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": cfg.model_name, "running": sched.running,
                "waiting": sched.waiting, "context": context,
                "adapter": getattr(getattr(model, "adapter", None), "name", None)}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse((Path(__file__).parent / "chat.html").read_text("utf-8")
                            .replace("__MODEL__", cfg.model_name))

    return app


def _adapter_tag(model):
    """What keeps cached answers of one model object apart when its LoRA adapter changes
    (``model.load_adapter`` / ``remove_adapter`` while serving): None without an adapter."""
    a = getattr(model, "adapter", None)
    return None if a is None else f"{getattr(a, 'name', '?')}#{getattr(a, 'serial', id(a))}"


def _sse(obj) -> str:
    """One server-sent event; ``None`` is OpenAI's end marker ``[DONE]``."""
    return "data: [DONE]\n\n" if obj is None else f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
