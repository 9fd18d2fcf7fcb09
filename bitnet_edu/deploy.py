"""The small pieces a deployment needs around ``model.generate`` / ``model.stream``.

Nothing here knows how a model works inside: every function takes any object with
``stream(prompt, max_new_tokens=..., **settings)`` yielding text pieces (one per new token),
and optionally ``tokenizer`` and ``config.max_position_embeddings`` for the input limits.

* :class:`Limits` / :func:`check_request` — reject oversized input with a clear ``ValueError``
  *before* spending compute on it.
* :func:`stream_reply` — run one request with a wall-clock timeout, measuring tokens/s. The
  timeout is cooperative: it is checked between tokens, so a request overshoots by at most one
  token (plus the prefill, which is one call). Nothing is killed mid-kernel.
* :class:`ResponseCache` — an LRU cache keyed on the model, the prompt and the settings
  (numbers normalised: ``0 == 0.0 == np.int64(0)``); greedy and seeded requests are cached,
  unseeded sampling is not (its answer is meant to differ each time).  A hit is a copy.
* :func:`generate_batch` — many prompts with at most ``max_concurrency`` in flight at once.
* :class:`Service` — the four together: what a chat endpoint would call.
"""

from __future__ import annotations

import copy
import itertools
import numbers
import threading
import time
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

__all__ = ["Limits", "Reply", "ResponseCache", "Service", "check_request", "count_tokens",
           "generate_batch", "stream_reply"]


@dataclass(frozen=True)
class Limits:
    """Input limits for one request. ``None`` disables a limit."""

    max_prompt_chars: int | None = 4000
    max_prompt_tokens: int | None = None  # None: whatever the context window leaves free
    max_new_tokens: int | None = 256


def _flat_ids(prompt) -> list:
    """Every token id of ``prompt`` (ids of any shape, nested lists included), flattened."""
    try:
        arr = np.asarray(prompt)
    except ValueError:  # ragged nesting: NumPy refuses it
        arr = None
    if arr is not None and arr.dtype != object:
        return arr.reshape(-1).tolist()
    out = []
    for item in prompt:
        out.extend(_flat_ids(item) if isinstance(item, (list, tuple, np.ndarray)) else [item])
    return out


def count_tokens(model, prompt) -> int | None:
    """Prompt length in tokens: token ids of any shape count every id (a ``[B, T]`` array is
    ``B * T`` tokens); text goes through ``model.tokenizer`` (``None`` when the model has none)."""
    if not isinstance(prompt, str):
        return len(_flat_ids(prompt))
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return None
    enc = tok.encode(prompt)
    return len(getattr(enc, "ids", enc))  # tokenizers.Encoding or a plain list


def _context_window(model) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "max_position_embeddings", None)


def check_request(model, prompt, max_new_tokens: int, limits: Limits = Limits()) -> int | None:
    """Raise ``ValueError`` naming the limit a request breaks; return the prompt's length in
    tokens."""
    if isinstance(prompt, str) and not prompt.strip():
        raise ValueError("prompt is empty")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral):
        raise ValueError(f"max_new_tokens must be a whole number, got {max_new_tokens!r}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if limits.max_new_tokens is not None and max_new_tokens > limits.max_new_tokens:
        raise ValueError(f"max_new_tokens={max_new_tokens} exceeds the limit "
                         f"{limits.max_new_tokens}")
    chars = limits.max_prompt_chars
    if isinstance(prompt, str) and chars is not None and len(prompt) > chars:
        raise ValueError(f"prompt has {len(prompt)} characters, the limit is {chars}")
    n = count_tokens(model, prompt)
    if n is None:
        return None
    if n == 0:
        raise ValueError("prompt is empty")
    if limits.max_prompt_tokens is not None and n > limits.max_prompt_tokens:
        raise ValueError(f"prompt has {n} tokens, the limit is {limits.max_prompt_tokens}")
    ctx = _context_window(model)
    if ctx is not None and n + max_new_tokens > ctx:
        raise ValueError(f"prompt ({n} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                         f"model's context window of {ctx} tokens")
    return n


@dataclass
class Reply:
    """One finished request: the text (or ids), how many pieces, how long, and why it ended."""

    text: object
    tokens: int
    seconds: float
    timed_out: bool = False
    cached: bool = False

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else float("inf")


def stream_reply(model, prompt, *, max_new_tokens: int = 64, timeout: float | None = None,
                 on_piece=None, **settings) -> Reply:
    """Consume ``model.stream`` until it ends or ``timeout`` seconds pass; ``on_piece(piece)`` sees
    every piece as it arrives (a UI prints it)."""
    t0 = time.perf_counter()
    deadline = None if timeout is None else t0 + timeout
    pieces, timed_out = [], False
    gen = model.stream(prompt, max_new_tokens=max_new_tokens, **settings)
    try:
        for piece in gen:
            pieces.append(piece)
            if on_piece is not None:
                on_piece(piece)
            if deadline is not None and time.perf_counter() > deadline:
                timed_out = len(pieces) < max_new_tokens
                break
    finally:
        close = getattr(gen, "close", None)
        if close is not None:  # stop the producer: frees its KV cache now, not at GC time
            close()
    seconds = time.perf_counter() - t0
    text = "".join(pieces) if all(isinstance(p, str) for p in pieces) else list(pieces)
    return Reply(text, len(pieces), seconds, timed_out)


_MODEL_IDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_NEXT_MODEL_ID = itertools.count(1)
_MODEL_IDS_LOCK = threading.Lock()


def _model_identity(model):
    """A number for this model object, never reused by another (``id()`` is, after GC)."""
    if model is None:
        return None
    with _MODEL_IDS_LOCK:
        try:
            if model not in _MODEL_IDS:
                _MODEL_IDS[model] = next(_NEXT_MODEL_ID)
            return _MODEL_IDS[model]
        except TypeError:  # not weak-referenceable or not hashable: fall back to id()
            return ("id", id(model))


def _normal(v):
    """A settings value in canonical form: equal numbers give equal keys whatever their type
    (``0``, ``0.0``, ``np.int64(0)``); lists and tuples alike; anything else by ``repr``."""
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, numbers.Real):
        f = float(v)
        return int(f) if f.is_integer() else f
    if isinstance(v, (list, tuple, np.ndarray)):
        return tuple(_normal(x) for x in v)
    if v is None or isinstance(v, str):
        return v
    return repr(v)


#: what ``model.generate`` / ``model.stream`` do with a setting that is not given
GENERATION_DEFAULTS = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0,
                       "seed": None, "stop": None}
#: settings a greedy request never reads (the repetition penalty still changes greedy output)
SAMPLING_ONLY = ("top_k", "top_p", "seed")


def _is_greedy(temperature) -> bool:
    return isinstance(temperature, numbers.Real) and float(temperature) <= 0  # NaN is not greedy


def canonical_settings(settings: dict) -> tuple:
    """Settings as a sorted tuple of ``(name, value)`` in which two requests that must produce
    the same text are equal: defaults filled in (``{}`` = ``{"temperature": 0}``), numbers in one
    type (``0`` = ``0.0``), and for a greedy request the sampling-only settings dropped (its seed
    or top-p cannot change the answer, so they must not split the cache)."""
    s = {**GENERATION_DEFAULTS, **settings}
    if _is_greedy(s["temperature"]):
        for name in SAMPLING_ONLY:
            s.pop(name)
    return tuple(sorted((k, _normal(v)) for k, v in s.items()))


class ResponseCache:
    """Least-recently-used map ``(model, prompt, settings) -> Reply`` holding at most
    ``maxsize`` entries.  ``get`` and ``put`` copy the value, so a caller that edits a reply
    (``reply.text.append(...)``) changes neither the cache nor later hits."""

    def __init__(self, maxsize: int = 128):
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize, self.hits, self.misses = maxsize, 0, 0
        self._data: OrderedDict = OrderedDict()
        self._lock = threading.Lock()  # generate_batch may share one cache across threads

    @staticmethod
    def key(prompt, settings: dict, model=None) -> tuple:
        """The cache key of one request; ``model`` keeps two models sharing a cache apart."""
        p = prompt if isinstance(prompt, str) else tuple(int(i) for i in _flat_ids(prompt))
        return _model_identity(model), p, canonical_settings(settings)

    @staticmethod
    def cacheable(settings: dict) -> bool:
        """Greedy or seeded requests have one right answer; unseeded sampling is not cached.

        Greedy is the default of ``model.generate`` / ``model.stream``: a request without a
        ``temperature`` is greedy, as is any ``temperature <= 0``.
        """
        return (_is_greedy(settings.get("temperature", GENERATION_DEFAULTS["temperature"]))
                or settings.get("seed") is not None)

    def get(self, key):
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)  # now the most recently used
                self.hits += 1
                return copy.deepcopy(self._data[key])  # the caller may edit its copy
            self.misses += 1
            return None

    def put(self, key, value) -> None:
        value = copy.deepcopy(value)  # later edits by the caller do not reach the cache
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.maxsize:
                self._data.popitem(last=False)  # evict the least recently used

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key) -> bool:
        return key in self._data

    def __repr__(self) -> str:
        return f"ResponseCache({len(self)}/{self.maxsize}, hits={self.hits}, misses={self.misses})"


def generate_batch(model, prompts, *, max_concurrency: int = 2, reply=None,
                   **settings) -> list[Reply]:
    """Answer every prompt, at most ``max_concurrency`` at a time, replies in prompt order.

    ``reply(prompt, **settings)`` runs one request (default :func:`stream_reply`); the model's
    ``stream`` must be safe to call from several threads when ``max_concurrency > 1``.
    """
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
    reply = reply or (lambda p, **kw: stream_reply(model, p, **kw))
    if max_concurrency == 1:
        return [reply(p, **settings) for p in prompts]
    with ThreadPoolExecutor(max_workers=max_concurrency) as pool:
        return list(pool.map(lambda p: reply(p, **settings), prompts))


class Service:
    """A guarded front door to a model: limits, then the cache, then a timed, streamed
    generation."""

    def __init__(self, model, *, limits: Limits = Limits(), cache: ResponseCache | None = None,
                 timeout: float | None = 30.0):
        self.model, self.limits, self.cache, self.timeout = model, limits, cache, timeout

    def ask(self, prompt, *, max_new_tokens: int = 64, on_piece=None, **settings) -> Reply:
        check_request(self.model, prompt, max_new_tokens, self.limits)
        settings["max_new_tokens"] = max_new_tokens
        use_cache = self.cache is not None and ResponseCache.cacheable(settings)
        if use_cache:
            key = ResponseCache.key(prompt, settings, self.model)
            hit = self.cache.get(key)
            if hit is not None:
                return Reply(hit.text, hit.tokens, 0.0, hit.timed_out, cached=True)
        r = stream_reply(self.model, prompt, timeout=self.timeout, on_piece=on_piece, **settings)
        if use_cache and not r.timed_out:  # a cut-off answer is not the answer
            self.cache.put(key, r)
        return r

    def ask_many(self, prompts, *, max_concurrency: int = 2, **settings) -> list[Reply]:
        return generate_batch(self.model, prompts, max_concurrency=max_concurrency,
                              reply=self.ask, **settings)
