"""Checks for stage 6 (deployment): KV-cache memory, energy per token, an LRU response cache.

Each check compares the student's code with :mod:`bitnet_edu.energy` / :mod:`bitnet_edu.deploy`
on several inputs, including the edge cases (zero context, a cache of size 1, re-inserting a key).
"""

from __future__ import annotations

import numpy as np

from .. import energy
from ..deploy import ResponseCache
from ._core import as_array, check, student_call

__all__ = ["check_kv_cache_bytes", "check_energy_per_token", "check_lru_cache"]

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
