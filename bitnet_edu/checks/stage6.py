"""Checks for Lesson 06 (deployment): KV-cache memory, energy per token, an LRU response cache,
and the design of a response-cache key.

Each check compares the student's code with :mod:`bitnet_edu.energy` / :mod:`bitnet_edu.deploy`
on several inputs, including the edge cases (zero context, a cache of size 1, re-inserting a key).
"""

from __future__ import annotations

import numpy as np

from .. import energy
from ..deploy import ResponseCache
from ._core import as_array, check, student_call

__all__ = ["check_kv_cache_bytes", "check_energy_per_token", "check_lru_cache", "check_cache_key"]

_SHAPES = {
    "2B4T": energy.SHAPES["BitNet b1.58 2B4T"],
    "LLaMA-2 70B (GQA 8)": energy.SHAPES["LLaMA-2 70B shape"],
    "tiny (no GQA)": energy.Shape(64, 128, 2, 4, 4, 16, 100),
}


def _number(x, what: str) -> float:
    arr = as_array(x, what)
    if arr.size != 1:
        raise AssertionError(f"{what}: return one number, got an array of shape {arr.shape}")
    return float(arr.reshape(-1)[0])


@check
def check_kv_cache_bytes(kv_cache_bytes):
    """``kv_cache_bytes(layers, kv_heads, head_dim, context, bits=16) -> bytes``."""
    for name, s in _SHAPES.items():
        for context, bits in [(0, 16), (1, 16), (4096, 16), (1000, 32), (7, 8)]:
            what = f"{name}, context={context}, bits={bits}"
            layers, kv_heads, heads = s.num_hidden_layers, s.num_key_value_heads, s.num_attention_heads
            want = energy.kv_cache_bytes(s, context, bits)
            got = _number(student_call(kv_cache_bytes, layers, kv_heads, s.head_dim, context, bits), what)
            if got == want / 2 and context:
                raise AssertionError(f"{what}: got {got:.0f}, half of {want:.0f} — keys AND values are cached")
            if context and got == want * heads / kv_heads and heads != kv_heads:
                raise AssertionError(f"{what}: got {got:.0f}; with grouped-query attention only the "
                                     f"{kv_heads} key/value heads are cached, not all {heads} heads")
            if not np.isclose(got, want, rtol=1e-9, atol=0):
                raise AssertionError(f"{what}: expected {want:.0f} bytes, got {got:.0f}")


@check
def check_energy_per_token(energy_per_token_pj):
    """``energy_per_token_pj(n_weights, fmt, dram_pj_per_byte) -> pJ`` for the linear layers only:
    weight bytes x DRAM energy + n_weights x the format's ops (``energy.FORMATS[fmt].ops``)."""
    for n in (0, 1, 1000, 2_084_044_800):
        for fmt in energy.FORMATS:
            for dram in (162.5, 325.0):
                what = f"n_weights={n}, fmt={fmt!r}, dram={dram} pJ/byte"
                f = energy.FORMATS[fmt]
                memory, compute = n * f.weight_bits / 8 * dram, n * f.op_pj
                want = memory + compute
                got = _number(student_call(energy_per_token_pj, n, fmt, dram), what)
                if n and np.isclose(got, memory):
                    raise AssertionError(f"{what}: {got:.4g} pJ is the DRAM part only; add the arithmetic")
                if n and np.isclose(got, compute):
                    raise AssertionError(f"{what}: {got:.4g} pJ is the arithmetic only; add the DRAM traffic")
                if n and np.isclose(got, n * f.weight_bits * dram + compute):
                    raise AssertionError(f"{what}: looks like bits x pJ/byte — divide the bits by 8")
                if not np.isclose(got, want, rtol=1e-9, atol=1e-9):
                    raise AssertionError(f"{what}: expected {want:.6g} pJ, got {got:.6g}")


def _ops(seed: int, n: int = 200, keys: int = 6):
    rng = np.random.default_rng(seed)
    return [("put" if rng.random() < 0.5 else "get", int(rng.integers(keys)), int(rng.integers(1000)))
            for _ in range(n)]


@check
def check_lru_cache(LRUCache):
    """``LRUCache(maxsize)`` with ``get(key) -> value or None`` and ``put(key, value)``: at most
    ``maxsize`` entries; a full cache evicts the least recently *used* (get or put) key."""
    scripted = [("put", "a", 1), ("put", "b", 2), ("get", "a", None), ("put", "c", 3),
                ("get", "b", None), ("get", "a", None), ("get", "c", None), ("put", "a", 9),
                ("put", "d", 4), ("get", "c", None), ("get", "a", None)]
    cases = {"scripted, maxsize=2": (2, scripted)}
    cases.update({f"random ops, maxsize={m}": (m, _ops(m)) for m in (1, 3, 5)})
    for name, (maxsize, ops) in cases.items():
        mine, ref = student_call(LRUCache, maxsize), ResponseCache(maxsize)
        for i, (op, key, value) in enumerate(ops):
            if op == "put":
                ref.put(key, value)
                student_call(mine.put, key, value)
                continue
            want = ref.get(key)
            got = student_call(mine.get, key)
            if not (got is want or (type(got) is type(want) and got == want)):
                hist = ", ".join(f"{o}({k!r}{'' if o == 'get' else f', {v}'})" for o, k, v in ops[max(0, i - 5):i + 1])
                hint = (" — was it evicted too early? the cache holds maxsize entries" if got is None
                        else " — a get counts as a use: evict the least recently USED key, not the oldest")
                raise AssertionError(f"{name}: after ... {hist}: get({key!r}) returned {got!r}, "
                                     f"expected {want!r}{hint}")


_M = {"max_new_tokens": 32}
#: (request a, request b, must they share a key?, what it means when the student's key disagrees)
_KEY_PAIRS = [
    (("In the beginning", _M), ("In the beginning ", _M), False,
     "the trailing space is a different token, so a different answer"),
    (("Amen", {"max_new_tokens": 10}), ("Amen", {"max_new_tokens": 100}), False,
     "a request for 100 tokens would be served the 10-token answer"),
    (("Amen", {**_M, "temperature": 0.8, "seed": 1}), ("Amen", {**_M, "temperature": 0.8, "seed": 2}),
     False, "two seeds draw two different samples"),
    (("Amen", {**_M, "temperature": 0.8, "seed": 1}), ("Amen", {**_M, "temperature": 0.9, "seed": 1}),
     False, "a different temperature is a different distribution"),
    (("Amen", {**_M, "temperature": 0.8, "seed": 1, "top_p": 0.9}),
     ("Amen", {**_M, "temperature": 0.8, "seed": 1}), False,
     "top-p 0.9 cuts the tail that an unfiltered sample can draw from"),
    (("Amen", {**_M, "repetition_penalty": 1.3}), ("Amen", _M), False,
     "the repetition penalty changes the logits before the argmax, so it changes GREEDY output too"),
    (("Amen", {"temperature": 0.8, "seed": 3, "max_new_tokens": 8}),
     ("Amen", {"max_new_tokens": 8, "seed": 3, "temperature": 0.8}), True,
     "the same settings in another order: str(dict) and list(dict.items()) follow insertion order"),
    (("Amen", {**_M, "temperature": 0}), ("Amen", {**_M, "temperature": 0.0}), True,
     "0 and 0.0 are the same temperature: Python's == says so, but their text (str, JSON) differs"),
    (("Amen", _M), ("Amen", {**_M, "temperature": 0.0, "top_p": 1.0}), True,
     "a setting left out means its default (greedy, top_p 1.0): the same request spelt two ways"),
    (("Amen", {**_M, "seed": 1}), ("Amen", {**_M, "seed": 2}), True,
     "a greedy request (temperature 0) never reads its seed: both produce the same text"),
    (("Amen", {**_M, "top_p": 0.5, "top_k": 5}), ("Amen", _M), True,
     "a greedy request never reads top_p or top_k: the argmax is inside any filtered set"),
]


def _hashable_key(fn, prompt, settings):
    key = student_call(fn, prompt, settings)
    if key is None:
        raise AssertionError("cache_key returned None — did you forget `return`?")
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        raise AssertionError(
            "cache_key returned a number — a hash? Two different requests can share a hash, and "
            "the cache would hand one the other's answer. Return the canonical value itself (a "
            "dict hashes it and then compares with ==, so collisions cannot mix answers)")
    try:
        hash(key)
    except TypeError:
        raise AssertionError(f"cache_key returned a {type(key).__name__}, which cannot be a "
                             f"dictionary key (unhashable); build a tuple instead") from None
    return key


@check
def check_cache_key(cache_key):
    """``cache_key(prompt, settings) -> hashable``: equal exactly when the two requests must
    produce the same text (the reference is :meth:`bitnet_edu.deploy.ResponseCache.key`)."""
    for (pa, sa), (pb, sb), same, why in _KEY_PAIRS:
        assert (ResponseCache.key(pa, sa) == ResponseCache.key(pb, sb)) == same  # the catalogue itself
        ka, kb = _hashable_key(cache_key, pa, sa), _hashable_key(cache_key, pb, sb)
        what = f"cache_key({pa!r}, {sa}) vs cache_key({pb!r}, {sb})"
        if same and ka != kb:
            raise AssertionError(f"{what}: different keys, but {why} — the cache stores the same "
                                 f"answer twice and misses where it could hit")
        if not same and ka == kb:
            raise AssertionError(f"{what}: the same key, but {why} — the cache would serve a "
                                 f"WRONG answer")
