"""Continuous batching: many requests decoded together, one weight pass per step.

Decoding one token reads every weight once; on a CPU that read, not the arithmetic, sets the
speed (Lesson 03's roofline).  B sequences decoded in one step share that read: the B tokens
go through each ternary matrix as one small GEMM (:meth:`BitNetModel.forward_batch`), so the
step costs little more than one token's and the aggregate rate grows with B until the
arithmetic catches up.

The :class:`BatchScheduler` keeps a set of *running* requests.  Each :meth:`~BatchScheduler.step`

1. admits waiting requests while fewer than ``max_batch`` run: a prefill of each new prompt
   fills its own KV cache (the prefill GEMM) and gives its first logits;
2. samples one token for every running request from its own logits, with its own settings
   and its own seeded generator (exactly what :func:`generate_ids` does for one request), and
   retires those that hit a stop token or their ``max_new_tokens``;
3. runs one batched decode step for the rest.

Requests join and leave between steps, so a short reply never waits for a long one.  Greedy
output is identical to running the request alone (the batched step is bit-exact per row), and
a seeded sampled request too.

Shapes: each request's cache is a :class:`KVCache` of ``len(prompt) + max_new_tokens``
positions; logits are float32 ``[vocab]`` per request.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .sampling import _check_options, _stop_ids, sample_next

__all__ = ["BatchScheduler", "Request", "generate_batch_ids"]

_DONE = object()  # end-of-stream marker in a request's event queue


@dataclass(eq=False)
class Request:
    """One generation request and its state.  Read ``tokens`` (the new ids so far),
    ``finish_reason`` (``"stop"``: a stop token; ``"length"``: ``max_new_tokens`` reached;
    ``"cancelled"``; ``"error"``) and ``error``; iterate :meth:`events` to stream."""

    ids: list
    max_new_tokens: int
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: object = None
    on_token: object = None  # called with each new id, from the scheduler's thread
    on_done: object = None   # called once with the request when it ends, from that thread
    tokens: list = field(default_factory=list)
    finish_reason: str | None = None
    error: BaseException | None = None
    # timings (time.perf_counter): submitted, first token, finished
    t_submit: float = 0.0
    t_first: float | None = None
    t_done: float | None = None
    id: int = 0

    def __post_init__(self):
        self._events: queue.Queue = queue.Queue()
        self._finished = threading.Event()
        self._cancel = False
        self._cache = self._logits = self._rng = self._stops = None
        self._history: list = []

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def cancel(self) -> None:
        """Ask the scheduler to drop this request at its next step (a client went away)."""
        self._cancel = True

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the request has finished; False if ``timeout`` seconds passed first."""
        return self._finished.wait(timeout)

    def events(self, timeout: float | None = None):
        """Yield each new token id as the scheduler makes it, until the request ends
        (``queue.Empty`` if no token arrives within ``timeout`` seconds)."""
        while True:
            item = self._events.get(timeout=timeout)
            if item is _DONE:
                return
            yield item

    def _emit(self, token: int) -> None:
        if self.t_first is None:
            self.t_first = time.perf_counter()
        self.tokens.append(token)
        self._history.append(token)
        self._events.put(token)
        if self.on_token is not None:
            self.on_token(token)

    def _finish(self, reason: str, error: BaseException | None = None) -> None:
        self.finish_reason, self.error = reason, error
        self.t_done = time.perf_counter()
        self._cache = self._logits = None  # frees the KV cache now
        self._events.put(_DONE)
        self._finished.set()
        if self.on_done is not None:
            try:
                self.on_done(self)
            except Exception:  # noqa: BLE001 - the consumer's problem; the scheduler goes on
                pass


class BatchScheduler:
    """Runs requests for one model in batches of at most ``max_batch`` sequences.

    Synchronous use: :meth:`submit` requests, then :meth:`run` (or :meth:`step` in a loop).
    Server use: :meth:`start` a background thread; :meth:`submit` from any thread, and read
    each request's :meth:`Request.events`.  The counters ``steps``, ``decode_tokens``,
    ``decode_s`` and ``batch_sizes`` (a histogram ``{B: steps}``) describe the work done.
    """

    def __init__(self, model, max_batch: int = 16):
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a whole number >= 1, got {max_batch!r}")
        self.model, self.max_batch = model, max_batch
        self._waiting: list[Request] = []
        self._running: list[Request] = []
        self._lock = threading.Condition()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._stop = False
        self.steps = self.decode_tokens = self.prefill_tokens = 0
        self.decode_s = self.prefill_s = 0.0
        self.batch_sizes: dict[int, int] = {}
        self.on_step = None  # on_step(batch size, seconds) after each batched decode step

    # -- requests -------------------------------------------------------------------------------
    def submit(self, ids, max_new_tokens: int = 32, *, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, repetition_penalty: float = 1.0, seed=None, stop=None,
               on_token=None, on_done=None) -> Request:
        """Queue a request for prompt token ids ``ids`` (a list of int, bos included).

        Bad settings, an empty prompt or one that with ``max_new_tokens`` exceeds the context
        are a ValueError here, before anything is queued.
        """
        _check_options(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("the prompt has no tokens")
        vocab = self.model.config.vocab_size
        if min(ids) < 0 or max(ids) >= vocab:
            raise ValueError(f"token ids must be in [0, {vocab})")
        limit = self.model.config.max_position_embeddings
        if len(ids) + max_new_tokens > limit:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_new_tokens ({max_new_tokens}) "
                             f"exceeds the context length {limit}; shorten the prompt or ask "
                             "for fewer tokens")
        r = Request(ids, int(max_new_tokens), float(temperature), int(top_k), float(top_p),
                    float(repetition_penalty), seed, stop, on_token, on_done,
                    t_submit=time.perf_counter(),
                    id=next(self._ids))
        r._stops = _stop_ids(self.model, stop)
        with self._lock:
            self._waiting.append(r)
            self._lock.notify_all()
        return r

    @property
    def pending(self) -> int:
        """Requests waiting or running."""
        with self._lock:
            return len(self._waiting) + len(self._running)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    # -- the loop -------------------------------------------------------------------------------
    def step(self) -> bool:
        """Admit, sample, decode once.  Returns False when there was nothing to do."""
        with self._lock:
            while self._waiting and len(self._running) < self.max_batch:
                self._running.append(self._waiting.pop(0))
            running = list(self._running)
        if not running:
            return False
        for r in running:
            if r._cancel:
                r._finish("cancelled")
            elif r._cache is None and r.finish_reason is None:
                self._prefill(r)
        need = []
        for r in running:
            if r.done:
                continue
            try:
                tok = sample_next(r._logits, r._rng, temperature=r.temperature, top_k=r.top_k,
                                  top_p=r.top_p, repetition_penalty=r.repetition_penalty,
                                  history=r._history)
            except Exception as e:  # noqa: BLE001 - one bad request must not stop the others
                r._finish("error", e)
                continue
            if tok in r._stops:
                r._finish("stop")
                continue
            try:
                r._emit(tok)
            except Exception as e:  # noqa: BLE001 - a consumer's callback failed: end it alone
                r._finish("error", e)
                continue
            if len(r.tokens) >= r.max_new_tokens:
                r._finish("length")
            else:
                need.append((r, tok))
        if need:
            t0 = time.perf_counter()
            try:
                logits = self.model.forward_batch([t for _, t in need], [r._cache for r, _ in need])
            except Exception as e:  # noqa: BLE001 - the step failed for all: end them, loudly
                for r, _ in need:
                    r._finish("error", e)
            else:
                for (r, _), lg in zip(need, logits):
                    r._logits = lg
                dt = time.perf_counter() - t0
                self.decode_s += dt
                self.decode_tokens += len(need)
                self.batch_sizes[len(need)] = self.batch_sizes.get(len(need), 0) + 1
                if self.on_step is not None:
                    self.on_step(len(need), dt)
        self.steps += 1
        with self._lock:
            self._running = [r for r in self._running if not r.done]
        return True

    def _prefill(self, r: Request) -> None:
        t0 = time.perf_counter()
        try:
            r._rng = np.random.default_rng(r.seed)
            r._history = list(r.ids)
            r._cache = self.model.new_cache(len(r.ids) + r.max_new_tokens)
            if r.max_new_tokens == 0:
                r._finish("length")
                return
            r._logits = self.model.forward(r.ids, r._cache, last_only=True)[0]
        except Exception as e:  # noqa: BLE001
            r._finish("error", e)
            return
        self.prefill_s += time.perf_counter() - t0
        self.prefill_tokens += len(r.ids)

    def run(self) -> None:
        """Step until every submitted request has finished (synchronous use)."""
        while self.step():
            pass

    # -- background thread (a server) ----------------------------------------------------------
    def start(self) -> "BatchScheduler":
        """Run the loop in a daemon thread until :meth:`shutdown`."""
        if self._thread is None or not self._thread.is_alive():
            self._stop = False
            self._thread = threading.Thread(target=self._loop, name="bitnet-edu-batch",
                                            daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop:
            with self._lock:
                while not self._stop and not self._waiting and not self._running:
                    self._lock.wait()
            if not self._stop:
                self.step()

    def shutdown(self, cancel: bool = True) -> None:
        """Stop the thread; with ``cancel`` every unfinished request ends as ``"cancelled"``."""
        with self._lock:
            self._stop = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join()
        if cancel:
            with self._lock:
                left, self._waiting, self._running = self._waiting + self._running, [], []
            for r in left:
                if not r.done:
                    r._finish("cancelled")


def generate_batch_ids(model, prompts, max_new_tokens: int, *, max_batch: int = 16, seeds=None,
                       **opts) -> list[list[int]]:
    """New token ids for each prompt (lists of ids), decoded together in batches.

    ``seeds``: one seed per prompt (or None).  Returns lists in prompt order; each is what
    :func:`generate_ids` gives for that prompt alone.  ``model.last_stats`` gets the totals.
    """
    sched = BatchScheduler(model, max_batch=max_batch)
    seeds = [None] * len(prompts) if seeds is None else list(seeds)
    reqs = [sched.submit(p, max_new_tokens, seed=s, **opts) for p, s in zip(prompts, seeds)]
    t0 = time.perf_counter()
    sched.run()
    wall = time.perf_counter() - t0
    for r in reqs:
        if r.finish_reason == "error":
            raise r.error
    new = sum(len(r.tokens) for r in reqs)
    model.last_stats = {"requests": len(reqs), "new_tokens": new, "seconds": wall,
                        "tokens_per_s": new / wall if wall > 0 else float("nan"),
                        "prefill_s": sched.prefill_s, "decode_s": sched.decode_s,
                        "decode_tok_s": sched.decode_tokens / max(sched.decode_s, 1e-9),
                        "batch_sizes": dict(sched.batch_sizes)}
    return [r.tokens for r in reqs]
