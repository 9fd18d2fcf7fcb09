"""deploy.py against a fake model that follows the public API (``stream``, ``tokenizer``,
``config``)."""

import threading
import time
from types import SimpleNamespace

import pytest

from bitnet_edu import deploy
from bitnet_edu.deploy import (Limits, ResponseCache, Service, check_request, generate_batch,
                               stream_reply)


class FakeModel:
    """Streams the prompt's words reversed, one per token; records concurrency and call counts."""

    def __init__(self, delay=0.0, ctx=64):
        self.delay, self.calls, self.active, self.peak = delay, 0, 0, 0
        self.closed = 0
        self.config = SimpleNamespace(max_position_embeddings=ctx)
        self.tokenizer = SimpleNamespace(encode=lambda s: SimpleNamespace(ids=s.split()))
        self._lock = threading.Lock()

    def stream(self, prompt, max_new_tokens=8, **settings):
        with self._lock:
            self.calls += 1
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            words = prompt.split()[::-1] * max_new_tokens
            for w in words[:max_new_tokens]:
                time.sleep(self.delay)
                yield w + " "
        finally:
            with self._lock:
                self.active -= 1
                self.closed += 1


def test_stream_reply_collects_and_counts():
    m, seen = FakeModel(), []
    r = stream_reply(m, "a b c", max_new_tokens=5, on_piece=seen.append)
    assert r.text == "c b a c b " and r.tokens == 5 and not r.timed_out
    assert seen == ["c ", "b ", "a ", "c ", "b "]
    assert r.tokens_per_s > 0


def test_timeout_stops_between_tokens_and_closes_the_stream():
    m = FakeModel(delay=0.02)
    r = stream_reply(m, "x y", max_new_tokens=1000, timeout=0.1)
    assert r.timed_out
    assert 1 <= r.tokens < 1000
    assert m.closed == 1  # the generator's finally ran: the model released its state


def test_limits_name_the_problem():
    m = FakeModel(ctx=10)
    assert check_request(m, "one two three", 4) == 3
    with pytest.raises(ValueError, match="empty"):
        check_request(m, "   ", 4)
    with pytest.raises(ValueError, match="characters"):
        check_request(m, "x" * 50, 4, Limits(max_prompt_chars=10))
    with pytest.raises(ValueError, match="tokens, the limit is 2"):
        check_request(m, "a b c", 4, Limits(max_prompt_tokens=2))
    with pytest.raises(ValueError, match="exceeds the limit 256"):
        check_request(m, "a", 1000)
    with pytest.raises(ValueError, match="context window of 10"):
        check_request(m, "a b c d e f g", 4)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        check_request(m, "a", 0)
    # token ids count as tokens without a tokenizer
    assert check_request(SimpleNamespace(), [1, 2, 3], 4) == 3


def test_lru_cache_evicts_least_recently_used():
    c = ResponseCache(maxsize=2)
    k = [ResponseCache.key(p, {"temperature": 0}) for p in "abc"]
    c.put(k[0], 0)
    c.put(k[1], 1)
    assert c.get(k[0]) == 0  # a is now the most recent
    c.put(k[2], 2)  # evicts b, not a
    assert k[1] not in c and k[0] in c and k[2] in c
    assert c.get(k[1]) is None
    assert (c.hits, c.misses, len(c)) == (1, 1, 2)
    # settings are part of the key
    assert (ResponseCache.key("a", {"temperature": 0})
            != ResponseCache.key("a", {"temperature": 0.5}))
    assert ResponseCache.key("a", {"x": 1, "y": 2}) == ResponseCache.key("a", {"y": 2, "x": 1})
    with pytest.raises(ValueError):
        ResponseCache(0)


def test_service_caches_only_reproducible_requests():
    m = FakeModel()
    svc = Service(m, cache=ResponseCache(8), timeout=None)
    r1 = svc.ask("hello world", max_new_tokens=3, temperature=0)
    r2 = svc.ask("hello world", max_new_tokens=3, temperature=0)
    assert r2.cached and not r1.cached and r2.text == r1.text and m.calls == 1
    svc.ask("hello world", max_new_tokens=4, temperature=0)  # other settings: a miss
    assert m.calls == 2
    svc.ask("hello world", max_new_tokens=3, temperature=0.8)  # unseeded sampling: never cached
    svc.ask("hello world", max_new_tokens=3, temperature=0.8)
    assert m.calls == 4
    svc.ask("hello world", max_new_tokens=3, temperature=0.8, seed=1)
    svc.ask("hello world", max_new_tokens=3, temperature=0.8, seed=1)
    assert m.calls == 5
    with pytest.raises(ValueError, match="limit"):
        svc.ask("x " * 10, max_new_tokens=999)
    assert m.calls == 5  # rejected before any compute


def test_batch_keeps_order_and_respects_the_concurrency_limit():
    m = FakeModel(delay=0.01)
    prompts = [f"p{i} q{i}" for i in range(7)]
    out = generate_batch(m, prompts, max_concurrency=3, max_new_tokens=2)
    assert [r.text for r in out] == [f"q{i} p{i} " for i in range(7)]
    assert 1 < m.peak <= 3
    m1 = FakeModel(delay=0.001)
    generate_batch(m1, prompts, max_concurrency=1, max_new_tokens=2)
    assert m1.peak == 1
    with pytest.raises(ValueError, match="max_concurrency"):
        generate_batch(m, prompts, max_concurrency=0)


def test_service_ask_many_shares_the_cache():
    m = FakeModel()
    svc = Service(m, cache=ResponseCache(8))
    out = svc.ask_many(["a b", "c d", "a b"], max_concurrency=1, max_new_tokens=2, temperature=0)
    assert [r.cached for r in out] == [False, False, True]
    assert deploy.Reply("x", 1, 0.5).tokens_per_s == 2.0


# --- issue 11, defect 9: input limits and the response cache ------------------------------------

def test_count_tokens_counts_every_id_of_any_shape():
    """Defect 9: a [12, 20] id array was counted as 12 tokens and passed a 20-token limit."""
    import numpy as np

    ids = np.ones((12, 20), np.int64)
    assert deploy.count_tokens(SimpleNamespace(), ids) == 240
    assert deploy.count_tokens(SimpleNamespace(), [[1, 2], [3]]) == 3
    assert deploy.count_tokens(SimpleNamespace(), np.int64(5)) == 1
    assert deploy.count_tokens(FakeModel(), "one two three") == 3
    assert deploy.count_tokens(SimpleNamespace(), "text without a tokenizer") is None
    with pytest.raises(ValueError, match="240 tokens, the limit is 20"):
        check_request(SimpleNamespace(), ids, 4, Limits(max_prompt_tokens=20))
    with pytest.raises(ValueError, match="empty"):
        check_request(SimpleNamespace(), np.zeros((0, 3), np.int64), 4)
    with pytest.raises(ValueError, match="whole number"):
        check_request(SimpleNamespace(), [1], 2.5)


def test_a_cache_hit_is_a_copy():
    """Defect 9: a hit returned the cached object itself: a caller's append changed later hits."""
    c = ResponseCache(4)
    value = [1, 2]
    c.put("k", value)
    value.append(99)  # the caller keeps editing what it stored
    hit = c.get("k")
    hit.append(3)
    assert c.get("k") == [1, 2]


def test_service_cache_hits_do_not_share_the_reply_text():
    class IdModel(FakeModel):
        def stream(self, prompt, max_new_tokens=8, **settings):
            self.calls += 1
            yield from [7, 8, 9][:max_new_tokens]

    m = IdModel()
    svc = Service(m, cache=ResponseCache(8), timeout=None)
    first = svc.ask([1, 2], max_new_tokens=3)
    first.text.append(-1)
    again = svc.ask([1, 2], max_new_tokens=3)
    again.text.append(-2)
    assert svc.ask([1, 2], max_new_tokens=3).text == [7, 8, 9] and m.calls == 1


def test_two_models_sharing_a_cache_do_not_get_each_others_answers():
    """Defect 9: the key ignored the model."""
    cache = ResponseCache(8)
    a, b = FakeModel(), FakeModel()
    b.stream = lambda prompt, max_new_tokens=8, **kw: iter(["B "] * max_new_tokens)
    ra = Service(a, cache=cache, timeout=None).ask("x y", max_new_tokens=2, temperature=0)
    rb = Service(b, cache=cache, timeout=None).ask("x y", max_new_tokens=2, temperature=0)
    assert ra.text == "y x " and rb.text == "B B " and not rb.cached
    assert ResponseCache.key("p", {}, a) != ResponseCache.key("p", {}, b)
    assert ResponseCache.key("p", {}, a) == ResponseCache.key("p", {}, a)


def test_cache_keys_normalise_numbers():
    """Defect 9: 0 vs 0.0 and np.int64(1) vs 1 made different keys."""
    import numpy as np

    k = ResponseCache.key
    assert k("a", {"temperature": 0}) == k("a", {"temperature": 0.0})
    t = {"temperature": 0.8}  # sampled: the seed and top-p matter
    assert k("a", {**t, "seed": np.int64(1)}) == k("a", {**t, "seed": 1}) == k("a", {**t, "seed": 1.0})
    assert k("a", {**t, "top_p": np.float32(0.5)}) == k("a", {**t, "top_p": 0.5})
    assert k([1, 2], {}) == k(np.array([1, 2]), {}) == k((np.int64(1), 2), {})
    assert k("a", {"stop": ["x"]}) == k("a", {"stop": ("x",)})
    assert k("a", {**t, "seed": 1}) != k("a", {**t, "seed": 2})
    assert k("a", {**t, "seed": 1}) != k("a", {**t, "seed": "1"})
    assert k("a", {**t, "seed": 2**60}) != k("a", {**t, "seed": 2**60 + 1})  # no rounding through float


def test_cache_keys_fill_defaults_and_ignore_what_greedy_never_reads():
    k = ResponseCache.key
    assert k("a", {}) == k("a", {"temperature": 0, "top_p": 1.0, "repetition_penalty": 1})
    assert k("a", {"seed": 1}) == k("a", {"seed": 2}) == k("a", {"top_p": 0.5, "top_k": 3})
    assert k("a", {"repetition_penalty": 1.3}) != k("a", {})  # it changes greedy output too
    assert k("a", {"max_new_tokens": 3}) != k("a", {"max_new_tokens": 4})
    assert k("a", {"temperature": 0.8, "seed": 1}) != k("a", {"temperature": 0.8, "seed": 1, "top_p": 0.9})


def test_default_greedy_requests_are_cached():
    """Defect 9: cacheable() assumed temperature 1.0 when none was given; the default is greedy."""
    assert ResponseCache.cacheable({}) and ResponseCache.cacheable({"max_new_tokens": 3})
    assert ResponseCache.cacheable({"temperature": 0.0}) and ResponseCache.cacheable({"seed": 0})
    assert not ResponseCache.cacheable({"temperature": 0.7})
    assert not ResponseCache.cacheable({"temperature": float("nan")})
    m = FakeModel()
    svc = Service(m, cache=ResponseCache(8), timeout=None)
    svc.ask("hello world", max_new_tokens=3)
    assert svc.ask("hello world", max_new_tokens=3).cached and m.calls == 1
